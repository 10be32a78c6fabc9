//! Recovering the key in place when the token misbehaves: the module
//! initialised again and the token, the login and the key found anew (at
//! most once a second), or only the key's handle looked up again.

use std::{
    sync::{Arc, Mutex, atomic::Ordering},
    time::{Duration, Instant},
};

use super::{Live, Pkcs11Key, Resolved};
use crate::{Error, module, pool, token};

/// Recovery is attempted at most this often.
const RECOVERY_INTERVAL: Duration = Duration::from_secs(1);

impl Pkcs11Key {
    /// Re-initialises the module, finds the token and the key again and
    /// swaps the connection in, at most once per second. Success makes the
    /// key healthy.
    ///
    /// # Errors
    /// [`Error::Unavailable`] while the token is still gone.
    pub fn recover(&self) -> Result<(), Error> {
        if !self.recovery_due() {
            return Err(Error::Unavailable("the HSM is recovering".into()));
        }
        let _exclusive = self
            .calls
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let old = self.current();
        let generation = old.generation + 1;
        // The module is initialised again once for every key on it
        // (another issuer's key may have done it already).
        self.pool.clear();
        // Seen from this key's last attempt, not its last success: a module
        // initialised while the token was still gone must be initialised
        // again (SoftHSM does not rescan) once nobody else has since.
        let seen = self.attempted.load(Ordering::SeqCst).max(old.epoch);
        let (ctx, epoch) = module::reinitialize(&self.config.module, seen)?;
        self.attempted.store(epoch, Ordering::SeqCst);
        let slot = token::find_slot(&ctx, &self.config)?;
        let session = pool::open(&ctx, slot, &self.pin)?;
        let key = token::find_key(&session, &self.config)?;
        if let (
            Some(expected),
            token::KeyKind::Ec {
                spki: Some(now), ..
            }
            | token::KeyKind::Rsa { spki: now },
        ) = (
            &self.spki,
            token::describe_key(&session, key, &self.config)?,
        ) && &now != expected
        {
            return Err(Error::Unavailable(
                "the key on the token is not the key castellan started with".into(),
            ));
        }
        self.pool.clear();
        self.pool.checkin(generation, session);
        *self
            .live
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(Live {
            ctx,
            slot,
            key: Mutex::new(Resolved {
                handle: key,
                resolution: self.next_resolution(),
            }),
            generation,
            epoch,
        });
        self.healthy.store(true, Ordering::SeqCst);
        tracing::info!("HSM connection recovered");
        Ok(())
    }

    /// Whether a recovery may start now (at most one per interval); if so,
    /// it counts as started.
    fn recovery_due(&self) -> bool {
        let mut last = self
            .last_recovery
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if last.is_some_and(|t| t.elapsed() < RECOVERY_INTERVAL) {
            return false;
        }
        *last = Some(Instant::now());
        true
    }

    /// Looks the key up again in a working session (castellan found a
    /// signature that does not verify under the certificate): if the right
    /// key is back under the label and id, the next signature uses it.
    ///
    /// # Errors
    /// [`Error::Unavailable`] when the key cannot be found.
    pub fn refind(&self) -> Result<(), Error> {
        let _calls = self.shared_calls();
        self.refind_key(&self.current())
    }

    /// After a session vanished or the login was lost, object handles are
    /// stale too (SoftHSM invalidates them on logout). If the key cannot be
    /// found again the token itself is in trouble: recover in the background.
    pub(super) fn refind_key(&self, live: &Live) -> Result<(), Error> {
        let found = self
            .pool
            .checkout(live.generation, &live.ctx, live.slot, &self.pin)
            .and_then(|session| {
                let found = token::login(&session, &self.pin)
                    .and_then(|()| token::find_key(&session, &self.config));
                self.pool.checkin(live.generation, session);
                found
            });
        match found {
            Ok(key) => {
                *live
                    .key
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Resolved {
                    handle: key,
                    resolution: self.next_resolution(),
                };
                Ok(())
            }
            Err(e) => {
                let why = format!("the key is gone from the token: {e}");
                self.mark_unhealthy(&why);
                Err(Error::Unavailable(why))
            }
        }
    }
}
