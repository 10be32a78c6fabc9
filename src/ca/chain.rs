//! Reading the signing certificate and ordering its chain.

use std::time::SystemTime;

use der::Decode;
use rustls_pki_types::CertificateDer;
use x509_cert::{Certificate, ext::pkix::SubjectKeyIdentifier};

use super::{Error, KeyAlgorithm};
use crate::profile::{self, IssuerFacts};

/// What leaves take from the signing certificate.
pub(super) fn issuer_facts(
    cert: &Certificate,
    algorithm: KeyAlgorithm,
) -> Result<IssuerFacts, Error> {
    let tbs = cert.tbs_certificate();
    let key_id = match tbs.get_extension::<SubjectKeyIdentifier>()? {
        Some((_, ski)) => ski.0.as_bytes().to_vec(),
        None => profile::key_identifier(tbs.subject_public_key_info()),
    };
    Ok(IssuerFacts {
        subject: tbs.subject().clone(),
        key_id,
        not_before: tbs.validity().not_before.to_system_time(),
        not_after: tbs.validity().not_after.to_system_time(),
        signature_algorithm: algorithm.identifier(),
    })
}

/// The intermediates above `cert`, in path order, taken from `pool` by
/// following issuer names. Self-issued certificates and roots are left out
/// (the roots travel as their own element); certificates not on the path are
/// dropped rather than handed to clients.
pub(super) fn path_order(
    cert: &Certificate,
    pool: &[CertificateDer<'static>],
    roots: &[CertificateDer<'static>],
) -> Result<Vec<CertificateDer<'static>>, Error> {
    let parsed = pool
        .iter()
        .filter(|der| !roots.contains(der))
        .map(|der| Certificate::from_der(der).map(|c| (der, c)))
        .collect::<Result<Vec<_>, _>>()?;
    let mut path = Vec::new();
    let mut current = cert.clone();
    while path.len() < parsed.len() {
        let issuer = current.tbs_certificate().issuer();
        let next = parsed.iter().find(|(der, c)| {
            c.tbs_certificate().subject() == issuer && !is_self_issued(c) && !path.contains(*der)
        });
        match next {
            Some((der, c)) => {
                path.push((*der).clone());
                current = c.clone();
            }
            None => break,
        }
    }
    Ok(path)
}

pub(super) fn is_self_issued(cert: &Certificate) -> bool {
    cert.tbs_certificate().subject() == cert.tbs_certificate().issuer()
}

/// When the first root of the bundle expires.
pub(super) fn earliest_expiry(roots: &[CertificateDer<'static>]) -> Result<SystemTime, Error> {
    let mut earliest = None::<SystemTime>;
    for der in roots {
        let cert = Certificate::from_der(der).map_err(|source| Error::Parse {
            what: "a root certificate".into(),
            source,
        })?;
        let t = cert.tbs_certificate().validity().not_after.to_system_time();
        earliest = Some(earliest.map_or(t, |e| e.min(t)));
    }
    earliest.ok_or(Error::NoRoots)
}

/// The certificate of `chain` (signing certificate first) that expires
/// first.
pub(super) fn limit(chain: &[CertificateDer<'static>]) -> Result<super::Limit, Error> {
    let mut limit: Option<super::Limit> = None;
    for der in chain {
        let cert = Certificate::from_der(der)?;
        let tbs = cert.tbs_certificate();
        let not_after = tbs.validity().not_after.to_system_time();
        if limit.as_ref().is_none_or(|l| not_after < l.not_after) {
            limit = Some(super::Limit {
                not_after,
                subject: tbs.subject().to_string(),
            });
        }
    }
    limit.ok_or(Error::NoRoots)
}

/// `limit`, or the root the chain ends at if that expires first.
pub(super) fn limit_with_root(
    limit: &super::Limit,
    root: Option<&CertificateDer<'static>>,
) -> Result<super::Limit, Error> {
    let Some(root) = root else {
        return Ok(limit.clone());
    };
    let cert = Certificate::from_der(root)?;
    let tbs = cert.tbs_certificate();
    let not_after = tbs.validity().not_after.to_system_time();
    Ok(if not_after < limit.not_after {
        super::Limit {
            not_after,
            subject: tbs.subject().to_string(),
        }
    } else {
        limit.clone()
    })
}
