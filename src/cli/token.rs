//! Minting Kubernetes-shaped service-account tokens with a local key: the
//! demo's token issuer, and the benchmark's source of many identities.

use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::{
    digest,
    encoding::AsDer,
    rand::SystemRandom,
    signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair},
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;
use zeroize::Zeroizing;

/// An ES256 token issuer.
pub struct TokenIssuer {
    key: EncodingKey,
    kid: String,
    issuer: String,
    jwks: String,
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    sub: String,
    aud: &'a [&'a str],
    iat: u64,
    nbf: u64,
    exp: u64,
    #[serde(rename = "kubernetes.io")]
    kubernetes: KubernetesClaim<'a>,
}

#[derive(Serialize)]
struct KubernetesClaim<'a> {
    namespace: &'a str,
    serviceaccount: NameUid<'a>,
}

#[derive(Serialize)]
struct NameUid<'a> {
    name: &'a str,
    uid: String,
}

/// Why a token issuer could not be made or used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("token key: {0}")]
    Key(String),
    #[error("signing a token: {0}")]
    Sign(#[from] jsonwebtoken::errors::Error),
}

// === impl TokenIssuer ===

impl TokenIssuer {
    /// A new issuer with a fresh key; returns it and its PKCS#8 PEM key.
    ///
    /// # Errors
    /// When key generation fails.
    pub fn generate(issuer: &str) -> Result<(Self, Zeroizing<String>), Error> {
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
                .map_err(|_| Error::Key("cannot generate a P-256 key".into()))?;
        let pem = Zeroizing::new(
            der::pem::encode_string("PRIVATE KEY", der::pem::LineEnding::LF, pkcs8.as_ref())
                .map_err(|e| Error::Key(e.to_string()))?,
        );
        Ok((Self::from_pkcs8_pem(issuer, pem.as_bytes())?, pem))
    }

    /// An issuer from a PKCS#8 P-256 key (the demo's `token-signing-key.pem`).
    ///
    /// # Errors
    /// When the key is not a P-256 PKCS#8 PEM key.
    pub fn from_pkcs8_pem(issuer: &str, pem: &[u8]) -> Result<Self, Error> {
        let (_, der) = der::pem::decode_vec(pem).map_err(|e| Error::Key(e.to_string()))?;
        let der = Zeroizing::new(der);
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der)
            .map_err(|e| Error::Key(e.to_string()))?;
        let point = pair.public_key().as_ref();
        if point.len() != 65 {
            return Err(Error::Key("not an uncompressed P-256 point".into()));
        }
        let spki = pair
            .public_key()
            .as_der()
            .map_err(|_| Error::Key("cannot encode the public key".into()))?;
        let kid =
            URL_SAFE_NO_PAD.encode(&digest::digest(&digest::SHA256, spki.as_ref()).as_ref()[..16]);
        let jwks = serde_json::json!({
            "keys": [{
                "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": kid,
                "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
                "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
            }]
        })
        .to_string();
        Ok(Self {
            key: EncodingKey::from_ec_der(&der),
            kid,
            issuer: issuer.to_owned(),
            jwks,
        })
    }

    /// The JWKS document publishing this issuer's key.
    pub fn jwks(&self) -> &str {
        &self.jwks
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// A projected-token-shaped JWT for `system:serviceaccount:<ns>:<sa>`.
    ///
    /// # Errors
    /// When signing fails.
    pub fn mint(
        &self,
        namespace: &str,
        service_account: &str,
        audience: &str,
        ttl_secs: u64,
    ) -> Result<String, Error> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let claims = Claims {
            iss: &self.issuer,
            sub: format!("system:serviceaccount:{namespace}:{service_account}"),
            aud: &[audience],
            iat: now,
            nbf: now,
            exp: now + ttl_secs,
            kubernetes: KubernetesClaim {
                namespace,
                serviceaccount: NameUid {
                    name: service_account,
                    uid: hex(
                        &digest::digest(&digest::SHA256, service_account.as_bytes()).as_ref()[..16],
                    ),
                },
            },
        };
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        Ok(jsonwebtoken::encode(&header, &claims, &self.key)?)
    }
}

impl std::fmt::Debug for TokenIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenIssuer")
            .field("issuer", &self.issuer)
            .field("kid", &self.kid)
            .field("key", &"[redacted]")
            .finish()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
