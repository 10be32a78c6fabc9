//! CRLs as the clients judge them. Envoy (istio-agent's sidecars) checks a
//! CRL for *every* CA of a chain — the root's covering the intermediate as
//! much as the intermediate's covering the leaf — and fails the handshake
//! when one is missing or expired; ztunnel takes the first CRL whose issuer
//! name matches. So castellan publishes a set, and this module reads CRLs
//! (files, Vault's answers, the record), tells which CA signed one and
//! whether it is current, and which CAs of a chain still lack one.

mod cover;

use std::{path::Path, time::SystemTime};

use der::{Decode, Encode};
use x509_cert::{
    Certificate,
    certificate::Rfc5280,
    crl::CertificateList,
    ext::pkix::{AuthorityKeyIdentifier, CrlNumber},
    name::Name,
};

pub use cover::{Covered, cover};

/// A CRL, parsed once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Crl {
    der: Vec<u8>,
    issuer: Name,
    /// The issuer's key identifier, when the CRL names it.
    key_id: Option<Vec<u8>>,
    this_update: SystemTime,
    next_update: Option<SystemTime>,
    number: Option<Vec<u8>>,
    /// Serials listed, big-endian, as encoded.
    revoked: Vec<Vec<u8>>,
}

/// Why bytes are not a CRL.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what}: not a CRL ({source})")]
    Parse { what: String, source: der::Error },
    #[error("{what}: {source}")]
    Read {
        what: String,
        source: std::io::Error,
    },
    #[error("{what}: no CRL in it (PEM `X509 CRL` blocks, or one DER CRL)")]
    Empty { what: String },
    #[error("{what}: not PEM ({detail})")]
    Pem { what: String, detail: String },
}

impl Crl {
    /// Parses one DER CRL; `what` names it in errors.
    ///
    /// # Errors
    /// [`Error::Parse`].
    pub fn parse(der: &[u8], what: &str) -> Result<Self, Error> {
        let parse = |source| Error::Parse {
            what: what.to_owned(),
            source,
        };
        let list = CertificateList::<Rfc5280>::from_der(der).map_err(parse)?;
        let tbs = &list.tbs_cert_list;
        let mut key_id = None;
        let mut number = None;
        for ext in tbs.crl_extensions.iter().flatten() {
            if ext.extn_id == const_oid::db::rfc5280::ID_CE_AUTHORITY_KEY_IDENTIFIER {
                let aki =
                    AuthorityKeyIdentifier::from_der(ext.extn_value.as_bytes()).map_err(parse)?;
                key_id = aki.key_identifier.map(|k| k.as_bytes().to_vec());
            } else if ext.extn_id == const_oid::db::rfc5280::ID_CE_CRL_NUMBER {
                let n = CrlNumber::from_der(ext.extn_value.as_bytes()).map_err(parse)?;
                number = Some(n.0.as_bytes().to_vec());
            }
        }
        Ok(Self {
            der: der.to_vec(),
            issuer: tbs.issuer.clone(),
            key_id,
            this_update: tbs.this_update.to_system_time(),
            next_update: tbs.next_update.map(|t| t.to_system_time()),
            number,
            revoked: tbs
                .revoked_certificates
                .iter()
                .flatten()
                .map(|r| r.serial_number.as_bytes().to_vec())
                .collect(),
        })
    }

    /// Every CRL in `bytes`: PEM `X509 CRL` blocks (other blocks are
    /// skipped, as ztunnel skips them), or one DER CRL.
    ///
    /// # Errors
    /// When a block does not parse, or there is none.
    pub fn parse_all(bytes: &[u8], what: &str) -> Result<Vec<Self>, Error> {
        let text = std::str::from_utf8(bytes).ok();
        let crls = match text.filter(|t| t.trim_start().starts_with("-----BEGIN")) {
            Some(_) => {
                let mut crls = Vec::new();
                use rustls_pki_types::pem::PemObject;
                for item in rustls_pki_types::CertificateRevocationListDer::pem_slice_iter(bytes) {
                    let item = item.map_err(|e| Error::Pem {
                        what: what.to_owned(),
                        detail: e.to_string(),
                    })?;
                    crls.push(Self::parse(item.as_ref(), what)?);
                }
                crls
            }
            None => vec![Self::parse(bytes, what)?],
        };
        if crls.is_empty() {
            return Err(Error::Empty {
                what: what.to_owned(),
            });
        }
        Ok(crls)
    }

    /// Every CRL in each file.
    ///
    /// # Errors
    /// Naming the file that cannot be read or holds no CRL.
    pub fn read_files(paths: &[impl AsRef<Path>], key: &str) -> Result<Vec<Self>, Error> {
        let mut all = Vec::new();
        for path in paths {
            let what = format!("{key} {}", path.as_ref().display());
            let bytes = std::fs::read(path).map_err(|source| Error::Read {
                what: what.clone(),
                source,
            })?;
            all.extend(Self::parse_all(&bytes, &what)?);
        }
        Ok(all)
    }

    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// PEM, one `X509 CRL` block with a trailing newline.
    pub fn pem(&self) -> String {
        crate::pem::crl(&self.der).unwrap_or_default()
    }

    pub fn issuer(&self) -> &Name {
        &self.issuer
    }

    pub fn this_update(&self) -> SystemTime {
        self.this_update
    }

    pub fn next_update(&self) -> Option<SystemTime> {
        self.next_update
    }

    /// Whether `serial` (big-endian, as encoded) is listed.
    pub fn lists(&self, serial: &[u8]) -> bool {
        self.revoked.iter().any(|s| s == serial)
    }

    /// Whether `ca` issued it: the same name (what ztunnel matches on), the
    /// same key identifier when both say (what Envoy also matches on), and
    /// a signature by `ca`'s key.
    pub fn issued_by(&self, ca: &Certificate) -> bool {
        let tbs = ca.tbs_certificate();
        if self.issuer != *tbs.subject() {
            return false;
        }
        if let (Some(crl_kid), Some(ca_kid)) = (&self.key_id, subject_key_id(ca))
            && *crl_kid != ca_kid
        {
            return false;
        }
        crate::verify::crl_signed_by(&self.der, tbs.subject_public_key_info())
    }

    /// Whether a client would use it at `now`: begun (a few minutes of
    /// clock skew allowed), and not past its nextUpdate (Envoy fails an
    /// expired CRL; one without nextUpdate never expires).
    pub fn current(&self, now: SystemTime) -> bool {
        let begun = self.this_update <= now + SKEW;
        begun && self.next_update.is_none_or(|n| n > now)
    }

    /// Orders CRLs of one issuer: the later thisUpdate, then the larger
    /// CRL number.
    fn newer_than(&self, other: &Self) -> bool {
        (self.this_update, number_key(&self.number))
            > (other.this_update, number_key(&other.number))
    }
}

/// How far in the future a thisUpdate may be (another clock ahead).
const SKEW: std::time::Duration = std::time::Duration::from_secs(300);

/// A CRL number compared as a big-endian unsigned integer.
fn number_key(n: &Option<Vec<u8>>) -> (usize, Vec<u8>) {
    let bytes: Vec<u8> = n
        .as_deref()
        .unwrap_or_default()
        .iter()
        .copied()
        .skip_while(|b| *b == 0)
        .collect();
    (bytes.len(), bytes)
}

/// A certificate's subject key identifier, or the one castellan derives.
fn subject_key_id(cert: &Certificate) -> Option<Vec<u8>> {
    use x509_cert::ext::pkix::SubjectKeyIdentifier;
    match cert
        .tbs_certificate()
        .get_extension::<SubjectKeyIdentifier>()
    {
        Ok(Some((_, ski))) => Some(ski.0.as_bytes().to_vec()),
        _ => None,
    }
}

/// The DER of a certificate's serial number as CRLs list it.
pub fn serial_of(cert: &Certificate) -> Vec<u8> {
    cert.tbs_certificate().serial_number().as_bytes().to_vec()
}

/// Parses a DER certificate (helper for callers holding DER).
///
/// # Errors
/// When it is not one.
pub fn certificate(der: &[u8]) -> Result<Certificate, der::Error> {
    Certificate::from_der(der)
}

/// The DER of a name, for comparing issuers across CRLs.
pub fn name_der(name: &Name) -> Vec<u8> {
    name.to_der().unwrap_or_default()
}
