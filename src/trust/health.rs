//! Whether this replica keeps its record written. The guards' promises
//! (no root dropped while its leaves live, no generation forgotten) hold only
//! while what castellan signs is recorded; so once the record could not be
//! written for `trust.max_unrecorded_secs`, castellan stops issuing
//! (`UNAVAILABLE`, `/readyz` 503) until it can again.

use std::sync::{
    Mutex,
    atomic::{AtomicU64, Ordering},
};

/// Shared by the recorder (writes) and the request path and readiness (reads).
#[derive(Debug)]
pub struct RecordHealth {
    /// When the record was last written (or found current), Unix seconds.
    written: AtomicU64,
    /// Why the last write failed, while it does.
    error: Mutex<Option<String>>,
}

impl RecordHealth {
    /// Healthy as of `now` (the record was just read).
    pub fn new(now: u64) -> Self {
        Self {
            written: AtomicU64::new(now),
            error: Mutex::new(None),
        }
    }

    pub fn written(&self, now: u64) {
        self.written.fetch_max(now, Ordering::Relaxed);
        *self.lock() = None;
    }

    pub fn failed(&self, why: String) {
        *self.lock() = Some(why);
    }

    /// When the record was last written.
    pub fn last_written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    /// Why castellan must not issue now, if the record has not been
    /// written for longer than `lag` seconds.
    pub fn stale(&self, now: u64, lag: u64) -> Option<String> {
        let last = self.last_written();
        if now <= last.saturating_add(lag) {
            return None;
        }
        let why = self
            .lock()
            .clone()
            .unwrap_or_else(|| "no write succeeded".to_owned());
        Some(format!(
            "the trust record has not been written for {} s (trust.max_unrecorded_secs = {lag}): \
             {why}",
            now.saturating_sub(last)
        ))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_only_past_the_lag_and_healthy_again_after_a_write() {
        let h = RecordHealth::new(100);
        h.failed("403 Forbidden".into());
        assert_eq!(h.stale(700, 600), None);
        let why = h.stale(701, 600).unwrap();
        assert!(why.contains("601 s") && why.contains("403"), "{why}");
        h.written(702);
        assert_eq!(h.stale(1_000, 600), None);
    }
}
