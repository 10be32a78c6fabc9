//! What goes into `C_Sign` for each kind of key, and how its output becomes
//! the signature an X.509 certificate carries: `CKM_ECDSA` over a digest
//! made here (SoftHSM has no `CKM_ECDSA_SHA256`), its raw `r‖s` turned into
//! DER; RSA PKCS#1 v1.5 or PSS with SHA-256.

use aws_lc_rs::digest;
use cryptoki::mechanism::{
    Mechanism, MechanismType,
    rsa::{PkcsMgfType, PkcsPssParams},
};

use castellan_signer::KeyAlgorithm;

use crate::{Error, encoding};

/// The mechanism the token must offer for a key of `algorithm` to be usable.
pub(crate) fn required_mechanism(algorithm: KeyAlgorithm) -> MechanismType {
    match algorithm {
        KeyAlgorithm::EcdsaP256Sha256 | KeyAlgorithm::EcdsaP384Sha384 => MechanismType::ECDSA,
        KeyAlgorithm::RsaPkcs1Sha256 => MechanismType::RSA_PKCS,
        KeyAlgorithm::RsaPssSha256 => MechanismType::SHA256_RSA_PKCS_PSS,
    }
}

/// How one key signs on one token.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Signing {
    pub(crate) algorithm: KeyAlgorithm,
    /// `CKM_SHA256_RSA_PKCS` is missing on some tokens; then `CKM_RSA_PKCS`
    /// over a DigestInfo made here.
    pub(crate) rsa_combined: bool,
}

// === impl Signing ===

impl Signing {
    /// The mechanism and the data `C_Sign` gets for the certificate body `tbs`.
    pub(crate) fn prepare(self, tbs: &[u8]) -> (Mechanism<'static>, Vec<u8>) {
        match self.algorithm {
            KeyAlgorithm::EcdsaP256Sha256 => (
                Mechanism::Ecdsa,
                digest::digest(&digest::SHA256, tbs).as_ref().to_vec(),
            ),
            KeyAlgorithm::EcdsaP384Sha384 => (
                Mechanism::Ecdsa,
                digest::digest(&digest::SHA384, tbs).as_ref().to_vec(),
            ),
            KeyAlgorithm::RsaPkcs1Sha256 if self.rsa_combined => {
                (Mechanism::Sha256RsaPkcs, tbs.to_vec())
            }
            KeyAlgorithm::RsaPkcs1Sha256 => {
                let mut info = encoding::SHA256_DIGEST_INFO.to_vec();
                info.extend_from_slice(digest::digest(&digest::SHA256, tbs).as_ref());
                (Mechanism::RsaPkcs, info)
            }
            KeyAlgorithm::RsaPssSha256 => (
                Mechanism::Sha256RsaPkcsPss(PkcsPssParams {
                    hash_alg: MechanismType::SHA256,
                    mgf: PkcsMgfType::MGF1_SHA256,
                    s_len: 32.into(),
                }),
                tbs.to_vec(),
            ),
        }
    }

    /// The signature the certificate carries, from what `C_Sign` returned.
    pub(crate) fn finish(self, raw: Vec<u8>) -> Result<Vec<u8>, Error> {
        match self.algorithm {
            KeyAlgorithm::EcdsaP256Sha256 | KeyAlgorithm::EcdsaP384Sha384 => {
                encoding::ecdsa_der(&raw)
                    .map_err(|e| Error::Failed(format!("ECDSA signature: {e}")))
            }
            KeyAlgorithm::RsaPkcs1Sha256 | KeyAlgorithm::RsaPssSha256 => Ok(raw),
        }
    }
}
