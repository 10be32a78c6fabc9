//! The back ends that hold the signing key, behind one closed enum: every
//! back end is known at compile time, so a `match` beats a trait object.

use std::sync::Arc;

use const_oid::db::rfc5912;
use der::asn1::Null;
use spki::AlgorithmIdentifierOwned;

/// A signing key in one of the supported back ends.
#[derive(Debug)]
pub enum Signer {
    File(castellan_file::FileKey),
}

/// The signature a back end produces over a TBSCertificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    EcdsaP256Sha256,
    EcdsaP384Sha384,
    RsaPkcs1Sha256,
}

/// Why a signature could not be made.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    /// The back end cannot be reached now; callers should retry.
    #[error("signer unavailable: {0}")]
    Unavailable(String),
    /// The back end refused or broke; retrying will not help.
    #[error("signing failed: {0}")]
    Failed(String),
}

// === impl Signer ===

impl Signer {
    /// DER SubjectPublicKeyInfo of the signing key.
    pub fn public_key_der(&self) -> &[u8] {
        match self {
            Self::File(key) => key.public_key_der(),
        }
    }

    pub fn algorithm(&self) -> Algorithm {
        match self {
            Self::File(key) => match key.algorithm() {
                castellan_file::KeyAlgorithm::EcdsaP256Sha256 => Algorithm::EcdsaP256Sha256,
                castellan_file::KeyAlgorithm::EcdsaP384Sha384 => Algorithm::EcdsaP384Sha384,
                castellan_file::KeyAlgorithm::RsaPkcs1Sha256 => Algorithm::RsaPkcs1Sha256,
            },
        }
    }

    /// Signs a DER TBSCertificate.
    ///
    /// ECDSA with a file key costs about 20 µs, less than handing the work to
    /// another thread, so it runs in place; RSA (0.3–5 ms) goes to the
    /// blocking pool so it cannot stall other requests on this worker.
    ///
    /// # Errors
    /// [`SignError`] from the back end.
    pub async fn sign(self: &Arc<Self>, tbs: Vec<u8>) -> Result<Vec<u8>, SignError> {
        match self.as_ref() {
            Self::File(key) if self.algorithm() != Algorithm::RsaPkcs1Sha256 => {
                key.sign(&tbs).map_err(|e| SignError::Failed(e.to_string()))
            }
            Self::File(_) => {
                let this = Arc::clone(self);
                tokio::task::spawn_blocking(move || match this.as_ref() {
                    Self::File(key) => key.sign(&tbs).map_err(|e| SignError::Failed(e.to_string())),
                })
                .await
                .map_err(|e| SignError::Failed(format!("signing task: {e}")))?
            }
        }
    }
}

// === impl Algorithm ===

impl Algorithm {
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
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::EcdsaP256Sha256 => "ECDSA P-256 with SHA-256",
            Self::EcdsaP384Sha384 => "ECDSA P-384 with SHA-384",
            Self::RsaPkcs1Sha256 => "RSA PKCS#1 v1.5 with SHA-256",
        }
    }
}
