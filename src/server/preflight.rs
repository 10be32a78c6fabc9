//! What `serve` and `castellan check` both judge before serving, from the
//! same code, so `serve` refuses exactly what `check` fails: the crypto
//! module, the rules the signing material is held to, the listeners.

use std::{io, path::Path, time::Duration};

use rustls_pki_types::{CertificateDer, pem::PemObject};

use super::{Error, bind, tls};
use crate::{
    ca::{self, Rules},
    clock::Clock,
    config::Config,
};

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

/// What the signing material is judged against, from the configuration:
/// the one place `serve` and `castellan check` get it from.
///
/// # Errors
/// When `ca.roots_file` cannot be read.
pub fn rules(config: &Config, counters: ca::Counters, clock: Clock) -> Result<Rules, Error> {
    let roots = match &config.ca.roots_file {
        Some(path) => Some(read_roots(path)?),
        None => None,
    };
    Ok(Rules {
        trust_domain: config.trust_domain.clone(),
        default_ttl: Duration::from_secs(config.issuance.default_ttl_secs),
        min_ttl: Duration::from_secs(config.issuance.min_ttl_secs),
        max_ttl: Duration::from_secs(config.issuance.max_ttl_secs),
        roots,
        counters,
        waived: config.practices.waive.clone(),
        trust: None,
        crl: config
            .trust
            .as_ref()
            .and_then(|t| t.crl.as_ref())
            .map(|c| ca::CrlRules {
                upstream_files: c.upstream_files.clone(),
            }),
        clock,
    })
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

/// Reads a PEM bundle of root certificates.
///
/// # Errors
/// When the file is unreadable or holds no certificate.
pub fn read_roots(path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let what = || format!("ca.roots_file {}", path.display());
    let pem = std::fs::read(path).map_err(|source| Error::Io {
        what: what(),
        source,
    })?;
    let roots = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| Error::Pem {
            path: path.to_owned(),
            source,
        })?;
    if roots.is_empty() {
        return Err(Error::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(roots)
}
