//! The CRL keeper across days, on a manual clock: each hour does what the
//! rotation, the recorder and the keeper would. A leaf revoked under the
//! generation before last is listed by that generation's CRL; every CRL
//! published is current at every hour (re-signed before its nextUpdate);
//! a generation leaves the set once its last leaf has expired; an upstream
//! CRL past its nextUpdate stops publishing until a current one is given.

use std::{
    sync::{Arc, atomic::AtomicU64},
    time::{Duration, SystemTime},
};

use arc_swap::ArcSwap;
use tokio::sync::watch;

use super::{CrlConfig, Keeper};
use crate::{
    authority::recorder,
    ca::{
        CaHandle, CrlRules,
        testkit::{Minting, TestCa, rules, spki},
    },
    clock::{Clock, ManualClock, unix},
    crl::{Crl, cover},
    issuer::Issuer,
    metrics::Metrics,
    profile::Subject,
    trust::{Reason, RecordHealth, Revoked, Store, TrustRules, TrustState},
};

const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);

struct World {
    manual: Arc<ManualClock>,
    clock: Clock,
    start: SystemTime,
    handle: Arc<CaHandle>,
    issuer: Issuer,
    store: Store,
    trust: TrustRules,
    keeper: Keeper,
    published: watch::Receiver<Option<String>>,
    metrics: Metrics,
    local: TrustState,
    parent: Arc<TestCa>,
    files: tempfile::TempDir,
}

impl World {
    async fn new() -> Self {
        let start = SystemTime::now();
        let (manual, clock) = ManualClock::starting_at(start);
        let files = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let root = TestCa::new("Root", start, 3650 * DAY, None, None);
        let parent = Arc::new(TestCa::new(
            "Enterprise CA",
            start,
            365 * DAY,
            Some(1),
            Some(&root),
        ));
        // The CAs above: the root's CRL for a month, the enterprise CA's
        // only for two days.
        let upstream = vec![
            files.path().join("root.crl"),
            files.path().join("parent.crl"),
        ];
        std::fs::write(&upstream[0], root.crl(start - HOUR, start + 30 * DAY))
            .unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(&upstream[1], parent.crl(start - HOUR, start + 2 * DAY))
            .unwrap_or_else(|e| panic!("{e}"));
        let store = Store::file(files.path().join("state.json"));
        store
            .init(unix(start))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let trust = TrustRules {
            state: Arc::new(ArcSwap::from_pointee(TrustState::default())),
            soak: DAY,
            leaf_life: DAY + Duration::from_secs(600),
            renewal_cycle: DAY / 2,
            force: false,
            interval: Duration::from_secs(60),
            lag: Duration::from_secs(600),
            store: store.describe(),
            external: Vec::new(),
            changed: Arc::new(watch::Sender::new(0)),
            health: Arc::new(RecordHealth::new(unix(start))),
            clock: clock.clone(),
        };
        let mut ca_rules = rules(clock.clone(), DAY, Duration::from_secs(600));
        ca_rules.crl = Some(CrlRules {
            upstream_files: upstream.clone(),
        });
        ca_rules.trust = Some(trust.clone());
        let minting = Minting {
            parent: Arc::clone(&parent),
            root: root.der.clone(),
            life: 2 * DAY,
            clock: clock.clone(),
            minted: AtomicU64::new(0),
        };
        let handle = Arc::new(
            CaHandle::load(Arc::new(minting), ca_rules)
                .await
                .unwrap_or_else(|e| panic!("{e}")),
        );
        handle.keep_replaced_for(trust.leaf_life);
        let metrics = Metrics::new().unwrap_or_else(|e| panic!("{e}"));
        let (keeper, published) = Keeper::new(
            CrlConfig {
                validity: 6 * HOUR,
                upstream_files: upstream,
            },
            store.clone(),
            trust.clone(),
            Arc::clone(&handle),
            metrics.clone(),
        );
        Self {
            issuer: Issuer::new(
                Arc::clone(&handle),
                Duration::ZERO,
                Duration::from_secs(600),
            ),
            manual,
            clock,
            start,
            handle,
            store,
            trust,
            keeper,
            published,
            metrics,
            local: TrustState::default(),
            parent,
            files,
        }
    }

    /// One hour's work at `at` after the start: the recorder, then the keeper.
    async fn at(&mut self, at: Duration) {
        let now = self.start + at;
        self.manual.set(now);
        recorder::note(
            &mut self.local,
            &self.trust,
            &self.handle.current(),
            unix(now),
        );
        let (merged, _) = self
            .store
            .restore(&self.local, unix(now))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        self.trust.state.store(Arc::new(merged.clone()));
        self.local = merged;
        self.keeper.round().await;
    }

    /// A day-long leaf from the current generation: its chain (leaf first)
    /// and serial.
    async fn leaf(&self) -> (Vec<u8>, Vec<u8>) {
        let leaf = self
            .issuer
            .issue_tls(
                &spki(),
                Subject::Server {
                    dns_names: &["w.test".to_owned()],
                    ip_addresses: &[],
                },
                false,
                DAY,
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let der = leaf.chain[0].to_vec();
        let cert = crate::crl::certificate(&der).unwrap_or_else(|e| panic!("{e}"));
        (der, crate::crl::serial_of(&cert))
    }

    async fn revoke(&self, serial: &[u8]) {
        let now = self.clock.unix();
        let mut delta = TrustState::default();
        delta.revoked.insert(
            crate::trust::normalize_serial(&crate::profile::hex(serial)),
            Revoked {
                reason: Reason::KeyCompromise,
                at: now,
                until: now + self.trust.leaf_life.as_secs(),
                identity: None,
            },
        );
        self.store
            .merge(&delta, now)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }

    fn set(&self) -> Vec<Crl> {
        let pem = self.published.borrow().clone().unwrap_or_default();
        Crl::parse_all(pem.as_bytes(), "the set").unwrap_or_default()
    }

    /// Every CRL published is current now, and each generation held is
    /// covered up to the root.
    fn assert_whole(&self, when: &str) {
        let now = self.clock.now();
        let set = self.set();
        assert!(!set.is_empty(), "{when}: nothing published");
        for crl in &set {
            assert!(
                crl.current(now),
                "{when}: a CRL past its nextUpdate is published"
            );
        }
        for held in self.handle.held() {
            let path = held.ca.path();
            cover(&path, &set, now).unwrap_or_else(|m| panic!("{when}: {m:?}"));
            let own = set
                .iter()
                .find(|c| path.first().is_some_and(|p| c.issued_by(p)));
            assert!(
                own.is_some(),
                "{when}: no CRL of {}",
                held.ca.facts().subject
            );
        }
    }
}

#[tokio::test]
async fn days_of_rotations_revocations_and_expiring_crls() {
    let mut w = World::new().await;
    w.at(Duration::ZERO).await;
    w.assert_whole("at start");
    let (leaf0, serial0) = w.leaf().await;
    let gen0 =
        crate::crl::certificate(&w.handle.current().chain()[0]).unwrap_or_else(|e| panic!("{e}"));

    // Two rotations in a few hours (an operator replacing the intermediate
    // twice): the first generation is now N-2.
    for hour in 1..=4u32 {
        if hour == 2 || hour == 4 {
            w.manual.set(w.start + HOUR * hour);
            w.handle.replace().await.unwrap_or_else(|e| panic!("{e}"));
        }
        w.at(HOUR * hour).await;
    }
    assert_eq!(w.handle.held().len(), 3);
    w.revoke(&serial0).await;
    w.at(HOUR * 5).await;
    w.assert_whole("after the revocation");
    let listed = w
        .set()
        .into_iter()
        .find(|c| c.issued_by(&gen0))
        .unwrap_or_else(|| panic!("generation N-2's CRL"));
    assert!(
        listed.lists(&serial0),
        "the leaf revoked under generation N-2 is listed"
    );
    assert!(!leaf0.is_empty());

    // Every hour for a day and a half: every CRL current, re-signed before
    // its nextUpdate (six hours); the first generation leaves the set once
    // its last leaf has expired, a day (and the record's lag) after it was
    // replaced at hour 2.
    let signed_before = w.metrics.ca.crl_signed.get();
    for hour in 6..=40u32 {
        w.at(HOUR * hour).await;
        w.assert_whole(&format!("hour {hour}"));
        let n0 = w.set().iter().any(|c| c.issued_by(&gen0));
        assert_eq!(n0, hour <= 26, "hour {hour}: generation 0 in the set");
    }
    assert!(
        w.metrics.ca.crl_signed.get() >= signed_before + 2 * 5,
        "re-signed every half validity"
    );
    assert_eq!(
        w.handle.held().len(),
        1,
        "both replaced generations' keys let go once their leaves expired"
    );
    assert_eq!(
        w.set().len(),
        3,
        "the current generation's, the enterprise CA's, the root's"
    );

    // The enterprise CA's CRL passes its nextUpdate (day 2) and is not
    // renewed: the last whole set stays, and says it is incomplete.
    w.at(HOUR * 47).await;
    let last = w.published.borrow().clone();
    w.at(HOUR * 49).await;
    assert_eq!(*w.published.borrow(), last, "the last whole set stays");
    assert!(w.metrics.ca.crl_missing.get() >= 1);
    // Renewed: published again, whole.
    let now = w.clock.now();
    std::fs::write(
        w.files.path().join("parent.crl"),
        w.parent.crl(now - HOUR, now + 30 * DAY),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    w.at(HOUR * 50).await;
    w.assert_whole("after the upstream CRL was renewed");
    assert_eq!(w.metrics.ca.crl_missing.get(), 0);
    let _ = &w.trust;
}
