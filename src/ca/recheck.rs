//! What an issuing back end (Vault PKI) returned, checked as strictly as
//! castellan's own certificates: a role can be edited behind castellan's
//! back, so nothing it issues is handed out unchecked.

use const_oid::db::rfc5280;
use der::{Decode, Encode};
use rustls_pki_types::CertificateDer;
use x509_cert::{
    Certificate,
    ext::pkix::{
        BasicConstraints, ExtendedKeyUsage, KeyUsage, KeyUsages, SubjectAltName, name::GeneralName,
    },
};

use super::{Error, SigningCa};
use crate::verify;

/// Why an issued leaf was refused; each names the role setting that causes it.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error(
        "it names {found}, not exactly `{expected}` (check the role's allowed_uri_sans and \
         use_csr_sans=false)"
    )]
    Names { found: String, expected: String },
    #[error(
        "basicConstraints is {0}; workload certificates carry a critical CA:false (the role's \
         basic_constraints_valid_for_non_ca=true)"
    )]
    BasicConstraints(&'static str),
    #[error(
        "keyUsage is {found}; workload certificates carry exactly digitalSignature{rsa} (set the \
         role's key_usage to [\"DigitalSignature\"])"
    )]
    KeyUsage { found: String, rsa: &'static str },
    #[error(
        "extendedKeyUsage is {0}; workload certificates carry exactly serverAuth and clientAuth \
         (the role's server_flag and client_flag, and no ext_key_usage)"
    )]
    ExtendedKeyUsage(String),
    #[error("its public key is not the CSR's")]
    PublicKey,
    #[error("it does not verify to the configured roots through the validated issuer: {0:?}")]
    Path(webpki::Error),
    #[error("it is not a valid certificate: {0}")]
    Parse(der::Error),
}

/// What an issued leaf turned out to be, when it is not castellan's.
#[derive(Debug)]
pub enum Verdict {
    /// The certified key did not sign it: the issuer behind the back end changed.
    NotOurs,
    /// Outside the profile, or not valid along the path.
    Refused(Refusal),
}

/// Checks a leaf an issuing back end returned for `identity` and the CSR's
/// key `spki`: the profile first, then one webpki path validation to
/// `roots` through `chain` (which also checks the signature under the
/// signing certificate, `chain[0]`). Public so the benchmark measures this
/// very code.
///
/// # Errors
/// The [`Verdict`].
pub fn check_issued_leaf(
    der: &CertificateDer<'_>,
    identity: &str,
    spki: &[u8],
    chain: &[CertificateDer<'static>],
    roots: &[CertificateDer<'static>],
    at: std::time::SystemTime,
) -> Result<(), Verdict> {
    let cert = Certificate::from_der(der).map_err(|e| Verdict::Refused(Refusal::Parse(e)))?;
    profile(&cert, identity, spki).map_err(Verdict::Refused)?;
    // The profile already requires serverAuth and clientAuth, so one usage
    // validates the path for both.
    match verify::chain(der, chain, roots, verify::Usage::Client, at) {
        Ok(()) => Ok(()),
        Err(
            webpki::Error::InvalidSignatureForPublicKey
            | webpki::Error::UnknownIssuer
            | webpki::Error::UnsupportedSignatureAlgorithmForPublicKeyContext(_),
        ) => Err(Verdict::NotOurs),
        Err(e) => Err(Verdict::Refused(Refusal::Path(e))),
    }
}

// === impl SigningCa ===

impl SigningCa {
    /// The SPIFFE workload profile, enforced on a leaf the back end issued.
    pub(super) fn recheck(
        &self,
        der: &CertificateDer<'_>,
        identity: &str,
        spki: &[u8],
    ) -> Result<(), Error> {
        match check_issued_leaf(
            der,
            identity,
            spki,
            self.chain(),
            self.roots(),
            self.clock.now(),
        ) {
            Ok(()) => Ok(()),
            Err(Verdict::NotOurs) => {
                self.proof
                    .mismatch(&self.cert_source, "a leaf the back end issued");
                Err(Error::KeyMismatch {
                    cert_source: self.cert_source.clone(),
                    what: "a leaf the back end issued",
                })
            }
            Err(Verdict::Refused(r)) => {
                self.proof.counters().refused_leaves.inc();
                Err(Error::Refused(r))
            }
        }
    }
}

// Long: every field of castellan's profile checked on a back end's leaf, one refusal each.
fn profile(cert: &Certificate, identity: &str, spki: &[u8]) -> Result<(), Refusal> {
    let tbs = cert.tbs_certificate();
    let names = tbs
        .get_extension::<SubjectAltName>()
        .map_err(Refusal::Parse)?
        .map(|(_, s)| s.0)
        .unwrap_or_default();
    match names.as_slice() {
        [GeneralName::UniformResourceIdentifier(u)] if u.as_str() == identity => {}
        other => {
            return Err(Refusal::Names {
                found: describe_names(other),
                expected: identity.to_owned(),
            });
        }
    }
    match tbs
        .get_extension::<BasicConstraints>()
        .map_err(Refusal::Parse)?
    {
        None => return Err(Refusal::BasicConstraints("missing")),
        Some((false, _)) => return Err(Refusal::BasicConstraints("not critical")),
        Some((true, bc)) if bc.ca => return Err(Refusal::BasicConstraints("CA:true")),
        Some((true, _)) => {}
    }
    let key = tbs.subject_public_key_info();
    let rsa = key.algorithm.oid == const_oid::db::rfc5912::RSA_ENCRYPTION;
    let usage = tbs
        .get_extension::<KeyUsage>()
        .map_err(Refusal::Parse)?
        .map(|(_, ku)| ku.0);
    let allowed = if rsa {
        KeyUsages::DigitalSignature | KeyUsages::KeyEncipherment
    } else {
        KeyUsages::DigitalSignature.into()
    };
    match usage {
        Some(ku) if ku.contains(KeyUsages::DigitalSignature) && (ku & !allowed).is_empty() => {}
        found => {
            return Err(Refusal::KeyUsage {
                found: found.map_or_else(|| "missing".to_owned(), usage_names),
                rsa: if rsa { " (+ keyEncipherment)" } else { "" },
            });
        }
    }
    let eku = tbs
        .get_extension::<ExtendedKeyUsage>()
        .map_err(Refusal::Parse)?
        .map(|(_, e)| e.0)
        .unwrap_or_default();
    let exact = eku.len() == 2
        && eku.contains(&rfc5280::ID_KP_SERVER_AUTH)
        && eku.contains(&rfc5280::ID_KP_CLIENT_AUTH);
    if !exact {
        let names: Vec<String> = eku.iter().map(|oid| eku_name(*oid)).collect();
        return Err(Refusal::ExtendedKeyUsage(if names.is_empty() {
            "missing".into()
        } else {
            names.join(", ")
        }));
    }
    if key.to_der().map_err(Refusal::Parse)? != spki {
        return Err(Refusal::PublicKey);
    }
    Ok(())
}

fn usage_names(ku: der::flagset::FlagSet<KeyUsages>) -> String {
    let names: Vec<&str> = [
        (KeyUsages::DigitalSignature, "digitalSignature"),
        (KeyUsages::NonRepudiation, "nonRepudiation"),
        (KeyUsages::KeyEncipherment, "keyEncipherment"),
        (KeyUsages::DataEncipherment, "dataEncipherment"),
        (KeyUsages::KeyAgreement, "keyAgreement"),
        (KeyUsages::KeyCertSign, "keyCertSign"),
        (KeyUsages::CRLSign, "cRLSign"),
        (KeyUsages::EncipherOnly, "encipherOnly"),
        (KeyUsages::DecipherOnly, "decipherOnly"),
    ]
    .into_iter()
    .filter(|(flag, _)| ku.contains(*flag))
    .map(|(_, name)| name)
    .collect();
    if names.is_empty() {
        "empty".into()
    } else {
        names.join(", ")
    }
}

fn eku_name(oid: const_oid::ObjectIdentifier) -> String {
    match oid {
        rfc5280::ID_KP_SERVER_AUTH => "serverAuth".into(),
        rfc5280::ID_KP_CLIENT_AUTH => "clientAuth".into(),
        rfc5280::ID_KP_CODE_SIGNING => "codeSigning".into(),
        rfc5280::ID_KP_EMAIL_PROTECTION => "emailProtection".into(),
        other => other.to_string(),
    }
}

fn describe_names(names: &[GeneralName]) -> String {
    if names.is_empty() {
        return "no subjectAltName".into();
    }
    let each: Vec<String> = names
        .iter()
        .map(|n| match n {
            GeneralName::UniformResourceIdentifier(u) => format!("URI `{}`", u.as_str()),
            GeneralName::DnsName(d) => format!("DNS `{}`", d.as_str()),
            GeneralName::Rfc822Name(e) => format!("email `{}`", e.as_str()),
            GeneralName::IpAddress(_) => "an IP address".into(),
            GeneralName::OtherName(_)
            | GeneralName::DirectoryName(_)
            | GeneralName::EdiPartyName(_)
            | GeneralName::RegisteredId(_) => "another kind of name".into(),
        })
        .collect();
    each.join(", ")
}
