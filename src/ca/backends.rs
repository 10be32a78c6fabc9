//! The one place that knows which back ends exist: a `[signer]` section
//! becomes that back end's [`Source`]. Adding a back end is a crate, a
//! variant of `config::Signer` and a line here.

use std::sync::Arc;

use castellan_signer::Source;

use crate::config;

/// The configured back end.
pub fn source(signer: &config::Signer) -> Arc<dyn Source> {
    match signer {
        config::Signer::File(c) => Arc::new(castellan_file::FileSource::new(c.clone())),
        config::Signer::Pkcs11(c) => Arc::new(castellan_pkcs11::Pkcs11Source::new(c.clone())),
        config::Signer::Vault(c) => Arc::new(castellan_vault::VaultSource::new(c.clone())),
    }
}
