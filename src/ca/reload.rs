//! The signing CA in use, kept current and checked: swapped atomically when
//! its material changes and the new set passes every check (requests in
//! flight finish with the CA they started with; a bad new set leaves the old
//! one serving), and probed in the background so that a broken or changed
//! back end is noticed without traffic, and its return too.

use std::{sync::Arc, time::Duration};

use arc_swap::ArcSwap;
use castellan_signer::Source;
use tokio::sync::watch;

use super::{Error, Rules, SigningCa};

/// A probe certificate is issued and verified every this many probe ticks
/// while healthy (and at every tick while the key is distrusted).
const PROVE_EVERY_TICKS: u64 = 5;

/// The current signing CA, shared by every request, and the ones it
/// replaced while their leaves may live: their keys still sign their CRLs.
#[derive(Debug)]
pub struct CaHandle {
    current: ArcSwap<SigningCa>,
    retired: std::sync::Mutex<Vec<Retired>>,
    /// How long a replaced CA is kept (its leaves' longest life), when
    /// something still needs its key (the CRL keeper); `None`: let go at once.
    keep_replaced: std::sync::Mutex<Option<Duration>>,
    source: Arc<dyn Source>,
    rules: Rules,
    /// Bumped on every swap, for whoever derives state from the CA.
    generation: watch::Sender<u64>,
    /// The material last refused: the same content is not judged (nor
    /// logged, nor counted) again; a change is.
    refused: std::sync::Mutex<Option<Refused>>,
}

/// A signing CA replaced at `at`: no leaf was signed under it later.
#[derive(Debug)]
struct Retired {
    ca: Arc<SigningCa>,
    at: std::time::SystemTime,
}

/// A signing CA this replica holds: the current one (`retired_at` `None`)
/// or one it replaced.
#[derive(Debug, Clone)]
pub struct Held {
    pub ca: Arc<SigningCa>,
    pub retired_at: Option<std::time::SystemTime>,
}

/// What was last refused: content that did not pass, or files that could
/// not be read (by the reason given).
#[derive(Debug, PartialEq, Eq)]
enum Refused {
    Content(castellan_signer::Fingerprint),
    Unreadable(String),
    /// Refused only because its root has not soaked yet: judged again at
    /// every check (time alone can make it pass), reported once.
    Soaking(castellan_signer::Fingerprint),
}

// === impl CaHandle ===

impl CaHandle {
    /// Loads and judges the signing material once.
    ///
    /// # Errors
    /// Why the material is unfit, naming what to fix.
    pub async fn load(source: Arc<dyn Source>, rules: Rules) -> Result<Self, Error> {
        let loaded = source.load().await?;
        let ca = SigningCa::new(loaded.backend, loaded.material, &rules).await?;
        Ok(Self {
            current: ArcSwap::from_pointee(ca),
            retired: std::sync::Mutex::new(Vec::new()),
            keep_replaced: std::sync::Mutex::new(None),
            source,
            rules,
            generation: watch::Sender::new(0),
            refused: std::sync::Mutex::new(None),
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

    /// Where the signing material comes from, for messages.
    pub fn describe(&self) -> String {
        self.source.describe()
    }

    /// Whether the back end makes new material at every load, so that the
    /// CA is replaced on a schedule (see [`super::spawn_rotator`]).
    pub fn self_rotating(&self) -> bool {
        self.source.self_rotating()
    }

    /// Loads new material, judges it like any (a probe certificate
    /// included) and swaps it in, whatever the fingerprint says: for back
    /// ends that mint a new intermediate at every load.
    ///
    /// # Errors
    /// Why the new material could not be had or was refused; the current
    /// CA keeps serving.
    pub async fn replace(&self) -> Result<(), Error> {
        let loaded = self.source.load().await?;
        let ca = SigningCa::new(loaded.backend, loaded.material, &self.rules).await?;
        self.swap(ca);
        Ok(())
    }

    fn swap(&self, ca: SigningCa) {
        let old = self.current.swap(Arc::new(ca));
        let at = old.clock().now();
        let keep = *self
            .keep_replaced
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(life) = keep {
            self.lock_retired().push(Retired { ca: old, at });
            self.release(at, life);
        }
        self.generation.send_modify(|g| *g = g.wrapping_add(1));
    }

    /// Keeps each CA this handle replaces from now on, with its key, until
    /// `leaf_life` after it was replaced: its CRL is signed until its last
    /// leaf has expired. Without this a replaced CA is let go at once.
    pub fn keep_replaced_for(&self, leaf_life: Duration) {
        *self
            .keep_replaced
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(leaf_life);
    }

    /// Every signing CA this replica holds, the current one first, then
    /// those it replaced, newest first.
    pub fn held(&self) -> Vec<Held> {
        let mut held = vec![Held {
            ca: self.current(),
            retired_at: None,
        }];
        held.extend(self.lock_retired().iter().rev().map(|r| Held {
            ca: Arc::clone(&r.ca),
            retired_at: Some(r.at),
        }));
        held
    }

    /// Lets go of replaced CAs whose every leaf has expired at `now`: the
    /// last one was signed when it was replaced, and lived at most
    /// `leaf_life` (and never past the chain). An HSM key minted for one is
    /// destroyed with it.
    pub fn release(&self, now: std::time::SystemTime, leaf_life: Duration) {
        self.lock_retired().retain(|r| {
            let last =
                r.at.checked_add(leaf_life)
                    .unwrap_or(r.at)
                    .min(r.ca.not_after());
            now <= last + Duration::from_secs(1)
        });
    }

    /// The CRLs of the CAs above the signing CA the back end can fetch now.
    ///
    /// # Errors
    /// When the back end cannot be reached.
    pub async fn upstream_crls(&self) -> Result<Vec<Vec<u8>>, Error> {
        Ok(self.source.upstream_crls().await?)
    }

    fn lock_retired(&self) -> std::sync::MutexGuard<'_, Vec<Retired>> {
        self.retired
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Reloads if the material changed. `Ok(true)` when a new CA was swapped
    /// in; `Ok(false)` when nothing changed, or the change is content already
    /// refused once.
    ///
    /// # Errors
    /// Why the new material was refused; the old CA keeps serving.
    pub async fn reload_if_changed(&self) -> Result<bool, Error> {
        let refused = || {
            self.refused
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        };
        let now = match self.source.fingerprint().await {
            Ok(Some(now)) => now,
            Ok(None) => return Ok(false),
            Err(e) => {
                let seen = Some(Refused::Unreadable(e.to_string()));
                if *refused() == seen {
                    return Ok(false);
                }
                *refused() = seen;
                return Err(e.into());
            }
        };
        if Some(now) == self.current().fingerprint() {
            *refused() = None;
            return Ok(false);
        }
        if *refused() == Some(Refused::Content(now)) {
            return Ok(false);
        }
        let judged = match self.source.load().await {
            Ok(loaded) => SigningCa::new(loaded.backend, loaded.material, &self.rules).await,
            Err(e) => Err(e.into()),
        };
        match judged {
            Ok(ca) => {
                *refused() = None;
                self.swap(ca);
                Ok(true)
            }
            // A back end that is down or busy says nothing about the
            // material: try the same content again next time.
            Err(
                e @ Error::Backend(
                    castellan_signer::Error::Unavailable(_) | castellan_signer::Error::Busy(_),
                ),
            ) => Err(e),
            Err(Error::Practice(p)) if p.name == crate::trust::ROTATION_PRACTICE => {
                let again = *refused() == Some(Refused::Soaking(now));
                *refused() = Some(Refused::Soaking(now));
                if again {
                    Ok(false)
                } else {
                    Err(Error::Practice(p))
                }
            }
            Err(e) => {
                *refused() = Some(Refused::Content(now));
                Err(e)
            }
        }
    }
}

/// Probes the current CA every `every`: the back end's health without
/// traffic, and a probe certificate now and then (and at every tick while
/// the key is distrusted), so readiness follows the back end and a changed
/// key is noticed and its return too, without a restart.
pub fn spawn_prober(
    handle: Arc<CaHandle>,
    every: Duration,
    on_tick: impl Fn(&SigningCa) + Send + Sync + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut n: u64 = 0;
        loop {
            tick.tick().await;
            n = n.wrapping_add(1);
            let ca = handle.current();
            ca.probe(
                n.is_multiple_of(PROVE_EVERY_TICKS),
                &handle.rules.trust_domain,
            )
            .await;
            on_tick(&ca);
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
                    tracing::info!(source = %handle.describe(), "signing CA reloaded");
                    on_swap(&ca);
                }
                Err(e) => {
                    tracing::error!(
                        source = %handle.describe(),
                        error = %e,
                        "new signing material refused; the previous CA keeps serving"
                    );
                    on_refused();
                }
            }
        }
    })
}
