//! The one place that knows which back ends exist: a `[signer]` section
//! becomes that back end's [`Source`]. Adding a back end is a crate, a
//! variant of `config::Signer` and a line here.

use std::sync::Arc;

use castellan_signer::{KeyMaker, Source};
use spiffe::TrustDomain;

use crate::config;

/// The configured back end.
pub fn source(config: &config::Config) -> Arc<dyn Source> {
    source_for(
        &config.signer,
        &config.trust_domain,
        config.issuance.max_ttl_secs,
    )
}

/// The back end of `signer`; `trust_domain` names what a back end that
/// mints its own intermediates certifies them for, and each of those must
/// live twice `longest_leaf` seconds (the longest workload certificate), so
/// that a leaf issued just before the next rotation is not cut short.
/// castellan's own serving and istiod's certificates may be: it renews
/// them itself.
pub fn source_for(
    signer: &config::Signer,
    trust_domain: &TrustDomain,
    longest_leaf: u64,
) -> Arc<dyn Source> {
    match signer {
        config::Signer::File(c) => Arc::new(castellan_file::FileSource::new(c.clone())),
        config::Signer::Pkcs11(c) => {
            let mut c = c.clone();
            match &mut c.mint {
                // The token's key is the issuing CA's: castellan mints its
                // intermediates (keys in memory) and the token certifies them.
                Some(m) => {
                    m.min_life_secs = Some(longest_leaf.saturating_mul(2));
                    Arc::new(castellan_pkcs11::Pkcs11Source::new(c).minting(
                        Arc::new(castellan_file::InMemoryKeys),
                        trust_domain.as_str(),
                    ))
                }
                None => Arc::new(castellan_pkcs11::Pkcs11Source::new(c)),
            }
        }
        config::Signer::Vault(c) => {
            let mut vault = c.vault.clone();
            if let Some(m) = &mut vault.mint {
                m.min_life_secs = Some(longest_leaf.saturating_mul(2));
            }
            // Minted keys: made by one back end, certified by another.
            let keys: Arc<dyn KeyMaker> = match &c.mint_keys {
                Some(store) => Arc::new(store.clone()),
                None => Arc::new(castellan_file::InMemoryKeys),
            };
            Arc::new(castellan_vault::VaultSource::new(
                vault,
                trust_domain.as_str(),
                keys,
            ))
        }
    }
}
