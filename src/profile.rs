//! The certificates castellan issues, field by field: the SPIFFE X509-SVID
//! profile for workloads and a TLS server profile for castellan itself.
//!
//! Only the subject's public key comes from the requester; every other field
//! is decided here.

use std::{net::IpAddr, time::SystemTime};

use aws_lc_rs::{digest, rand::SecureRandom};
use const_oid::db::rfc5280;
use der::{
    Decode, Encode,
    asn1::{AnyRef, BitStringRef, Ia5String, OctetString},
};
use spiffe::SpiffeId;
use spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};
use x509_cert::{
    ext::{
        Extension, Extensions,
        pkix::{
            AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage, KeyUsages,
            SubjectAltName, SubjectKeyIdentifier, name::GeneralName,
        },
    },
    name::Name,
    serial_number::SerialNumber,
    time::{Time, Validity},
};

const OID_SERVER_AUTH: const_oid::ObjectIdentifier = rfc5280::ID_KP_SERVER_AUTH;
const OID_CLIENT_AUTH: const_oid::ObjectIdentifier = rfc5280::ID_KP_CLIENT_AUTH;

/// castellan's own serving certificate is not renewed below this lifetime:
/// the current one is kept and the operator alerted.
pub const MIN_SERVING_LIFETIME: std::time::Duration = std::time::Duration::from_secs(600);

/// What issued certificates take from the signing CA.
#[derive(Clone, Debug)]
pub struct IssuerFacts {
    /// Becomes the issuer name of every certificate.
    pub subject: Name,
    /// The CA's subject key identifier, copied into authorityKeyIdentifier.
    pub key_id: Vec<u8>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    pub signature_algorithm: AlgorithmIdentifierOwned,
}

/// Whom a certificate names.
#[derive(Clone, Copy, Debug)]
pub enum Subject<'a> {
    /// A workload: one URI SAN, client and server authentication.
    Workload(&'a SpiffeId),
    /// castellan's own TLS server.
    Server {
        dns_names: &'a [String],
        ip_addresses: &'a [IpAddr],
    },
    /// istiod's serving certificate: its Service names and its SPIFFE ID,
    /// for TLS server and client.
    Istiod {
        dns_names: &'a [String],
        identity: &'a SpiffeId,
    },
}

/// Everything that varies between two certificates of one profile.
#[derive(Clone, Debug)]
pub struct Template<'a> {
    pub subject: Subject<'a>,
    /// DER SubjectPublicKeyInfo of the certificate's key.
    pub spki_der: &'a [u8],
    /// RSA keys may also encipher (TLS 1.2 RSA key exchange); EC keys may not.
    pub rsa: bool,
    pub serial: Serial,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

/// A positive 128-bit random serial number (RFC 5280 wants ≥ 64 bits of
/// unpredictability from CAs; CA/B Forum style).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Serial([u8; 16]);

/// A certificate field that could not be encoded; a bug or an absurd input.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("encoding the certificate: {0}")]
    Der(#[from] der::Error),
    #[error("the random number generator failed")]
    Random,
}

// === impl Serial ===

impl Serial {
    /// # Errors
    /// [`Error::Random`] if the system RNG fails.
    pub fn random(rng: &dyn SecureRandom) -> Result<Self, Error> {
        let mut bytes = [0u8; SERIAL_LEN];
        let (random, check) = bytes.split_at_mut(SERIAL_RANDOM);
        rng.fill(random).map_err(|_| Error::Random)?;
        // Clear the sign bit (positive) and set the next one, so the
        // encoding is always 16 bytes and never zero: 94 random bits.
        random[0] = (random[0] & 0x7f) | 0x40;
        check.copy_from_slice(&check_digits(random));
        Ok(Self(bytes))
    }

    /// Whether `serial` (big-endian bytes) is one castellan made: its
    /// length, its leading bits and its check digits — a mistyped serial
    /// passes with odds of one in four billion. Serials of other CAs, and
    /// of castellan before it wrote check digits, do not pass.
    pub fn is_castellans(serial: &[u8]) -> bool {
        serial.len() == SERIAL_LEN
            && serial[0] & 0xc0 == 0x40
            && serial[SERIAL_RANDOM..] == check_digits(&serial[..SERIAL_RANDOM])
    }

    /// Lower-case hex, as `openssl x509 -serial` prints it.
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }
}

/// A serial's length, and the random part of it; the rest is check digits.
const SERIAL_LEN: usize = 16;
const SERIAL_RANDOM: usize = 12;

/// The first bytes of a SHA-256 over the random part, under a label of
/// castellan's own.
fn check_digits(random: &[u8]) -> [u8; SERIAL_LEN - SERIAL_RANDOM] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(b"castellan serial check v1\0");
    ctx.update(random);
    let digest = ctx.finish();
    let mut out = [0u8; SERIAL_LEN - SERIAL_RANDOM];
    out.copy_from_slice(&digest.as_ref()[..SERIAL_LEN - SERIAL_RANDOM]);
    out
}

impl std::fmt::Display for Serial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// Lower-case hex of `bytes`, in one allocation (a serial per request).
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len().saturating_mul(2));
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

/// The DER TBSCertificate for `template`, to be signed by the CA.
///
/// # Errors
/// [`Error::Der`] when a field cannot be encoded (for instance a DNS name
/// that is not IA5).
pub fn tbs(issuer: &IssuerFacts, template: &Template<'_>) -> Result<Vec<u8>, Error> {
    let spki = SubjectPublicKeyInfoOwned::from_der(template.spki_der)?;
    let extensions = extensions(issuer, template, &spki)?;
    let tbs = Tbs {
        version: 2, // v3
        serial_number: SerialNumber::new(&template.serial.0)?,
        signature: issuer.signature_algorithm.clone(),
        issuer: issuer.subject.clone(),
        validity: Validity::new(
            Time::try_from(template.not_before)?,
            Time::try_from(template.not_after)?,
        ),
        subject: Name::default(),
        subject_public_key_info: spki,
        extensions,
    };
    Ok(tbs.to_der()?)
}

/// Wraps a signed TBSCertificate into the DER certificate.
///
/// # Errors
/// [`Error::Der`] when `tbs` is not DER.
pub fn assemble(
    tbs: &[u8],
    algorithm: &AlgorithmIdentifierOwned,
    signature: &[u8],
) -> Result<Vec<u8>, Error> {
    #[derive(der::Sequence)]
    struct Certificate<'a> {
        tbs_certificate: AnyRef<'a>,
        signature_algorithm: AlgorithmIdentifierOwned,
        signature: BitStringRef<'a>,
    }
    Ok(Certificate {
        tbs_certificate: AnyRef::from_der(tbs)?,
        signature_algorithm: algorithm.clone(),
        signature: BitStringRef::from_bytes(signature)?,
    }
    .to_der()?)
}

/// The subject key identifier of a public key: SHA-256 of the subjectPublicKey
/// bits, truncated to 160 bits (RFC 7093, method 1).
pub fn key_identifier(spki: &SubjectPublicKeyInfoOwned) -> Vec<u8> {
    let hash = digest::digest(&digest::SHA256, spki.subject_public_key.raw_bytes());
    hash.as_ref()[..20].to_vec()
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

// Long: every extension of castellan's profile, in the order it is encoded.
fn extensions(
    issuer: &IssuerFacts,
    template: &Template<'_>,
    spki: &SubjectPublicKeyInfoOwned,
) -> Result<Extensions, Error> {
    let mut usage = KeyUsages::DigitalSignature.into();
    if template.rsa {
        usage |= KeyUsages::KeyEncipherment;
    }
    let (names, purposes) = match template.subject {
        Subject::Workload(id) => (
            vec![GeneralName::UniformResourceIdentifier(Ia5String::new(
                &id.to_string(),
            )?)],
            vec![OID_SERVER_AUTH, OID_CLIENT_AUTH],
        ),
        Subject::Server {
            dns_names,
            ip_addresses,
        } => {
            let mut names = Vec::with_capacity(dns_names.len() + ip_addresses.len());
            for dns in dns_names {
                names.push(GeneralName::DnsName(Ia5String::new(dns)?));
            }
            for ip in ip_addresses {
                let bytes = match ip {
                    IpAddr::V4(v4) => v4.octets().to_vec(),
                    IpAddr::V6(v6) => v6.octets().to_vec(),
                };
                names.push(GeneralName::IpAddress(OctetString::new(bytes)?));
            }
            (names, vec![OID_SERVER_AUTH])
        }
        Subject::Istiod {
            dns_names,
            identity,
        } => {
            let mut names = Vec::with_capacity(dns_names.len() + 1);
            for dns in dns_names {
                names.push(GeneralName::DnsName(Ia5String::new(dns)?));
            }
            names.push(GeneralName::UniformResourceIdentifier(Ia5String::new(
                &identity.to_string(),
            )?));
            (names, vec![OID_SERVER_AUTH, OID_CLIENT_AUTH])
        }
    };
    let authority = AuthorityKeyIdentifier {
        key_identifier: Some(OctetString::new(issuer.key_id.clone())?),
        authority_cert_issuer: None,
        authority_cert_serial_number: None,
    };
    Ok(vec![
        // The subject is empty, so RFC 5280 §4.2.1.6 makes the SAN critical.
        extension(
            rfc5280::ID_CE_SUBJECT_ALT_NAME,
            true,
            &SubjectAltName(names),
        )?,
        extension(rfc5280::ID_CE_KEY_USAGE, true, &KeyUsage(usage))?,
        extension(
            rfc5280::ID_CE_EXT_KEY_USAGE,
            false,
            &ExtendedKeyUsage(purposes),
        )?,
        extension(
            rfc5280::ID_CE_BASIC_CONSTRAINTS,
            true,
            &BasicConstraints {
                ca: false,
                path_len_constraint: None,
            },
        )?,
        extension(
            rfc5280::ID_CE_SUBJECT_KEY_IDENTIFIER,
            false,
            &SubjectKeyIdentifier(OctetString::new(key_identifier(spki))?),
        )?,
        extension(rfc5280::ID_CE_AUTHORITY_KEY_IDENTIFIER, false, &authority)?,
    ])
}

pub(crate) fn extension(
    id: const_oid::ObjectIdentifier,
    critical: bool,
    value: &impl Encode,
) -> Result<Extension, Error> {
    Ok(Extension {
        extn_id: id,
        critical,
        extn_value: OctetString::new(value.to_der()?)?,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn hex_is_lower_case_two_digits_a_byte() {
        let bytes: Vec<u8> = (0..=255).collect();
        let expected: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(super::hex(&bytes), expected);
        assert_eq!(super::hex(&[]), "");
    }

    #[test]
    fn serials_carry_check_digits_a_typo_breaks() {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        for _ in 0..100 {
            let serial = super::Serial::random(&rng).unwrap();
            assert!(super::Serial::is_castellans(&serial.0));
            for i in 0..serial.0.len() {
                let mut typo = serial.0;
                typo[i] ^= 0x01;
                assert!(!super::Serial::is_castellans(&typo), "byte {i}");
            }
        }
        assert!(!super::Serial::is_castellans(&[0x40; 15]));
        assert!(!super::Serial::is_castellans(&[]));
    }
}
