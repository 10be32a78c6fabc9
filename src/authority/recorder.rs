//! Adds to the record, every `trust.record_interval_secs` and whenever the
//! signing CA changes, which roots this replica serves (and which it no
//! longer does), the signing CA it issues under, the other CAs' roots it is
//! configured with, and the revocations of leaves it issued to refused
//! identities; reads back every replica's record for the guards. A record
//! that has vanished is written back whole from this replica's copy.

use std::sync::Arc;

use tokio::task::JoinHandle;

use crate::{
    ca::{CaHandle, SigningCa},
    trust::{ExternalRecord, Generation, Revocations, Store, TrustRules, TrustState, fingerprint},
};

/// Runs until aborted.
pub(super) fn spawn_recorder(
    store: Store,
    rules: TrustRules,
    ca: Arc<CaHandle>,
    revocations: Arc<Revocations>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut changes = ca.subscribe();
        let mut local = rules.state.load_full().as_ref().clone();
        let mut failing = false;
        loop {
            let now = rules.clock.unix();
            note(&mut local, &rules, &ca.current(), now);
            revocations.fold_into(&mut local, now);
            match store.restore(&local, now).await {
                Ok((merged, restored)) => {
                    rules.health.written(now);
                    if restored {
                        tracing::error!(
                            store = %rules.store,
                            "the trust record had vanished: written back from this replica's \
                             copy (find out who removed it)"
                        );
                    } else if failing {
                        tracing::info!(store = %rules.store, "trust record written again");
                    }
                    failing = false;
                    if **rules.state.load() != merged {
                        rules.state.store(Arc::new(merged.clone()));
                        rules.changed.send_modify(|n| *n = n.wrapping_add(1));
                    }
                    local = merged;
                }
                Err(e) => {
                    rules.health.failed(e.to_string());
                    if !failing {
                        tracing::error!(
                            error = %e,
                            max_unrecorded_secs = rules.lag.as_secs(),
                            "trust record not written; retrying every record interval, and \
                             castellan stops issuing if it still cannot after \
                             trust.max_unrecorded_secs"
                        );
                        failing = true;
                    }
                }
            }
            tokio::select! {
                () = tokio::time::sleep(rules.interval) => {}
                changed = changes.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
            }
        }
    })
}

/// What this replica serves and signs under now, noted in `local`.
pub(super) fn note(local: &mut TrustState, rules: &TrustRules, ca: &SigningCa, now: u64) {
    let granularity = rules.interval.as_secs();
    local.record(ca.root_names(), ca.active_roots(), now, granularity);
    let (fp, generation) = generation_of(ca, rules.leaf_life.as_secs());
    local.record_generation(&fp, &generation, now, granularity);
    for e in &rules.external {
        local.record_external(
            &e.fingerprint,
            &ExternalRecord {
                subject: e.subject.clone(),
                signs_until: e.signs_until,
                leaf_life: e.leaf_life.as_secs(),
                configured: now,
            },
        );
    }
}

/// The record's entry for the signing CA `ca` (its times are set when it
/// is recorded), keyed by its certificate's fingerprint.
pub(super) fn generation_of(ca: &SigningCa, leaf_life: u64) -> (String, Generation) {
    let cert = ca.chain().first();
    let fp = cert.map(fingerprint).unwrap_or_default();
    let generation = Generation {
        subject: ca.facts().subject.to_string(),
        certificate: ca.chain_pem().first().cloned().unwrap_or_default(),
        chain: ca.chain_pem().iter().skip(1).cloned().collect(),
        root: ca.active_roots().first().cloned(),
        not_after: crate::clock::unix(ca.not_after()),
        leaf_life,
        first_issued: 0,
        last_issued: 0,
    };
    (fp, generation)
}
