//! What each request consults: whether its identity is refused, whether
//! the record keeps up with what castellan signs (if not for too long,
//! nothing is issued), and — so that refusing an identity also revokes
//! what it already holds — the leaves this replica issued, remembered for
//! their lifetime in a bounded ring (oldest forgotten first).

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
};

use arc_swap::ArcSwap;

use super::{RecordHealth, Revoked, TrustRules, TrustState};
use crate::clock::Clock;

/// Leaves remembered per replica: a day of issuance for about 150,000
/// workloads renewing at half of 24 h, in tens of megabytes.
pub const ISSUED_CAPACITY: usize = 262_144;

/// A leaf this replica issued.
#[derive(Debug)]
struct IssuedLeaf {
    identity: String,
    serial: String,
    not_after: u64,
}

/// Shared by the service (reads and notes) and the recorder (folds).
#[derive(Debug)]
pub struct Revocations {
    state: Arc<ArcSwap<TrustState>>,
    issued: Mutex<VecDeque<IssuedLeaf>>,
    capacity: usize,
    health: Arc<RecordHealth>,
    lag: u64,
    clock: Clock,
}

impl Revocations {
    pub fn new(rules: &TrustRules, capacity: usize) -> Self {
        Self {
            state: Arc::clone(&rules.state),
            issued: Mutex::new(VecDeque::new()),
            capacity,
            health: Arc::clone(&rules.health),
            lag: rules.lag.as_secs(),
            clock: rules.clock.clone(),
        }
    }

    /// Why nothing may be issued now: the record has not been written for
    /// longer than `trust.max_unrecorded_secs`.
    pub fn unrecorded(&self) -> Option<String> {
        self.health.stale(self.clock.unix(), self.lag)
    }

    /// Whether new certificates for `identity` are refused.
    pub fn is_denied(&self, identity: &str) -> bool {
        self.state.load().is_denied(identity)
    }

    /// Notes a leaf issued to `identity`.
    pub fn issued(&self, identity: &str, serial: &str, not_after: u64) {
        let mut ring = self.lock();
        if ring.len() >= self.capacity {
            ring.pop_front();
        }
        ring.push_back(IssuedLeaf {
            identity: identity.to_owned(),
            serial: super::normalize_serial(serial),
            not_after,
        });
    }

    /// Adds to `state` a revocation for every unexpired leaf remembered for
    /// an identity it refuses, and forgets expired leaves. Returns whether
    /// anything was added.
    pub fn fold_into(&self, state: &mut TrustState, now: u64) -> bool {
        let mut ring = self.lock();
        ring.retain(|leaf| leaf.not_after >= now);
        let mut added = false;
        for leaf in ring.iter() {
            let Some(denied) = state.denied.get(&leaf.identity).filter(|d| d.active()) else {
                continue;
            };
            if state.revoked.contains_key(&leaf.serial) {
                continue;
            }
            let revoked = Revoked {
                reason: denied.reason,
                at: denied.at,
                until: leaf.not_after,
                identity: Some(leaf.identity.clone()),
            };
            state.revoked.insert(leaf.serial.clone(), revoked);
            added = true;
        }
        added
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<IssuedLeaf>> {
        self.issued
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trust::{Denied, Reason};

    #[test]
    fn a_denied_identity_gets_its_remembered_leaves_revoked_and_the_ring_is_bounded() {
        let state = Arc::new(ArcSwap::from_pointee(TrustState::default()));
        let r = Revocations {
            state: Arc::clone(&state),
            issued: Mutex::new(VecDeque::new()),
            capacity: 3,
            health: Arc::new(RecordHealth::new(0)),
            lag: 600,
            clock: Clock::system(),
        };
        r.issued("spiffe://td/ns/a/sa/x", "00ab", 1_000);
        r.issued("spiffe://td/ns/a/sa/y", "cd", 1_000);
        r.issued("spiffe://td/ns/a/sa/x", "ef", 50);
        r.issued("spiffe://td/ns/a/sa/x", "12", 1_000);
        let mut s = TrustState::default();
        s.denied.insert(
            "spiffe://td/ns/a/sa/x".into(),
            Denied {
                reason: Reason::KeyCompromise,
                at: 90,
                lifted: None,
            },
        );
        assert!(r.fold_into(&mut s, 100));
        // "00ab" was pushed out of the ring of three; "ef" had expired.
        assert_eq!(s.revoked.keys().collect::<Vec<_>>(), ["12"]);
        assert_eq!(s.revoked["12"].reason, Reason::KeyCompromise);
        assert!(!r.fold_into(&mut s, 100), "nothing new the second time");
        state.store(Arc::new(s));
        assert!(r.is_denied("spiffe://td/ns/a/sa/x"));
        assert!(!r.is_denied("spiffe://td/ns/a/sa/y"));
    }
}
