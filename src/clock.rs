//! The one source of "now" for every rule that involves time — soak,
//! retirement, rotation, CRL validity, expiry, minimum life left — so that
//! tests can put castellan days or weeks ahead in milliseconds and the rules
//! are proven across time, not only at the instant a test runs.

use std::{
    fmt,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

/// Tells the time.
pub trait Time: Send + Sync + fmt::Debug {
    fn now(&self) -> SystemTime;
}

/// The clock every lifecycle rule asks; cheap to clone.
#[derive(Clone, Debug)]
pub struct Clock(Arc<dyn Time>);

impl Clock {
    /// The system's wall clock: what `serve`, `check` and `revoke` use.
    pub fn system() -> Self {
        Self(Arc::new(SystemClock))
    }

    /// A clock of the caller's (tests).
    pub fn from_time(time: Arc<dyn Time>) -> Self {
        Self(time)
    }

    pub fn now(&self) -> SystemTime {
        self.0.now()
    }

    /// Now, in whole seconds since the Unix epoch (how the record keeps time).
    pub fn unix(&self) -> u64 {
        unix(self.now())
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::system()
    }
}

#[derive(Debug)]
struct SystemClock;

impl Time for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// Whole seconds since the Unix epoch, rounded down (0 before it).
pub fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// `2026-11-28T12:00:00Z`, as every message and status line writes a time.
pub fn date(t: SystemTime) -> String {
    der::DateTime::from_system_time(t).map_or_else(|_| format!("{t:?}"), |d| d.to_string())
}

/// The instant `secs` seconds after the Unix epoch.
pub fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH
        .checked_add(Duration::from_secs(secs))
        .unwrap_or(UNIX_EPOCH)
}

/// A clock tests set and move by hand.
#[cfg(any(test, feature = "testing"))]
#[derive(Debug)]
pub struct ManualClock(std::sync::Mutex<SystemTime>);

#[cfg(any(test, feature = "testing"))]
impl ManualClock {
    /// A clock standing at `start`, and the [`Clock`] that reads it.
    pub fn starting_at(start: SystemTime) -> (Arc<Self>, Clock) {
        let manual = Arc::new(Self(std::sync::Mutex::new(start)));
        let clock = Clock::from_time(Arc::clone(&manual) as Arc<dyn Time>);
        (manual, clock)
    }

    pub fn advance(&self, by: Duration) {
        let mut now = self.lock();
        *now = now.checked_add(by).unwrap_or(*now);
    }

    pub fn set(&self, to: SystemTime) {
        *self.lock() = to;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SystemTime> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(any(test, feature = "testing"))]
impl Time for ManualClock {
    fn now(&self) -> SystemTime {
        *self.lock()
    }
}

/// A wall clock that moves with tokio's clock from `start`: under paused
/// time (`#[tokio::test(start_paused = true)]`) a task sleeping for three
/// weeks sees the wall clock three weeks later, at once.
#[cfg(any(test, feature = "testing"))]
#[derive(Debug)]
pub struct TokioClock {
    start: SystemTime,
    origin: tokio::time::Instant,
}

#[cfg(any(test, feature = "testing"))]
impl TokioClock {
    pub fn starting_at(start: SystemTime) -> Clock {
        Clock::from_time(Arc::new(Self {
            start,
            origin: tokio::time::Instant::now(),
        }))
    }
}

#[cfg(any(test, feature = "testing"))]
impl Time for TokioClock {
    fn now(&self) -> SystemTime {
        let elapsed = tokio::time::Instant::now().saturating_duration_since(self.origin);
        self.start.checked_add(elapsed).unwrap_or(self.start)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_told() {
        let (manual, clock) = ManualClock::starting_at(at(1_000));
        assert_eq!(clock.unix(), 1_000);
        manual.advance(Duration::from_secs(30 * 86_400));
        assert_eq!(clock.unix(), 1_000 + 30 * 86_400);
        manual.set(at(5));
        assert_eq!(clock.unix(), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn a_tokio_clock_follows_paused_time() {
        let clock = TokioClock::starting_at(at(1_000));
        tokio::time::sleep(Duration::from_secs(21 * 86_400)).await;
        assert_eq!(clock.unix(), 1_000 + 21 * 86_400);
    }

    #[test]
    fn unix_seconds_round_down_and_saturate() {
        assert_eq!(unix(at(7) + Duration::from_millis(999)), 7);
        assert_eq!(unix(UNIX_EPOCH - Duration::from_secs(1)), 0);
        assert_eq!(at(u64::MAX), UNIX_EPOCH);
    }
}
