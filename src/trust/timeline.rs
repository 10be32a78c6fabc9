//! The rotation guards across weeks, on a manual clock: each step records
//! what a replica serves and signs under that hour, as the recorder does,
//! and asks the guards what `serve` and a reload would be told.

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use arc_swap::ArcSwap;

use super::{RecordHealth, TrustRules, TrustState, judge};
use crate::clock::{Clock, ManualClock, unix};

const HOUR: u64 = 3600;
const DAY: u64 = 86_400;

struct World {
    rules: TrustRules,
    manual: Arc<ManualClock>,
    start: SystemTime,
    local: TrustState,
}

impl World {
    /// A day-long soak (one renewal cycle of two-day leaves), records every
    /// hour.
    fn new() -> Self {
        let start = SystemTime::now();
        let (manual, clock) = ManualClock::starting_at(start);
        let rules = rules(clock);
        Self {
            rules,
            manual,
            start,
            local: TrustState::default(),
        }
    }

    /// Moves to `at` seconds after the start, recording every hour on the
    /// way that `bundle` is served and signing ends at `active`.
    fn serve_until(&mut self, at: u64, bundle: &[&str], active: &str) {
        let bundle: Vec<(String, String)> = bundle
            .iter()
            .map(|r| ((*r).to_owned(), format!("CN={r}")))
            .collect();
        let mut now = unix(self.manual_now());
        let end = unix(self.start) + at;
        while now <= end {
            self.manual.set(crate::clock::at(now));
            self.local.record(
                &bundle,
                &[active.to_owned()],
                now,
                self.rules.interval.as_secs(),
            );
            now += HOUR;
        }
        self.manual.set(crate::clock::at(end));
        self.rules.state.store(Arc::new(self.local.clone()));
    }

    fn manual_now(&self) -> SystemTime {
        self.rules.clock.now()
    }

    /// What the switch and retirement guards say of signing under
    /// `active` with `bundle` served.
    fn judge(
        &self,
        bundle: &[&str],
        active: &str,
    ) -> (Result<String, String>, Result<String, String>) {
        let bundle: Vec<(String, String)> = bundle
            .iter()
            .map(|r| ((*r).to_owned(), format!("CN={r}")))
            .collect();
        judge(
            &self.rules,
            &bundle,
            &[active.to_owned()],
            self.manual_now(),
        )
    }
}

fn rules(clock: Clock) -> TrustRules {
    TrustRules {
        state: Arc::new(ArcSwap::from_pointee(TrustState::default())),
        soak: Duration::from_secs(DAY),
        leaf_life: Duration::from_secs(2 * DAY),
        renewal_cycle: Duration::from_secs(DAY),
        force: false,
        interval: Duration::from_secs(60),
        lag: Duration::from_secs(600),
        store: "test record".into(),
        external: Vec::new(),
        changed: Arc::new(tokio::sync::watch::Sender::new(0)),
        health: Arc::new(RecordHealth::new(clock.unix())),
        clock,
    }
}

#[test]
fn a_root_rolled_back_after_thirty_days_is_soaked_again() {
    let mut w = World::new();
    // R1 alone; R2 added on day 1, signed under from day 3; R1 retired on
    // day 6, once its last leaf (two days) had expired.
    w.serve_until(DAY, &["r1"], "r1");
    w.serve_until(3 * DAY, &["r1", "r2"], "r1");
    assert!(w.judge(&["r1", "r2"], "r2").0.is_ok(), "R2 soaked two days");
    w.serve_until(6 * DAY, &["r1", "r2"], "r2");
    assert!(w.judge(&["r2"], "r2").1.is_ok(), "R1's leaves have expired");
    w.serve_until(36 * DAY, &["r2"], "r2");

    // Thirty days later R2 is rolled back to R1, in one step: refused, R1
    // left the bundle on day 6 and nobody has been served it since.
    let (switch, retire) = w.judge(&["r1", "r2"], "r1");
    let why = switch.unwrap_err();
    assert!(why.contains("left the root bundle"), "{why}");
    assert!(retire.is_ok());
    // Served again beside R2 for less than the soak: still refused.
    w.serve_until(36 * DAY + 20 * HOUR, &["r1", "r2"], "r2");
    let why = w.judge(&["r1", "r2"], "r1").0.unwrap_err();
    assert!(why.contains("without a break only since"), "{why}");
    // A full soak after its return (first recorded at the next hourly
    // record, and a soak ends a second past the sum): the rollback may go
    // ahead.
    w.serve_until(37 * DAY + 2 * HOUR, &["r1", "r2"], "r2");
    let ok = w.judge(&["r1", "r2"], "r1").0.unwrap();
    assert!(ok.contains("switching to"), "{ok}");
}

#[test]
fn a_rotation_called_off_and_resumed_three_weeks_later_is_soaked_again() {
    let mut w = World::new();
    w.serve_until(DAY, &["r1"], "r1");
    // R2 served for a day and a half, then the rotation is called off.
    w.serve_until(2 * DAY + 12 * HOUR, &["r1", "r2"], "r1");
    w.serve_until(23 * DAY, &["r1"], "r1");
    // Resumed: R2 back in the bundle, signing under it at once is refused
    // although it was first served three weeks ago.
    let why = w.judge(&["r1", "r2"], "r2").0.unwrap_err();
    assert!(why.contains("left the root bundle"), "{why}");
    w.serve_until(23 * DAY + 12 * HOUR, &["r1", "r2"], "r1");
    assert!(w.judge(&["r1", "r2"], "r2").0.is_err(), "half a soak");
    w.serve_until(24 * DAY + 2 * HOUR, &["r1", "r2"], "r1");
    assert!(
        w.judge(&["r1", "r2"], "r2").0.is_ok(),
        "a soak after the return"
    );
    // Signing stays with R2 from then on, and R1 stays until R2 has signed
    // for a leaf lifetime.
    w.serve_until(25 * DAY, &["r1", "r2"], "r2");
    let why = w.judge(&["r2"], "r2").1.unwrap_err();
    assert!(why.contains("CN=r1") && why.contains("still live"), "{why}");
    w.serve_until(27 * DAY + HOUR, &["r1", "r2"], "r2");
    assert!(w.judge(&["r2"], "r2").1.is_ok());
}
