//! castellan's file signer: an intermediate CA certificate, its private key and
//! its chain, read from PEM files in Istio's `cacerts` layout or the
//! `kubernetes.io/tls` layout.
//!
//! This crate only reads and signs. Whether the material is fit to issue
//! certificates (not self-signed, chains to the enterprise root, not expired)
//! is decided by castellan itself, the same way for every back end.

mod key;
mod layout;

use std::path::PathBuf;

pub use key::{FileKey, KeyAlgorithm};
pub use layout::{Material, Paths, fingerprint_files, read_certs};

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

/// Why the signing material could not be read or used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("signer.file: set either `dir` or both `cert_file` and `key_file`")]
    NoPaths,
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
    #[error("{path}: no PEM {what} found")]
    NoPem { path: PathBuf, what: &'static str },
    #[error("{path}: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("signing failed: {0}")]
    Sign(&'static str),
}

impl Error {
    fn key(path: &std::path::Path, reason: impl Into<String>) -> Self {
        Self::Key {
            path: path.to_owned(),
            reason: reason.into(),
        }
    }
}
