//! castellan's Vault / OpenBao signer, in three modes:
//!
//! - **PKI**: Vault holds the intermediate and issues (`<mount>/sign/<role>`);
//!   castellan still decides the identity and re-checks every leaf;
//! - **Transit**: Vault holds the key and signs a digest; castellan builds the
//!   certificate exactly as for the file and HSM signers;
//! - **Mint**: castellan generates its own short-lived intermediate key in
//!   memory and Vault certifies it (`sign-intermediate`); castellan signs
//!   leaves itself and mints the next intermediate at half life.
//!
//! One authenticated client per process: token, Kubernetes or AppRole login,
//! renewal at two thirds of the TTL, re-login when renewal stops helping,
//! retries with jittered back-off for what is worth retrying.

mod auth;
mod client;
mod http;
mod mint;
mod pki;
mod source;
mod transit;

use std::path::PathBuf;

pub use castellan_signer::RsaPadding;
pub use client::Vault;
pub use mint::{Mint, Minted};
pub use pki::{Pki, Signed};
pub use source::VaultSource;
pub use transit::TransitKey;

/// Where Vault is and how to reach it. Unset fields fall back to the
/// standard environment variables (`VAULT_ADDR`, `VAULT_CACERT`,
/// `VAULT_NAMESPACE`, `VAULT_CLIENT_CERT`, `VAULT_CLIENT_KEY`,
/// `VAULT_TLS_SERVER_NAME`, `VAULT_TOKEN`) and their `BAO_` twins.
#[derive(Clone, Debug, serde::Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub address: Option<String>,
    /// Vault Enterprise / OpenBao namespace (`X-Vault-Namespace`).
    pub namespace: Option<String>,
    /// PEM CA bundle for Vault's certificate; unset: the system roots.
    pub ca_file: Option<PathBuf>,
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
    pub tls_server_name: Option<String>,
    /// How long one signing call may take, retries included.
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
    /// Calls to Vault in progress at once; more wait in line while their
    /// request's deadline allows, then are answered "signer busy".
    #[serde(default = "default_max_concurrent")]
    pub max_concurrent: usize,
    pub auth: Auth,
    /// PKI mode: Vault issues.
    pub pki: Option<PkiConfig>,
    /// Transit mode: Vault signs what castellan builds.
    pub transit: Option<TransitConfig>,
    /// Mint mode: Vault certifies intermediates castellan generates.
    pub mint: Option<MintConfig>,
}

/// How castellan logs in to Vault.
#[derive(Clone, Debug, serde::Deserialize, PartialEq, Eq)]
#[serde(tag = "method", rename_all = "lowercase", deny_unknown_fields)]
pub enum Auth {
    /// A token from a file (re-read when it changes), or `VAULT_TOKEN`.
    Token { token_file: Option<PathBuf> },
    /// `auth/<mount>/login` with the pod's service-account token.
    Kubernetes {
        role: String,
        #[serde(default = "default_jwt_file")]
        jwt_file: PathBuf,
        #[serde(default = "default_kubernetes_mount")]
        mount: String,
    },
    /// `auth/<mount>/login` with a role id and a secret id from a file.
    Approle {
        role_id: Option<String>,
        role_id_file: Option<PathBuf>,
        secret_id_file: PathBuf,
        #[serde(default = "default_approle_mount")]
        mount: String,
    },
}

/// PKI mode settings.
#[derive(Clone, Debug, serde::Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PkiConfig {
    pub mount: String,
    pub role: String,
    /// Pin an issuer (`<mount>/issuer/<issuer>/sign/<role>`); unset: the
    /// mount's default issuer.
    pub issuer: Option<String>,
}

/// Transit mode settings.
#[derive(Clone, Debug, serde::Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TransitConfig {
    #[serde(default = "default_transit_mount")]
    pub mount: String,
    pub key: String,
    /// RSA keys: `pkcs1` (default) or `pss`.
    #[serde(default)]
    pub rsa_padding: RsaPadding,
    /// The intermediate certificate for the transit key.
    pub cert_file: PathBuf,
    pub chain_file: Option<PathBuf>,
    pub root_file: Option<PathBuf>,
}

/// Mint mode settings.
#[derive(Clone, Debug, serde::Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MintConfig {
    /// The PKI mount holding the enterprise issuing CA.
    pub mount: String,
    /// Pin an issuer (`<mount>/issuer/<issuer>/sign-intermediate`); unset:
    /// the mount's default issuer (`<mount>/root/sign-intermediate`).
    pub issuer: Option<String>,
    /// Each intermediate's lifetime; the next is minted at half of it. At
    /// least twice `issuance.max_ttl_secs`, so no leaf is cut short.
    #[serde(default = "default_mint_ttl")]
    pub ttl_secs: u64,
    #[serde(default)]
    pub key_type: MintKey,
    /// The intermediates' common name; default `castellan <trust domain>`.
    pub common_name: Option<String>,
    /// The least lifetime a minted intermediate must have: twice the
    /// longest leaf castellan issues, so that a leaf issued just before the
    /// next rotation (at half life) still ends before it. Set by castellan
    /// from `[issuance]`, not read from the file; unset: 90 % of `ttl_secs`.
    #[serde(skip)]
    pub min_life_secs: Option<u64>,
}

/// The key castellan generates for each intermediate (the signer seam's,
/// shared by every certifier).
pub use castellan_signer::mint::MintKey;

/// A `[signer]` section that cannot work, whatever Vault holds.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error(
        "signer.vault: set exactly one of [signer.pki] (Vault issues), [signer.transit] (Vault \
         signs) and [signer.mint] (Vault certifies castellan's own intermediates)"
    )]
    Mode,
    #[error(
        "signer.mint.ttl_secs: must be between {MIN_MINT_TTL_SECS} and {MAX_MINT_TTL_SECS} (30 days); \
         hours to a few days is usual"
    )]
    MintTtl,
    #[error("signer.vault.auth: set exactly one of `role_id` and `role_id_file`")]
    RoleId,
    #[error("signer.vault: `timeout_secs` must be between 1 and 300")]
    Timeout,
    #[error("signer.vault: `max_concurrent` must be between 1 and {MAX_CONCURRENT}")]
    MaxConcurrent,
    #[error("signer.vault.{0}: `{1}` must not be empty")]
    Empty(&'static str, &'static str),
}

// === impl Config ===

impl Config {
    /// Relative paths are relative to `base`, the configuration's folder.
    pub fn resolve_paths(&mut self, base: &std::path::Path) {
        use castellan_signer::{resolve, resolve_opt};
        for p in [
            &mut self.ca_file,
            &mut self.client_cert_file,
            &mut self.client_key_file,
        ] {
            resolve_opt(base, p);
        }
        match &mut self.auth {
            Auth::Token { token_file } => resolve_opt(base, token_file),
            Auth::Kubernetes { jwt_file, .. } => resolve(base, jwt_file),
            Auth::Approle {
                role_id_file,
                secret_id_file,
                ..
            } => {
                resolve_opt(base, role_id_file);
                resolve(base, secret_id_file);
            }
        }
        if let Some(t) = &mut self.transit {
            resolve(base, &mut t.cert_file);
            resolve_opt(base, &mut t.chain_file);
            resolve_opt(base, &mut t.root_file);
        }
    }

    /// The rules a Vault signer's section must meet.
    ///
    /// # Errors
    /// [`ConfigError`] naming the keys to change.
    /// PKI issues each leaf itself; Transit signs what castellan builds;
    /// Mint certifies the intermediate castellan makes and signs with.
    pub fn capabilities(&self) -> castellan_signer::Capabilities {
        use castellan_signer::Capabilities;
        match (&self.pki, &self.mint) {
            (Some(_), _) => Capabilities::issues_leaves("[signer.pki] (Vault PKI)"),
            (None, Some(m)) => Capabilities::signs("[signer.mint]").minted(m.ttl_secs),
            (None, None) => Capabilities::signs("[signer.transit]"),
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let modes = [
            self.pki.is_some(),
            self.transit.is_some(),
            self.mint.is_some(),
        ];
        if modes.into_iter().filter(|set| *set).count() != 1 {
            return Err(ConfigError::Mode);
        }
        if let Auth::Approle {
            role_id,
            role_id_file,
            ..
        } = &self.auth
            && role_id.is_some() == role_id_file.is_some()
        {
            return Err(ConfigError::RoleId);
        }
        if !(1..=300).contains(&self.timeout_secs) {
            return Err(ConfigError::Timeout);
        }
        if !(1..=MAX_CONCURRENT).contains(&self.max_concurrent) {
            return Err(ConfigError::MaxConcurrent);
        }
        if let Some(p) = &self.pki {
            if p.mount.trim_matches('/').is_empty() {
                return Err(ConfigError::Empty("pki", "mount"));
            }
            if p.role.is_empty() {
                return Err(ConfigError::Empty("pki", "role"));
            }
        }
        if let Some(t) = &self.transit
            && t.key.is_empty()
        {
            return Err(ConfigError::Empty("transit", "key"));
        }
        if let Some(m) = &self.mint {
            if m.mount.trim_matches('/').is_empty() {
                return Err(ConfigError::Empty("mint", "mount"));
            }
            if !(MIN_MINT_TTL_SECS..=MAX_MINT_TTL_SECS).contains(&m.ttl_secs) {
                return Err(ConfigError::MintTtl);
            }
            if m.issuer.as_deref().is_some_and(str::is_empty) {
                return Err(ConfigError::Empty("mint", "issuer"));
            }
        }
        Ok(())
    }
}

impl From<ConfigError> for Error {
    fn from(e: ConfigError) -> Self {
        Self::Config(e.to_string())
    }
}

impl From<Error> for castellan_signer::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Config(_) => Self::config(e),
            Error::Unavailable(_) => Self::unavailable(e),
            Error::Busy(_) => Self::busy(e),
            Error::Refused { .. } | Error::Invalid(_) => Self::failed(e),
        }
    }
}

/// What went wrong, and whether waiting can fix it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("signer.vault: {0}")]
    Config(String),
    /// Vault cannot be reached or is sealed; retry later.
    #[error("Vault unavailable: {0}")]
    Unavailable(String),
    /// Vault is up but every call castellan allows is in progress, or
    /// Vault is rate-limiting (429), past the request's deadline.
    #[error("Vault busy: {0}")]
    Busy(String),
    /// Vault said no (4xx other than retryable ones).
    #[error("Vault refused {path}: HTTP {status}: {message}")]
    Refused {
        path: String,
        status: u16,
        message: String,
    },
    /// Vault answered something castellan will not use.
    #[error("Vault answer unusable: {0}")]
    Invalid(String),
}

/// Short enough for tests that watch several rotations; production
/// lifetimes are hours.
pub const MIN_MINT_TTL_SECS: u64 = 10;
pub const MAX_MINT_TTL_SECS: u64 = 30 * 86_400;

/// 48 h: twice castellan's default longest leaf (24 h).
fn default_mint_ttl() -> u64 {
    172_800
}

fn default_timeout() -> u64 {
    10
}

/// Enough to keep a Vault node's signing busy without a storm of
/// connections to it; Vault's own default request limit is far above.
fn default_max_concurrent() -> usize {
    64
}

/// The most calls castellan keeps in progress towards one Vault.
pub const MAX_CONCURRENT: usize = 1024;

fn default_jwt_file() -> PathBuf {
    PathBuf::from("/var/run/secrets/kubernetes.io/serviceaccount/token")
}

fn default_kubernetes_mount() -> String {
    "kubernetes".into()
}

fn default_approle_mount() -> String {
    "approle".into()
}

fn default_transit_mount() -> String {
    "transit".into()
}

/// A configuration value, else the first set environment variable.
fn setting(value: Option<&str>, vars: &[&str]) -> Option<String> {
    value.map(str::to_owned).or_else(|| {
        vars.iter()
            .find_map(|v| std::env::var(v).ok().filter(|s| !s.is_empty()))
    })
}

/// Every parser of what Vault answers, fed one untrusted body: for the
/// fuzzer. An answer castellan cannot use must be an error, never a panic.
#[cfg(feature = "fuzzing")]
pub fn fuzz_answer(body: &[u8]) {
    if let Ok(text) = std::str::from_utf8(body) {
        let _ = http::errors(text);
    }
    let Ok(answer) = serde_json::from_slice::<serde_json::Value>(body) else {
        return;
    };
    let _ = pki::signed(&answer, "pki/sign/r");
    let _ = pki::issuer_answer(&answer, "pki/issuer/default/json");
    let _ = pki::crl_answer(&answer, "pki/issuer/default/crl");
    let _ = transit::signature(&answer, "transit/sign/k");
    let _ = mint::minted_answer(&answer, "pki/root/sign-intermediate");
    let transit = TransitConfig {
        mount: "transit".into(),
        key: "k".into(),
        rsa_padding: RsaPadding::Pss,
        cert_file: PathBuf::new(),
        chain_file: None,
        root_file: None,
    };
    let _ = transit::pick(&answer, &transit, b"", "transit");
    let _ = auth::Token::from_auth(&answer["auth"]);
}
