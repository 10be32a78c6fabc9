//! How a failed call to the API server is told: a missing permission once,
//! with the RBAC rule that grants it; other failures at most once a minute
//! per resource; all of them counted by resource and reason.

use std::{
    collections::HashMap,
    sync::{Mutex, OnceLock},
    time::{Duration, Instant},
};

use crate::metrics::Metrics;

/// A call that did not work.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Trouble {
    /// 403: castellan's service account lacks a permission.
    #[error("{0}")]
    Forbidden(String),
    /// 404 on a namespace or an object gone meanwhile.
    #[error("{0}")]
    Gone(String),
    /// 409: someone else wrote first.
    #[error("{0}")]
    Conflict(String),
    /// The API server is down, slow or failing.
    #[error("{0}")]
    Unavailable(String),
}

impl From<kube::Error> for Trouble {
    fn from(e: kube::Error) -> Self {
        let text = describe(&e);
        match &e {
            kube::Error::Api(s) if s.code == 403 => Self::Forbidden(text),
            kube::Error::Api(s) if s.code == 404 || s.code == 410 => Self::Gone(text),
            kube::Error::Api(s) if s.code == 409 => Self::Conflict(text),
            _ => Self::Unavailable(text),
        }
    }
}

impl Trouble {
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            Self::Forbidden(_) => "forbidden",
            Self::Gone(_) => "not_found",
            Self::Conflict(_) => "conflict",
            Self::Unavailable(_) => "unavailable",
        }
    }

    /// Logs (once per permission, or once a minute) and counts.
    pub(crate) fn report(&self, metrics: &Metrics, resource: &str, what: &str) {
        debug_assert!(crate::metrics::KUBE_RESOURCES.contains(&resource));
        metrics
            .kube_errors
            .with_label_values(&[resource, self.reason()])
            .inc();
        match self {
            Self::Forbidden(message) => {
                if first_time(&format!("forbidden {resource}"), None) {
                    tracing::error!(
                        %resource,
                        error = %message,
                        fix = rbac_fix(resource),
                        "castellan is not allowed to do its job here; certificates are still \
                         issued, but this is not kept up to date until the RBAC is fixed"
                    );
                }
            }
            Self::Gone(_) | Self::Conflict(_) => {
                tracing::debug!(%resource, %what, error = %self, "API call lost a race; retrying");
            }
            Self::Unavailable(message) => {
                if first_time(
                    &format!("unavailable {resource}"),
                    Some(Duration::from_secs(60)),
                ) {
                    tracing::warn!(
                        %resource,
                        %what,
                        error = %message,
                        "Kubernetes API call failed; retrying with back-off (logged at most once a minute)"
                    );
                }
            }
        }
    }
}

/// The Role or ClusterRole rule that grants what castellan needs on `resource`.
fn rbac_fix(resource: &str) -> &'static str {
    match resource {
        "configmaps" => {
            "ClusterRole: configmaps create, and get, list, watch, update on the trust bundle's name (deploy/kubernetes/base/rbac-trust-bundle.yaml)"
        }
        "namespaces" => {
            "ClusterRole: namespaces get, list, watch (deploy/kubernetes/base/rbac-trust-bundle.yaml)"
        }
        "secrets" => {
            "Role in istiod's namespace: secrets create, and get, list, watch, update on the Secret's name (deploy/kubernetes/components/istiod-cert/rbac.yaml)"
        }
        "leases" => {
            "Role in castellan's namespace: leases create, and get, update on the Lease's name (deploy/kubernetes/base/rbac-leader-election.yaml)"
        }
        "clustertrustbundles" => {
            "ClusterRole: clustertrustbundles create, and get, list, watch, update on the bundle's name, and attest on signers istio.io/istiod-ca (deploy/kubernetes/components/cluster-trust-bundle/rbac.yaml)"
        }
        _ => "see deploy/kubernetes/",
    }
}

/// True the first time `key` is seen (or, with `every`, once per period).
fn first_time(key: &str, every: Option<Duration>) -> bool {
    static SEEN: OnceLock<Mutex<HashMap<String, Instant>>> = OnceLock::new();
    let mut seen = SEEN
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    match (seen.get(key), every) {
        (Some(_), None) => false,
        (Some(at), Some(every)) if at.elapsed() < every => false,
        _ => {
            seen.insert(key.to_owned(), Instant::now());
            true
        }
    }
}

/// A failed call in words.
pub(crate) fn describe(e: &kube::Error) -> String {
    crate::kube::describe(e)
}
