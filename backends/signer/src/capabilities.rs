//! What a configured back end does, known from its configuration before
//! anything is loaded. castellan's checks ask these questions — does
//! castellan build the certificates, is the intermediate minted, who signs
//! the CRL — and never which back end it is.

/// The answers one back end's configuration gives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// How its configuration is named in messages, e.g. `[signer.pki]`.
    name: &'static str,
    /// castellan builds every certificate and the back end signs it.
    builds: bool,
    /// castellan mints its intermediate under the back end's CA, this long.
    minted_ttl_secs: Option<u64>,
}

impl Capabilities {
    /// castellan builds every certificate; the back end signs it (a
    /// [`crate::KeySigner`]).
    pub const fn signs(name: &'static str) -> Self {
        Self {
            name,
            builds: true,
            minted_ttl_secs: None,
        }
    }

    /// The back end issues each workload leaf itself from the CSR (a
    /// [`crate::LeafIssuer`]).
    pub const fn issues_leaves(name: &'static str) -> Self {
        Self {
            name,
            builds: false,
            minted_ttl_secs: None,
        }
    }

    /// castellan makes its own intermediate and has the back end's CA
    /// certify it for `ttl_secs`, again before it ends.
    pub const fn minted(self, ttl_secs: u64) -> Self {
        Self {
            minted_ttl_secs: Some(ttl_secs),
            ..self
        }
    }

    /// How the configuration is named in messages.
    pub const fn name(&self) -> &'static str {
        self.name
    }

    /// Whether castellan builds the certificates: only then can it make
    /// certificates other than workload leaves (its own serving
    /// certificate, istiod's).
    pub const fn builds_certificates(&self) -> bool {
        self.builds
    }

    /// Whether castellan signs the CRL of the leaves it issued; otherwise
    /// the back end keeps its own, and revocations are made there.
    pub const fn signs_own_crl(&self) -> bool {
        self.builds
    }

    /// The minted intermediate's lifetime, for a minting back end.
    pub const fn minted_ttl_secs(&self) -> Option<u64> {
        self.minted_ttl_secs
    }

    /// Whether the intermediate can be judged only against the configured
    /// enterprise roots (`ca.roots_file`): it comes from the back end (an
    /// issuer castellan does not hold, or one minted at run time) with no
    /// root castellan could take its word for.
    pub const fn needs_configured_roots(&self) -> bool {
        !self.builds || self.minted_ttl_secs.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::Capabilities;

    #[test]
    fn what_each_kind_answers() {
        let file = Capabilities::signs("[signer] type = \"file\"");
        assert!(file.builds_certificates() && file.signs_own_crl());
        assert!(!file.needs_configured_roots());
        let pki = Capabilities::issues_leaves("[signer.pki]");
        assert!(!pki.builds_certificates() && !pki.signs_own_crl());
        assert!(pki.needs_configured_roots());
        let mint = Capabilities::signs("[signer.mint]").minted(86_400);
        assert!(mint.builds_certificates() && mint.needs_configured_roots());
        assert_eq!(mint.minted_ttl_secs(), Some(86_400));
        assert_eq!(mint.name(), "[signer.mint]");
    }
}
