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
    Pkcs11(castellan_pkcs11::Config),
}

// === impl Source ===

impl Source {
    /// # Errors
    /// When the configuration does not resolve to concrete inputs.
    pub fn from_config(signer: &config::Signer) -> Result<Self, Error> {
        match signer {
            config::Signer::File(c) => Ok(Self::File(castellan_file::Paths::resolve(c)?)),
            config::Signer::Pkcs11(c) => {
                if c.cert_file.is_none() == c.cert_label.is_none() {
                    return Err(Error::Unfit(
                        "signer.pkcs11: set exactly one of cert_file and cert_label".into(),
                    ));
                }
                if c.token_label.is_none() && c.token_serial.is_none() {
                    return Err(Error::Unfit(
                        "signer.pkcs11: set token_label or token_serial".into(),
                    ));
                }
                if c.key_label.is_none() && c.key_id.is_none() {
                    return Err(Error::Unfit(
                        "signer.pkcs11: set key_label or key_id".into(),
                    ));
                }
                Ok(Self::Pkcs11(c.clone()))
            }
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
                Ok((Signer::file(m.key), material))
            }
            Self::Pkcs11(config) => {
                let config = config.clone();
                let describe = self.describe();
                blocking(move || pkcs11_material(&config, describe)).await?
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
            Self::Pkcs11(config) => {
                let files = [&config.cert_file, &config.chain_file, &config.root_file]
                    .into_iter()
                    .flatten()
                    .cloned()
                    .collect::<Vec<_>>();
                if config.cert_label.is_some() {
                    // The certificate lives on the token: not polled.
                    return Ok(None);
                }
                Ok(Some(
                    blocking(move || castellan_file::fingerprint_files(&files)).await??,
                ))
            }
        }
    }

    /// The signing certificate's location, for messages.
    pub fn describe(&self) -> String {
        match self {
            Self::File(paths) => paths.cert.display().to_string(),
            Self::Pkcs11(c) => match (&c.cert_file, &c.cert_label) {
                (Some(path), _) => path.display().to_string(),
                (None, label) => format!(
                    "token {:?} certificate {:?}",
                    c.token_label
                        .as_deref()
                        .or(c.token_serial.as_deref())
                        .unwrap_or("?"),
                    label.as_deref().unwrap_or("?")
                ),
            },
        }
    }
}

/// Opens the HSM key and reads its certificates (files or token objects).
fn pkcs11_material(
    config: &castellan_pkcs11::Config,
    describe: String,
) -> Result<(Signer, Material), Error> {
    let key = castellan_pkcs11::Pkcs11Key::open(config).map_err(|e| Error::Unfit(e.to_string()))?;
    let mut certs = match (&config.cert_file, &config.cert_label) {
        (Some(path), _) => castellan_file::read_certs(path)?,
        (None, Some(label)) => vec![CertificateDer::from(
            key.certificate(label)
                .map_err(|e| Error::Unfit(e.to_string()))?,
        )],
        (None, None) => {
            return Err(Error::Unfit(
                "signer.pkcs11: set cert_file or cert_label".into(),
            ));
        }
    };
    let cert = certs.remove(0);
    if let Some(path) = &config.chain_file {
        certs.extend(castellan_file::read_certs(path)?);
    }
    let roots = match &config.root_file {
        Some(path) => castellan_file::read_certs(path)?,
        None => Vec::new(),
    };
    let fingerprint = if config.cert_label.is_none() {
        let files: Vec<_> = [&config.cert_file, &config.chain_file, &config.root_file]
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        Some(castellan_file::fingerprint_files(&files)?)
    } else {
        None
    };
    let material = Material {
        cert,
        chain: certs,
        roots,
        cert_source: format!("the signing certificate {describe}"),
        fingerprint,
    };
    Ok((Signer::pkcs11(key), material))
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, Error> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Unfit(format!("loading task failed: {e}")))
}
