//! The Vault signer behind castellan's seam: one client per process, kept
//! across reloads; PKI mode is an issuing back end, Transit and Mint modes
//! signing ones (Mint signs with a key it made, and mints anew at each load).

use std::{sync::Arc, time::Duration};

use castellan_signer::{
    Backend, CertFiles, Fingerprint, IssuedLeaf, KeyAlgorithm, KeyBinding, KeySigner, LeafIssuer,
    LeafOrder, Loaded, Material, Signature, Source, async_trait,
};
use der::{Decode, Encode};
use rustls_pki_types::{CertificateDer, pem::PemObject};
use tokio::sync::OnceCell;

use crate::{Config, ConfigError, Error, Mint, Pki, TransitConfig, TransitKey, Vault};

/// A configured Vault signer.
#[derive(Debug)]
pub struct VaultSource {
    config: Config,
    /// Mint mode's intermediates are certified for this trust domain.
    mint: Option<Mint>,
    client: OnceCell<Arc<Vault>>,
}

/// PKI mode: Vault issues.
#[derive(Debug)]
struct PkiIssuer {
    vault: Arc<Vault>,
    pki: Pki,
}

/// Transit mode: Vault signs digests with a pinned key version.
#[derive(Debug)]
struct TransitSigner {
    vault: Arc<Vault>,
    key: TransitKey,
}

// === impl VaultSource ===

impl VaultSource {
    /// `trust_domain` is the one URI SAN (`spiffe://<trust domain>`) Mint
    /// mode's intermediates carry; `keys` makes each one's key (Mint mode
    /// only).
    pub fn new(
        config: Config,
        trust_domain: &str,
        keys: Arc<dyn castellan_signer::KeyMaker>,
    ) -> Self {
        Self {
            mint: config
                .mint
                .as_ref()
                .map(|m| Mint::new(m, trust_domain, keys)),
            config,
            client: OnceCell::new(),
        }
    }

    /// The process's Vault client, connected (and logged in) on first use.
    async fn vault(&self) -> Result<Arc<Vault>, Error> {
        self.client
            .get_or_try_init(|| Vault::connect(&self.config))
            .await
            .cloned()
    }

    async fn load_pki(&self, pki: Pki) -> Result<Loaded, Error> {
        let vault = self.vault().await?;
        let pems = pki.issuer_chain(&vault).await?;
        let mut certs = Vec::new();
        for pem in &pems {
            certs.extend(
                CertificateDer::pem_slice_iter(pem.as_bytes())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| Error::Invalid(format!("{}: {e}", self.describe())))?,
            );
        }
        if certs.is_empty() {
            return Err(Error::Invalid(format!(
                "{}: Vault returned no certificate",
                self.describe()
            )));
        }
        let cert = certs.remove(0);
        Ok(Loaded {
            backend: Backend::Issues(Arc::new(PkiIssuer { vault, pki })),
            material: Material {
                cert,
                chain: certs,
                roots: Vec::new(),
                cert_source: format!("the signing certificate of {}", self.describe()),
                fingerprint: Some(digest_strings(&pems)),
                upstream_crls: Vec::new(),
            },
        })
    }

    /// A new key and intermediate at every call: castellan calls it when
    /// the one serving is due for rotation.
    async fn load_mint(&self, mint: &Mint) -> Result<Loaded, Error> {
        let vault = self.vault().await?;
        let minted = mint.mint(&vault).await?;
        // Best effort: without [trust.crl] nobody asks for it, and with it
        // castellan names the missing CRL when it judges the intermediate.
        let upstream_crls = match mint.issuer_crl(&vault).await {
            Ok(der) => vec![der],
            Err(e) => {
                tracing::debug!(error = %e, "the issuing CA's CRL not read");
                Vec::new()
            }
        };
        Ok(Loaded {
            backend: Backend::Signs(minted.key),
            material: Material {
                cert: minted.cert,
                chain: minted.chain,
                roots: Vec::new(),
                cert_source: format!("the intermediate minted by {}", self.describe()),
                fingerprint: None,
                upstream_crls,
            },
        })
    }

    async fn load_transit(&self, t: &TransitConfig) -> Result<Loaded, castellan_signer::Error> {
        let vault = self.vault().await?;
        let (certs, fingerprint) = transit_files(t).read()?;
        let parsed = x509_cert::Certificate::from_der(&certs.cert)
            .map_err(|e| Error::Invalid(format!("{}: {e}", t.cert_file.display())))?;
        let spki = parsed
            .tbs_certificate()
            .subject_public_key_info()
            .to_der()
            .map_err(|e| Error::Invalid(format!("{}: {e}", t.cert_file.display())))?;
        let key = TransitKey::open(&vault, t, &spki).await?;
        Ok(Loaded {
            backend: Backend::Signs(Arc::new(TransitSigner { vault, key })),
            material: Material {
                cert: certs.cert,
                chain: certs.chain,
                roots: certs.roots,
                cert_source: format!("the signing certificate {}", self.describe()),
                fingerprint: Some(fingerprint),
                upstream_crls: Vec::new(),
            },
        })
    }
}

#[async_trait]
impl Source for VaultSource {
    fn describe(&self) -> String {
        match (&self.config.pki, &self.config.transit, &self.mint) {
            (Some(p), _, _) => format!(
                "Vault {}/issuer/{}",
                p.mount.trim_matches('/'),
                p.issuer.as_deref().unwrap_or("default")
            ),
            (None, Some(t), _) => t.cert_file.display().to_string(),
            (None, None, Some(m)) => format!("Vault {}", m.path()),
            (None, None, None) => "Vault (no mode configured)".into(),
        }
    }

    async fn load(&self) -> Result<Loaded, castellan_signer::Error> {
        match (&self.config.pki, &self.config.transit, &self.mint) {
            (Some(p), None, None) => Ok(self.load_pki(Pki::new(p)).await?),
            (None, Some(t), None) => self.load_transit(t).await,
            (None, None, Some(m)) => Ok(self.load_mint(m).await?),
            (Some(_), Some(_), _)
            | (Some(_), None, Some(_))
            | (None, Some(_), Some(_))
            | (None, None, None) => Err(Error::from(ConfigError::Mode).into()),
        }
    }

    fn self_rotating(&self) -> bool {
        self.mint.is_some()
    }

    async fn upstream_crls(&self) -> Result<Vec<Vec<u8>>, castellan_signer::Error> {
        let Some(mint) = &self.mint else {
            return Ok(Vec::new());
        };
        let vault = self.vault().await?;
        Ok(vec![mint.issuer_crl(&vault).await?])
    }

    async fn fingerprint(&self) -> Result<Option<Fingerprint>, castellan_signer::Error> {
        match (&self.config.pki, &self.config.transit) {
            // Mint mode makes new material at every load, never polled.
            _ if self.mint.is_some() => Ok(None),
            (Some(p), _) => {
                let vault = self.vault().await?;
                // An unreachable Vault is not a change: keep what serves.
                match Pki::new(p).issuer_chain(&vault).await {
                    Ok(chain) => Ok(Some(digest_strings(&chain))),
                    Err(e) => {
                        tracing::debug!(error = %e, "Vault issuer not read; not reloading");
                        Ok(None)
                    }
                }
            }
            (None, Some(t)) => {
                let files = transit_files(t);
                let digest = tokio::task::spawn_blocking(move || files.fingerprint())
                    .await
                    .map_err(castellan_signer::Error::failed)??;
                Ok(Some(digest))
            }
            (None, None) => Ok(None),
        }
    }
}

fn transit_files(t: &TransitConfig) -> CertFiles {
    CertFiles::new(
        t.cert_file.clone(),
        t.chain_file.clone(),
        t.root_file.clone(),
    )
}

fn digest_strings(parts: &[String]) -> Fingerprint {
    Fingerprint::of(parts.iter().map(String::as_bytes))
}

// === impl PkiIssuer ===

#[async_trait]
impl LeafIssuer for PkiIssuer {
    async fn issue(&self, order: &LeafOrder<'_>) -> Result<IssuedLeaf, castellan_signer::Error> {
        let ttl = order.ttl.max(Duration::from_secs(1)).as_secs();
        let signed = self
            .pki
            .sign(&self.vault, order.csr_pem, order.uri_san, ttl)
            .await?;
        let der = CertificateDer::from_pem_slice(signed.certificate.as_bytes())
            .map_err(|e| Error::Invalid(format!("Vault's certificate is not PEM: {e}")))?;
        Ok(IssuedLeaf {
            der: der.to_vec(),
            warnings: signed.warnings,
        })
    }

    fn healthy(&self) -> bool {
        self.vault.healthy()
    }

    async fn probe(&self) {
        self.vault.check().await;
    }

    fn queue(&self) -> Option<Arc<castellan_signer::queue::QueueStats>> {
        Some(self.vault.queue())
    }

    async fn crl(&self) -> Result<Option<Vec<u8>>, castellan_signer::Error> {
        Ok(Some(self.pki.crl(&self.vault).await?))
    }
}

// === impl TransitSigner ===

#[async_trait]
impl KeySigner for TransitSigner {
    fn algorithm(&self) -> KeyAlgorithm {
        self.key.algorithm()
    }

    async fn sign(&self, tbs: &[u8]) -> Result<Signature, castellan_signer::Error> {
        let value = match self.key.sign(&self.vault, tbs).await {
            Ok(v) => v,
            // The pinned key or version is gone (deleted, trimmed): the key
            // changed behind castellan, an outage until it is back or the
            // certificate is re-issued, not a request's fault.
            Err(Error::Refused {
                status: 400 | 404,
                path,
                message,
            }) => {
                return Err(castellan_signer::Error::unavailable(Error::Unavailable(
                    format!(
                        "transit key {} cannot sign: {path}: {message}",
                        self.key.describe()
                    ),
                )));
            }
            Err(e) => return Err(e.into()),
        };
        // Vault names the key by name and version on every call; a deleted
        // and recreated key answers to the same name.
        Ok(Signature {
            value,
            key: KeyBinding::PerCall,
        })
    }

    fn healthy(&self) -> bool {
        self.vault.healthy()
    }

    async fn probe(&self) {
        self.vault.check().await;
    }

    fn queue(&self) -> Option<Arc<castellan_signer::queue::QueueStats>> {
        Some(self.vault.queue())
    }

    fn public_key_der(&self) -> Option<Vec<u8>> {
        None
    }
}
