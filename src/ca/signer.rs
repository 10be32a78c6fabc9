//! The back ends that hold the signing key, behind one closed enum: every
//! back end is known at compile time, so a `match` beats a trait object.

use std::sync::Arc;

use const_oid::db::rfc5912;
use der::{Decode, asn1::Null};
use spki::AlgorithmIdentifierOwned;

/// RSASSA-PSS-params (RFC 4055 §3.1): SHA-256, MGF1 with SHA-256, salt 32.
const PSS_SHA256_PARAMS: [u8; 54] = [
    0x30, 0x34, 0xa0, 0x0f, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
    0x01, 0x05, 0x00, 0xa1, 0x1c, 0x30, 0x1a, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01,
    0x01, 0x08, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05,
    0x00, 0xa2, 0x03, 0x02, 0x01, 0x20,
];

/// A signing key in one of the supported back ends.
///
/// Made with [`Signer::file`] or [`Signer::pkcs11`].
#[derive(Debug)]
pub enum Signer {
    File(castellan_file::FileKey),
    Pkcs11 {
        key: Arc<castellan_pkcs11::Pkcs11Key>,
        /// One thread per pooled session; signing never runs on the runtime.
        workers: castellan_pkcs11::Workers,
    },
    /// Vault Transit: Vault signs the digest of what castellan built.
    Transit {
        vault: Arc<castellan_vault::Vault>,
        key: castellan_vault::TransitKey,
    },
    /// Vault PKI: Vault issues from the CSR; see `SigningCa::issue_leaf`.
    VaultPki {
        vault: Arc<castellan_vault::Vault>,
        pki: castellan_vault::Pki,
        /// What Vault signs with, from the issuer certificate's key.
        algorithm: Algorithm,
    },
}

/// The signature a back end produces over a TBSCertificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    EcdsaP256Sha256,
    EcdsaP384Sha384,
    RsaPkcs1Sha256,
    /// RSASSA-PSS with SHA-256, MGF1-SHA-256 and a 32-byte salt.
    RsaPssSha256,
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
    pub fn file(key: castellan_file::FileKey) -> Self {
        Self::File(key)
    }

    /// # Errors
    /// When the signing threads cannot be started.
    pub fn pkcs11(key: castellan_pkcs11::Pkcs11Key) -> Result<Self, castellan_pkcs11::Error> {
        let key = Arc::new(key);
        let workers = castellan_pkcs11::Workers::start(Arc::clone(&key))?;
        Ok(Self::Pkcs11 { key, workers })
    }

    /// DER SubjectPublicKeyInfo of the signing key, when the back end can
    /// tell (an HSM EC key without a public object cannot).
    pub fn public_key_der(&self) -> Option<&[u8]> {
        match self {
            Self::File(key) => Some(key.public_key_der()),
            Self::Pkcs11 { key, .. } => key.public_key_der(),
            Self::Transit { .. } | Self::VaultPki { .. } => None,
        }
    }

    /// Whether the back end can sign now.
    pub fn healthy(&self) -> bool {
        match self {
            Self::File(_) => true,
            Self::Pkcs11 { key, .. } => key.healthy(),
            Self::Transit { vault, .. } | Self::VaultPki { vault, .. } => vault.healthy(),
        }
    }

    /// Lets an unhealthy back end reconnect.
    pub async fn recover(self: &Arc<Self>) {
        match self.as_ref() {
            Self::File(_) => {}
            Self::Pkcs11 { .. } => {
                let this = Arc::clone(self);
                let _ = tokio::task::spawn_blocking(move || {
                    if let Self::Pkcs11 { key, .. } = this.as_ref()
                        && let Err(e) = key.recover()
                    {
                        tracing::debug!(error = %e, "HSM not back yet");
                    }
                })
                .await;
            }
            Self::Transit { vault, .. } | Self::VaultPki { vault, .. } => {
                vault.check().await;
            }
        }
    }

    pub fn algorithm(&self) -> Algorithm {
        match self {
            Self::File(key) => match key.algorithm() {
                castellan_file::KeyAlgorithm::EcdsaP256Sha256 => Algorithm::EcdsaP256Sha256,
                castellan_file::KeyAlgorithm::EcdsaP384Sha384 => Algorithm::EcdsaP384Sha384,
                castellan_file::KeyAlgorithm::RsaPkcs1Sha256 => Algorithm::RsaPkcs1Sha256,
            },
            Self::Pkcs11 { key, .. } => match key.algorithm() {
                castellan_pkcs11::KeyAlgorithm::EcdsaP256Sha256 => Algorithm::EcdsaP256Sha256,
                castellan_pkcs11::KeyAlgorithm::EcdsaP384Sha384 => Algorithm::EcdsaP384Sha384,
                castellan_pkcs11::KeyAlgorithm::RsaPkcs1Sha256 => Algorithm::RsaPkcs1Sha256,
                castellan_pkcs11::KeyAlgorithm::RsaPssSha256 => Algorithm::RsaPssSha256,
            },
            Self::Transit { key, .. } => match key.algorithm() {
                castellan_vault::TransitAlgorithm::EcdsaP256Sha256 => Algorithm::EcdsaP256Sha256,
                castellan_vault::TransitAlgorithm::EcdsaP384Sha384 => Algorithm::EcdsaP384Sha384,
                castellan_vault::TransitAlgorithm::RsaPkcs1Sha256 => Algorithm::RsaPkcs1Sha256,
                castellan_vault::TransitAlgorithm::RsaPssSha256 => Algorithm::RsaPssSha256,
            },
            Self::VaultPki { algorithm, .. } => *algorithm,
        }
    }

    /// Signs a DER TBSCertificate.
    ///
    /// ECDSA with a file key costs about 20 µs, less than handing the work to
    /// another thread, so it runs in place; RSA (0.3–5 ms) goes to the
    /// blocking pool, and PKCS#11 to the key's own signing threads, so they
    /// cannot stall other requests on this worker.
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
                    _ => Err(SignError::Failed("not a file key".into())),
                })
                .await
                .map_err(|e| SignError::Failed(format!("signing task: {e}")))?
            }
            Self::Pkcs11 { workers, .. } => workers.sign(tbs).await.map_err(|e| match e {
                castellan_pkcs11::Error::Unavailable(m) => SignError::Unavailable(m),
                other => SignError::Failed(other.to_string()),
            }),
            Self::Transit { vault, key } => key.sign(vault, &tbs).await.map_err(vault_error),
            Self::VaultPki { .. } => Err(SignError::Failed(
                "Vault PKI mode issues from CSRs; it signs no certificate castellan built".into(),
            )),
        }
    }
}

/// Vault's unavailability is the caller's to retry; everything else is not.
pub(super) fn vault_error(e: castellan_vault::Error) -> SignError {
    match e {
        castellan_vault::Error::Unavailable(m) => SignError::Unavailable(m),
        other => SignError::Failed(other.to_string()),
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
            Self::RsaPssSha256 => AlgorithmIdentifierOwned {
                oid: rfc5912::ID_RSASSA_PSS,
                parameters: der::asn1::Any::from_der(&PSS_SHA256_PARAMS).ok(),
            },
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
    #[test]
    fn pss_parameters_are_one_der_value() {
        let id = super::Algorithm::RsaPssSha256.identifier();
        assert!(id.parameters.is_some(), "the constant must parse as DER");
    }
}
