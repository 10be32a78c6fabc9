//! An intermediate castellan certifies itself, built from the issuing CA's
//! certificate: for certifiers that only sign (a CA key in a PKCS#11 token
//! or a cloud KMS), castellan writes the TBSCertificate, the CA's key signs
//! it, and [`super::MintProfile::judge`] judges the result like any
//! certifier's.

use std::time::SystemTime;

use aws_lc_rs::digest;
use const_oid::db::rfc5280;
use der::{
    Decode, Encode,
    asn1::{AnyRef, BitStringRef, Ia5String, OctetString},
};
use spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};
use x509_cert::{
    Certificate,
    ext::{
        Extension, Extensions,
        pkix::{
            AuthorityKeyIdentifier, BasicConstraints, KeyUsage, KeyUsages, SubjectAltName,
            SubjectKeyIdentifier, name::GeneralName,
        },
    },
    name::Name,
    serial_number::SerialNumber,
    time::{Time, Validity},
};

use super::{MintProfile, backdate};
use crate::KeyAlgorithm;

/// What an intermediate is built from besides the profile.
#[derive(Debug)]
pub struct Request<'a> {
    /// The issuing CA's certificate (DER): its subject is the issuer, its
    /// key identifier the authority key identifier.
    pub issuer_cert: &'a [u8],
    /// The issuing CA key's algorithm, which fixes `signature`.
    pub issuer_algorithm: KeyAlgorithm,
    /// The new key's SubjectPublicKeyInfo (DER).
    pub spki: &'a [u8],
    /// The intermediate's common name ([`super::generation_name`]).
    pub common_name: &'a str,
    /// A positive serial number, big-endian, at most 20 bytes.
    pub serial: &'a [u8],
    pub now: SystemTime,
}

#[derive(der::Sequence)]
struct Tbs {
    #[asn1(context_specific = "0", tag_mode = "EXPLICIT")]
    version: u8,
    serial_number: SerialNumber,
    signature: AlgorithmIdentifierOwned,
    issuer: Name,
    validity: Validity,
    subject: Name,
    subject_public_key_info: SubjectPublicKeyInfoOwned,
    #[asn1(context_specific = "3", tag_mode = "EXPLICIT")]
    extensions: Extensions,
}

impl MintProfile {
    /// The TBSCertificate of the intermediate `request` asks for: a CA
    /// with path length 0 for certificate and CRL signing, the trust
    /// domain as its one URI SAN, living the profile's lifetime from a
    /// little before now.
    ///
    /// # Errors
    /// When the issuing CA's certificate or the key does not parse, or a
    /// field cannot be encoded.
    pub fn tbs(&self, request: &Request<'_>) -> Result<Vec<u8>, String> {
        let der = |e: der::Error| format!("building the intermediate: {e}");
        let issuer = Certificate::from_der(request.issuer_cert)
            .map_err(|e| format!("the issuing CA's certificate: {e}"))?;
        let spki = SubjectPublicKeyInfoOwned::from_der(request.spki).map_err(der)?;
        let not_before = request.now - backdate(self.ttl);
        let not_after = not_before + self.ttl + backdate(self.ttl);
        let subject: Name = format!("CN={}", escape(request.common_name))
            .parse()
            .map_err(der)?;
        let tbs = Tbs {
            version: 2, // v3
            serial_number: SerialNumber::new(request.serial).map_err(der)?,
            signature: request.issuer_algorithm.identifier(),
            issuer: issuer.tbs_certificate().subject().clone(),
            validity: Validity::new(
                Time::try_from(not_before).map_err(der)?,
                Time::try_from(not_after).map_err(der)?,
            ),
            subject,
            extensions: self.extensions(&issuer, &spki).map_err(der)?,
            subject_public_key_info: spki,
        };
        tbs.to_der().map_err(der)
    }

    fn extensions(
        &self,
        issuer: &Certificate,
        spki: &SubjectPublicKeyInfoOwned,
    ) -> Result<Extensions, der::Error> {
        let authority = AuthorityKeyIdentifier {
            key_identifier: Some(OctetString::new(issuer_key_id(issuer))?),
            authority_cert_issuer: None,
            authority_cert_serial_number: None,
        };
        Ok(vec![
            extension(
                rfc5280::ID_CE_BASIC_CONSTRAINTS,
                true,
                &BasicConstraints {
                    ca: true,
                    path_len_constraint: Some(0),
                },
            )?,
            extension(
                rfc5280::ID_CE_KEY_USAGE,
                true,
                &KeyUsage(KeyUsages::KeyCertSign | KeyUsages::CRLSign),
            )?,
            extension(
                rfc5280::ID_CE_SUBJECT_ALT_NAME,
                false,
                &SubjectAltName(vec![GeneralName::UniformResourceIdentifier(
                    Ia5String::new(self.spiffe_id())?,
                )]),
            )?,
            extension(
                rfc5280::ID_CE_SUBJECT_KEY_IDENTIFIER,
                false,
                &SubjectKeyIdentifier(OctetString::new(key_identifier(spki))?),
            )?,
            extension(rfc5280::ID_CE_AUTHORITY_KEY_IDENTIFIER, false, &authority)?,
        ])
    }
}

/// Wraps a signed TBSCertificate into the DER certificate.
///
/// # Errors
/// When `tbs` is not DER.
pub fn assemble(tbs: &[u8], algorithm: KeyAlgorithm, signature: &[u8]) -> Result<Vec<u8>, String> {
    #[derive(der::Sequence)]
    struct Cert<'a> {
        tbs_certificate: AnyRef<'a>,
        signature_algorithm: AlgorithmIdentifierOwned,
        signature: BitStringRef<'a>,
    }
    let der = |e: der::Error| format!("assembling the intermediate: {e}");
    Cert {
        tbs_certificate: AnyRef::from_der(tbs).map_err(der)?,
        signature_algorithm: algorithm.identifier(),
        signature: BitStringRef::from_bytes(signature).map_err(der)?,
    }
    .to_der()
    .map_err(der)
}

/// The issuing CA's key identifier: its own subjectKeyIdentifier, else
/// the identifier of its key as castellan computes one.
fn issuer_key_id(issuer: &Certificate) -> Vec<u8> {
    match issuer
        .tbs_certificate()
        .get_extension::<SubjectKeyIdentifier>()
    {
        Ok(Some((_, ski))) => ski.0.as_bytes().to_vec(),
        _ => key_identifier(issuer.tbs_certificate().subject_public_key_info()),
    }
}

/// SHA-256 of the subjectPublicKey bits, truncated to 160 bits (RFC 7093,
/// method 1), as castellan's leaves identify keys.
fn key_identifier(spki: &SubjectPublicKeyInfoOwned) -> Vec<u8> {
    let hash = digest::digest(&digest::SHA256, spki.subject_public_key.raw_bytes());
    hash.as_ref()[..20].to_vec()
}

/// A common name as an RFC 4514 string value.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for (i, c) in value.chars().enumerate() {
        let last = i + 1 == value.chars().count();
        if matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';' | '=')
            || (i == 0 && matches!(c, '#' | ' '))
            || (last && c == ' ')
        {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn extension(
    id: const_oid::ObjectIdentifier,
    critical: bool,
    value: &impl Encode,
) -> Result<Extension, der::Error> {
    Ok(Extension {
        extn_id: id,
        critical,
        extn_value: OctetString::new(value.to_der()?)?,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use aws_lc_rs::{
        encoding::AsDer,
        rand::SystemRandom,
        signature::{self, EcdsaKeyPair, KeyPair},
    };
    use rustls_pki_types::CertificateDer;

    use super::*;

    /// An issuing CA (P-256) living `life` from now, and its key for aws-lc.
    fn issuing_ca(life: Duration) -> (Vec<u8>, EcdsaKeyPair) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "Enterprise Issuing CA");
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(1));
        p.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let now = time::OffsetDateTime::now_utc();
        p.not_before = now - time::Duration::hours(1);
        p.not_after = now + time::Duration::try_from(life).unwrap();
        let cert = p.self_signed(&key).unwrap().der().to_vec();
        let signer = EcdsaKeyPair::from_pkcs8(
            &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            &key.serialize_der(),
        )
        .unwrap();
        (cert, signer)
    }

    fn profile() -> MintProfile {
        MintProfile::new(
            "cluster.local",
            Duration::from_secs(7200),
            Duration::from_secs(7200),
            "cut",
            "tune",
            "past",
        )
    }

    fn mint(ca: &[u8], ca_key: &EcdsaKeyPair, spki: &[u8]) -> Vec<u8> {
        let tbs = profile()
            .tbs(&Request {
                issuer_cert: ca,
                issuer_algorithm: KeyAlgorithm::EcdsaP256Sha256,
                spki,
                common_name: "castellan cluster.local 2026-12-08 00:00:00 UTC a1b2c3",
                serial: &[0x40, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15],
                now: SystemTime::now(),
            })
            .unwrap();
        let sig = ca_key.sign(&SystemRandom::new(), &tbs).unwrap();
        assemble(&tbs, KeyAlgorithm::EcdsaP256Sha256, sig.as_ref()).unwrap()
    }

    #[test]
    fn a_built_intermediate_is_judged_good_and_verifies_under_its_issuer() {
        let (ca, ca_key) = issuing_ca(Duration::from_secs(30 * 86_400));
        let key = EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_ASN1_SIGNING).unwrap();
        let spki = key.public_key().as_der().unwrap().as_ref().to_vec();
        let cert = mint(&ca, &ca_key, &spki);
        let chain = [CertificateDer::from(ca.clone())];
        assert_eq!(
            profile().judge(&cert, &spki, &chain, SystemTime::now()),
            Ok(())
        );
        let parsed = Certificate::from_der(&cert).unwrap();
        let issuer = Certificate::from_der(&ca).unwrap();
        assert_eq!(
            parsed.tbs_certificate().issuer(),
            issuer.tbs_certificate().subject()
        );
        signature::UnparsedPublicKey::new(
            &signature::ECDSA_P256_SHA256_ASN1,
            issuer
                .tbs_certificate()
                .subject_public_key_info()
                .subject_public_key
                .raw_bytes(),
        )
        .verify(
            &parsed.tbs_certificate().to_der().unwrap(),
            parsed.signature().raw_bytes(),
        )
        .unwrap();
    }

    #[test]
    fn an_intermediate_outliving_its_issuer_is_refused() {
        let (ca, ca_key) = issuing_ca(Duration::from_secs(600));
        let key = EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_ASN1_SIGNING).unwrap();
        let spki = key.public_key().as_der().unwrap().as_ref().to_vec();
        let cert = mint(&ca, &ca_key, &spki);
        let err = profile()
            .judge(&cert, &spki, &[CertificateDer::from(ca)], SystemTime::now())
            .unwrap_err();
        assert!(err.contains("outlives its issuer"), "{err}");
    }

    #[test]
    fn names_are_escaped_as_rfc_4514_values() {
        assert_eq!(escape("a,b+c"), "a\\,b\\+c");
        assert_eq!(escape(" x "), "\\ x\\ ");
        assert_eq!(escape("#1"), "\\#1");
    }
}
