//! Where signing material comes from, per back end, and how a change is noticed.

use rustls_pki_types::CertificateDer;

use super::{Error, Signer};
use crate::config;

/// Certificates that came with a signing key, not yet judged.
#[derive(Clone, Debug)]
pub struct Material {
    pub cert: CertificateDer<'static>,
    /// Other certificates offered as the chain, in any order.
    pub chain: Vec<CertificateDer<'static>>,
    pub roots: Vec<CertificateDer<'static>>,
    /// Names the signing certificate in messages (a file path, a Vault path…).
    pub cert_source: String,
    /// Changes whenever the material does; `None` for sources not polled.
    pub fingerprint: Option<[u8; 32]>,
}

/// A configured back end, able to (re)load its key and certificates.
#[derive(Clone, Debug)]
pub enum Source {
    File(castellan_file::Paths),
}

// === impl Source ===

impl Source {
    /// # Errors
    /// When the configuration does not resolve to concrete inputs.
    pub fn from_config(signer: &config::Signer) -> Result<Self, Error> {
        match signer {
            config::Signer::File(c) => Ok(Self::File(castellan_file::Paths::resolve(c)?)),
        }
    }

    /// Reads the key and its certificates. File reads go to the blocking pool.
    ///
    /// # Errors
    /// The back end's error, naming the file or endpoint at fault.
    pub async fn load(&self) -> Result<(Signer, Material), Error> {
        match self {
            Self::File(paths) => {
                let paths = paths.clone();
                let m = blocking(move || paths.load()).await??;
                let material = Material {
                    cert: m.cert,
                    chain: m.chain,
                    roots: m.roots,
                    cert_source: format!("the signing certificate {}", self.describe()),
                    fingerprint: Some(m.fingerprint),
                };
                Ok((Signer::File(m.key), material))
            }
        }
    }

    /// A digest of the current material, to compare with the loaded one.
    ///
    /// # Errors
    /// When the material cannot be read.
    pub async fn fingerprint(&self) -> Result<Option<[u8; 32]>, Error> {
        match self {
            Self::File(paths) => {
                let paths = paths.clone();
                Ok(Some(blocking(move || paths.fingerprint()).await??))
            }
        }
    }

    /// The signing certificate's location, for messages.
    pub fn describe(&self) -> String {
        match self {
            Self::File(paths) => paths.cert.display().to_string(),
        }
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, Error> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Unfit(format!("loading task failed: {e}")))
}
