//! Transit mode: the key lives in Vault's transit engine; castellan builds
//! the certificate and sends only its digest. The key version whose public
//! key matches the intermediate certificate is pinned, so a rotated transit
//! key can never sign under the old certificate.

use base64::{Engine, engine::general_purpose::STANDARD};
use reqwest::Method;
use serde_json::{Value, json};

use castellan_signer::KeyAlgorithm;

use crate::{Error, RsaPadding, TransitConfig, Vault};

/// A transit key pinned to one version.
#[derive(Debug, Clone)]
pub struct TransitKey {
    mount: String,
    key: String,
    version: u64,
    algorithm: KeyAlgorithm,
}

// === impl TransitKey ===

impl TransitKey {
    /// Finds the version of `config.key` whose public key is `spki_der` (the
    /// intermediate certificate's key) and pins it.
    ///
    /// # Errors
    /// [`Error::Config`] when no version matches or the key type is not
    /// usable; call errors.
    pub async fn open(
        vault: &Vault,
        config: &TransitConfig,
        spki_der: &[u8],
    ) -> Result<Self, Error> {
        let mount = config.mount.trim_matches('/').to_owned();
        let path = format!("{mount}/keys/{}", config.key);
        let answer = vault.call(Method::GET, &path, None).await?;
        let (algorithm, version) = pick(&answer, config, spki_der, &mount)?;
        Ok(Self {
            mount,
            key: config.key.clone(),
            version,
            algorithm,
        })
    }

    /// The transit key path and pinned version, for messages.
    pub fn describe(&self) -> String {
        format!("{}/keys/{} v{}", self.mount, self.key, self.version)
    }

    pub fn algorithm(&self) -> KeyAlgorithm {
        self.algorithm
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    /// Signs the digest of `tbs`; returns DER (ECDSA) or the raw RSA signature.
    ///
    /// # Errors
    /// [`Error`] from the call, or [`Error::Invalid`] for a malformed signature.
    pub async fn sign(&self, vault: &Vault, tbs: &[u8]) -> Result<Vec<u8>, Error> {
        use aws_lc_rs::digest;
        let (hash, name) = match self.algorithm {
            KeyAlgorithm::EcdsaP384Sha384 => (digest::digest(&digest::SHA384, tbs), "sha2-384"),
            KeyAlgorithm::EcdsaP256Sha256
            | KeyAlgorithm::RsaPkcs1Sha256
            | KeyAlgorithm::RsaPssSha256 => (digest::digest(&digest::SHA256, tbs), "sha2-256"),
        };
        let mut body = json!({
            "input": STANDARD.encode(hash.as_ref()),
            "prehashed": true,
            "key_version": self.version,
        });
        match self.algorithm {
            KeyAlgorithm::EcdsaP256Sha256 | KeyAlgorithm::EcdsaP384Sha384 => {
                body["marshaling_algorithm"] = json!("asn1");
            }
            KeyAlgorithm::RsaPkcs1Sha256 => body["signature_algorithm"] = json!("pkcs1v15"),
            KeyAlgorithm::RsaPssSha256 => {
                body["signature_algorithm"] = json!("pss");
                body["salt_length"] = json!("hash");
            }
        }
        let path = format!("{}/sign/{}/{name}", self.mount, self.key);
        let answer = vault.call(Method::POST, &path, Some(&body)).await?;
        signature(&answer, &path)
    }
}

/// The signature in a `transit/sign` answer.
pub(crate) fn signature(answer: &Value, path: &str) -> Result<Vec<u8>, Error> {
    let signature = answer["data"]["signature"]
        .as_str()
        .ok_or_else(|| Error::Invalid(format!("{path}: no data.signature")))?;
    // `vault:v<N>:<base64>`; the prefix may gain fields, the payload is last.
    let encoded = signature.rsplit(':').next().unwrap_or_default();
    STANDARD
        .decode(encoded)
        .map_err(|e| Error::Invalid(format!("{path}: signature is not base64: {e}")))
}

/// The key type and the version whose public key is `spki_der`, from a
/// `transit/keys/<key>` answer.
pub(crate) fn pick(
    answer: &Value,
    config: &TransitConfig,
    spki_der: &[u8],
    mount: &str,
) -> Result<(KeyAlgorithm, u64), Error> {
    let data = &answer["data"];
    let kind = data["type"].as_str().unwrap_or_default();
    let algorithm = match (kind, config.rsa_padding) {
        ("ecdsa-p256", _) => KeyAlgorithm::EcdsaP256Sha256,
        ("ecdsa-p384", _) => KeyAlgorithm::EcdsaP384Sha384,
        ("rsa-2048" | "rsa-3072" | "rsa-4096", RsaPadding::Pkcs1) => KeyAlgorithm::RsaPkcs1Sha256,
        ("rsa-2048" | "rsa-3072" | "rsa-4096", RsaPadding::Pss) => KeyAlgorithm::RsaPssSha256,
        (other, _) => {
            return Err(Error::Config(format!(
                "transit key {} is of type `{other}`; use ecdsa-p256, ecdsa-p384 or rsa-2048/3072/4096",
                config.key
            )));
        }
    };
    let versions = data["keys"].as_object().cloned().unwrap_or_default();
    let mut matching = None;
    for (version, key) in &versions {
        let Some(pem) = key["public_key"].as_str() else {
            continue;
        };
        if der::pem::decode_vec(pem.as_bytes()).is_ok_and(|(_, der)| der == spki_der) {
            matching = version.parse::<u64>().ok();
        }
    }
    let version = matching.ok_or_else(|| {
        Error::Config(format!(
            "no version of transit key {mount}/{} has the intermediate certificate's public key \
         (versions: {}); issue the certificate for the key Vault holds",
            config.key,
            versions.keys().cloned().collect::<Vec<_>>().join(", ")
        ))
    })?;
    Ok((algorithm, version))
}
