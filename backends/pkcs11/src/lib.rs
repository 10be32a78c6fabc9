//! castellan's PKCS#11 signer: the intermediate's private key never leaves
//! the HSM. One PKCS#11 context, a bounded pool of logged-in sessions,
//! signing on one dedicated thread per session, and recovery without a restart
//! when sessions are closed, the login is lost or the token goes away.

mod encoding;
mod key;
mod mechanism;
mod pool;
mod token;
mod workers;

use std::path::PathBuf;

pub use key::Pkcs11Key;
pub use mechanism::KeyAlgorithm;
pub use workers::Workers;

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
}

/// RSA signature padding.
#[derive(Clone, Copy, Debug, Default, serde::Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RsaPadding {
    #[default]
    Pkcs1,
    Pss,
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
}

fn default_pool_size() -> usize {
    DEFAULT_POOL_SIZE
}
