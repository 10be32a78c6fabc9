//! Starting every configured issuer as its own authority unit, and the
//! routing table the pipeline and the mesh writers choose them by.

use std::{sync::Arc, time::Duration};

use rustls_pki_types::CertificateDer;
use tokio::task::JoinHandle;

use super::Error;
use crate::{
    authority::Authority,
    ca::CaHandle,
    clock::Clock,
    config::{Config, MAIN_ISSUER},
    issuer::Issuer,
    metrics::Metrics,
    tenancy::{NamespaceLabels, Started, Tenants},
};

/// The started issuers (the main one first) and the routing table.
#[derive(Debug)]
pub(super) struct Issuers {
    pub(super) authorities: Vec<Authority>,
    pub(super) tenants: Arc<Tenants>,
    /// The namespace watch, when a binding selects by label.
    watch: Option<JoinHandle<()>>,
}

impl Issuers {
    /// The main issuer's unit: castellan's own certificates, istiod's, the
    /// operational listener's CRL.
    pub(super) fn main(&self) -> Result<&Authority, Error> {
        self.authorities.first().ok_or(Error::NoIssuer)
    }

    /// Every issuer's roots, each certificate once: client certificates
    /// are verified against them (the identity still picks the issuer).
    pub(super) fn all_roots(&self) -> Vec<CertificateDer<'static>> {
        union_of_roots(self.authorities.iter().map(Authority::ca))
    }

    /// Every issuer's CRL set, in the order of the routing table (empty
    /// without `[trust.crl]`; every issuer keeps one when the main does).
    pub(super) fn crl_feeds(&self) -> crate::mesh::CrlFeeds {
        self.authorities
            .iter()
            .filter_map(|a| a.crl().map(|(rx, _)| rx.clone()))
            .collect()
    }

    /// Stops every unit's tasks and returns once each has ended.
    pub(super) async fn close(self) {
        self.stop();
        if let Some(w) = self.watch {
            let _ = w.await;
        }
        for a in self.authorities {
            a.close().await;
        }
    }

    /// Stops every unit's tasks.
    pub(super) fn stop(&self) {
        if let Some(w) = &self.watch {
            w.abort();
        }
        for a in &self.authorities {
            a.stop();
        }
    }
}

/// Starts each issuer's unit, then refuses two signing with one key (the
/// configuration compared where keys are; here the keys themselves).
///
/// # Errors
/// The first issuer that cannot start, named.
pub(super) async fn start(
    config: &Config,
    metrics: &Metrics,
    clock: &Clock,
) -> Result<Issuers, Error> {
    let skew = Duration::from_secs(config.issuance.not_before_skew_secs);
    let min = Duration::from_secs(config.issuance.min_ttl_secs);
    let mut authorities = Vec::new();
    let mut started = Vec::new();
    for unit in config.units() {
        let authority = if unit.name == MAIN_ISSUER {
            Authority::start(&unit.config, metrics, clock.clone()).await?
        } else {
            let labeled = metrics.for_issuer(&unit.name)?;
            Authority::start(&unit.config, &labeled, clock.clone())
                .await
                .map_err(|source| Error::Issuer {
                    name: unit.name.clone(),
                    source,
                })?
        };
        started.push(Started {
            name: unit.name,
            binding: unit.binding,
            bundle_name: unit.bundle_name,
            issuer: Issuer::new(Arc::clone(authority.ca()), skew, min),
            revocations: authority.revocations().cloned(),
        });
        authorities.push(authority);
    }
    let (labels, watch) = namespace_labels(config).await?;
    let issuers = Issuers {
        authorities,
        tenants: Arc::new(Tenants::new(started, labels)),
        watch,
    };
    if let Err(e) = distinct_keys(&issuers) {
        issuers.stop();
        return Err(e);
    }
    Ok(issuers)
}

/// The namespace labels and their watch, when a binding selects by label.
async fn namespace_labels(
    config: &Config,
) -> Result<(Option<Arc<NamespaceLabels>>, Option<JoinHandle<()>>), Error> {
    let by_label = config.units().iter().any(|u| {
        u.binding
            .as_ref()
            .is_some_and(|b| !b.namespace_labels.is_empty())
    });
    let Some(k) = config.kubernetes.as_ref().filter(|_| by_label) else {
        return Ok((None, None));
    };
    let kube = crate::kube::config(k.kubeconfig.as_deref(), k.context.as_deref())
        .await
        .map_err(crate::mesh::Error::from)?;
    let client = crate::kube::watch_client(&kube, Duration::from_secs(k.timeout_secs))
        .map_err(crate::mesh::Error::from)?;
    let labels = NamespaceLabels::new();
    let watch = labels.watch(client);
    Ok((Some(labels), Some(watch)))
}

/// No two issuers sign with the same key, whatever their sections say.
fn distinct_keys(issuers: &Issuers) -> Result<(), Error> {
    let keys = issuers
        .tenants
        .all()
        .iter()
        .map(|t| (t.name(), t.issuer().ca().current().public_key()));
    match crate::tenancy::shared_key(keys) {
        Some((first, second)) => Err(Error::SharedKey { first, second }),
        None => Ok(()),
    }
}

/// Keeps client-certificate verification on the roots of every issuer's CA
/// in use, when `ca` changes.
pub(super) fn follow_roots(
    ca: Arc<CaHandle>,
    all: Vec<Arc<CaHandle>>,
    client_roots: Arc<super::tls::ClientRoots>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut changes = ca.subscribe();
        while changes.changed().await.is_ok() {
            if let Err(e) = client_roots.update(&union_of_roots(&all)) {
                tracing::error!(error = %e, "new roots unusable for client certificates; keeping the previous ones");
            }
        }
    })
}

/// The roots of every CA in use, each certificate once.
fn union_of_roots<'a>(
    cas: impl IntoIterator<Item = &'a Arc<CaHandle>>,
) -> Vec<CertificateDer<'static>> {
    let mut roots: Vec<CertificateDer<'static>> = Vec::new();
    for ca in cas {
        for r in ca.current().roots() {
            if !roots.contains(r) {
                roots.push(r.clone());
            }
        }
    }
    roots
}
