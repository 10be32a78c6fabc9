//! Which pods run where, per cluster: a watch of every non-Failed pod, kept
//! as an index by name and by (node, namespace, service account), so node
//! authorization never lists pods per request.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
    time::Duration,
};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client,
    api::{ListParams, WatchEvent, WatchParams},
};
use tokio::{sync::watch, time::Instant};

/// Istio's node authorizer ignores Failed pods; so does the watch.
const NOT_FAILED: &str = "status.phase!=Failed";

/// What node authorization needs to know about one pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct PodInfo {
    pub(super) uid: String,
    pub(super) service_account: String,
    pub(super) node: Option<String>,
}

#[derive(Debug, Default)]
struct State {
    /// (namespace, name) → pod.
    by_name: HashMap<(String, String), PodInfo>,
    /// (node, namespace, service account) → number of pods.
    by_node: HashMap<(String, String, String), usize>,
}

/// A live index of one cluster's pods.
pub(super) struct PodIndex {
    state: Arc<RwLock<State>>,
    client: Client,
    synced: watch::Receiver<bool>,
    /// When the index was last known to match the API server: a list, a
    /// watch accepted, an event or a bookmark.
    fresh: Arc<std::sync::Mutex<Instant>>,
    max_age: Duration,
}

/// After a failed list or watch, try again this soon, doubling up to
/// [`MAX_RETRY`]: an outage ends, a restarted API server is picked up within
/// a second.
const FIRST_RETRY: Duration = Duration::from_millis(100);
const MAX_RETRY: Duration = Duration::from_secs(1);

// === impl PodIndex ===

impl std::fmt::Debug for PodIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodIndex")
            .field("synced", &*self.synced.borrow())
            .finish_non_exhaustive()
    }
}

impl PodIndex {
    /// Starts watching the cluster's pods in the background: `watch_client`
    /// has no read timeout (a watch is silent for minutes), `client` answers
    /// single reads. The index is trusted for `max_age`: each watch is asked
    /// to end after half of it (and restarted at once from where it was), so
    /// an idle cluster's index is refreshed too.
    pub(super) fn start(
        watch_client: Client,
        client: Client,
        cluster: String,
        max_age: Duration,
    ) -> Self {
        let state = Arc::new(RwLock::new(State::default()));
        let (synced_tx, synced) = watch::channel(false);
        let fresh = Arc::new(std::sync::Mutex::new(Instant::now()));
        let watcher = Watcher {
            api: Api::all(watch_client),
            state: Arc::clone(&state),
            fresh: Arc::clone(&fresh),
            synced: synced_tx,
            cluster,
            session: u32::try_from((max_age / 2).as_secs().max(1)).unwrap_or(u32::MAX),
        };
        tokio::spawn(watcher.run());
        Self {
            state,
            client,
            synced,
            fresh,
            max_age,
        }
    }

    /// How long since the index was last known to be current, if longer than
    /// it may be trusted.
    pub(super) fn stale(&self) -> Option<Duration> {
        let age = self
            .fresh
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .elapsed();
        (age > self.max_age).then_some(age)
    }

    /// Waits up to `limit` for the first full listing.
    pub(super) async fn wait_synced(&self, limit: Duration) -> bool {
        let mut synced = self.synced.clone();
        tokio::time::timeout(limit, synced.wait_for(|s| *s))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// The pod `namespace/name` as the index knows it.
    pub(super) fn pod(&self, namespace: &str, name: &str) -> Option<PodInfo> {
        let s = self.state.read().ok()?;
        s.by_name
            .get(&(namespace.to_owned(), name.to_owned()))
            .cloned()
    }

    /// The pod as the API server knows it now, bypassing the index: for the
    /// case where the index has not caught up with a restarted pod.
    pub(super) async fn fetch(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<PodInfo>, kube::Error> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        Ok(api
            .get_opt(name)
            .await?
            .filter(|p| !failed(p))
            .map(|p| info(&p)))
    }

    /// Whether a non-Failed pod of `namespace/service_account` runs on `node`.
    pub(super) fn runs_on(&self, node: &str, namespace: &str, service_account: &str) -> bool {
        self.state.read().is_ok_and(|s| {
            s.by_node
                .get(&(
                    node.to_owned(),
                    namespace.to_owned(),
                    service_account.to_owned(),
                ))
                .is_some_and(|n| *n > 0)
        })
    }
}

/// The loop keeping one cluster's index: list, then watch from the list's
/// resourceVersion with bookmarks, re-watch at once when the server ends a
/// watch, list again when the version has expired (410 Gone).
struct Watcher {
    api: Api<Pod>,
    state: Arc<RwLock<State>>,
    fresh: Arc<std::sync::Mutex<Instant>>,
    synced: watch::Sender<bool>,
    cluster: String,
    /// Seconds each watch is asked to last.
    session: u32,
}

/// How a watch session ended.
enum Ended {
    /// The server closed it (its timeout): watch again from `version`.
    Closed,
    /// The version is too old: list again.
    Gone,
    /// The connection or the server failed.
    Failed(String),
}

impl Watcher {
    async fn run(self) {
        let mut retry = FIRST_RETRY;
        let mut failing = false;
        loop {
            let version = match self.list().await {
                Ok(v) => v,
                Err(e) => {
                    self.failed(&mut failing, &e);
                    tokio::time::sleep(retry).await;
                    retry = (retry * 2).min(MAX_RETRY);
                    continue;
                }
            };
            let mut version = version;
            loop {
                match self.watch(&mut version).await {
                    Ended::Closed => {
                        retry = FIRST_RETRY;
                        if failing {
                            tracing::info!(cluster = %self.cluster, "pod watch restored");
                            failing = false;
                        }
                    }
                    Ended::Gone => break,
                    Ended::Failed(e) => {
                        self.failed(&mut failing, &e);
                        tokio::time::sleep(retry).await;
                        retry = (retry * 2).min(MAX_RETRY);
                    }
                }
            }
        }
    }

    /// One warning per outage, not per retry.
    fn failed(&self, failing: &mut bool, e: &str) {
        if !*failing {
            tracing::warn!(
                cluster = %self.cluster,
                error = %e,
                "pod watch failed; retrying (impersonation answers UNAVAILABLE once the index \
                 is older than impersonation.max_staleness_secs)"
            );
            *failing = true;
        }
    }

    fn touch(&self) {
        *self
            .fresh
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Instant::now();
    }

    async fn list(&self) -> Result<String, String> {
        let list = self
            .api
            .list(&ListParams::default().fields(NOT_FAILED))
            .await
            .map_err(|e| e.to_string())?;
        let mut fresh = State::default();
        for pod in &list.items {
            fresh.upsert(pod);
        }
        if let Ok(mut s) = self.state.write() {
            *s = fresh;
        }
        self.touch();
        if !self.synced.send_replace(true) {
            tracing::info!(cluster = %self.cluster, pods = list.items.len(), "pod index synced");
        }
        Ok(list.metadata.resource_version.unwrap_or_default())
    }

    async fn watch(&self, version: &mut String) -> Ended {
        let params = WatchParams::default()
            .fields(NOT_FAILED)
            .timeout(self.session);
        let events = match self.api.watch(&params, version).await {
            Ok(events) => events,
            Err(kube::Error::Api(s)) if s.code == 410 => return Ended::Gone,
            Err(e) => return Ended::Failed(e.to_string()),
        };
        // The server accepted a watch from our version: nothing was missed.
        self.touch();
        let mut events = std::pin::pin!(events);
        while let Some(event) = events.next().await {
            let event = match event {
                Ok(e) => e,
                Err(e) => return Ended::Failed(e.to_string()),
            };
            match event {
                WatchEvent::Added(pod) | WatchEvent::Modified(pod) => {
                    remember(version, &pod);
                    if let Ok(mut s) = self.state.write() {
                        s.upsert(&pod);
                    }
                }
                WatchEvent::Deleted(pod) => {
                    remember(version, &pod);
                    if let Ok(mut s) = self.state.write() {
                        s.remove(&key(&pod));
                    }
                }
                WatchEvent::Bookmark(b) => *version = b.metadata.resource_version,
                WatchEvent::Error(s) if s.code == 410 => return Ended::Gone,
                WatchEvent::Error(s) => return Ended::Failed(s.message.clone()),
            }
            self.touch();
        }
        Ended::Closed
    }
}

fn remember(version: &mut String, pod: &Pod) {
    if let Some(v) = &pod.metadata.resource_version {
        version.clone_from(v);
    }
}

// === impl State ===

impl State {
    fn upsert(&mut self, pod: &Pod) {
        let k = key(pod);
        self.remove(&k);
        if failed(pod) {
            return;
        }
        let i = info(pod);
        if let Some(node) = &i.node {
            *self
                .by_node
                .entry((node.clone(), k.0.clone(), i.service_account.clone()))
                .or_default() += 1;
        }
        self.by_name.insert(k, i);
    }

    fn remove(&mut self, k: &(String, String)) {
        let Some(old) = self.by_name.remove(k) else {
            return;
        };
        if let Some(node) = old.node {
            let nk = (node, k.0.clone(), old.service_account);
            if let Some(n) = self.by_node.get_mut(&nk) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.by_node.remove(&nk);
                }
            }
        }
    }
}

fn key(pod: &Pod) -> (String, String) {
    (
        pod.metadata.namespace.clone().unwrap_or_default(),
        pod.metadata.name.clone().unwrap_or_default(),
    )
}

fn info(pod: &Pod) -> PodInfo {
    let spec = pod.spec.as_ref();
    PodInfo {
        uid: pod.metadata.uid.clone().unwrap_or_default(),
        service_account: spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".to_owned()),
        node: spec.and_then(|s| s.node_name.clone()),
    }
}

fn failed(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .is_some_and(|p| p == "Failed")
}
