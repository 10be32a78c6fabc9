//! What the signing material is judged against, read from the
//! configuration in one place for `serve` and `castellan check`.

use std::{path::Path, time::Duration};

use rustls_pki_types::{CertificateDer, pem::PemObject};

use super::Error;
use crate::{
    ca::{self, Rules},
    clock::Clock,
    config::Config,
    metrics::IntegrityCounters,
};

/// What the signing material is judged against, from the configuration:
/// the one place `serve` and `castellan check` get it from.
///
/// # Errors
/// When `ca.roots_file` cannot be read.
pub fn rules(config: &Config, counters: IntegrityCounters, clock: Clock) -> Result<Rules, Error> {
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
