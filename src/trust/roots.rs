//! One root's history in the record: when castellan first served it, the
//! unbroken stretch it has been served in since (a root that leaves the
//! bundle and comes back starts a new stretch, and is soaked again), and
//! when castellan last signed under it.

use serde::{Deserialize, Serialize};

/// One root's history, in seconds since the Unix epoch.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RootRecord {
    /// For people reading the record.
    pub subject: String,
    /// The first time castellan ever handed this root to workloads.
    pub first_served: Option<u64>,
    /// The start of the stretch it has been served in without a break.
    #[serde(default)]
    pub served_since: Option<u64>,
    /// The last time a replica served a root bundle without it.
    #[serde(default)]
    pub withdrawn: Option<u64>,
    /// The last time castellan's signing chain ended at this root.
    pub last_issued: Option<u64>,
}

impl RootRecord {
    /// When the stretch it is served in now began; `None` while it is
    /// withdrawn (or was never served).
    pub fn stretch(&self) -> Option<u64> {
        let since = self.served_since.or(if self.withdrawn.is_none() {
            // A record written before stretches were kept.
            self.first_served
        } else {
            None
        })?;
        self.withdrawn.is_none_or(|w| since > w).then_some(since)
    }

    /// When the stretch it is served in now has lasted `soak` seconds: a
    /// second past the sum, because the record is in whole seconds rounded
    /// down (a root first served at 10.9 s is recorded at 10, and must not
    /// count as soaked before 10.9 + soak). `None` while not served.
    pub fn soaked_at(&self, soak: u64) -> Option<u64> {
        self.stretch()
            .map(|t| t.saturating_add(soak).saturating_add(1))
    }

    /// Whether castellan has signed under it during the stretch it is
    /// served in now: signing under it again is a continuation, not a
    /// switch.
    pub fn signed_in_stretch(&self) -> bool {
        match (self.stretch(), self.last_issued) {
            (Some(since), Some(last)) => last >= since,
            _ => false,
        }
    }

    /// Notes that a replica serves it now.
    pub(super) fn served(&mut self, subject: &str, now: u64) {
        if self.subject.is_empty() {
            subject.clone_into(&mut self.subject);
        }
        self.first_served.get_or_insert(now);
        if self.stretch().is_none() {
            self.served_since = Some(now);
        } else if self.served_since.is_none() {
            self.served_since = self.first_served;
        }
    }

    /// Notes that a replica serves a bundle without it now. Written at most
    /// once per `granularity` while it stays out, so a shared record does
    /// not churn.
    pub(super) fn absent(&mut self, now: u64, granularity: u64) {
        if self.first_served.is_none() {
            return;
        }
        let first_sight = self.stretch().is_some();
        let stale = self
            .withdrawn
            .is_none_or(|w| now >= w.saturating_add(granularity));
        if first_sight || stale {
            self.withdrawn = Some(now);
        }
    }

    /// Both histories in one, whatever the order: the earliest first
    /// serving, the latest withdrawal and issuance, and the earliest start
    /// of a stretch still unbroken after that withdrawal.
    pub(super) fn merge(&mut self, theirs: &Self) {
        if self.subject.is_empty() {
            self.subject.clone_from(&theirs.subject);
        }
        self.first_served = min_some(self.first_served, theirs.first_served);
        self.last_issued = self.last_issued.max(theirs.last_issued);
        let withdrawn = self.withdrawn.max(theirs.withdrawn);
        let after = |s: Option<u64>| s.filter(|s| withdrawn.is_none_or(|w| *s > w));
        let (mine, other) = (
            self.served_since.or(self.legacy()),
            theirs.served_since.or(theirs.legacy()),
        );
        self.served_since = match (after(mine), after(other)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a @ Some(_), None) | (None, a @ Some(_)) => a,
            (None, None) => mine.max(other),
        };
        self.withdrawn = withdrawn;
    }

    fn legacy(&self) -> Option<u64> {
        if self.withdrawn.is_none() {
            self.first_served
        } else {
            None
        }
    }
}

fn min_some(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_soak_ends_a_second_past_the_sum_of_whole_seconds() {
        // First served at 10.9 s, recorded as 10: at 14 (14.0 real) only
        // 3.1 s have passed of a 4 s soak; at 15, at least 4.
        let r = RootRecord {
            served_since: Some(10),
            ..RootRecord::default()
        };
        assert_eq!(r.soaked_at(4), Some(15));
        assert_eq!(RootRecord::default().soaked_at(4), None);
    }

    #[test]
    fn a_root_withdrawn_and_served_again_starts_a_new_stretch() {
        let mut r = RootRecord::default();
        r.served("CN=a", 100);
        assert_eq!(r.stretch(), Some(100));
        r.served("CN=a", 500);
        assert_eq!(r.stretch(), Some(100), "served on: the stretch goes on");
        r.absent(600, 60);
        assert_eq!(r.stretch(), None, "withdrawn");
        r.absent(610, 60);
        assert_eq!(
            r.withdrawn,
            Some(600),
            "not rewritten within the granularity"
        );
        r.served("CN=a", 700);
        assert_eq!(r.stretch(), Some(700));
        assert_eq!(r.first_served, Some(100), "history kept");
    }

    #[test]
    fn signing_in_an_earlier_stretch_is_not_a_continuation() {
        let mut r = RootRecord::default();
        r.served("CN=a", 100);
        r.last_issued = Some(200);
        assert!(r.signed_in_stretch());
        r.absent(300, 60);
        r.served("CN=a", 400);
        assert!(!r.signed_in_stretch());
    }

    #[test]
    fn a_record_from_before_stretches_counts_from_its_first_serving() {
        let old = RootRecord {
            subject: "CN=a".into(),
            first_served: Some(100),
            last_issued: Some(150),
            ..RootRecord::default()
        };
        assert_eq!(old.stretch(), Some(100));
        let mut served = old;
        served.served("CN=a", 900);
        assert_eq!(
            served.served_since,
            Some(100),
            "no new soak after an upgrade"
        );
    }

    #[test]
    fn replicas_merge_to_the_same_stretch_in_any_order() {
        // One replica served it throughout; another (an older rollout)
        // served a bundle without it at 300, then with it from 400.
        let mut a = RootRecord::default();
        a.served("CN=a", 100);
        a.served("CN=a", 500);
        let mut b = RootRecord::default();
        b.served("CN=a", 120);
        b.absent(300, 60);
        b.served("CN=a", 400);
        let mut x = a.clone();
        x.merge(&b);
        let mut y = b.clone();
        y.merge(&a);
        assert_eq!(x, y);
        assert_eq!(x.withdrawn, Some(300));
        assert_eq!(x.stretch(), Some(400), "the stretch after the withdrawal");
        assert_eq!(x.first_served, Some(100));
    }
}
