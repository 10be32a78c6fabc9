//! Namespace labels, for bindings that select namespaces by label: a watch
//! of every namespace kept as a map, so choosing an issuer never calls the
//! API server. Until the first list is in, selection by label answers
//! "unavailable" rather than guess.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, RwLock},
};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::{
    Api, Client,
    runtime::{WatchStreamExt, watcher},
};
use tokio::{sync::watch, task::JoinHandle};

type Labels = BTreeMap<String, String>;

/// Every namespace's labels, as the watch last saw them.
#[derive(Debug)]
pub struct NamespaceLabels {
    map: RwLock<HashMap<String, Labels>>,
    /// Bumped at each change once synced (0: not synced yet), for the
    /// trust-bundle writers to follow.
    version: watch::Sender<u64>,
}

/// Why a namespace's labels are not known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotSynced;

// === impl NamespaceLabels ===

impl NamespaceLabels {
    /// Empty and not synced; filled by [`NamespaceLabels::watch`].
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            map: RwLock::default(),
            version: watch::channel(0).0,
        })
    }

    /// Keeps the map equal to the cluster's namespaces until aborted.
    pub fn watch(self: &Arc<Self>, watch_client: Client) -> JoinHandle<()> {
        let me = Arc::clone(self);
        tokio::spawn(async move {
            let api: Api<Namespace> = Api::all(watch_client);
            let mut events = watcher(api, watcher::Config::default())
                .backoff(crate::kube::WatchBackoff::default())
                .boxed();
            let mut buffer: Option<HashMap<String, Labels>> = None;
            while let Some(event) = events.next().await {
                match event {
                    Ok(watcher::Event::Init) => buffer = Some(HashMap::new()),
                    Ok(watcher::Event::InitApply(ns)) => {
                        if let (Some(b), Some(name)) = (buffer.as_mut(), ns.metadata.name) {
                            b.insert(name, ns.metadata.labels.unwrap_or_default());
                        }
                    }
                    Ok(watcher::Event::InitDone) => {
                        if let Some(b) = buffer.take() {
                            *me.write() = b;
                            me.bump();
                        }
                    }
                    Ok(watcher::Event::Apply(ns)) => {
                        if let Some(name) = ns.metadata.name {
                            let labels = ns.metadata.labels.unwrap_or_default();
                            let changed = me.write().insert(name, labels.clone()) != Some(labels);
                            if changed {
                                me.bump();
                            }
                        }
                    }
                    Ok(watcher::Event::Delete(ns)) => {
                        if let Some(name) = ns.metadata.name {
                            me.write().remove(&name);
                            me.bump();
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "namespace watch (issuer bindings by label)")
                    }
                }
            }
        })
    }

    /// Whether `namespace` carries every label of `selector`.
    ///
    /// # Errors
    /// [`NotSynced`] before the first list.
    pub fn matches(&self, namespace: &str, selector: &Labels) -> Result<bool, NotSynced> {
        if *self.version.borrow() == 0 {
            return Err(NotSynced);
        }
        let map = self
            .map
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Ok(map
            .get(namespace)
            .is_some_and(|labels| selector.iter().all(|(k, v)| labels.get(k) == Some(v))))
    }

    /// Changes once synced.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    /// The change count (0: not synced).
    pub fn version(&self) -> u64 {
        *self.version.borrow()
    }

    /// Sets the labels directly (tests of the routing table).
    pub fn set(&self, namespace: &str, labels: &[(&str, &str)]) {
        self.write().insert(
            namespace.to_owned(),
            labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        );
        self.bump();
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Labels>> {
        self.map
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn bump(&self) {
        self.version.send_modify(|v| *v = v.saturating_add(1));
    }
}
