//! castellan's PKCS#11 signer: the intermediate's private key never leaves
//! the HSM. One PKCS#11 context, a bounded pool of logged-in sessions,
//! signing on one dedicated thread per session, and recovery without a restart
//! when sessions are closed, the login is lost or the token goes away.

mod certify;
mod encoding;
mod generate;
mod key;
mod mechanism;
mod module;
mod pool;
mod source;
mod token;
mod workers;

use std::path::PathBuf;

pub use castellan_signer::mint::MintKey;
pub use castellan_signer::{KeyAlgorithm, RsaPadding};
pub use certify::Certify;
pub use generate::KeyStore;
pub use key::Pkcs11Key;
pub use source::Pkcs11Source;
pub use workers::Workers;

/// Signatures waiting for a session, per session, before callers are told
/// the HSM is saturated: a bound on memory and on the wait behind it.
pub const QUEUE_PER_SESSION: usize = 64;

/// The default number of sessions signing at once.
pub const DEFAULT_POOL_SIZE: usize = 4;

/// Which token, which key, and how to log in.
#[derive(Clone, Debug, serde::Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Path of the PKCS#11 module, e.g. `/usr/lib/softhsm/libsofthsm2.so`.
    pub module: PathBuf,
    /// The token, by label…
    pub token_label: Option<String>,
    /// …or by serial number. Slot numbers are never used: they change.
    pub token_serial: Option<String>,
    /// The private key, by `CKA_LABEL`…
    pub key_label: Option<String>,
    /// …and/or by `CKA_ID` in hex.
    pub key_id: Option<String>,
    /// A file holding the user PIN (trailing newline ignored)…
    pub pin_file: Option<PathBuf>,
    /// …or the name of an environment variable holding it.
    pub pin_env: Option<String>,
    /// Sessions signing at once.
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
    /// RSA keys: `pkcs1` (PKCS#1 v1.5, the default) or `pss`.
    #[serde(default)]
    pub rsa_padding: RsaPadding,
    /// The signing certificate, optionally followed by its intermediates…
    pub cert_file: Option<PathBuf>,
    /// …or a certificate object on the token, by `CKA_LABEL`.
    pub cert_label: Option<String>,
    /// Intermediates between the signing certificate and the root.
    pub chain_file: Option<PathBuf>,
    /// The root certificate(s) the chain ends at.
    pub root_file: Option<PathBuf>,
    /// `[signer.mint]`: the token's key is the issuing CA's and certifies
    /// intermediates castellan mints (`cert_file` is the CA's
    /// certificate); unset, the token's key is the intermediate's.
    #[serde(default)]
    pub mint: Option<Box<Certify>>,
}

/// A `[signer]` section that cannot work, whatever the token holds.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("set exactly one of `{0}` and `{1}`")]
    ExactlyOne(&'static str, &'static str),
    #[error("set `{0}` or `{1}` (or both)")]
    AtLeastOne(&'static str, &'static str),
    #[error("`pool_size` must be at least 1")]
    NoSessions,
    #[error("`key_id` = {0:?} is not hex bytes (e.g. \"01\" or \"0a1b\")")]
    KeyIdNotHex(String),
    #[error("`chain_file` and `root_file` go with `cert_file`, not `cert_label`")]
    FilesWithLabel,
    #[error("`label_prefix` must be 1 to 64 characters")]
    LabelPrefix,
    #[error("with [signer.mint] the issuing CA's certificate is `cert_file` (not `cert_label`)")]
    MintNeedsCertFile,
    #[error("`mint.ttl_secs` must be between {0} and {1}")]
    MintTtl(u64, u64),
}
/// What went wrong, and whether waiting can fix it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is wrong; nothing will work until it is fixed.
    #[error("signer.pkcs11: {0}")]
    Config(String),
    /// The token or its library is unusable now; castellan keeps retrying.
    #[error("HSM unavailable: {0}")]
    Unavailable(String),
    /// The HSM refused the operation.
    #[error("HSM signing failed: {0}")]
    Failed(String),
    /// Every session is busy, and the request's deadline would pass before
    /// one is free: overload, not an outage.
    #[error("HSM busy: {0}")]
    Busy(String),
}

fn default_pool_size() -> usize {
    DEFAULT_POOL_SIZE
}

// === impl Config ===

impl Config {
    /// Relative paths are relative to `base`, the configuration's folder;
    /// a bare module file name is left to the dynamic loader's search.
    pub fn resolve_paths(&mut self, base: &std::path::Path) {
        use castellan_signer::{resolve, resolve_opt};
        if self.module.components().count() > 1 {
            resolve(base, &mut self.module);
        }
        for p in [
            &mut self.pin_file,
            &mut self.cert_file,
            &mut self.chain_file,
            &mut self.root_file,
        ] {
            resolve_opt(base, p);
        }
    }

    /// The rules a PKCS#11 signer's section must meet.
    ///
    /// # Errors
    /// [`ConfigError`] naming the keys to change.
    /// castellan builds every certificate; the token's key signs it.
    pub fn capabilities(&self) -> castellan_signer::Capabilities {
        match &self.mint {
            Some(m) => castellan_signer::Capabilities::signs(
                "[signer.mint] certified by the PKCS#11 token's CA key",
            )
            .minted(m.ttl_secs),
            None => castellan_signer::Capabilities::signs("[signer] type = \"pkcs11\""),
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.cert_file.is_some() == self.cert_label.is_some() {
            return Err(ConfigError::ExactlyOne("cert_file", "cert_label"));
        }
        if self.cert_label.is_some() && self.chain_file.is_some() {
            return Err(ConfigError::FilesWithLabel);
        }
        session_rules(
            (&self.pin_file, &self.pin_env),
            (&self.token_label, &self.token_serial),
            self.pool_size,
        )?;
        if self.key_label.is_none() && self.key_id.is_none() {
            return Err(ConfigError::AtLeastOne("key_label", "key_id"));
        }
        if let Some(id) = &self.key_id {
            token::hex(id)?;
        }
        if let Some(m) = &self.mint {
            if self.cert_file.is_none() {
                return Err(ConfigError::MintNeedsCertFile);
            }
            m.validate()?;
        }
        Ok(())
    }
}

/// What a signer section and a key store section (`[signer.mint.pkcs11]`)
/// alike must set: one PIN source, a token, at least one session.
fn session_rules(
    (pin_file, pin_env): (&Option<PathBuf>, &Option<String>),
    (token_label, token_serial): (&Option<String>, &Option<String>),
    pool_size: usize,
) -> Result<(), ConfigError> {
    if pin_file.is_some() == pin_env.is_some() {
        return Err(ConfigError::ExactlyOne("pin_file", "pin_env"));
    }
    if token_label.is_none() && token_serial.is_none() {
        return Err(ConfigError::AtLeastOne("token_label", "token_serial"));
    }
    if pool_size == 0 {
        return Err(ConfigError::NoSessions);
    }
    Ok(())
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
            Error::Failed(_) => Self::failed(e),
            Error::Busy(_) => Self::busy(e),
        }
    }
}
