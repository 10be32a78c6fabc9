//! castellan's file signer: an intermediate CA certificate, its private key and
//! its chain, read from PEM files in Istio's `cacerts` layout or the
//! `kubernetes.io/tls` layout.
//!
//! This crate only reads and signs. Whether the material is fit to issue
//! certificates (not self-signed, chains to the enterprise root, not expired)
//! is decided by castellan itself, the same way for every back end.

mod key;
mod layout;
mod source;

use std::path::PathBuf;

pub use key::FileKey;
pub use layout::{Material, Paths};
pub use source::{FileSource, InMemoryKeys, key_signer};

/// Where the signing material lives.
///
/// Either `dir` (the layout is detected from the file names in it) or
/// explicit `cert_file` and `key_file`, with optional `chain_file` and
/// `root_file`.
#[derive(Clone, Debug, Default, serde::Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// A directory holding `ca-cert.pem`, `ca-key.pem`, `cert-chain.pem` and
    /// `root-cert.pem` (Istio `cacerts`), or `tls.crt`, `tls.key` and `ca.crt`
    /// (a `kubernetes.io/tls` Secret, as cert-manager writes it).
    pub dir: Option<PathBuf>,
    /// The signing certificate, optionally followed by its intermediates.
    pub cert_file: Option<PathBuf>,
    /// The signing key: PKCS#8, SEC1 or PKCS#1 PEM, unencrypted.
    pub key_file: Option<PathBuf>,
    /// Intermediates between the signing certificate and the root.
    pub chain_file: Option<PathBuf>,
    /// The root certificate(s) the chain ends at.
    pub root_file: Option<PathBuf>,
}

/// A `[signer]` section that cannot work, whatever is on disk.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("signer.file: set either `dir` or both `cert_file` and `key_file`")]
    NoPaths,
    #[error(
        "signer.file: `dir` and `{0}` exclude each other; use the directory's files or name them all"
    )]
    DirAndFile(&'static str),
}

/// Why the signing material could not be read or used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(
        "signer.file.dir {0}: holds neither `ca-cert.pem` + `ca-key.pem` (Istio cacerts) \
         nor `tls.crt` + `tls.key` (kubernetes.io/tls)"
    )]
    UnknownLayout(PathBuf),
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Certificates(#[from] castellan_signer::FileError),
    #[error("{path}: no PEM {what} found")]
    NoPem { path: PathBuf, what: &'static str },
    #[error("{path}: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("signing failed: {0}")]
    Sign(&'static str),
}

// === impl Config ===

impl Config {
    /// Relative paths are relative to `base`, the configuration's folder.
    pub fn resolve_paths(&mut self, base: &std::path::Path) {
        use castellan_signer::resolve_opt;
        for p in [
            &mut self.dir,
            &mut self.cert_file,
            &mut self.key_file,
            &mut self.chain_file,
            &mut self.root_file,
        ] {
            resolve_opt(base, p);
        }
    }

    /// The rules a file signer's section must meet.
    ///
    /// # Errors
    /// [`ConfigError`] naming the keys to change.
    /// castellan builds every certificate; the key here signs it.
    pub const fn capabilities(&self) -> castellan_signer::Capabilities {
        castellan_signer::Capabilities::signs("[signer] type = \"file\"")
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        match (&self.dir, &self.cert_file, &self.key_file) {
            (Some(_), None, None) => {
                for (key, set) in [
                    ("chain_file", self.chain_file.is_some()),
                    ("root_file", self.root_file.is_some()),
                ] {
                    if set {
                        return Err(ConfigError::DirAndFile(key));
                    }
                }
                Ok(())
            }
            (None, Some(_), Some(_)) => Ok(()),
            (Some(_), Some(_), _) => Err(ConfigError::DirAndFile("cert_file")),
            (Some(_), None, Some(_)) => Err(ConfigError::DirAndFile("key_file")),
            (None, _, _) => Err(ConfigError::NoPaths),
        }
    }
}

// === impl Error ===

impl Error {
    fn key(path: &std::path::Path, reason: impl Into<String>) -> Self {
        Self::Key {
            path: path.to_owned(),
            reason: reason.into(),
        }
    }
}

impl From<Error> for castellan_signer::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Sign(_) => Self::failed(e),
            Error::Config(_)
            | Error::UnknownLayout(_)
            | Error::Read { .. }
            | Error::Certificates(_)
            | Error::NoPem { .. }
            | Error::Key { .. } => Self::config(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Config, ConfigError};

    #[test]
    fn sections_that_cannot_work_are_refused() {
        let dir = Config {
            dir: Some("d".into()),
            ..Config::default()
        };
        assert_eq!(dir.validate(), Ok(()));
        assert_eq!(Config::default().validate(), Err(ConfigError::NoPaths));
        let mixed = Config {
            cert_file: Some("c".into()),
            ..dir
        };
        assert_eq!(mixed.validate(), Err(ConfigError::DirAndFile("cert_file")));
        let only_cert = Config {
            cert_file: Some("c".into()),
            ..Config::default()
        };
        assert_eq!(only_cert.validate(), Err(ConfigError::NoPaths));
    }
}
