//! A bounded pool of logged-in sessions. A PKCS#11 session may be used by
//! one thread at a time, so each signature checks one out and returns it;
//! idle sessions stay open, which keeps the application logged in.

use std::{
    sync::{Condvar, Mutex, MutexGuard},
    time::Duration,
};

use cryptoki::{context::Pkcs11, session::Session, slot::Slot, types::AuthPin};

use crate::{Error, token};

/// How long a signature waits for a free session before giving up.
const CHECKOUT_WAIT: Duration = Duration::from_secs(5);

#[derive(Default)]
struct Slots {
    /// Idle sessions, each with the connection generation it belongs to.
    idle: Vec<(u64, Session)>,
    /// Sessions open, idle or checked out.
    open: usize,
}

pub(crate) struct Pool {
    max: usize,
    slots: Mutex<Slots>,
    freed: Condvar,
}

impl Pool {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            max: max.max(1),
            slots: Mutex::default(),
            freed: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Slots> {
        self.slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// An idle session of `generation`, or a new one (logged in) while
    /// fewer than `max` are open, or the next one returned.
    pub(crate) fn checkout(
        &self,
        generation: u64,
        ctx: &Pkcs11,
        slot: Slot,
        pin: &AuthPin,
    ) -> Result<Session, Error> {
        let mut slots = self.lock();
        loop {
            // Sessions of an older connection are dead weight. A newer
            // connection means the module was initialised again since (every
            // recovery goes through module::reinitialize): their handles may
            // name other keys' new sessions, so they are forgotten, not closed.
            while let Some((g, s)) = slots.idle.pop() {
                if g == generation {
                    return Ok(s);
                }
                crate::module::forget(s);
                slots.open -= 1;
            }
            if slots.open < self.max {
                slots.open += 1;
                drop(slots);
                return match open(ctx, slot, pin) {
                    Ok(s) => Ok(s),
                    Err(e) => {
                        self.discard();
                        Err(e)
                    }
                };
            }
            let (guard, timeout) = self
                .freed
                .wait_timeout(slots, CHECKOUT_WAIT)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            slots = guard;
            if timeout.timed_out() && slots.idle.is_empty() && slots.open >= self.max {
                return Err(Error::Unavailable("every HSM session is busy".into()));
            }
        }
    }

    pub(crate) fn checkin(&self, generation: u64, session: Session) {
        self.lock().idle.push((generation, session));
        self.freed.notify_one();
    }

    /// A checked-out session that was closed or dropped.
    pub(crate) fn discard(&self) {
        let mut slots = self.lock();
        slots.open = slots.open.saturating_sub(1);
        drop(slots);
        self.freed.notify_one();
    }

    /// Forgets every idle session (the connection they belong to is gone,
    /// and with it the module's state they were opened in: not closed, see
    /// module::close).
    pub(crate) fn clear(&self) {
        let mut slots = self.lock();
        let n = slots.idle.len();
        for (_, s) in slots.idle.drain(..) {
            crate::module::forget(s);
        }
        slots.open = slots.open.saturating_sub(n);
        drop(slots);
        self.freed.notify_all();
    }
}

/// A read-only session, logged in (or already logged in through another).
pub(crate) fn open(ctx: &Pkcs11, slot: Slot, pin: &AuthPin) -> Result<Session, Error> {
    let session = ctx
        .open_ro_session(slot)
        .map_err(|e| Error::Unavailable(format!("C_OpenSession: {e}")))?;
    token::login(&session, pin)?;
    Ok(session)
}

/// A read-write session, logged in: only for making and destroying minted
/// keys (signing needs no write access).
pub(crate) fn open_rw(ctx: &Pkcs11, slot: Slot, pin: &AuthPin) -> Result<Session, Error> {
    let session = ctx
        .open_rw_session(slot)
        .map_err(|e| Error::Unavailable(format!("C_OpenSession (read-write): {e}")))?;
    token::login(&session, pin)?;
    Ok(session)
}
