//! Running a mesh with istiod's CA off: what istiod stops doing, castellan
//! does in the cluster it runs in — publish the trust bundle (ConfigMaps,
//! optionally a ClusterTrustBundle) and keep istiod's serving certificate.
//! Every replica serves CreateCertificate; only the one holding the Lease
//! writes, and it stops writing the moment it cannot renew.

mod api;
mod bundle;
mod ctb;
mod istiod;
mod lease;
mod payload;

/// A PEM bundle as the set of its certificates (order and spacing aside).
use std::sync::Arc;

use tokio::{sync::watch, task::JoinHandle};

use crate::{config, issuer::Issuer, metrics::Metrics, tenancy::Tenants};

pub(crate) use payload::CrlFeeds;

/// Why the cluster cannot be written to.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("[kubernetes]: {0}")]
    Client(#[from] crate::kube::Error),
}

/// Starts leader election and, while leading, the writers the
/// configuration asks for. The returned tasks end when `stop` turns true
/// (the Lease is released first).
///
/// # Errors
/// When the cluster's configuration cannot be loaded.
pub async fn start(
    config: &config::Kubernetes,
    trust_domain: &spiffe::TrustDomain,
    issuer: &Issuer,
    tenants: Arc<Tenants>,
    metrics: &Metrics,
    crl: Option<(CrlFeeds, String)>,
    stop: watch::Receiver<bool>,
) -> Result<Vec<JoinHandle<()>>, Error> {
    if config.trust_bundle.is_none() && config.istiod_cert.is_none() {
        return Ok(Vec::new());
    }
    let timeout = std::time::Duration::from_secs(config.timeout_secs);
    let kube = crate::kube::config(config.kubeconfig.as_deref(), config.context.as_deref()).await?;
    let client = crate::kube::request_client(&kube, timeout)?;
    let watch_client = crate::kube::watch_client(&kube, timeout)?;
    let namespace = config.own_namespace();
    let identity = identity(config);
    tracing::info!(%namespace, %identity, lease = %config.leader_election.lease_name, "leader election");
    let (leadership, elector) = lease::spawn(
        client.clone(),
        &namespace,
        identity,
        &config.leader_election,
        metrics.clone(),
        stop,
    );
    let writers = Writers {
        client,
        watch_client,
        config: config.clone(),
        trust_domain: trust_domain.clone(),
        issuer: issuer.clone(),
        tenants,
        metrics: metrics.clone(),
        crl,
    };
    let supervisor = tokio::spawn(writers.supervise(leadership));
    Ok(vec![elector, supervisor])
}

/// What the leader runs.
struct Writers {
    client: kube::Client,
    watch_client: kube::Client,
    config: config::Kubernetes,
    trust_domain: spiffe::TrustDomain,
    issuer: Issuer,
    /// Every issuer: what each namespace's ConfigMaps hold.
    tenants: Arc<Tenants>,
    metrics: Metrics,
    /// Each issuer's CRL and the ConfigMap name they are published under.
    crl: Option<(CrlFeeds, String)>,
}

impl Writers {
    /// Runs the writers while leading and stops them at once when not.
    async fn supervise(self, leadership: lease::Leadership) {
        let mut changes = leadership.changes();
        let mut running = AbortOnDrop(Vec::new());
        loop {
            let leading = *changes.borrow_and_update();
            if leading && running.0.is_empty() {
                running = AbortOnDrop(self.spawn(&leadership));
            } else if !leading && !running.0.is_empty() {
                running = AbortOnDrop(Vec::new());
            }
            if changes.changed().await.is_err() {
                return;
            }
        }
    }

    /// Each bundle name published (the main one's, then each an issuer has
    /// of its own) with who publishes under it.
    fn bundle_names(&self, t: &config::TrustBundle) -> Vec<payload::Roots> {
        self.tenants
            .bundle_names(&t.configmap_name)
            .into_iter()
            .map(|name| payload::Roots {
                tenants: Arc::clone(&self.tenants),
                name,
                main: t.configmap_name.clone(),
            })
            .collect()
    }

    // Long: each configured writer's task started under the leadership, one block per writer.
    fn spawn(&self, leadership: &lease::Leadership) -> Vec<JoinHandle<()>> {
        let mut tasks = Vec::new();
        if let Some(t) = &self.config.trust_bundle {
            // One publisher per bundle name: the main one's, and each name
            // an issuer has of its own, each writing only where it is read.
            for roots in self.bundle_names(t) {
                let (client, watch, t2, m, l) = (
                    self.client.clone(),
                    self.watch_client.clone(),
                    t.clone(),
                    self.metrics.clone(),
                    leadership.clone(),
                );
                tasks.push(tokio::spawn(async move {
                    let name = roots.name.clone();
                    let payload = payload::Payload::Roots(roots);
                    bundle::Publisher::run(client, watch, &t2, &name, payload, m, l).await;
                }));
            }
            if let Some((feeds, name)) = &self.crl {
                let (client, watch, t2, tenants, feeds, name, m, l) = (
                    self.client.clone(),
                    self.watch_client.clone(),
                    t.clone(),
                    Arc::clone(&self.tenants),
                    feeds.clone(),
                    name.clone(),
                    self.metrics.clone(),
                    leadership.clone(),
                );
                tasks.push(tokio::spawn(async move {
                    let payload = payload::Payload::Crl(tenants, feeds);
                    bundle::Publisher::run(client, watch, &t2, &name, payload, m, l).await;
                }));
            }
            if t.cluster_trust_bundle {
                for roots in self.bundle_names(t) {
                    let (client, watch, m, l) = (
                        self.client.clone(),
                        self.watch_client.clone(),
                        self.metrics.clone(),
                        leadership.clone(),
                    );
                    tasks.push(tokio::spawn(async move {
                        ctb::run(client, watch, roots, m, l).await;
                    }));
                }
            }
        }
        if let Some(c) = &self.config.istiod_cert {
            let (client, watch, c, td, issuer, m, l) = (
                self.client.clone(),
                self.watch_client.clone(),
                c.clone(),
                self.trust_domain.clone(),
                self.issuer.clone(),
                self.metrics.clone(),
                leadership.clone(),
            );
            tasks.push(tokio::spawn(async move {
                istiod::run(client, watch, &c, &td, issuer, m, l).await;
            }));
        }
        tasks
    }
}

/// This replica in the Lease: configured, or the pod (host) name with a
/// random suffix, as client-go makes it, so a restarted pod is a new holder.
fn identity(config: &config::Kubernetes) -> String {
    if let Some(id) = &config.identity {
        return id.clone();
    }
    let host = std::env::var("POD_NAME")
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_else(|| "castellan".to_owned());
    let mut suffix = [0u8; 4];
    let _ = aws_lc_rs::rand::fill(&mut suffix);
    let hex: String = suffix.iter().map(|b| format!("{b:02x}")).collect();
    format!("{host}_{hex}")
}

/// Stops tasks when dropped: losing leadership stops the writers at once.
struct AbortOnDrop(Vec<JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}
