//! `ca.roots_file` is read at start (the rotation guards judge a new root
//! bundle when castellan starts with it, as the runbook's restart does);
//! an edit made meanwhile is not served — and not silently ignored: it is
//! logged, once per new content, with what to do.

use std::{path::PathBuf, sync::Arc, time::Duration};

use tokio::task::JoinHandle;

use crate::{ca::CaHandle, pem::certificate_set};

/// Watches `path` every `every` until aborted.
pub(super) fn spawn(path: PathBuf, ca: Arc<CaHandle>, every: Duration) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every.max(Duration::from_secs(1)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut said: Option<Vec<Vec<u8>>> = None;
        loop {
            tick.tick().await;
            let Ok(text) = tokio::fs::read_to_string(&path).await else {
                continue;
            };
            let on_disk: Vec<Vec<u8>> = certificate_set(&text).into_iter().collect();
            let served: Vec<Vec<u8>> = certificate_set(ca.current().roots_pem())
                .into_iter()
                .collect();
            if on_disk.is_empty() || on_disk == served {
                said = None;
                continue;
            }
            if said.as_ref() != Some(&on_disk) {
                tracing::warn!(
                    roots_file = %path.display(),
                    roots_on_disk = on_disk.len(),
                    roots_served = served.len(),
                    "ca.roots_file changed, but castellan reads it at start: the new root bundle \
                     is not served until castellan restarts (kubectl -n <ns> rollout restart \
                     deploy/castellan), when the rotation guards judge it (docs/rotate-root.md)"
                );
                said = Some(on_disk);
            }
        }
    })
}
