//! Ambient mode: ztunnel asks for certificates on behalf of the pods on its
//! node (`ImpersonatedIdentity`). Granted only to trusted node agents, for
//! identities that really have a pod on the agent's own node — the check
//! istiod's node authorizer makes, which any CA serving ztunnel must make.

mod pods;

use std::{collections::HashMap, collections::HashSet, sync::Arc, time::Duration};

use spiffe::{SpiffeId, TrustDomain};

use crate::{
    authn::Chain,
    config,
    identity::{Caller, ServiceAccount},
};

/// How long a request waits for a cluster's first pod listing.
const SYNC_WAIT: Duration = Duration::from_secs(5);

/// Decides impersonation requests.
#[derive(Debug)]
pub struct NodeAuthorizer {
    trusted: HashSet<ServiceAccount>,
    trust_domain: TrustDomain,
    /// Cluster id → its pod index.
    clusters: HashMap<String, Arc<pods::PodIndex>>,
}

/// Why impersonation was refused. Logged; the caller learns only that it was.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("impersonation is not configured (impersonation.trusted_node_accounts is empty)")]
    NotConfigured,
    #[error("`{0}` is not a trusted node account")]
    NotTrusted(String),
    #[error("requested identity `{0}` is not a workload identity of this trust domain")]
    BadIdentity(String),
    #[error("the caller's token is not bound to a pod (no pod name/uid)")]
    NoPodBinding,
    #[error("the caller was not authenticated by a cluster castellan watches")]
    NoCluster,
    #[error("caller pod {0} not found (or Failed)")]
    CallerPodMissing(String),
    #[error("caller pod {pod} has uid {found}, the token says {expected}")]
    CallerPodUid {
        pod: String,
        expected: String,
        found: String,
    },
    #[error("caller pod {pod} runs as {found}, not as the token's {expected}")]
    CallerPodAccount {
        pod: String,
        expected: String,
        found: String,
    },
    #[error("caller pod {0} is not scheduled on a node")]
    NotScheduled(String),
    #[error("no pod of {namespace}/{service_account} runs on node {node}")]
    NotOnNode {
        node: String,
        namespace: String,
        service_account: String,
    },
    #[error("pods of cluster {0} are not known yet or the API server is unreachable: {1}")]
    Unavailable(String, String),
}

// === impl NodeAuthorizer ===

impl NodeAuthorizer {
    /// Starts a pod watch for every cluster of `chain`. `None` when no node
    /// account is trusted: impersonation is then always refused.
    pub fn start(
        config: &config::Impersonation,
        chain: &Chain,
        trust_domain: &TrustDomain,
    ) -> Option<Self> {
        if config.trusted_node_accounts.is_empty() {
            return None;
        }
        let trusted = config
            .trusted_node_accounts
            .iter()
            .filter_map(|a| a.split_once('/'))
            .map(|(ns, sa)| ServiceAccount {
                namespace: ns.to_owned(),
                name: sa.to_owned(),
            })
            .collect();
        let clusters = chain
            .clusters()
            .map(|c| {
                let index = pods::PodIndex::start(
                    c.watch_client().clone(),
                    c.client().clone(),
                    c.cluster_id().to_owned(),
                    Duration::from_secs(config.max_staleness_secs),
                );
                (c.cluster_id().to_owned(), Arc::new(index))
            })
            .collect();
        Some(Self {
            trusted,
            trust_domain: trust_domain.clone(),
            clusters,
        })
    }

    /// The identity `caller` may be issued when it asks for `requested`.
    ///
    /// # Errors
    /// [`Error`] naming the rule that refused.
    pub async fn authorize(&self, caller: &Caller, requested: &str) -> Result<SpiffeId, Error> {
        if !self.trusted.contains(&caller.service_account) {
            return Err(Error::NotTrusted(caller.service_account.to_string()));
        }
        let (identity, namespace, service_account) = self.parse(requested)?;
        let pod = caller.pod.as_ref().ok_or(Error::NoPodBinding)?;
        let cluster = caller.cluster_id.as_deref().ok_or(Error::NoCluster)?;
        let index = self.clusters.get(cluster).ok_or(Error::NoCluster)?;
        if !index.wait_synced(SYNC_WAIT).await {
            return Err(Error::Unavailable(
                cluster.to_owned(),
                "pod watch not synced".into(),
            ));
        }
        if let Some(age) = index.stale() {
            return Err(Error::Unavailable(
                cluster.to_owned(),
                format!(
                    "the pod index was last confirmed {} s ago (impersonation.max_staleness_secs)",
                    age.as_secs()
                ),
            ));
        }
        let ns = &caller.service_account.namespace;
        let pod_name = format!("{ns}/{}", pod.name);
        let mut found = index.pod(ns, &pod.name);
        if found.as_ref().is_none_or(|p| p.uid != pod.uid) {
            // The index is eventually consistent: a pod that restarted a
            // moment ago may not be in it yet. Ask the API server once.
            found = index
                .fetch(ns, &pod.name)
                .await
                .map_err(|e| Error::Unavailable(cluster.to_owned(), crate::kube::describe(&e)))?;
        }
        let found = found.ok_or_else(|| Error::CallerPodMissing(pod_name.clone()))?;
        if found.uid != pod.uid {
            return Err(Error::CallerPodUid {
                pod: pod_name,
                expected: pod.uid.clone(),
                found: found.uid,
            });
        }
        if found.service_account != caller.service_account.name {
            return Err(Error::CallerPodAccount {
                pod: pod_name,
                expected: caller.service_account.name.clone(),
                found: found.service_account,
            });
        }
        let node = found.node.ok_or(Error::NotScheduled(pod_name))?;
        if !index.runs_on(&node, &namespace, &service_account) {
            return Err(Error::NotOnNode {
                node,
                namespace,
                service_account,
            });
        }
        Ok(identity)
    }

    /// `spiffe://<our trust domain>/ns/<ns>/sa/<sa>` → (id, ns, sa).
    fn parse(&self, requested: &str) -> Result<(SpiffeId, String, String), Error> {
        let bad = || Error::BadIdentity(requested.chars().take(256).collect());
        let id = SpiffeId::new(requested).map_err(|_| bad())?;
        if id.trust_domain() != &self.trust_domain {
            return Err(bad());
        }
        let segments: Vec<&str> = id.path().trim_start_matches('/').split('/').collect();
        match segments.as_slice() {
            ["ns", ns, "sa", sa] => {
                let (ns, sa) = ((*ns).to_owned(), (*sa).to_owned());
                Ok((id, ns, sa))
            }
            _ => Err(bad()),
        }
    }
}
