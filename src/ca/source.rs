//! Where signing material comes from, per back end, and how a change is noticed.

use der::{Decode, Encode};
use rustls_pki_types::{CertificateDer, pem::PemObject};

use std::{path::PathBuf, sync::Arc};

use tokio::sync::OnceCell;

use super::{Algorithm, Error, Signer};
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
    /// One Vault client for the life of the process, shared by reloads.
    Vault(
        castellan_vault::Config,
        Arc<OnceCell<Arc<castellan_vault::Vault>>>,
    ),
}

// === impl Source ===

impl Source {
    /// # Errors
    /// When the configuration does not resolve to concrete inputs.
    pub fn from_config(signer: &config::Signer) -> Result<Self, Error> {
        match signer {
            config::Signer::File(c) => Ok(Self::File(castellan_file::Paths::resolve(c)?)),
            config::Signer::Vault(c) => Ok(Self::Vault(c.clone(), Arc::new(OnceCell::new()))),
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
            Self::Vault(config, client) => {
                let vault = vault_client(config, client).await?;
                vault_material(config, vault, self.describe()).await
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
            Self::Vault(config, client) => match (&config.pki, &config.transit) {
                (Some(pki), _) => {
                    let vault = vault_client(config, client).await?;
                    // An unreachable Vault is not a change: keep what serves.
                    match castellan_vault::Pki::new(pki).issuer_chain(&vault).await {
                        Ok(chain) => Ok(Some(digest_strings(&chain))),
                        Err(e) => {
                            tracing::debug!(error = %e, "Vault issuer not read; not reloading");
                            Ok(None)
                        }
                    }
                }
                (None, Some(t)) => {
                    let files = cert_files(
                        Some(&t.cert_file),
                        t.chain_file.as_ref(),
                        t.root_file.as_ref(),
                    );
                    Ok(Some(
                        blocking(move || castellan_file::fingerprint_files(&files)).await??,
                    ))
                }
                (None, None) => Ok(None),
            },
            Self::Pkcs11(config) => {
                let files = cert_files(
                    config.cert_file.as_ref(),
                    config.chain_file.as_ref(),
                    config.root_file.as_ref(),
                );
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
            Self::Vault(c, _) => match (&c.pki, &c.transit) {
                (Some(p), _) => format!(
                    "Vault {}/issuer/{}",
                    p.mount,
                    p.issuer.as_deref().unwrap_or("default")
                ),
                (None, Some(t)) => t.cert_file.display().to_string(),
                (None, None) => "Vault (no mode configured)".into(),
            },
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

/// The process's Vault client, connected (and logged in) on first use.
async fn vault_client(
    config: &castellan_vault::Config,
    client: &OnceCell<Arc<castellan_vault::Vault>>,
) -> Result<Arc<castellan_vault::Vault>, Error> {
    client
        .get_or_try_init(|| castellan_vault::Vault::connect(config))
        .await
        .cloned()
        .map_err(|e| Error::Unfit(e.to_string()))
}

/// The issuer chain from Vault (PKI mode) or the certificate files and the
/// pinned transit key version (Transit mode).
async fn vault_material(
    config: &castellan_vault::Config,
    vault: Arc<castellan_vault::Vault>,
    describe: String,
) -> Result<(Signer, Material), Error> {
    let unfit = |e: castellan_vault::Error| Error::Unfit(e.to_string());
    match (&config.pki, &config.transit) {
        (Some(p), None) => {
            let pki = castellan_vault::Pki::new(p);
            let pems = pki.issuer_chain(&vault).await.map_err(unfit)?;
            let mut certs = Vec::new();
            for pem in &pems {
                certs.extend(
                    CertificateDer::pem_slice_iter(pem.as_bytes())
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|e| Error::Unfit(format!("{describe}: {e}")))?,
                );
            }
            if certs.is_empty() {
                return Err(Error::Unfit(format!(
                    "{describe}: Vault returned no certificate"
                )));
            }
            let cert = certs.remove(0);
            let algorithm = key_algorithm(&cert)?;
            let material = Material {
                cert,
                chain: certs,
                roots: Vec::new(),
                cert_source: format!("the signing certificate of {describe}"),
                fingerprint: Some(digest_strings(&pems)),
            };
            Ok((
                Signer::VaultPki {
                    vault,
                    pki,
                    algorithm,
                },
                material,
            ))
        }
        (None, Some(t)) => {
            let mut certs = castellan_file::read_certs(&t.cert_file)?;
            let cert = certs.remove(0);
            if let Some(path) = &t.chain_file {
                certs.extend(castellan_file::read_certs(path)?);
            }
            let roots = match &t.root_file {
                Some(path) => castellan_file::read_certs(path)?,
                None => Vec::new(),
            };
            let parsed = x509_cert::Certificate::from_der(&cert)?;
            let spki = parsed
                .tbs_certificate()
                .subject_public_key_info()
                .to_der()?;
            let key = castellan_vault::TransitKey::open(&vault, t, &spki)
                .await
                .map_err(unfit)?;
            let files = cert_files(
                Some(&t.cert_file),
                t.chain_file.as_ref(),
                t.root_file.as_ref(),
            );
            let material = Material {
                cert,
                chain: certs,
                roots,
                cert_source: format!("the signing certificate {describe}"),
                fingerprint: Some(castellan_file::fingerprint_files(&files)?),
            };
            Ok((Signer::Transit { vault, key }, material))
        }
        _ => Err(Error::Unfit(
            "signer.vault: set exactly one of [signer.pki] and [signer.transit]".into(),
        )),
    }
}

/// What an issuer whose key castellan never sees signs with: the usual
/// pairing for its key (Vault's default `signature_bits`).
fn key_algorithm(cert: &CertificateDer<'_>) -> Result<Algorithm, Error> {
    use const_oid::db::rfc5912;
    let parsed = x509_cert::Certificate::from_der(cert)?;
    let spki = parsed.tbs_certificate().subject_public_key_info();
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.decode_as::<const_oid::ObjectIdentifier>().ok());
    Ok(match (spki.algorithm.oid, curve) {
        (rfc5912::ID_EC_PUBLIC_KEY, Some(rfc5912::SECP_384_R_1)) => Algorithm::EcdsaP384Sha384,
        (rfc5912::ID_EC_PUBLIC_KEY, _) => Algorithm::EcdsaP256Sha256,
        _ => Algorithm::RsaPkcs1Sha256,
    })
}

fn digest_strings(parts: &[String]) -> [u8; 32] {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for p in parts {
        ctx.update(&(p.len() as u64).to_be_bytes());
        ctx.update(p.as_bytes());
    }
    let mut out = [0; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
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
        let files = cert_files(
            config.cert_file.as_ref(),
            config.chain_file.as_ref(),
            config.root_file.as_ref(),
        );
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
    let signer = Signer::pkcs11(key).map_err(|e| Error::Unfit(e.to_string()))?;
    Ok((signer, material))
}

/// The certificate files a signer reads, to notice when they change.
fn cert_files(
    cert: Option<&PathBuf>,
    chain: Option<&PathBuf>,
    root: Option<&PathBuf>,
) -> Vec<PathBuf> {
    [cert, chain, root].into_iter().flatten().cloned().collect()
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, Error> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Unfit(format!("loading task failed: {e}")))
}
