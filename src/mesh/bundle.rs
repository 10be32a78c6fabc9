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

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::{
    Api, Client,
    api::{ObjectMeta, PostParams},
    runtime::{WatchStreamExt, watcher},
};
use tokio::sync::{Notify, mpsc};

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

    async fn watch_namespaces(self: Arc<Self>, synced: Arc<Notify>) {
        let mut config = watcher::Config::default();
        if !self.selector.is_empty() {
            config = config.labels(&self.selector);
        }
        let scope = if self.selector.is_empty() {
            "all namespaces".to_owned()
        } else {
            format!("namespaces matching {}", self.selector)
        };
        let api: Api<Namespace> = Api::all(self.watch_client.clone());
        let mut events = watcher(api, config)
            .backoff(super::api::WatchBackoff::default())
            .boxed();
        let mut buffer: Option<HashMap<String, bool>> = None;
        while let Some(event) = events.next().await {
            match event {
                Ok(watcher::Event::Init) => buffer = Some(HashMap::new()),
                Ok(watcher::Event::InitApply(ns)) => {
                    if let (Some(b), Some(name)) = (buffer.as_mut(), ns.metadata.name.clone())
                        && !IGNORED_NAMESPACES.contains(&name.as_str())
                    {
                        b.insert(name, active(&ns));
                    }
                }
                Ok(watcher::Event::InitDone) => {
                    if let Some(b) = buffer.take() {
                        let mut state = self.lock();
                        state.in_sync.retain(|ns| b.get(ns) == Some(&true));
                        state.namespaces = b;
                        state.synced_namespaces = true;
                    }
                    synced.notify_one();
                    self.enqueue_all();
                }
                Ok(watcher::Event::Apply(ns)) => {
                    let Some(name) = ns.metadata.name.clone() else {
                        continue;
                    };
                    if IGNORED_NAMESPACES.contains(&name.as_str()) {
                        continue;
                    }
                    let is_active = active(&ns);
                    let mut state = self.lock();
                    state.namespaces.insert(name.clone(), is_active);
                    if !is_active {
                        state.in_sync.remove(&name);
                    }
                    drop(state);
                    if is_active {
                        self.enqueue(&name);
                    }
                }
                Ok(watcher::Event::Delete(ns)) => {
                    if let Some(name) = ns.metadata.name {
                        let mut state = self.lock();
                        state.namespaces.remove(&name);
                        state.in_sync.remove(&name);
                    }
                }
                Err(e) => {
                    Trouble::of_watch(&e).report(&self.metrics, "namespaces", "list/watch", &scope)
                }
            }
            self.publish_metrics();
        }
    }

    async fn watch_maps(self: Arc<Self>, synced: Arc<Notify>) {
        let config = watcher::Config::default().fields(&format!("metadata.name={}", self.name));
        let api: Api<ConfigMap> = Api::all(self.watch_client.clone());
        let scope = format!("{} in every namespace", self.name);
        let mut events = watcher(api, config)
            .backoff(super::api::WatchBackoff::default())
            .boxed();
        let mut buffer: Option<HashMap<String, ConfigMap>> = None;
        while let Some(event) = events.next().await {
            match event {
                Ok(watcher::Event::Init) => buffer = Some(HashMap::new()),
                Ok(watcher::Event::InitApply(cm)) => {
                    if let (Some(b), Some(ns)) = (buffer.as_mut(), cm.metadata.namespace.clone()) {
                        b.insert(ns, cm);
                    }
                }
                Ok(watcher::Event::InitDone) => {
                    if let Some(b) = buffer.take() {
                        let mut state = self.lock();
                        state.maps = b;
                        state.synced_maps = true;
                    }
                    synced.notify_one();
                    self.enqueue_all();
                }
                Ok(watcher::Event::Apply(cm)) => {
                    let Some(ns) = cm.metadata.namespace.clone() else {
                        continue;
                    };
                    let good = self.holds_current(&cm);
                    let mut state = self.lock();
                    let wanted = state.namespaces.get(&ns) == Some(&true);
                    state.maps.insert(ns.clone(), cm);
                    if good {
                        state.in_sync.insert(ns.clone());
                    } else {
                        state.in_sync.remove(&ns);
                    }
                    drop(state);
                    if wanted && !good {
                        self.enqueue(&ns);
                    }
                }
                Ok(watcher::Event::Delete(cm)) => {
                    let Some(ns) = cm.metadata.namespace else {
                        continue;
                    };
                    let mut state = self.lock();
                    state.maps.remove(&ns);
                    state.in_sync.remove(&ns);
                    let wanted = state.namespaces.get(&ns) == Some(&true);
                    drop(state);
                    if wanted {
                        self.enqueue(&ns);
                    }
                }
                Err(e) => {
                    Trouble::of_watch(&e).report(&self.metrics, "configmaps", "list/watch", &scope)
                }
            }
            self.publish_metrics();
        }
    }

    /// While leading, confirms every [`CONFIRM_EVERY`] from the watches that
    /// each selected namespace holds what castellan publishes: the publish
    /// timestamp means "the cluster held it as of", advancing on a leader
    /// with nothing to write.
    async fn confirm(self: Arc<Self>) {
        let mut tick = tokio::time::interval(CONFIRM_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.confirm_now();
        }
    }

    /// Sets the publish timestamp if every selected namespace is in sync.
    fn confirm_now(&self) {
        if !self.payload.is_trust_bundle() || !self.leadership.is_leader() {
            return;
        }
        let state = self.lock();
        let whole = state.synced_namespaces
            && state.synced_maps
            && state
                .namespaces
                .iter()
                .filter(|(_, active)| **active)
                .all(|(ns, _)| state.in_sync.contains(ns));
        drop(state);
        if whole {
            self.metrics
                .mesh
                .trust_bundle_last_publish
                .with_label_values(&["configmaps"])
                .set(unix_now());
        }
    }

    /// A new payload is written everywhere.
    async fn follow(self: Arc<Self>) {
        let mut changes = self.payload.changes();
        let current = || self.payload.current().map(|p| self.payload.canon(&p));
        let mut last = current();
        while changes.changed().await {
            let now = current();
            if now != last {
                tracing::info!(
                    what = self.payload.describe(),
                    configmap = %self.name,
                    "changed: publishing it to every namespace"
                );
                last = now;
                self.lock().in_sync.clear();
                self.enqueue_all();
            }
        }
    }

    /// Whether `cm` holds the payload in use and the label (or there is
    /// nothing to publish yet).
    fn holds_current(&self, cm: &ConfigMap) -> bool {
        let Some(want) = self.payload.current().map(|p| self.payload.canon(&p)) else {
            return true;
        };
        let data = cm.data.as_ref().and_then(|d| d.get(self.payload.key()));
        let labeled = cm
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(LABEL.0))
            .is_some_and(|v| v == LABEL.1);
        labeled && data.is_some_and(|d| self.payload.canon(d) == want)
    }

    /// Makes namespace `ns`'s ConfigMap hold the bundle in use.
    async fn reconcile(&self, ns: &str) -> Result<(), Trouble> {
        if !self.leadership.is_leader() || self.lock().namespaces.get(ns) != Some(&true) {
            return Ok(());
        }
        let Some(bundle) = self.payload.current() else {
            return Ok(());
        };
        let want = self.payload.canon(&bundle);
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), ns);
        let mut seen = self.lock().maps.get(ns).cloned();
        for attempt in 0..3 {
            if attempt > 0 {
                seen = api.get_opt(&self.name).await?;
            }
            if !self.leadership.is_leader() {
                return Ok(());
            }
            let throttled = self
                .guard
                .wait(&format!("{ns}/{}", self.name), &self.metrics);
            if !throttled.is_zero() {
                tokio::time::sleep(throttled).await;
                seen = api.get_opt(&self.name).await?;
            }
            let written = match seen.take() {
                None => match api
                    .create(&PostParams::default(), &self.fresh(ns, &bundle))
                    .await
                {
                    Ok(cm) if self.lock().published.contains(ns) => (cm, "repaired"),
                    Ok(cm) => (cm, "created"),
                    // Created meanwhile (by istiod, or before our watch saw it).
                    Err(kube::Error::Api(s)) if s.code == 409 => continue,
                    Err(e) => return Err(self.in_namespace(ns, e)),
                },
                Some(cm) if self.holds_current(&cm) => {
                    self.remember(ns, cm);
                    return Ok(());
                }
                Some(cm) => {
                    let reason = if self.untouched(&cm) {
                        "updated"
                    } else {
                        "repaired"
                    };
                    let mut update = cm;
                    update
                        .data
                        .get_or_insert_with(Default::default)
                        .insert(self.payload.key().to_owned(), bundle.clone());
                    update
                        .metadata
                        .labels
                        .get_or_insert_with(Default::default)
                        .insert(LABEL.0.to_owned(), LABEL.1.to_owned());
                    update
                        .metadata
                        .annotations
                        .get_or_insert_with(Default::default)
                        .insert(WRITTEN.to_owned(), digest(&want));
                    match api
                        .replace(&self.name, &PostParams::default(), &update)
                        .await
                    {
                        Ok(cm) => (cm, reason),
                        // Stale (someone wrote since) or gone: read again.
                        Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => continue,
                        Err(e) => return Err(self.in_namespace(ns, e)),
                    }
                }
            };
            let (cm, reason) = written;
            if reason == "repaired" {
                tracing::info!(
                    namespace = %ns,
                    configmap = %self.name,
                    what = self.payload.describe(),
                    "ConfigMap did not hold what castellan publishes (edited, or written by another): repaired"
                );
            }
            self.payload
                .writes(&self.metrics)
                .with_label_values(&[reason])
                .inc();
            self.remember(ns, cm);
            return Ok(());
        }
        Err(Trouble::Conflict(format!(
            "ConfigMap {ns}/{} kept changing under castellan",
            self.name
        )))
    }

    /// A namespace that went away while castellan wrote is not a failure.
    fn in_namespace(&self, ns: &str, e: kube::Error) -> Trouble {
        let terminating = self.lock().namespaces.get(ns) != Some(&true);
        match Trouble::from(e) {
            Trouble::Gone(_) | Trouble::Forbidden(_) if terminating => {
                Trouble::Gone(format!("namespace {ns} is going away"))
            }
            other => other,
        }
    }

    fn remember(&self, ns: &str, cm: ConfigMap) {
        let mut state = self.lock();
        state.maps.insert(ns.to_owned(), cm);
        state.in_sync.insert(ns.to_owned());
        state.published.insert(ns.to_owned());
        drop(state);
        self.publish_metrics();
        self.confirm_now();
    }

    /// Whether `cm` still holds exactly what castellan last wrote there (its
    /// digest, written beside it, says so): replacing that is an update.
    fn untouched(&self, cm: &ConfigMap) -> bool {
        let stamped = cm
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(WRITTEN));
        let held = cm
            .data
            .as_ref()
            .and_then(|d| d.get(self.payload.key()))
            .map(|d| digest(&self.payload.canon(d)));
        stamped.is_some() && stamped == held.as_ref()
    }

    fn fresh(&self, ns: &str, bundle: &str) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                namespace: Some(ns.to_owned()),
                labels: Some([(LABEL.0.to_owned(), LABEL.1.to_owned())].into()),
                annotations: Some(
                    [
                        (
                            "castellan.io/published-by".to_owned(),
                            format!("castellan: {}", self.payload.describe()),
                        ),
                        (WRITTEN.to_owned(), digest(&self.payload.canon(bundle))),
                    ]
                    .into(),
                ),
                ..ObjectMeta::default()
            },
            data: Some([(self.payload.key().to_owned(), bundle.to_owned())].into()),
            ..ConfigMap::default()
        }
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
