//! What castellan remembers about each root: when it first served it to
//! workloads and when it last signed under it. Merged by taking the widest
//! span, so replicas recording at once converge whatever the order.

use std::collections::BTreeMap;

use rustls_pki_types::CertificateDer;
use serde::{Deserialize, Serialize};

/// The record, keyed by each root's SHA-256 fingerprint (hex).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustState {
    #[serde(default)]
    pub roots: BTreeMap<String, RootRecord>,
}

/// One root's history, in seconds since the Unix epoch.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RootRecord {
    /// For people reading the record.
    pub subject: String,
    /// The first time castellan handed this root to workloads (in every
    /// response and the published bundle).
    pub first_served: Option<u64>,
    /// The last time castellan's signing chain ended at this root.
    pub last_issued: Option<u64>,
}

impl TrustState {
    /// Notes that `roots` are served now and that signing ends at `active`.
    /// Returns whether anything changed.
    pub fn record(
        &mut self,
        roots: &[(String, String)],
        active: &[String],
        now: u64,
        granularity: u64,
    ) -> bool {
        let before = self.clone();
        for (fingerprint, subject) in roots {
            let r = self.roots.entry(fingerprint.clone()).or_default();
            if r.subject.is_empty() {
                r.subject.clone_from(subject);
            }
            r.first_served.get_or_insert(now);
        }
        for fingerprint in active {
            let r = self.roots.entry(fingerprint.clone()).or_default();
            // Written at most once per `granularity`: the record is a bound,
            // not a log, and a shared ConfigMap should not churn.
            if r.last_issued
                .is_none_or(|t| now >= t.saturating_add(granularity))
            {
                r.last_issued = Some(now);
            }
        }
        *self != before
    }

    /// Both records in one: the earliest first serving, the latest issuance.
    pub fn merge(&mut self, other: &Self) {
        for (fingerprint, theirs) in &other.roots {
            let mine = self.roots.entry(fingerprint.clone()).or_default();
            if mine.subject.is_empty() {
                mine.subject.clone_from(&theirs.subject);
            }
            mine.first_served = match (mine.first_served, theirs.first_served) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            mine.last_issued = mine.last_issued.max(theirs.last_issued);
        }
    }

    /// Whether castellan has ever signed under any root: before that there
    /// is nothing a switch could break.
    pub fn has_issued(&self) -> bool {
        self.roots.values().any(|r| r.last_issued.is_some())
    }
}

/// A root's key in the record.
pub fn fingerprint(der: &CertificateDer<'_>) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der.as_ref());
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roots(names: &[&str]) -> Vec<(String, String)> {
        names
            .iter()
            .map(|n| ((*n).to_owned(), format!("CN={n}")))
            .collect()
    }

    #[test]
    fn first_served_is_kept_and_last_issued_moves_at_its_granularity() {
        let mut s = TrustState::default();
        assert!(s.record(&roots(&["a", "b"]), &["a".into()], 100, 60));
        assert!(!s.record(&roots(&["a", "b"]), &["a".into()], 130, 60));
        assert!(s.record(&roots(&["a", "b"]), &["a".into()], 160, 60));
        assert_eq!(s.roots["a"].first_served, Some(100));
        assert_eq!(s.roots["a"].last_issued, Some(160));
        assert_eq!(s.roots["b"].first_served, Some(100));
        assert_eq!(s.roots["b"].last_issued, None);
    }

    #[test]
    fn merging_takes_the_widest_span_in_any_order() {
        let mut one = TrustState::default();
        one.record(&roots(&["a"]), &["a".into()], 100, 60);
        let mut two = TrustState::default();
        two.record(&roots(&["a", "b"]), &["a".into()], 50, 60);
        two.record(&roots(&["a", "b"]), &["a".into()], 400, 60);
        let mut x = one.clone();
        x.merge(&two);
        let mut y = two.clone();
        y.merge(&one);
        assert_eq!(x, y);
        assert_eq!(x.roots["a"].first_served, Some(50));
        assert_eq!(x.roots["a"].last_issued, Some(400));
        assert!(x.roots.contains_key("b"));
    }
}
