//! The PKCS#11 signer behind castellan's seam. The token is opened once per
//! process and kept across reloads of the certificate files, so there is
//! one PKCS#11 context, one session pool and one set of signing threads.

use std::sync::{Arc, Mutex};

use castellan_signer::{
    Backend, CertFiles, Fingerprint, KeyAlgorithm, KeyBinding, KeyMaker, KeySigner, Loaded,
    Material, Signature, Source, async_trait,
};
use rustls_pki_types::CertificateDer;

use crate::{Config, Error, Pkcs11Key, Workers};

/// A configured HSM key and the certificates that go with it.
#[derive(Debug)]
pub struct Pkcs11Source {
    config: Config,
    opened: Arc<Mutex<Option<Arc<Pkcs11Signer>>>>,
    /// With `[signer.mint]`: where the minted intermediates' keys are made,
    /// and the trust domain they are for.
    minting: Option<(Arc<dyn KeyMaker>, String)>,
}

/// The opened key and its signing threads.
#[derive(Debug)]
pub(crate) struct Pkcs11Signer {
    key: Arc<Pkcs11Key>,
    workers: Workers,
}

impl Pkcs11Signer {
    pub(crate) fn new(key: Arc<Pkcs11Key>, workers: Workers) -> Self {
        Self { key, workers }
    }
}

// === impl Pkcs11Source ===

impl Pkcs11Source {
    pub fn new(config: Config) -> Self {
        Self {
            config,
            opened: Arc::default(),
            minting: None,
        }
    }

    /// With `[signer.mint]`: the minted intermediates' keys come from
    /// `keys` and are certified for `trust_domain`.
    #[must_use]
    pub fn minting(mut self, keys: Arc<dyn KeyMaker>, trust_domain: &str) -> Self {
        self.minting = Some((keys, trust_domain.to_owned()));
        self
    }

    /// One intermediate minted and certified by the token's CA key.
    async fn load_minted(
        &self,
        certify: &crate::Certify,
    ) -> Result<Loaded, castellan_signer::Error> {
        let (keys, trust_domain) = self.minting.as_ref().ok_or_else(|| {
            castellan_signer::Error::config(
                "[signer.mint]: no key maker given to the PKCS#11 source",
            )
        })?;
        let (config, opened, files) = (
            self.config.clone(),
            Arc::clone(&self.opened),
            self.cert_files(),
        );
        let (ca_key, certs) = tokio::task::spawn_blocking(move || {
            let signer = open_once(&config, &opened)?;
            let files = files.ok_or(Error::from(crate::ConfigError::MintNeedsCertFile))?;
            let (certs, _) = files.read()?;
            Ok::<_, castellan_signer::Error>((signer, certs))
        })
        .await
        .map_err(castellan_signer::Error::failed)??;
        let common_name = certify
            .common_name
            .clone()
            .unwrap_or_else(|| format!("castellan {trust_domain}"));
        let (key, mut material) = crate::certify::mint(
            certify,
            &certify.profile(trust_domain),
            keys.as_ref(),
            ca_key.as_ref(),
            &certs.cert,
            &certs.chain,
            &common_name,
        )
        .await?;
        material.roots = certs.roots;
        material.cert_source = format!("the intermediate minted under {}", self.describe());
        Ok(Loaded {
            backend: Backend::Signs(key),
            material,
        })
    }

    fn cert_files(&self) -> Option<CertFiles> {
        self.config.cert_file.as_ref().map(|cert| {
            CertFiles::new(
                cert.clone(),
                self.config.chain_file.clone(),
                self.config.root_file.clone(),
            )
        })
    }
}

#[async_trait]
impl Source for Pkcs11Source {
    fn describe(&self) -> String {
        match (&self.config.cert_file, &self.config.cert_label) {
            (Some(path), _) => path.display().to_string(),
            (None, label) => format!(
                "token `{}` certificate `{}`",
                self.config
                    .token_label
                    .as_deref()
                    .or(self.config.token_serial.as_deref())
                    .unwrap_or("?"),
                label.as_deref().unwrap_or("?")
            ),
        }
    }

    async fn load(&self) -> Result<Loaded, castellan_signer::Error> {
        if let Some(certify) = &self.config.mint {
            return self.load_minted(certify).await;
        }
        let (config, opened, files) = (
            self.config.clone(),
            Arc::clone(&self.opened),
            self.cert_files(),
        );
        let cert_source = format!("the signing certificate {}", self.describe());
        tokio::task::spawn_blocking(move || -> Result<Loaded, castellan_signer::Error> {
            let signer = open_once(&config, &opened)?;
            let (cert, chain, roots, fingerprint) = match (&files, &config.cert_label) {
                (Some(files), _) => {
                    let (certs, fingerprint) = files.read()?;
                    (certs.cert, certs.chain, certs.roots, Some(fingerprint))
                }
                (None, Some(label)) => {
                    let cert = CertificateDer::from(signer.key.certificate(label)?);
                    (cert, Vec::new(), Vec::new(), None)
                }
                (None, None) => {
                    return Err(Error::from(crate::ConfigError::ExactlyOne(
                        "cert_file",
                        "cert_label",
                    ))
                    .into());
                }
            };
            Ok(Loaded {
                backend: Backend::Signs(signer),
                material: Material {
                    cert,
                    chain,
                    roots,
                    cert_source,
                    fingerprint,
                    upstream_crls: Vec::new(),
                },
            })
        })
        .await
        .map_err(castellan_signer::Error::failed)?
    }

    fn self_rotating(&self) -> bool {
        self.config.mint.is_some()
    }

    async fn fingerprint(&self) -> Result<Option<Fingerprint>, castellan_signer::Error> {
        // A minted intermediate is replaced on castellan's schedule, not when
        // the CA's file changes (read again at every mint).
        if self.config.mint.is_some() {
            return Ok(None);
        }
        // A certificate object on the token is not polled.
        let Some(files) = self.cert_files() else {
            return Ok(None);
        };
        let digest = tokio::task::spawn_blocking(move || files.fingerprint())
            .await
            .map_err(castellan_signer::Error::failed)??;
        Ok(Some(digest))
    }
}

/// The process's one opened key, opened on first use.
fn open_once(
    config: &Config,
    opened: &Mutex<Option<Arc<Pkcs11Signer>>>,
) -> Result<Arc<Pkcs11Signer>, Error> {
    let mut opened = opened
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(signer) = opened.as_ref() {
        return Ok(Arc::clone(signer));
    }
    let key = Arc::new(Pkcs11Key::open(config)?);
    let workers = Workers::start(Arc::clone(&key))?;
    let signer = Arc::new(Pkcs11Signer { key, workers });
    *opened = Some(Arc::clone(&signer));
    Ok(signer)
}

// === impl Pkcs11Signer ===

#[async_trait]
impl KeySigner for Pkcs11Signer {
    fn algorithm(&self) -> KeyAlgorithm {
        self.key.algorithm()
    }

    async fn sign(&self, tbs: &[u8]) -> Result<Signature, castellan_signer::Error> {
        let (value, resolution) = self.workers.sign(tbs.to_vec()).await?;
        Ok(Signature {
            value,
            key: KeyBinding::Resolved(resolution),
        })
    }

    fn healthy(&self) -> bool {
        self.key.healthy()
    }

    fn queue(&self) -> Option<Arc<castellan_signer::queue::QueueStats>> {
        Some(self.workers.queue())
    }

    async fn probe(&self) {
        let key = Arc::clone(&self.key);
        let _ = tokio::task::spawn_blocking(move || {
            let outcome = if key.healthy() {
                key.check()
            } else {
                key.recover()
            };
            if let Err(e) = outcome {
                tracing::debug!(error = %e, "HSM not usable yet");
            }
        })
        .await;
    }

    async fn reresolve(&self) {
        let key = Arc::clone(&self.key);
        let _ = tokio::task::spawn_blocking(move || {
            if let Err(e) = key.refind() {
                tracing::debug!(error = %e, "HSM key not found again yet");
            }
        })
        .await;
    }

    fn public_key_der(&self) -> Option<Vec<u8>> {
        self.key.public_key_der().map(<[u8]>::to_vec)
    }
}
