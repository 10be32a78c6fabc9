//! What drives the publisher: the namespace and ConfigMap watches, the CA's
//! changes, and a periodic confirmation of what the targets hold.

use std::{collections::HashMap, sync::Arc};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::{
    Api,
    runtime::{WatchStreamExt, watcher},
};
use tokio::sync::Notify;

use super::{CONFIRM_EVERY, IGNORED_NAMESPACES, Publisher, active, unix_now};
use crate::mesh::api::Trouble;

impl Publisher {
    // Long: one watch loop: each kind of event handled where the stream is read.
    pub(super) async fn watch_namespaces(self: Arc<Self>, synced: Arc<Notify>) {
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
            .backoff(crate::mesh::api::WatchBackoff::default())
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

    // Long: one watch loop: each kind of event handled where the stream is read.
    pub(super) async fn watch_maps(self: Arc<Self>, synced: Arc<Notify>) {
        let config = watcher::Config::default().fields(&format!("metadata.name={}", self.name));
        let api: Api<ConfigMap> = Api::all(self.watch_client.clone());
        let scope = format!("{} in every namespace", self.name);
        let mut events = watcher(api, config)
            .backoff(crate::mesh::api::WatchBackoff::default())
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
    pub(super) async fn confirm(self: Arc<Self>) {
        let mut tick = tokio::time::interval(CONFIRM_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.confirm_now();
        }
    }

    /// Sets the publish timestamp if every selected namespace is in sync.
    pub(super) fn confirm_now(&self) {
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
    pub(super) async fn follow(self: Arc<Self>) {
        let mut changes = self.payload.changes();
        let current = || self.payload.everything();
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
}
