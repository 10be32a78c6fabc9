//! The trust bundle where workloads read it: a ConfigMap (Istio's
//! `trustBundleName`, key `root-cert.pem`, label `istio.io/config: "true"`)
//! in every namespace the selector matches, kept equal to the root bundle in
//! use. Driven by two watches (namespaces, and ConfigMaps of that name in
//! every namespace) and by the CA's changes: at steady state the only API
//! traffic is the watches. A namespace that appears gets its ConfigMap; one
//! edited or deleted by someone else is repaired; a new root bundle is
//! written once per namespace; an existing ConfigMap (istiod's) is adopted.
//! Bundles are compared as sets of certificates, whatever their order. As
//! istiod's namespace controller does, `kube-public`, `kube-node-lease` and
//! `local-path-storage` are left out (`kube-system` is served: ztunnel may
//! run there). Whether a write is an update or a repair is read from the
//! ConfigMap itself (a digest of what castellan last wrote there), so a
//! restart does not turn a root rotation into a repair.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    sync::{Arc, Mutex},
    time::SystemTime,
};

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::Client;
use tokio::sync::{Notify, mpsc};

mod watch;
mod write;

use super::payload::Payload;
use super::{api::Trouble, lease::Leadership};
use crate::{config, metrics::Metrics};

const LABEL: (&str, &str) = ("istio.io/config", "true");
/// A digest of the content castellan wrote: finding it still there, with
/// other content beside, is an update; other content, a repair.
const WRITTEN: &str = "castellan.io/published-sha256";
/// Kubernetes' own namespaces istiod leaves out (its `inject.IgnoredNamespaces`
/// but `kube-system`).
const IGNORED_NAMESPACES: [&str; 3] = ["kube-public", "kube-node-lease", "local-path-storage"];
/// How often a leader confirms, from its watches, that every namespace
/// holds what it publishes (`castellan_trust_bundle_last_publish_timestamp`).
const CONFIRM_EVERY: std::time::Duration = std::time::Duration::from_secs(15);

/// Keeps the trust-bundle ConfigMaps while this replica leads.
pub(crate) struct Publisher {
    client: Client,
    watch_client: Client,
    name: String,
    selector: String,
    concurrency: usize,
    payload: Payload,
    metrics: Metrics,
    leadership: Leadership,
    state: Mutex<State>,
    queue: mpsc::UnboundedSender<String>,
    queued: Mutex<HashSet<String>>,
    /// At most a few writes of one ConfigMap a minute.
    guard: super::api::WriteGuard,
}

#[derive(Default)]
struct State {
    /// Namespaces the selector matches: true while active, false while
    /// terminating.
    namespaces: HashMap<String, bool>,
    /// The ConfigMap of that name in each namespace, as last seen.
    maps: HashMap<String, ConfigMap>,
    /// Namespaces whose ConfigMap holds the bundle in use.
    in_sync: HashSet<String>,
    /// Namespaces this process has published in: a ConfigMap missing there
    /// was deleted, and writing it again is a repair.
    published: HashSet<String>,
    synced_namespaces: bool,
    synced_maps: bool,
}

// === impl Publisher ===

impl Publisher {
    /// Runs until dropped (leadership lost).
    // Long: the publisher's wiring: the watches, the queue's workers and the CA follower, then the loop draining the queue.
    pub(crate) async fn run(
        client: Client,
        watch_client: Client,
        config: &config::TrustBundle,
        name: &str,
        payload: Payload,
        metrics: Metrics,
        leadership: Leadership,
    ) {
        let (queue, mut work) = mpsc::unbounded_channel();
        let me = Arc::new(Self {
            client,
            watch_client,
            name: name.to_owned(),
            selector: config.namespace_selector.clone(),
            concurrency: config.concurrency,
            payload,
            metrics,
            leadership,
            state: Mutex::default(),
            queue,
            queued: Mutex::default(),
            guard: super::api::WriteGuard::new("configmaps", 6, std::time::Duration::from_secs(60)),
        });
        let synced = Arc::new(Notify::new());
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(Arc::clone(&me).watch_namespaces(Arc::clone(&synced)));
        tasks.spawn(Arc::clone(&me).watch_maps(Arc::clone(&synced)));
        tasks.spawn(Arc::clone(&me).follow());
        tasks.spawn(Arc::clone(&me).confirm());
        // Nothing is written before both lists are in: every decision is
        // made knowing what already exists.
        while !me.lock().synced_namespaces || !me.lock().synced_maps {
            synced.notified().await;
        }
        me.enqueue_all();
        let slots = Arc::new(tokio::sync::Semaphore::new(me.concurrency));
        while let Some(ns) = work.recv().await {
            let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
                break;
            };
            let me = Arc::clone(&me);
            tasks.spawn(async move {
                me.queued_done(&ns);
                let outcome = me.reconcile(&ns).await;
                drop(slot);
                if let Err(trouble) = outcome {
                    trouble.report(
                        &me.metrics,
                        "configmaps",
                        "write",
                        &format!("{ns}/{}", me.name),
                    );
                    // Tried again after a pause, not in a tight loop; a
                    // missing permission too, so fixing the RBAC is enough.
                    let pause = match trouble {
                        Trouble::Gone(_) => return,
                        Trouble::Forbidden(_) => std::time::Duration::from_secs(5),
                        Trouble::Unavailable(_) | Trouble::Conflict(_) => {
                            std::time::Duration::from_secs(2)
                        }
                    };
                    tokio::time::sleep(pause).await;
                    me.enqueue(&ns);
                }
            });
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn enqueue(&self, ns: &str) {
        let fresh = self
            .queued
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(ns.to_owned());
        if fresh {
            let _ = self.queue.send(ns.to_owned());
        }
    }

    fn queued_done(&self, ns: &str) {
        self.queued
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(ns);
    }

    fn enqueue_all(&self) {
        let active: Vec<String> = self
            .lock()
            .namespaces
            .iter()
            .filter(|(_, active)| **active)
            .map(|(ns, _)| ns.clone())
            .collect();
        for ns in active {
            self.enqueue(&ns);
        }
    }

    fn publish_metrics(&self) {
        if !self.payload.is_trust_bundle() {
            return;
        }
        let state = self.lock();
        let count = state.in_sync.len();
        let selected = state.namespaces.values().filter(|active| **active).count();
        drop(state);
        self.metrics
            .mesh
            .trust_bundle_namespaces
            .set(i64::try_from(count).unwrap_or(i64::MAX));
        self.metrics
            .mesh
            .trust_bundle_selected
            .set(i64::try_from(selected).unwrap_or(i64::MAX));
    }
}

/// A digest of content compared as a set (order and spacing aside).
fn digest(set: &BTreeSet<Vec<u8>>) -> String {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for item in set {
        ctx.update(&u64::try_from(item.len()).unwrap_or(u64::MAX).to_be_bytes());
        ctx.update(item);
    }
    crate::profile::hex(ctx.finish().as_ref())
}

fn active(ns: &Namespace) -> bool {
    ns.metadata.deletion_timestamp.is_none()
        && ns.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Terminating")
}

pub(crate) fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}
