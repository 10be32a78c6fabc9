//! The one place that knows which back ends exist: a `[signer]` section
//! becomes that back end's [`Source`]. Adding a back end is a crate, a
//! variant of `config::Signer` and a line here.

use std::sync::Arc;

use castellan_signer::Source;
use spiffe::TrustDomain;

use crate::config;

/// The configured back end; `trust_domain` names what a back end that
/// mints its own intermediates certifies them for.
pub fn source(signer: &config::Signer, trust_domain: &TrustDomain) -> Arc<dyn Source> {
    match signer {
        config::Signer::File(c) => Arc::new(castellan_file::FileSource::new(c.clone())),
        config::Signer::Pkcs11(c) => Arc::new(castellan_pkcs11::Pkcs11Source::new(c.clone())),
        config::Signer::Vault(c) => Arc::new(castellan_vault::VaultSource::new(
            c.as_ref().clone(),
            trust_domain.as_str(),
        )),
    }
}
