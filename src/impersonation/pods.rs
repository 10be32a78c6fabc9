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
    runtime::{WatchStreamExt, watcher},
};
use tokio::sync::watch;

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
}

// === impl PodIndex ===

impl std::fmt::Debug for PodIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodIndex")
            .field("synced", &*self.synced.borrow())
            .finish_non_exhaustive()
    }
}

impl PodIndex {
    /// Starts watching the cluster's pods in the background.
    pub(super) fn start(client: Client, cluster: String) -> Self {
        let state = Arc::new(RwLock::new(State::default()));
        let (synced_tx, synced) = watch::channel(false);
        let api: Api<Pod> = Api::all(client.clone());
        let config = watcher::Config::default().fields(NOT_FAILED);
        let writer = Arc::clone(&state);
        tokio::spawn(async move {
            let mut buffer: Option<State> = None;
            let mut events = watcher(api, config).default_backoff().boxed();
            while let Some(event) = events.next().await {
                match event {
                    Ok(watcher::Event::Init) => buffer = Some(State::default()),
                    Ok(watcher::Event::InitApply(pod)) => {
                        if let Some(b) = buffer.as_mut() {
                            b.upsert(&pod);
                        }
                    }
                    Ok(watcher::Event::InitDone) => {
                        if let (Some(b), Ok(mut s)) = (buffer.take(), writer.write()) {
                            *s = b;
                        }
                        synced_tx.send_replace(true);
                        tracing::info!(%cluster, "pod index synced");
                    }
                    Ok(watcher::Event::Apply(pod)) => {
                        if let Ok(mut s) = writer.write() {
                            s.upsert(&pod);
                        }
                    }
                    Ok(watcher::Event::Delete(pod)) => {
                        if let Ok(mut s) = writer.write() {
                            s.remove(&key(&pod));
                        }
                    }
                    Err(e) => tracing::warn!(%cluster, error = %e, "pod watch failed; retrying"),
                }
            }
        });
        Self {
            state,
            client,
            synced,
        }
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
