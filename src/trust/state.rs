//! What castellan remembers about each root — when it first served it to
//! workloads and when it last signed under it — and what was revoked: leaf
//! serials, and identities refused new certificates. Merged by taking the
//! widest span and the union, so replicas recording at once converge
//! whatever the order.

use std::collections::BTreeMap;

use rustls_pki_types::CertificateDer;
use serde::{Deserialize, Serialize};

/// The record, keyed by each root's SHA-256 fingerprint (hex).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustState {
    #[serde(default)]
    pub roots: BTreeMap<String, RootRecord>,
    /// Revoked leaves, by serial number (lowercase hex, no leading zeros).
    #[serde(default)]
    pub revoked: BTreeMap<String, Revoked>,
    /// Identities refused new certificates, by SPIFFE ID.
    #[serde(default)]
    pub denied: BTreeMap<String, Denied>,
}

/// Why a certificate was revoked: RFC 5280's reason codes an operator uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[derive(clap::ValueEnum)]
#[value(rename_all = "camelCase")]
pub enum Reason {
    Unspecified,
    KeyCompromise,
    AffiliationChanged,
    Superseded,
    CessationOfOperation,
}

/// One revoked leaf.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Revoked {
    pub reason: Reason,
    /// When it was revoked (seconds since the Unix epoch).
    pub at: u64,
    /// After this the leaf has expired and leaves the CRL.
    pub until: u64,
    /// The identity it was issued to, when castellan knows it.
    pub identity: Option<String>,
}

/// An identity refused new certificates since `at`, unless lifted later.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Denied {
    pub reason: Reason,
    pub at: u64,
    /// Lifted at this time; a denial after it counts again.
    pub lifted: Option<u64>,
}

impl Denied {
    pub fn active(&self) -> bool {
        self.lifted.is_none_or(|l| l < self.at)
    }
}

/// One root's history, in seconds since the Unix epoch.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RootRecord {
    /// For people reading the record.
    pub subject: String,
    /// The first time castellan handed this root to workloads (in every
    /// response and the published bundle).
    pub first_served: Option<u64>,
    /// The last time castellan's signing chain ended at this root.
    pub last_issued: Option<u64>,
}

impl TrustState {
    /// Notes that `roots` are served now and that signing ends at `active`.
    /// Returns whether anything changed.
    pub fn record(
        &mut self,
        roots: &[(String, String)],
        active: &[String],
        now: u64,
        granularity: u64,
    ) -> bool {
        let before = self.clone();
        for (fingerprint, subject) in roots {
            let r = self.roots.entry(fingerprint.clone()).or_default();
            if r.subject.is_empty() {
                r.subject.clone_from(subject);
            }
            r.first_served.get_or_insert(now);
        }
        for fingerprint in active {
            let r = self.roots.entry(fingerprint.clone()).or_default();
            // Written at most once per `granularity`: the record is a bound,
            // not a log, and a shared ConfigMap should not churn.
            if r.last_issued
                .is_none_or(|t| now >= t.saturating_add(granularity))
            {
                r.last_issued = Some(now);
            }
        }
        *self != before
    }

    /// Both records in one: the earliest first serving, the latest issuance.
    pub fn merge(&mut self, other: &Self) {
        for (fingerprint, theirs) in &other.roots {
            let mine = self.roots.entry(fingerprint.clone()).or_default();
            if mine.subject.is_empty() {
                mine.subject.clone_from(&theirs.subject);
            }
            mine.first_served = match (mine.first_served, theirs.first_served) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            mine.last_issued = mine.last_issued.max(theirs.last_issued);
        }
        for (serial, theirs) in &other.revoked {
            self.revoked
                .entry(serial.clone())
                .and_modify(|mine| {
                    // The first revocation stands; what was learnt later
                    // (the identity) is kept.
                    if theirs.at < mine.at {
                        mine.at = theirs.at;
                        mine.reason = theirs.reason;
                    }
                    mine.until = mine.until.max(theirs.until);
                    if mine.identity.is_none() {
                        mine.identity.clone_from(&theirs.identity);
                    }
                })
                .or_insert_with(|| theirs.clone());
        }
        for (identity, theirs) in &other.denied {
            self.denied
                .entry(identity.clone())
                .and_modify(|mine| {
                    if theirs.at > mine.at {
                        mine.at = theirs.at;
                        mine.reason = theirs.reason;
                    }
                    mine.lifted = mine.lifted.max(theirs.lifted);
                })
                .or_insert_with(|| theirs.clone());
        }
    }

    /// Forgets revocations of leaves expired before `now`: they are of no
    /// use in a CRL any more.
    pub fn prune(&mut self, now: u64) -> bool {
        let before = self.revoked.len();
        self.revoked.retain(|_, r| r.until >= now);
        self.revoked.len() != before
    }

    /// Whether new certificates for `identity` are refused.
    pub fn is_denied(&self, identity: &str) -> bool {
        self.denied.get(identity).is_some_and(Denied::active)
    }

    /// Whether castellan has ever signed under any root: before that there
    /// is nothing a switch could break.
    pub fn has_issued(&self) -> bool {
        self.roots.values().any(|r| r.last_issued.is_some())
    }
}

/// A root's key in the record.
pub fn fingerprint(der: &CertificateDer<'_>) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der.as_ref());
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roots(names: &[&str]) -> Vec<(String, String)> {
        names
            .iter()
            .map(|n| ((*n).to_owned(), format!("CN={n}")))
            .collect()
    }

    #[test]
    fn first_served_is_kept_and_last_issued_moves_at_its_granularity() {
        let mut s = TrustState::default();
        assert!(s.record(&roots(&["a", "b"]), &["a".into()], 100, 60));
        assert!(!s.record(&roots(&["a", "b"]), &["a".into()], 130, 60));
        assert!(s.record(&roots(&["a", "b"]), &["a".into()], 160, 60));
        assert_eq!(s.roots["a"].first_served, Some(100));
        assert_eq!(s.roots["a"].last_issued, Some(160));
        assert_eq!(s.roots["b"].first_served, Some(100));
        assert_eq!(s.roots["b"].last_issued, None);
    }

    #[test]
    fn revocations_merge_as_a_union_and_a_lift_is_undone_by_a_later_denial() {
        let revoked = |at, identity: Option<&str>| Revoked {
            reason: Reason::KeyCompromise,
            at,
            until: at + 100,
            identity: identity.map(str::to_owned),
        };
        let mut one = TrustState::default();
        one.revoked.insert("0a".into(), revoked(10, None));
        one.denied.insert(
            "spiffe://td/ns/a/sa/b".into(),
            Denied {
                reason: Reason::KeyCompromise,
                at: 10,
                lifted: None,
            },
        );
        let mut two = TrustState::default();
        two.revoked
            .insert("0a".into(), revoked(20, Some("spiffe://td/ns/a/sa/b")));
        two.revoked.insert("0b".into(), revoked(30, None));
        two.denied.insert(
            "spiffe://td/ns/a/sa/b".into(),
            Denied {
                reason: Reason::KeyCompromise,
                at: 10,
                lifted: Some(15),
            },
        );
        let mut x = one.clone();
        x.merge(&two);
        let mut y = two.clone();
        y.merge(&one);
        assert_eq!(x, y);
        assert_eq!(x.revoked["0a"].at, 10);
        assert_eq!(
            x.revoked["0a"].identity.as_deref(),
            Some("spiffe://td/ns/a/sa/b")
        );
        assert!(x.revoked.contains_key("0b"));
        assert!(!x.is_denied("spiffe://td/ns/a/sa/b"), "lifted");
        let mut again = TrustState::default();
        again.denied.insert(
            "spiffe://td/ns/a/sa/b".into(),
            Denied {
                reason: Reason::Superseded,
                at: 40,
                lifted: None,
            },
        );
        x.merge(&again);
        assert!(
            x.is_denied("spiffe://td/ns/a/sa/b"),
            "denied again after the lift"
        );
        assert!(x.prune(125));
        assert_eq!(x.revoked.keys().collect::<Vec<_>>(), ["0b"]);
    }

    #[test]
    fn merging_takes_the_widest_span_in_any_order() {
        let mut one = TrustState::default();
        one.record(&roots(&["a"]), &["a".into()], 100, 60);
        let mut two = TrustState::default();
        two.record(&roots(&["a", "b"]), &["a".into()], 50, 60);
        two.record(&roots(&["a", "b"]), &["a".into()], 400, 60);
        let mut x = one.clone();
        x.merge(&two);
        let mut y = two.clone();
        y.merge(&one);
        assert_eq!(x, y);
        assert_eq!(x.roots["a"].first_served, Some(50));
        assert_eq!(x.roots["a"].last_issued, Some(400));
        assert!(x.roots.contains_key("b"));
    }
}
