//! Another CA's root (istiod's, during a migration) as the record keeps it:
//! remembered after its `[[trust.external]]` section is gone, so that
//! removing the section and the root together is still refused while that
//! CA's leaves live — judged by that CA's own leaf lifetime.

use serde::{Deserialize, Serialize};

/// Times in seconds since the Unix epoch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExternalRecord {
    pub subject: String,
    /// When that CA stopped (or stops) signing; `None`: it still signed
    /// when last configured.
    pub signs_until: Option<u64>,
    /// The longest a leaf of that CA lives.
    pub leaf_life: u64,
    /// When a replica last read this from its configuration: the newest
    /// configuration wins a merge.
    pub configured: u64,
}

impl ExternalRecord {
    /// Until when its root must stay in the bundle; `None`: for as long as
    /// that CA signs.
    pub fn keep_until(&self) -> Option<u64> {
        self.signs_until
            .map(|t| t.saturating_add(self.leaf_life).saturating_add(1))
    }

    pub(super) fn merge(&mut self, theirs: &Self) {
        let key = |r: &Self| (r.configured, r.signs_until, r.leaf_life);
        if key(theirs) > key(self) {
            self.clone_from(theirs);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_configuration_wins_and_keep_until_follows_its_leaves() {
        let old = ExternalRecord {
            subject: "CN=istiod".into(),
            signs_until: None,
            leaf_life: 86_400,
            configured: 100,
        };
        let new = ExternalRecord {
            signs_until: Some(1_000),
            configured: 200,
            ..old.clone()
        };
        let mut x = old.clone();
        x.merge(&new);
        let mut y = new.clone();
        y.merge(&old);
        assert_eq!(x, y);
        assert_eq!(x.keep_until(), Some(1_000 + 86_400 + 1));
        assert_eq!(old.keep_until(), None);
    }
}
