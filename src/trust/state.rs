//! What castellan remembers about trust, so that nothing is forgotten
//! across rotations, restarts and replicas: each root's history, every
//! signing CA it issued under (until its last leaf expires), other CAs'
//! roots kept during a migration, and what was revoked — leaf serials, and
//! identities refused new certificates. Merged by taking the widest span
//! and the union, so replicas recording at once converge whatever the order.

use std::collections::BTreeMap;

use rustls_pki_types::CertificateDer;
use serde::{Deserialize, Serialize};

pub use super::{
    external::ExternalRecord,
    generation::{Generation, SignedCrl},
    roots::RootRecord,
};

/// The record, keyed by SHA-256 fingerprints (hex) of certificates.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustState {
    /// When `castellan trust init` created the record.
    #[serde(default)]
    pub created: Option<u64>,
    #[serde(default)]
    pub roots: BTreeMap<String, RootRecord>,
    /// Every signing CA castellan issued under whose leaves may still live.
    #[serde(default)]
    pub generations: BTreeMap<String, Generation>,
    /// The newest CRL of each generation, by the same key.
    #[serde(default)]
    pub crls: BTreeMap<String, SignedCrl>,
    /// Other CAs' roots (`trust.external`), kept after the section is gone.
    #[serde(default)]
    pub external: BTreeMap<String, ExternalRecord>,
    /// Revoked leaves, by serial number (lowercase hex, no leading zeros).
    #[serde(default)]
    pub revoked: BTreeMap<String, Revoked>,
    /// Identities refused new certificates, by SPIFFE ID.
    #[serde(default)]
    pub denied: BTreeMap<String, Denied>,
}

/// Why a certificate was revoked: RFC 5280's reason codes an operator uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[derive(clap::ValueEnum)]
#[value(rename_all = "camelCase")]
pub enum Reason {
    Unspecified,
    KeyCompromise,
    AffiliationChanged,
    Superseded,
    CessationOfOperation,
}

/// One revoked leaf.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Revoked {
    pub reason: Reason,
    /// When it was revoked (seconds since the Unix epoch).
    pub at: u64,
    /// After this the leaf has expired and leaves the CRL.
    pub until: u64,
    /// The identity it was issued to, when castellan knows it.
    pub identity: Option<String>,
}

/// An identity refused new certificates since `at`, unless lifted later.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Denied {
    pub reason: Reason,
    pub at: u64,
    /// Lifted at this time; a denial after it counts again.
    pub lifted: Option<u64>,
}

impl Denied {
    pub fn active(&self) -> bool {
        self.lifted.is_none_or(|l| l < self.at)
    }
}

impl TrustState {
    /// Notes that `roots` (fingerprint, subject) are the bundle served now
    /// and that signing ends at `active`; a root of the record missing from
    /// the bundle is noted as withdrawn. Returns whether anything changed.
    pub fn record(
        &mut self,
        roots: &[(String, String)],
        active: &[String],
        now: u64,
        granularity: u64,
    ) -> bool {
        let before = self.clone();
        for (fingerprint, r) in &mut self.roots {
            if !roots.iter().any(|(f, _)| f == fingerprint) {
                r.absent(now, granularity);
            }
        }
        for (fingerprint, subject) in roots {
            self.roots
                .entry(fingerprint.clone())
                .or_default()
                .served(subject, now);
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

    /// Notes that castellan signs under the CA `entry` describes now (its
    /// `first_issued`, `last_issued` and `crl` are ignored), at most once per
    /// `granularity`. Returns whether anything changed.
    pub fn record_generation(
        &mut self,
        fingerprint: &str,
        entry: &Generation,
        now: u64,
        granularity: u64,
    ) -> bool {
        match self.generations.get_mut(fingerprint) {
            Some(g) => {
                let due = now >= g.last_issued.saturating_add(granularity);
                let longer = entry.leaf_life > g.leaf_life;
                if due {
                    g.last_issued = now;
                }
                if longer {
                    g.leaf_life = entry.leaf_life;
                }
                due || longer
            }
            None => {
                let mut g = entry.clone();
                g.first_issued = now;
                g.last_issued = now;
                self.generations.insert(fingerprint.to_owned(), g);
                true
            }
        }
    }

    /// Keeps `crl` as the generation's newest CRL if it is newer than the
    /// one kept. Returns whether it was.
    pub fn record_crl(&mut self, fingerprint: &str, crl: &SignedCrl) -> bool {
        let newer = self
            .crls
            .get(fingerprint)
            .is_none_or(|kept| crl.newer_than(kept));
        if newer {
            self.crls.insert(fingerprint.to_owned(), crl.clone());
        }
        newer
    }

    /// Notes another CA's root as configured now.
    pub fn record_external(&mut self, fingerprint: &str, entry: &ExternalRecord) -> bool {
        match self.external.get_mut(fingerprint) {
            Some(e)
                if e.signs_until == entry.signs_until
                    && e.leaf_life == entry.leaf_life
                    && e.subject == entry.subject =>
            {
                false
            }
            Some(e) => {
                e.clone_from(entry);
                true
            }
            None => {
                self.external.insert(fingerprint.to_owned(), entry.clone());
                true
            }
        }
    }

    /// Both records in one, whatever the order (see each part's merge).
    pub fn merge(&mut self, other: &Self) {
        self.created = match (self.created, other.created) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        for (fingerprint, theirs) in &other.roots {
            self.roots
                .entry(fingerprint.clone())
                .or_default()
                .merge(theirs);
        }
        for (fingerprint, theirs) in &other.generations {
            self.generations
                .entry(fingerprint.clone())
                .and_modify(|mine| mine.merge(theirs))
                .or_insert_with(|| theirs.clone());
        }
        for (fingerprint, theirs) in &other.crls {
            self.record_crl(fingerprint, theirs);
        }
        for (fingerprint, theirs) in &other.external {
            self.external
                .entry(fingerprint.clone())
                .and_modify(|mine| mine.merge(theirs))
                .or_insert_with(|| theirs.clone());
        }
        for (serial, theirs) in &other.revoked {
            self.revoked
                .entry(serial.clone())
                .and_modify(|mine| {
                    // The first revocation stands; what was learnt later
                    // (the identity) is kept.
                    if theirs.at < mine.at {
                        mine.at = theirs.at;
                        mine.reason = theirs.reason;
                    }
                    mine.until = mine.until.max(theirs.until);
                    if mine.identity.is_none() {
                        mine.identity.clone_from(&theirs.identity);
                    }
                })
                .or_insert_with(|| theirs.clone());
        }
        for (identity, theirs) in &other.denied {
            self.denied
                .entry(identity.clone())
                .and_modify(|mine| {
                    if theirs.at > mine.at {
                        mine.at = theirs.at;
                        mine.reason = theirs.reason;
                    }
                    mine.lifted = mine.lifted.max(theirs.lifted);
                })
                .or_insert_with(|| theirs.clone());
        }
    }

    /// Forgets what no leaf alive at `now` depends on any more:
    /// revocations of expired leaves, generations whose last leaf has
    /// expired, other CAs' roots whose last leaf has. Roots are never
    /// forgotten. Returns whether anything was.
    pub fn prune(&mut self, now: u64) -> bool {
        let before = (
            self.revoked.len(),
            self.generations.len(),
            self.external.len(),
        );
        self.revoked.retain(|_, r| r.until >= now);
        self.generations.retain(|_, g| g.keep_until() >= now);
        self.external
            .retain(|_, e| e.keep_until().is_none_or(|t| t >= now));
        before
            != (
                self.revoked.len(),
                self.generations.len(),
                self.external.len(),
            )
    }

    /// Whether new certificates for `identity` are refused.
    pub fn is_denied(&self, identity: &str) -> bool {
        self.denied.get(identity).is_some_and(Denied::active)
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
    crate::profile::hex(d.as_ref())
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
    fn revocations_merge_as_a_union_and_a_lift_is_undone_by_a_later_denial() {
        let revoked = |at, identity: Option<&str>| Revoked {
            reason: Reason::KeyCompromise,
            at,
            until: at + 100,
            identity: identity.map(str::to_owned),
        };
        let mut one = TrustState::default();
        one.revoked.insert("0a".into(), revoked(10, None));
        one.denied.insert(
            "spiffe://td/ns/a/sa/b".into(),
            Denied {
                reason: Reason::KeyCompromise,
                at: 10,
                lifted: None,
            },
        );
        let mut two = TrustState::default();
        two.revoked
            .insert("0a".into(), revoked(20, Some("spiffe://td/ns/a/sa/b")));
        two.revoked.insert("0b".into(), revoked(30, None));
        two.denied.insert(
            "spiffe://td/ns/a/sa/b".into(),
            Denied {
                reason: Reason::KeyCompromise,
                at: 10,
                lifted: Some(15),
            },
        );
        let mut x = one.clone();
        x.merge(&two);
        let mut y = two.clone();
        y.merge(&one);
        assert_eq!(x, y);
        assert_eq!(x.revoked["0a"].at, 10);
        assert_eq!(
            x.revoked["0a"].identity.as_deref(),
            Some("spiffe://td/ns/a/sa/b")
        );
        assert!(x.revoked.contains_key("0b"));
        assert!(!x.is_denied("spiffe://td/ns/a/sa/b"), "lifted");
        let mut again = TrustState::default();
        again.denied.insert(
            "spiffe://td/ns/a/sa/b".into(),
            Denied {
                reason: Reason::Superseded,
                at: 40,
                lifted: None,
            },
        );
        x.merge(&again);
        assert!(
            x.is_denied("spiffe://td/ns/a/sa/b"),
            "denied again after the lift"
        );
        assert!(x.prune(125));
        assert_eq!(x.revoked.keys().collect::<Vec<_>>(), ["0b"]);
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
