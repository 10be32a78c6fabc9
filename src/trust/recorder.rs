//! Adds to the record, every `trust.record_interval_secs` and whenever the
//! signing CA changes,
//! which roots this replica serves and which one it signs under, and reads
//! back every replica's record for the guards.

use std::{
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use tokio::task::JoinHandle;

use super::{Revocations, Store, TrustRules};
use crate::ca::CaHandle;

/// Runs until aborted. Also folds in the revocations of leaves this replica
/// issued to identities the record refuses.
pub fn spawn_recorder(
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
            let current = ca.current();
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            local.record(
                current.root_names(),
                current.active_roots(),
                now,
                rules.interval.as_secs(),
            );
            revocations.fold_into(&mut local, now);
            match store.merge(&local).await {
                Ok(merged) => {
                    if failing {
                        tracing::info!(store = %rules.store, "trust record written again");
                        failing = false;
                    }
                    if **rules.state.load() != merged {
                        rules.state.store(Arc::new(merged.clone()));
                        rules.changed.send_modify(|n| *n = n.wrapping_add(1));
                    }
                    local = merged;
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(
                            error = %e,
                            "trust record not written; the rotation guards judge by the last \
                             record read (retried every minute)"
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
