//! castellan's own TLS certificate: read from files (re-read when they
//! change) or, by default, issued by castellan's signing CA for the names
//! clients dial and renewed before it expires or when the CA changes.

use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, SystemTime},
};

use arc_swap::ArcSwap;
use aws_lc_rs::{
    encoding::AsDer,
    rand::SystemRandom,
    signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair},
};
use rustls::{
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, pem::PemObject};

use super::Error;
use crate::{config, issuer::Issuer};

/// Renew after this share of the lifetime has passed.
const RENEW_AT: f64 = 2.0 / 3.0;
/// After a failed renewal, try again this soon.
const RETRY: Duration = Duration::from_secs(30);

/// The certificate the TLS listener presents; swapped without a restart.
#[derive(Debug)]
pub(super) struct ServingCert {
    current: ArcSwap<CertifiedKey>,
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// Sets up the serving certificate as configured and keeps it fresh.
///
/// # Errors
/// When the first certificate cannot be had.
pub(super) async fn start(
    tls: &config::ServerTls,
    issuer: &Issuer,
    poll: Duration,
) -> Result<(Arc<ServingCert>, tokio::task::JoinHandle<()>), Error> {
    match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(key)) => {
            let files = (cert.clone(), key.clone());
            let (key, contents) = load_files(&files).await?;
            let serving = Arc::new(ServingCert {
                current: ArcSwap::from_pointee(key),
            });
            let task = tokio::spawn(watch_files(Arc::clone(&serving), files, contents, poll));
            Ok((serving, task))
        }
        _ => {
            let (key, not_after) = issue(issuer, tls).await?;
            let serving = Arc::new(ServingCert {
                current: ArcSwap::from_pointee(key),
            });
            let task = tokio::spawn(renew(
                Arc::clone(&serving),
                issuer.clone(),
                tls.clone(),
                not_after,
            ));
            Ok((serving, task))
        }
    }
}

/// A fresh P-256 key and a certificate for it from castellan's own CA.
async fn issue(
    issuer: &Issuer,
    tls: &config::ServerTls,
) -> Result<(CertifiedKey, SystemTime), Error> {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
        .map_err(|_| Error::KeyGeneration("cannot generate a key"))?;
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref())
        .map_err(|_| Error::KeyGeneration("cannot parse the generated key"))?;
    let spki = pair
        .public_key()
        .as_der()
        .map_err(|_| Error::KeyGeneration("cannot encode the generated key"))?;
    let cert = issuer
        .issue_server(
            spki.as_ref(),
            &tls.dns_names,
            &tls.ip_addresses,
            Duration::from_secs(tls.ttl_secs),
        )
        .await?;
    // Borrowed from the aws-lc document, which wipes itself when dropped.
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pkcs8.as_ref()));
    Ok((certified(cert.chain, &key)?, cert.not_after))
}

async fn renew(
    serving: Arc<ServingCert>,
    issuer: Issuer,
    tls: config::ServerTls,
    not_after: SystemTime,
) {
    let mut ca_changes = issuer.ca().subscribe();
    let mut wait = renewal_delay(not_after, issuer.ca().current().clock().now());
    let mut expiring_logged = false;
    loop {
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            changed = ca_changes.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
        wait = match issue(&issuer, &tls).await {
            Ok((key, not_after)) => {
                serving.current.store(Arc::new(key));
                tracing::info!(not_after = %crate::clock::date(not_after), "serving certificate renewed");
                expiring_logged = false;
                renewal_delay(not_after, issuer.ca().current().clock().now())
            }
            Err(Error::Issue(e @ crate::issuer::Error::CaExpiring { .. })) => {
                // Renewing would only shorten it: keep the current one, say so
                // once, and wait for new signing material.
                if !expiring_logged {
                    tracing::error!(
                        error = %e,
                        "serving certificate not renewed; the current one is kept until the \
                         signing certificate is renewed"
                    );
                    expiring_logged = true;
                }
                RETRY
            }
            Err(e) => {
                tracing::error!(error = %e, "serving certificate renewal failed; retrying");
                RETRY
            }
        };
    }
}

fn renewal_delay(not_after: SystemTime, now: SystemTime) -> Duration {
    not_after
        .duration_since(now)
        .unwrap_or_default()
        .mul_f64(RENEW_AT)
}

/// The certificate file and the key file as read; the key's bytes are
/// wiped when dropped.
type Contents = (Vec<u8>, zeroize::Zeroizing<Vec<u8>>);

async fn load_files(files: &(PathBuf, PathBuf)) -> Result<(CertifiedKey, Contents), Error> {
    let read = |p: &PathBuf| {
        let p = p.clone();
        async move {
            tokio::fs::read(&p).await.map_err(|source| Error::Io {
                what: format!("server.tls file {}", p.display()),
                source,
            })
        }
    };
    let (cert_pem, key_pem) = (
        read(&files.0).await?,
        zeroize::Zeroizing::new(read(&files.1).await?),
    );
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| Error::Pem {
            path: files.0.clone(),
            source,
        })?;
    if chain.is_empty() {
        return Err(Error::NoCertificate {
            path: files.0.clone(),
        });
    }
    let key =
        zeroize::Zeroizing::new(PrivateKeyDer::from_pem_slice(&key_pem).map_err(|source| {
            Error::Pem {
                path: files.1.clone(),
                source,
            }
        })?);
    Ok((certified(chain, &key)?, (cert_pem, key_pem)))
}

async fn watch_files(
    serving: Arc<ServingCert>,
    files: (PathBuf, PathBuf),
    mut seen: Contents,
    poll: Duration,
) {
    if poll.is_zero() {
        return;
    }
    loop {
        tokio::time::sleep(poll).await;
        match load_files(&files).await {
            Ok((_, contents)) if contents == seen => {}
            Ok((key, contents)) => {
                serving.current.store(Arc::new(key));
                seen = contents;
                tracing::info!(cert = %files.0.display(), "serving certificate reloaded");
            }
            Err(e) => {
                tracing::warn!(error = %e, "serving certificate files unusable; keeping the current one")
            }
        }
    }
}

fn certified(
    chain: Vec<CertificateDer<'static>>,
    key: &PrivateKeyDer<'_>,
) -> Result<CertifiedKey, Error> {
    let signing = super::tls::provider()
        .key_provider
        .load_private_key(key.clone_key())
        .map_err(Error::ServingKey)?;
    Ok(CertifiedKey::new(chain, signing))
}
