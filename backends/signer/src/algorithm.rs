//! The signatures castellan's certificates may carry, named once for every
//! back end: what a key signs with, how the certificate says so, and how the
//! signature is checked.

use aws_lc_rs::signature::{self, VerificationAlgorithm};
use const_oid::db::rfc5912;
use der::asn1::{AnyRef, Null};
use spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoRef};

/// RSASSA-PSS-params (RFC 4055 §3.1): SHA-256, MGF1 with SHA-256, salt 32.
const PSS_SHA256_PARAMS: [u8; 54] = [
    0x30, 0x34, 0xa0, 0x0f, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
    0x01, 0x05, 0x00, 0xa1, 0x1c, 0x30, 0x1a, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01,
    0x01, 0x08, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05,
    0x00, 0xa2, 0x03, 0x02, 0x01, 0x20,
];

/// The signature a signing key makes over a TBSCertificate. ECDSA signs
/// with the hash matching its curve and returns DER; RSA uses SHA-256.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyAlgorithm {
    EcdsaP256Sha256,
    EcdsaP384Sha384,
    RsaPkcs1Sha256,
    /// RSASSA-PSS with SHA-256, MGF1-SHA-256 and a 32-byte salt.
    RsaPssSha256,
}

/// RSA signature padding, where a back end lets the operator choose.
#[derive(Clone, Copy, Debug, Default, serde::Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RsaPadding {
    /// PKCS#1 v1.5, what every verifier accepts.
    #[default]
    Pkcs1,
    /// RSASSA-PSS (SHA-256, MGF1-SHA-256, salt 32).
    Pss,
}

// === impl KeyAlgorithm ===

impl KeyAlgorithm {
    /// The certificate's `signatureAlgorithm`.
    pub fn identifier(self) -> AlgorithmIdentifierOwned {
        match self {
            Self::EcdsaP256Sha256 => AlgorithmIdentifierOwned {
                oid: rfc5912::ECDSA_WITH_SHA_256,
                parameters: None,
            },
            Self::EcdsaP384Sha384 => AlgorithmIdentifierOwned {
                oid: rfc5912::ECDSA_WITH_SHA_384,
                parameters: None,
            },
            // RFC 4055 §5: RSA PKCS#1 v1.5 identifiers carry an explicit NULL.
            Self::RsaPkcs1Sha256 => AlgorithmIdentifierOwned {
                oid: rfc5912::SHA_256_WITH_RSA_ENCRYPTION,
                parameters: Some(Null.into()),
            },
            Self::RsaPssSha256 => AlgorithmIdentifierOwned {
                oid: rfc5912::ID_RSASSA_PSS,
                parameters: der::Decode::from_der(&PSS_SHA256_PARAMS).ok(),
            },
        }
    }

    /// How a signature of this kind is verified.
    pub fn verification(self) -> &'static dyn VerificationAlgorithm {
        match self {
            Self::EcdsaP256Sha256 => &signature::ECDSA_P256_SHA256_ASN1,
            Self::EcdsaP384Sha384 => &signature::ECDSA_P384_SHA384_ASN1,
            Self::RsaPkcs1Sha256 => &signature::RSA_PKCS1_2048_8192_SHA256,
            Self::RsaPssSha256 => &signature::RSA_PSS_2048_8192_SHA256,
        }
    }

    /// The usual signature for a public key whose private half castellan
    /// never sees (an issuer in Vault PKI): ECDSA with its curve's hash,
    /// RSA PKCS#1 v1.5 (Vault's default `signature_bits`). `None` for other
    /// key types.
    pub fn usual_for(spki: SubjectPublicKeyInfoRef<'_>) -> Option<Self> {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p: &AnyRef<'_>| p.decode_as::<const_oid::ObjectIdentifier>().ok());
        match (spki.algorithm.oid, curve) {
            (rfc5912::ID_EC_PUBLIC_KEY, Some(rfc5912::SECP_256_R_1)) => Some(Self::EcdsaP256Sha256),
            (rfc5912::ID_EC_PUBLIC_KEY, Some(rfc5912::SECP_384_R_1)) => Some(Self::EcdsaP384Sha384),
            (rfc5912::RSA_ENCRYPTION, _) => Some(Self::RsaPkcs1Sha256),
            _ => None,
        }
    }

    pub fn is_rsa(self) -> bool {
        match self {
            Self::RsaPkcs1Sha256 | Self::RsaPssSha256 => true,
            Self::EcdsaP256Sha256 | Self::EcdsaP384Sha384 => false,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::EcdsaP256Sha256 => "ECDSA P-256 with SHA-256",
            Self::EcdsaP384Sha384 => "ECDSA P-384 with SHA-384",
            Self::RsaPkcs1Sha256 => "RSA PKCS#1 v1.5 with SHA-256",
            Self::RsaPssSha256 => "RSASSA-PSS with SHA-256",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::KeyAlgorithm;

    #[test]
    fn pss_parameters_are_one_der_value() {
        assert!(
            KeyAlgorithm::RsaPssSha256.identifier().parameters.is_some(),
            "the constant must parse as DER"
        );
    }
}
