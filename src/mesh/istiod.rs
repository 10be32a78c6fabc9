//! istiod's serving certificate, from the same PKI: a `kubernetes.io/tls`
//! Secret (`tls.crt` = leaf and intermediates, `tls.key`, `ca.crt` = the
//! root bundle) istiod mounts for `--tlsCertFile`, `--tlsKeyFile` and
//! `--caCertFile`. Issued when missing or wrong, renewed at two thirds of
//! its life and at once when the signing CA or the root bundle changes, and
//! repaired when someone edits or deletes it. Written by the leader only;
//! the key never reaches a log.

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, SystemTime},
};

use der::{Decode, Encode};
use futures_util::StreamExt;
use k8s_openapi::{ByteString, api::core::v1::Secret};
use kube::{
    Api, Client,
    api::{ObjectMeta, PostParams},
    runtime::{WatchStreamExt, watcher},
};
use rustls_pki_types::{CertificateDer, pem::PemObject};
use spiffe::{SpiffeId, TrustDomain};
use tokio::sync::Notify;
use x509_cert::{
    Certificate,
    ext::pkix::{SubjectAltName, name::GeneralName},
};
use zeroize::Zeroizing;

use super::{api::Trouble, lease::Leadership};
use crate::{
    ca::CaHandle,
    config::{self, IstiodKeyType},
    issuer::Issuer,
    metrics::Metrics,
    profile::Subject,
};

/// Renew after this share of the lifetime has passed.
const RENEW_AT: f64 = 2.0 / 3.0;

/// What istiod's certificate must be.
struct Wanted {
    namespace: String,
    secret: String,
    dns_names: Vec<String>,
    identity: SpiffeId,
    ttl: Duration,
    key_type: IstiodKeyType,
}

/// Why an issued certificate could not be made.
#[derive(Debug, thiserror::Error)]
enum IssueError {
    #[error("generating istiod's key: {0}")]
    Key(#[from] rcgen::Error),
    #[error("issuing istiod's certificate: {0}")]
    Issue(#[from] crate::issuer::Error),
    #[error("encoding istiod's certificate: {0}")]
    Pem(#[from] der::Error),
    #[error("istiod's identity: {0}")]
    Identity(#[from] spiffe::SpiffeIdError),
}

/// Keeps istiod's Secret while this replica leads; runs until dropped.
pub(crate) async fn run(
    client: Client,
    watch_client: Client,
    config: &config::IstiodCert,
    trust_domain: &TrustDomain,
    issuer: Issuer,
    metrics: Metrics,
    leadership: Leadership,
) {
    let wanted = match wanted(config, trust_domain) {
        Ok(w) => w,
        Err(e) => {
            tracing::error!(error = %e, "istiod's certificate cannot be described; not writing it");
            return;
        }
    };
    let ca = Arc::clone(issuer.ca());
    let api: Api<Secret> = Api::namespaced(client, &wanted.namespace);
    let poke = Arc::new(Notify::new());
    let helpers = spawn_triggers(watch_client, &wanted, &ca, &poke, &metrics);
    let _stop = super::AbortOnDrop(helpers);
    let guard = super::api::WriteGuard::new("secrets", 6, Duration::from_secs(60));
    let mut next_renewal: Option<Duration> = None;
    loop {
        match next_renewal {
            Some(wait) => {
                tokio::select! {
                    () = poke.notified() => {}
                    () = tokio::time::sleep(wait) => {}
                }
            }
            None => poke.notified().await,
        }
        if !leadership.is_leader() {
            next_renewal = None;
            continue;
        }
        let object = format!("{}/{}", wanted.namespace, wanted.secret);
        match reconcile(&api, &wanted, &issuer, &ca, &leadership, &guard, &metrics).await {
            Ok((not_before, not_after)) => {
                metrics.mesh.istiod_cert_expiry.set(unix(not_after));
                next_renewal = Some(renewal_in(
                    not_before,
                    not_after,
                    ca.current().clock().now(),
                ));
            }
            Err(t) => {
                t.report(&metrics, "secrets", "write", &object);
                next_renewal = Some(Duration::from_secs(5));
            }
        }
    }
}

/// The Secret watch and the CA's changes poke the writer.
fn spawn_triggers(
    watch_client: Client,
    wanted: &Wanted,
    ca: &Arc<CaHandle>,
    poke: &Arc<Notify>,
    metrics: &Metrics,
) -> Vec<tokio::task::JoinHandle<()>> {
    let watching = {
        let (poke, metrics) = (Arc::clone(poke), metrics.clone());
        let api: Api<Secret> = Api::namespaced(watch_client, &wanted.namespace);
        let config = watcher::Config::default().fields(&format!("metadata.name={}", wanted.secret));
        let object = format!("{}/{}", wanted.namespace, wanted.secret);
        tokio::spawn(async move {
            let mut events = watcher(api, config)
                .backoff(super::api::WatchBackoff::default())
                .boxed();
            while let Some(event) = events.next().await {
                if let Err(e) = &event {
                    // Never dropped: told, and the writer looks itself
                    // (a Secret deleted while the watch is down comes back
                    // within the watch's retry, not at the next renewal).
                    Trouble::of_watch(e).report(&metrics, "secrets", "list/watch", &object);
                }
                poke.notify_one();
            }
        })
    };
    let following = {
        let (poke, ca) = (Arc::clone(poke), Arc::clone(ca));
        tokio::spawn(async move {
            let mut changes = ca.subscribe();
            while changes.changed().await.is_ok() {
                poke.notify_one();
            }
        })
    };
    vec![watching, following]
}

fn wanted(config: &config::IstiodCert, trust_domain: &TrustDomain) -> Result<Wanted, IssueError> {
    let ns = &config.namespace;
    let mut dns_names = vec![format!("istiod.{ns}.svc")];
    for rev in &config.revisions {
        if rev != "default" && !rev.is_empty() {
            dns_names.push(format!("istiod-{rev}.{ns}.svc"));
        }
    }
    for extra in &config.dns_names {
        if !dns_names.contains(extra) {
            dns_names.push(extra.clone());
        }
    }
    let identity = SpiffeId::from_segments(
        trust_domain.clone(),
        &["ns", ns, "sa", &config.service_account],
    )?;
    Ok(Wanted {
        namespace: ns.clone(),
        secret: config.secret_name.clone(),
        dns_names,
        identity,
        ttl: Duration::from_secs(config.ttl_secs),
        key_type: config.key_type,
    })
}

/// Leaves a good Secret alone, writes a new one otherwise; returns the
/// NotBefore and NotAfter of the certificate in place.
// Long: read the Secret, judge it, write a new certificate when needed: the steps share what was read.
async fn reconcile(
    api: &Api<Secret>,
    wanted: &Wanted,
    issuer: &Issuer,
    ca: &CaHandle,
    leadership: &Leadership,
    guard: &super::api::WriteGuard,
    metrics: &Metrics,
) -> Result<(SystemTime, SystemTime), Trouble> {
    let object = format!("{}/{}", wanted.namespace, wanted.secret);
    for _ in 0..3 {
        let current = api.get_opt(&wanted.secret).await?;
        if let Some(validity) = current.as_ref().and_then(|s| still_good(s, wanted, ca)) {
            return Ok(validity);
        }
        let throttled = guard.wait(&object, metrics);
        if !throttled.is_zero() {
            tokio::time::sleep(throttled).await;
            continue;
        }
        let (data, not_before, not_after) = issue(wanted, issuer)
            .await
            .map_err(|e| Trouble::Unavailable(e.to_string()))?;
        if !leadership.is_leader() {
            return Ok((not_before, not_after));
        }
        let written = match current {
            None => {
                let secret = Secret {
                    metadata: ObjectMeta {
                        name: Some(wanted.secret.clone()),
                        namespace: Some(wanted.namespace.clone()),
                        labels: Some(
                            [(
                                "app.kubernetes.io/managed-by".to_owned(),
                                "castellan".to_owned(),
                            )]
                            .into(),
                        ),
                        ..ObjectMeta::default()
                    },
                    type_: Some("kubernetes.io/tls".to_owned()),
                    data: Some(data),
                    ..Secret::default()
                };
                api.create(&PostParams::default(), &secret).await
            }
            Some(mut secret) => {
                secret.type_ = Some("kubernetes.io/tls".to_owned());
                secret.data = Some(data);
                secret.string_data = None;
                api.replace(&wanted.secret, &PostParams::default(), &secret)
                    .await
            }
        };
        match written {
            Ok(_) => {
                tracing::info!(
                    secret = %object,
                    names = %wanted.dns_names.join(","),
                    not_after = %crate::clock::date(not_after),
                    "istiod's certificate written"
                );
                return Ok((not_before, not_after));
            }
            Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(Trouble::Conflict(format!(
        "Secret {}/{} kept changing under castellan",
        wanted.namespace, wanted.secret
    )))
}

/// The Secret's certificate's NotBefore and NotAfter, if it is one
/// castellan would write now: issued by the signing CA in use with its chain, the names wanted,
/// the roots in use, the key that goes with it, and not due for renewal.
fn still_good(secret: &Secret, wanted: &Wanted, ca: &CaHandle) -> Option<(SystemTime, SystemTime)> {
    let data = secret.data.as_ref()?;
    let text = |k: &str| data.get(k).and_then(|b| std::str::from_utf8(&b.0).ok());
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(text("tls.crt")?.as_bytes())
            .collect::<Result<_, _>>()
            .ok()?;
    let (leaf, rest) = chain.split_first()?;
    let current = ca.current();
    if rest != current.chain()
        || crate::pem::certificate_set(text("ca.crt")?)
            != crate::pem::certificate_set(current.roots_pem())
    {
        return None;
    }
    crate::verify::chain(
        leaf,
        current.chain(),
        current.roots(),
        crate::verify::Usage::Server,
        current.clock().now(),
    )
    .ok()?;
    let cert = Certificate::from_der(leaf).ok()?;
    let tbs = cert.tbs_certificate();
    let (_, san) = tbs.get_extension::<SubjectAltName>().ok()??;
    let mut dns = Vec::new();
    let mut uris = Vec::new();
    for n in san.0 {
        match n {
            GeneralName::DnsName(d) => dns.push(d.to_string()),
            GeneralName::UniformResourceIdentifier(u) => uris.push(u.to_string()),
            _ => return None,
        }
    }
    if dns != wanted.dns_names || uris != [wanted.identity.to_string()] {
        return None;
    }
    let spki = tbs.subject_public_key_info();
    let rsa = spki.algorithm.oid == const_oid::db::rfc5912::RSA_ENCRYPTION;
    if rsa != (wanted.key_type == IstiodKeyType::Rsa2048) {
        return None;
    }
    let key = Zeroizing::new(text("tls.key")?.to_owned());
    let pair = rcgen::KeyPair::from_pem(&key).ok()?;
    if rcgen::PublicKeyData::subject_public_key_info(&pair) != spki.to_der().ok()? {
        return None;
    }
    let not_before = tbs.validity().not_before.to_system_time();
    let not_after = tbs.validity().not_after.to_system_time();
    (ca.current().clock().now() < renew_at(not_before, not_after))
        .then_some((not_before, not_after))
}

/// When a certificate valid from `not_before` to `not_after` is due: two
/// thirds of the way, whatever backdating moved its notBefore.
fn renew_at(not_before: SystemTime, not_after: SystemTime) -> SystemTime {
    let life = not_after.duration_since(not_before).unwrap_or_default();
    not_before + life.mul_f64(RENEW_AT)
}

/// A fresh key and certificate, as the Secret's data.
async fn issue(
    wanted: &Wanted,
    issuer: &Issuer,
) -> Result<(BTreeMap<String, ByteString>, SystemTime, SystemTime), IssueError> {
    let alg = match wanted.key_type {
        IstiodKeyType::EcP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
        IstiodKeyType::Rsa2048 => &rcgen::PKCS_RSA_SHA256,
    };
    let key = rcgen::KeyPair::generate_for(alg)?;
    let spki = rcgen::PublicKeyData::subject_public_key_info(&key);
    let cert = issuer
        .issue_tls(
            &spki,
            Subject::Istiod {
                dns_names: &wanted.dns_names,
                identity: &wanted.identity,
            },
            wanted.key_type == IstiodKeyType::Rsa2048,
            wanted.ttl,
        )
        .await?;
    let mut chain = String::new();
    for c in &cert.chain {
        chain.push_str(&crate::pem::certificate(c)?);
    }
    let roots = issuer.ca().current().roots_pem().to_owned();
    let key_pem = Zeroizing::new(key.serialize_pem());
    let data = [
        ("tls.crt".to_owned(), ByteString(chain.into_bytes())),
        (
            "tls.key".to_owned(),
            ByteString(key_pem.as_bytes().to_vec()),
        ),
        ("ca.crt".to_owned(), ByteString(roots.into_bytes())),
    ]
    .into();
    Ok((data, cert.not_before, cert.not_after))
}

/// How long until the certificate in place is due, by the one rule.
fn renewal_in(not_before: SystemTime, not_after: SystemTime, now: SystemTime) -> Duration {
    renew_at(not_before, not_after)
        .duration_since(now)
        .unwrap_or_default()
        .max(Duration::from_secs(1))
}

fn unix(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}
