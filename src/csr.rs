//! Reading a workload's PKCS#10 request: size cap, PEM, DER, proof of
//! possession, key strength, and the names and extensions it asks for.
//!
//! Nothing here knows who is calling; [`crate::policy`] compares the result
//! with the caller. Only the public key is ever copied into a certificate.

use aws_lc_rs::signature::{self, UnparsedPublicKey, VerificationAlgorithm};
use const_oid::{ObjectIdentifier, db::rfc5280, db::rfc5912};
use der::{Decode, Encode, Header, Reader, SliceReader, Tag, asn1::UintRef};
use rustls_pki_types::{CertificateSigningRequestDer, pem::PemObject};
use x509_cert::{
    ext::pkix::{BasicConstraints, SubjectAltName, name::GeneralName},
    request::{CertReq, ExtensionReq},
};

/// PEM text above this size is refused before any parsing.
pub const MAX_CSR_PEM_BYTES: usize = 64 * 1024;

const OID_ORGANIZATION: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.10");
const OID_KEY_USAGE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.15");
const OID_EXT_KEY_USAGE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.37");
const RSA_MIN_BITS: usize = 2048;
const RSA_MAX_BITS: usize = 8192;

/// The public key types castellan issues for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    EcdsaP256,
    EcdsaP384,
    Rsa { bits: usize },
}

/// A CSR whose signature checked out and whose content is acceptable in
/// itself. Whether it may be issued to the caller is [`crate::policy`]'s call.
#[derive(Clone, Debug)]
pub struct VerifiedCsr {
    /// DER SubjectPublicKeyInfo, copied verbatim into the certificate.
    pub(crate) spki_der: Vec<u8>,
    /// The PEM as received, for signers that issue from a CSR (Vault PKI).
    pub(crate) pem: String,
    pub(crate) key: KeyKind,
    /// The one URI SAN the CSR asked for, if it named any.
    pub(crate) uri: Option<String>,
}

// === impl VerifiedCsr ===

impl VerifiedCsr {
    /// DER SubjectPublicKeyInfo of the requester's key.
    pub fn spki_der(&self) -> &[u8] {
        &self.spki_der
    }

    pub fn key(&self) -> KeyKind {
        self.key
    }

    /// The one URI SAN the CSR asked for, if it named any.
    pub fn uri(&self) -> Option<&str> {
        self.uri.as_deref()
    }
}

/// What is wrong with a CSR. Every variant is the caller's fault and safe to
/// tell them.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("CSR is {0} bytes; the limit is {MAX_CSR_PEM_BYTES}")]
    TooLarge(usize),
    #[error("CSR is not a PEM `CERTIFICATE REQUEST`")]
    NotPem,
    #[error("CSR is not valid DER: {0}")]
    Malformed(String),
    #[error("CSR key type is not supported ({0}); use ECDSA P-256/P-384 or RSA 2048-8192")]
    UnsupportedKey(String),
    #[error("CSR RSA key has {0} bits; castellan accepts {RSA_MIN_BITS} to {RSA_MAX_BITS}")]
    RsaKeySize(usize),
    #[error("CSR RSA key has a public exponent other than 65537")]
    RsaExponent,
    #[error("CSR signature algorithm {0} is not supported for this key")]
    SignatureAlgorithm(String),
    #[error("CSR signature does not verify (no proof of possession of the key)")]
    BadSignature,
    #[error(
        "CSR subject must be empty or an empty O= (castellan issues an empty subject); found {0}"
    )]
    Subject(String),
    #[error("CSR asks for {0}; only one spiffe:// URI SAN may be requested")]
    ForbiddenSan(String),
    #[error("CSR asks for {0} URI SANs; at most one may be requested")]
    TooManyUris(usize),
    #[error("CSR asks for a CA certificate (basicConstraints cA=true)")]
    CaRequested,
    #[error("CSR requests extension {0}, which castellan does not issue")]
    UnknownExtension(ObjectIdentifier),
    #[error("CSR carries attribute {0}; only extensionRequest is accepted")]
    UnknownAttribute(ObjectIdentifier),
}

/// Parses and checks a PEM CSR.
///
/// # Errors
/// [`Error`] saying what is wrong, in terms the workload's owner can act on.
pub fn verify(pem: &str) -> Result<VerifiedCsr, Error> {
    if pem.len() > MAX_CSR_PEM_BYTES {
        return Err(Error::TooLarge(pem.len()));
    }
    let der =
        CertificateSigningRequestDer::from_pem_slice(pem.as_bytes()).map_err(|_| Error::NotPem)?;
    let req = CertReq::from_der(der.as_ref()).map_err(|e| Error::Malformed(e.to_string()))?;

    let spki_der = req
        .info
        .public_key
        .to_der()
        .map_err(|e| Error::Malformed(e.to_string()))?;
    let key_bytes = req.info.public_key.subject_public_key.raw_bytes();
    let key = key_kind(&req, key_bytes)?;
    check_signature(&req, signed_part(der.as_ref())?, key, key_bytes)?;
    check_subject(&req)?;
    let uri = requested_uri(&req)?;
    Ok(VerifiedCsr {
        spki_der,
        pem: pem.to_owned(),
        key,
        uri,
    })
}

fn key_kind(req: &CertReq, key_bytes: &[u8]) -> Result<KeyKind, Error> {
    let alg = &req.info.public_key.algorithm;
    match alg.oid {
        rfc5912::ID_EC_PUBLIC_KEY => {
            let curve = alg
                .parameters
                .as_ref()
                .and_then(|p| p.decode_as::<ObjectIdentifier>().ok());
            match curve {
                Some(rfc5912::SECP_256_R_1) => Ok(KeyKind::EcdsaP256),
                Some(rfc5912::SECP_384_R_1) => Ok(KeyKind::EcdsaP384),
                Some(other) => Err(Error::UnsupportedKey(format!("EC curve {other}"))),
                None => Err(Error::UnsupportedKey("EC key without a named curve".into())),
            }
        }
        rfc5912::RSA_ENCRYPTION => rsa_key(key_bytes),
        other => Err(Error::UnsupportedKey(key_type_name(other))),
    }
}

/// Reads an RSAPublicKey (RFC 8017) to judge its strength before any
/// signature work, so a weak key is refused as weak, not as "bad signature".
fn rsa_key(key_bytes: &[u8]) -> Result<KeyKind, Error> {
    #[derive(der::Sequence)]
    struct RsaPublicKey<'a> {
        modulus: UintRef<'a>,
        public_exponent: UintRef<'a>,
    }
    let key = RsaPublicKey::from_der(key_bytes).map_err(|e| Error::Malformed(e.to_string()))?;
    let n = key.modulus.as_bytes();
    let bits = match n.first() {
        Some(first) => n.len() * 8 - first.leading_zeros() as usize,
        None => 0,
    };
    if !(RSA_MIN_BITS..=RSA_MAX_BITS).contains(&bits) {
        return Err(Error::RsaKeySize(bits));
    }
    if key.public_exponent.as_bytes() != [0x01, 0x00, 0x01] {
        return Err(Error::RsaExponent);
    }
    Ok(KeyKind::Rsa { bits })
}

/// The CertificationRequestInfo as received: the bytes the signature covers
/// (the same as re-encoding it, since the request parsed as DER, without
/// the copy).
fn signed_part(der: &[u8]) -> Result<&[u8], Error> {
    let malformed = |e: der::Error| Error::Malformed(e.to_string());
    let mut reader = SliceReader::new(der).map_err(malformed)?;
    let outer = Header::decode(&mut reader).map_err(malformed)?;
    outer.tag().assert_eq(Tag::Sequence).map_err(malformed)?;
    reader.tlv_bytes().map_err(malformed)
}

fn check_signature(req: &CertReq, tbs: &[u8], key: KeyKind, key_bytes: &[u8]) -> Result<(), Error> {
    let sig_oid = req.algorithm.oid;
    let alg: &'static dyn VerificationAlgorithm = match (key, sig_oid) {
        (KeyKind::EcdsaP256, rfc5912::ECDSA_WITH_SHA_256) => &signature::ECDSA_P256_SHA256_ASN1,
        (KeyKind::EcdsaP256, rfc5912::ECDSA_WITH_SHA_384) => &signature::ECDSA_P256_SHA384_ASN1,
        (KeyKind::EcdsaP384, rfc5912::ECDSA_WITH_SHA_256) => &signature::ECDSA_P384_SHA256_ASN1,
        (KeyKind::EcdsaP384, rfc5912::ECDSA_WITH_SHA_384) => &signature::ECDSA_P384_SHA384_ASN1,
        (KeyKind::Rsa { .. }, rfc5912::SHA_256_WITH_RSA_ENCRYPTION) => {
            &signature::RSA_PKCS1_2048_8192_SHA256
        }
        (KeyKind::Rsa { .. }, rfc5912::SHA_384_WITH_RSA_ENCRYPTION) => {
            &signature::RSA_PKCS1_2048_8192_SHA384
        }
        (KeyKind::Rsa { .. }, rfc5912::SHA_512_WITH_RSA_ENCRYPTION) => {
            &signature::RSA_PKCS1_2048_8192_SHA512
        }
        _ => return Err(Error::SignatureAlgorithm(signature_name(sig_oid))),
    };
    let sig = req.signature.as_bytes().ok_or(Error::BadSignature)?;
    UnparsedPublicKey::new(alg, key_bytes)
        .verify(tbs, sig)
        .map_err(|_| Error::BadSignature)
}

/// istio-agent sends `O=` (one RDN, empty organization), ztunnel and rcgen
/// clients send nothing; anything else suggests a client expecting its
/// subject to be honoured, which castellan never does.
fn check_subject(req: &CertReq) -> Result<(), Error> {
    for atv in req.info.subject.iter() {
        if atv.oid != OID_ORGANIZATION || !atv.value.value().is_empty() {
            return Err(Error::Subject(req.info.subject.to_string()));
        }
    }
    Ok(())
}

fn requested_uri(req: &CertReq) -> Result<Option<String>, Error> {
    let mut uris = Vec::new();
    for attr in req.info.attributes.iter() {
        if attr.oid != rfc5912::ID_EXTENSION_REQ {
            return Err(Error::UnknownAttribute(attr.oid));
        }
        for value in attr.values.iter() {
            let extensions = value
                .decode_as::<ExtensionReq>()
                .map_err(|e: der::Error| Error::Malformed(e.to_string()))?;
            for ext in extensions.0 {
                let bytes = ext.extn_value.as_bytes();
                match ext.extn_id {
                    rfc5280::ID_CE_SUBJECT_ALT_NAME => {
                        let san = SubjectAltName::from_der(bytes)
                            .map_err(|e| Error::Malformed(e.to_string()))?;
                        for name in san.0 {
                            uris.push(san_uri(name)?);
                        }
                    }
                    rfc5280::ID_CE_BASIC_CONSTRAINTS => {
                        let bc = BasicConstraints::from_der(bytes)
                            .map_err(|e| Error::Malformed(e.to_string()))?;
                        if bc.ca {
                            return Err(Error::CaRequested);
                        }
                    }
                    // Requested usages are harmless: the profile sets its own.
                    OID_KEY_USAGE | OID_EXT_KEY_USAGE => {}
                    other => return Err(Error::UnknownExtension(other)),
                }
            }
        }
    }
    match uris.len() {
        0 => Ok(None),
        1 => Ok(uris.pop()),
        n => Err(Error::TooManyUris(n)),
    }
}

fn san_uri(name: GeneralName) -> Result<String, Error> {
    match name {
        GeneralName::UniformResourceIdentifier(uri) => Ok(uri.to_string()),
        GeneralName::DnsName(dns) => Err(Error::ForbiddenSan(format!("DNS name `{dns}`"))),
        GeneralName::Rfc822Name(email) => Err(Error::ForbiddenSan(format!("email `{email}`"))),
        GeneralName::IpAddress(_) => Err(Error::ForbiddenSan("an IP address".into())),
        _ => Err(Error::ForbiddenSan("a name of another kind".into())),
    }
}

fn key_type_name(oid: ObjectIdentifier) -> String {
    match oid.as_bytes() {
        [0x2b, 0x65, 0x70] => "Ed25519".into(),
        [0x2b, 0x65, 0x71] => "Ed448".into(),
        _ => format!("algorithm {oid}"),
    }
}

fn signature_name(oid: ObjectIdentifier) -> String {
    match oid {
        rfc5912::SHA_1_WITH_RSA_ENCRYPTION | rfc5912::ECDSA_WITH_SHA_224 => {
            format!("{oid} (weak hash)")
        }
        rfc5912::ID_RSASSA_PSS => "RSASSA-PSS".into(),
        _ => oid.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ztunnel_csr() -> Vec<u8> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut p = rcgen::CertificateParams::default();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.subject_alt_names = vec![rcgen::SanType::URI(
            "spiffe://cluster.local/ns/a/sa/b".try_into().unwrap(),
        )];
        p.serialize_request(&key).unwrap().der().to_vec()
    }

    fn pem(der: &[u8]) -> String {
        der::pem::encode_string("CERTIFICATE REQUEST", der::pem::LineEnding::LF, der).unwrap()
    }

    #[test]
    fn accepts_a_well_formed_request() {
        let v = verify(&pem(&ztunnel_csr())).unwrap();
        assert_eq!(v.key, KeyKind::EcdsaP256);
        assert_eq!(v.uri.as_deref(), Some("spiffe://cluster.local/ns/a/sa/b"));
    }

    /// Hostile input never panics: tens of thousands of corrupted requests
    /// (flipped bits, cut short, bytes inserted, lengths rewritten) each get
    /// a verdict, and none but the original passes.
    #[test]
    fn corrupted_requests_are_refused_without_panicking() {
        let original = ztunnel_csr();
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut accepted = 0;
        for _ in 0..20_000 {
            let mut der = original.clone();
            let at = (next() as usize) % der.len();
            match next() % 4 {
                0 => der[at] ^= 1 << (next() % 8),
                1 => der.truncate(at),
                2 => der.insert(at, next() as u8),
                _ => der[at] = [0x00, 0x7f, 0x80, 0x81, 0x82, 0xff][(next() % 6) as usize],
            }
            if der != original && verify(&pem(&der)).is_ok() {
                accepted += 1;
            }
        }
        // A changed byte in the unsigned outer structure can still parse
        // and verify (e.g. the signature's unused-bits octet); never more
        // than a handful.
        assert!(accepted < 20, "{accepted} corrupted requests accepted");
        for garbage in [
            "",
            "-----BEGIN CERTIFICATE REQUEST-----\n-----END CERTIFICATE REQUEST-----\n",
            "\u{0}\u{ffff}",
        ] {
            assert!(verify(garbage).is_err());
        }
    }
}
