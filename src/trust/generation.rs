//! Every signing CA castellan has issued under — a generation — kept in the
//! record until its last leaf has expired: its certificate and chain (so a
//! CRL can be checked and published for each CA of that chain), the root it
//! ends at, and how long its leaves live; the newest CRL it (or, for Vault
//! PKI, Vault) signed is kept beside it. Without this, a rotation forgets the leaves of the
//! previous intermediate: clients that check CRLs for the whole chain
//! (Envoy) reject them, and their revocations are no longer published.

use serde::{Deserialize, Serialize};

/// One signing CA's entry, keyed in the record by its certificate's
/// SHA-256 fingerprint. Times in seconds since the Unix epoch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Generation {
    /// For people reading the record.
    pub subject: String,
    /// The signing certificate, PEM.
    pub certificate: String,
    /// The certificates above it, up to (not including) the root, PEM.
    #[serde(default)]
    pub chain: Vec<String>,
    /// The fingerprint of the root its chain ends at.
    pub root: Option<String>,
    /// The earliest notAfter along its chain, root included: no leaf under
    /// it is valid after this.
    pub not_after: u64,
    /// The longest a leaf castellan signed under it may live, with the
    /// record's lag.
    pub leaf_life: u64,
    pub first_issued: u64,
    pub last_issued: u64,
}

/// A generation's newest CRL as kept in the record: signed by castellan
/// with that generation's key, or Vault's for its own issuer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedCrl {
    pub pem: String,
    pub number: u64,
    pub this_update: u64,
    pub next_update: u64,
}

impl SignedCrl {
    /// Whether it replaces `other`: signed later, or numbered higher.
    pub fn newer_than(&self, other: &Self) -> bool {
        (self.this_update, self.number, &self.pem) > (other.this_update, other.number, &other.pem)
    }
}

impl Generation {
    /// Until when it must be remembered (and its CRL published): its last
    /// leaf's whole life and a second more (the record is in whole seconds,
    /// a leaf is valid through its notAfter second), never past its chain.
    pub fn keep_until(&self) -> u64 {
        self.last_issued
            .saturating_add(self.leaf_life)
            .min(self.not_after)
            .saturating_add(1)
    }

    /// Both entries in one, whatever the order.
    pub(super) fn merge(&mut self, theirs: &Self) {
        self.first_issued = self.first_issued.min(theirs.first_issued);
        self.last_issued = self.last_issued.max(theirs.last_issued);
        self.leaf_life = self.leaf_life.max(theirs.leaf_life);
        self.not_after = self.not_after.min(theirs.not_after);
        if self.chain.is_empty() {
            self.chain.clone_from(&theirs.chain);
        }
        if self.root.is_none() {
            self.root.clone_from(&theirs.root);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generation(last_issued: u64) -> Generation {
        Generation {
            subject: "CN=i".into(),
            certificate: "pem".into(),
            chain: Vec::new(),
            root: Some("r".into()),
            not_after: 10_000,
            leaf_life: 100,
            first_issued: last_issued - 50,
            last_issued,
        }
    }

    #[test]
    fn kept_for_its_last_leafs_life_and_never_past_its_chain() {
        assert_eq!(generation(1_000).keep_until(), 1_101);
        assert_eq!(generation(9_990).keep_until(), 10_001);
    }

    #[test]
    fn merged_in_any_order_to_the_widest_span() {
        let a = generation(1_000);
        let b = generation(2_000);
        let mut x = a.clone();
        x.merge(&b);
        let mut y = b.clone();
        y.merge(&a);
        assert_eq!(x, y);
        assert_eq!((x.first_issued, x.last_issued), (950, 2_000));
    }
}
