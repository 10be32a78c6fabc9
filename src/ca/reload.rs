//! Hot reload: the signing CA in use is swapped atomically when its material
//! changes and the new set passes every check; requests in flight finish with
//! the CA they started with, and a bad new set leaves the old one serving.

use std::{sync::Arc, time::Duration};

use arc_swap::ArcSwap;
use tokio::sync::watch;

use super::{Error, Rules, SigningCa, Source};

/// The current signing CA, shared by every request.
#[derive(Debug)]
pub struct CaHandle {
    current: ArcSwap<SigningCa>,
    source: Source,
    rules: Rules,
    /// Bumped on every swap, for whoever derives state from the CA.
    generation: watch::Sender<u64>,
}

// === impl CaHandle ===

impl CaHandle {
    /// Loads and judges the signing material once.
    ///
    /// # Errors
    /// Why the material is unfit, naming what to fix.
    pub async fn load(source: Source, rules: Rules) -> Result<Self, Error> {
        let (signer, material) = source.load().await?;
        let ca = SigningCa::new(signer, material, &rules).await?;
        Ok(Self {
            current: ArcSwap::from_pointee(ca),
            source,
            rules,
            generation: watch::Sender::new(0),
        })
    }

    /// The CA to use for one request; it stays valid for that request even
    /// if a reload swaps in another.
    pub fn current(&self) -> Arc<SigningCa> {
        self.current.load_full()
    }

    /// Notified whenever the CA is swapped.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Reloads if the material changed. `Ok(true)` when a new CA was swapped in.
    ///
    /// # Errors
    /// Why the new material was refused; the old CA keeps serving.
    pub async fn reload_if_changed(&self) -> Result<bool, Error> {
        let now = self.source.fingerprint().await?;
        if now.is_none() || now == self.current().fingerprint() {
            return Ok(false);
        }
        let (signer, material) = self.source.load().await?;
        let ca = SigningCa::new(signer, material, &self.rules).await?;
        self.current.store(Arc::new(ca));
        self.generation.send_modify(|g| *g += 1);
        Ok(true)
    }
}

/// Brings an unhealthy signer (an HSM whose token went away) back in the
/// background, so readiness and requests recover without a restart.
pub fn spawn_recovery(handle: Arc<CaHandle>, every: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let ca = handle.current();
            if !ca.healthy() {
                ca.recover().await;
            }
        }
    })
}

/// Polls the signing material every `interval` and swaps in valid changes.
pub fn spawn_reloader(
    handle: Arc<CaHandle>,
    interval: Duration,
    on_swap: impl Fn(&SigningCa) + Send + Sync + 'static,
    on_refused: impl Fn() + Send + Sync + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            match handle.reload_if_changed().await {
                Ok(false) => {}
                Ok(true) => {
                    let ca = handle.current();
                    tracing::info!(source = %handle.source.describe(), "signing CA reloaded");
                    on_swap(&ca);
                }
                Err(e) => {
                    tracing::error!(
                        source = %handle.source.describe(),
                        error = %e,
                        "new signing material refused; the previous CA keeps serving"
                    );
                    on_refused();
                }
            }
        }
    })
}
