//! What `serve` and `castellan check` both judge before serving, from the
//! same code, so `serve` refuses exactly what `check` fails: the crypto
//! module and the listeners (the rules the signing material is held to:
//! [`crate::authority::rules`]).

use std::io;

use super::{Error, bind, tls};
use crate::config::Config;

/// The cryptography castellan runs on, set up and, in the FIPS build,
/// required to be FIPS: the module in FIPS mode, and the TLS providers of
/// the listener and of every client (the process default, which the Vault,
/// Kubernetes and JWKS clients use). `serve` and `castellan check` both
/// start here.
///
/// # Errors
/// [`crate::fips::Error`] naming what is not FIPS.
pub fn crypto_ready() -> Result<crate::fips::Module, crate::fips::Error> {
    tls::install_default();
    crate::fips::require(&[
        ("castellan's TLS provider", tls::provider().fips()),
        (
            "the TLS clients' provider (Vault, Kubernetes, JWKS)",
            rustls::crypto::CryptoProvider::get_default().is_some_and(|p| p.fips()),
        ),
    ])?;
    Ok(crate::fips::module())
}

/// Binds both listeners and lets them go, so `castellan check` tells what
/// `serve` would find. An address in use is reported, not refused: it is
/// what a castellan already serving there looks like. Returns those notes.
///
/// # Errors
/// Which address cannot be bound, and why (not local, privileged…).
pub async fn check_listeners(config: &Config) -> Result<Vec<String>, Error> {
    let mut notes = Vec::new();
    let mut addrs = vec![(config.server.listen, "server.listen")];
    if let Some(addr) = config.server.metrics_listen {
        if addr == config.server.listen && addr.port() != 0 {
            return Err(Error::Io {
                what: format!("server.metrics_listen {addr}"),
                source: io::Error::new(
                    io::ErrorKind::AddrInUse,
                    "is also server.listen; give them different ports",
                ),
            });
        }
        addrs.push((addr, "server.metrics_listen"));
    }
    for (addr, key) in addrs {
        match bind(addr, key).await {
            Ok(_) => {}
            Err(Error::Io { source, .. }) if source.kind() == io::ErrorKind::AddrInUse => {
                notes.push(format!(
                    "{key} {addr} is in use (by a castellan serving it?)"
                ));
            }
            Err(e) => return Err(e),
        }
    }
    Ok(notes)
}
