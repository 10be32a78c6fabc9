//! Certificate files every back end may read beside its key: the signing
//! certificate, the intermediates above it and the root(s), and a digest of
//! their contents so a change is noticed.

use std::path::{Path, PathBuf};

use aws_lc_rs::digest;
use rustls_pki_types::{CertificateDer, pem::PemObject};

/// SHA-256 over everything a signing set was read from: equal digests, same
/// material.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 32]);

/// The certificate files of a signer whose key lives elsewhere.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertFiles {
    /// The signing certificate, optionally followed by intermediates.
    pub cert: PathBuf,
    /// Intermediates between the signing certificate and the root.
    pub chain: Option<PathBuf>,
    /// The root certificate(s) the chain ends at.
    pub root: Option<PathBuf>,
}

/// The certificates of a [`CertFiles`], read.
#[derive(Clone, Debug)]
pub struct Certs {
    pub cert: CertificateDer<'static>,
    /// The other certificates of the cert file and the chain file, in file
    /// order, without duplicates and without the signing certificate.
    pub chain: Vec<CertificateDer<'static>>,
    pub roots: Vec<CertificateDer<'static>>,
}

/// Why certificate files could not be used.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: no PEM certificate found")]
    NoCertificate { path: PathBuf },
    #[error("{path}: malformed PEM certificate: {source}")]
    Malformed {
        path: PathBuf,
        source: rustls_pki_types::pem::Error,
    },
}

// === impl Fingerprint ===

impl Fingerprint {
    /// The digest of `parts`, each length-prefixed so that moving bytes
    /// between parts changes it.
    pub fn of<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> Self {
        let mut hash = digest::Context::new(&digest::SHA256);
        for part in parts {
            hash.update(&(part.len() as u64).to_be_bytes());
            hash.update(part);
        }
        let mut out = [0; 32];
        out.copy_from_slice(hash.finish().as_ref());
        Self(out)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

// === impl CertFiles ===

impl CertFiles {
    pub fn new(cert: PathBuf, chain: Option<PathBuf>, root: Option<PathBuf>) -> Self {
        Self { cert, chain, root }
    }

    fn paths(&self) -> Vec<&Path> {
        [Some(&self.cert), self.chain.as_ref(), self.root.as_ref()]
            .into_iter()
            .flatten()
            .map(PathBuf::as_path)
            .collect()
    }

    /// Reads every file.
    ///
    /// # Errors
    /// [`FileError`] naming the file at fault.
    pub fn read(&self) -> Result<(Certs, Fingerprint), FileError> {
        let cert_pem = read(&self.cert)?;
        let chain_pem = self.chain.as_deref().map(read).transpose()?;
        let root_pem = self.root.as_deref().map(read).transpose()?;
        let fingerprint = Fingerprint::of(
            [Some(&cert_pem), chain_pem.as_ref(), root_pem.as_ref()]
                .into_iter()
                .flatten()
                .map(Vec::as_slice),
        );
        let mut from_cert_file = parse_certs(&cert_pem, &self.cert)?;
        let cert = from_cert_file.remove(0);
        let mut offered = from_cert_file;
        if let (Some(pem), Some(path)) = (&chain_pem, &self.chain) {
            offered.extend(parse_certs(pem, path)?);
        }
        let mut chain: Vec<CertificateDer<'static>> = Vec::with_capacity(offered.len());
        for c in offered {
            if c != cert && !chain.contains(&c) {
                chain.push(c);
            }
        }
        let roots = match (&root_pem, &self.root) {
            (Some(pem), Some(path)) => parse_certs(pem, path)?,
            _ => Vec::new(),
        };
        Ok((Certs { cert, chain, roots }, fingerprint))
    }

    /// The digest [`CertFiles::read`] would return, without parsing.
    ///
    /// # Errors
    /// When a file cannot be read.
    pub fn fingerprint(&self) -> Result<Fingerprint, FileError> {
        fingerprint_files(&self.paths())
    }

    /// The signing certificate's file, for messages.
    pub fn describe(&self) -> String {
        self.cert.display().to_string()
    }
}

/// The digest of the contents of `files`.
///
/// # Errors
/// When a file cannot be read.
pub fn fingerprint_files(files: &[&Path]) -> Result<Fingerprint, FileError> {
    let contents = files
        .iter()
        .map(|p| read(p))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Fingerprint::of(contents.iter().map(Vec::as_slice)))
}

fn read(path: &Path) -> Result<Vec<u8>, FileError> {
    std::fs::read(path).map_err(|source| FileError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Every certificate of a PEM file.
///
/// # Errors
/// When the file cannot be read or holds no certificate.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, FileError> {
    parse_certs(&read(path)?, path)
}

/// Every certificate of PEM text read from `path` (named in errors).
///
/// # Errors
/// When the text is malformed or holds no certificate.
pub fn parse_certs(pem: &[u8], path: &Path) -> Result<Vec<CertificateDer<'static>>, FileError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| FileError::Malformed {
            path: path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(FileError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// Makes `path` relative to `base` (the configuration file's folder) when it
/// is relative: paths in a config file mean what they say wherever castellan
/// is started from.
pub fn resolve(base: &Path, path: &mut PathBuf) {
    if path.is_relative() {
        *path = base.join(&*path);
    }
}

/// As [`resolve`], for an optional path.
pub fn resolve_opt(base: &Path, path: &mut Option<PathBuf>) {
    if let Some(p) = path {
        resolve(base, p);
    }
}
