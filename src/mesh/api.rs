//! How a failed call to the API server is told — every call and every
//! watch, classified once (forbidden, not found, conflict, unavailable): a
//! missing permission once per verb and resource, as an ERROR naming the
//! verb, the resource, where, and the RBAC rule that grants it; other
//! failures at most once a minute per resource; all counted by resource and
//! reason. Also how fast a broken watch is retried, and the guard that stops
//! a writer from looping.

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
        Self::of(&e)
    }
}

impl Trouble {
    /// A failed call, classified by its status code.
    pub(crate) fn of(e: &kube::Error) -> Self {
        let text = describe(e);
        match e {
            kube::Error::Api(s) => Self::by_code(s.code, text),
            _ => Self::Unavailable(text),
        }
    }

    /// A failed list or watch, classified as a call would be: a 403 on a
    /// list is a missing permission, not an outage.
    pub(crate) fn of_watch(e: &kube::runtime::watcher::Error) -> Self {
        use kube::runtime::watcher::Error as W;
        match e {
            W::InitialListFailed(k) | W::WatchStartFailed(k) | W::WatchFailed(k) => Self::of(k),
            W::WatchError(status) => Self::by_code(status.code, e.to_string()),
            W::NoResourceVersion => Self::Unavailable(e.to_string()),
        }
    }

    fn by_code(code: u16, text: String) -> Self {
        match code {
            403 => Self::Forbidden(text),
            404 | 410 => Self::Gone(text),
            409 => Self::Conflict(text),
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

    /// Logs (once per permission, or once a minute) and counts. `verb` is
    /// what castellan tried (`list`, `watch`, `update`…), `what` where
    /// (`namespace/name`, or the scope of a list).
    pub(crate) fn report(&self, metrics: &Metrics, resource: &str, verb: &str, what: &str) {
        debug_assert!(crate::metrics::KUBE_RESOURCES.contains(&resource));
        metrics
            .mesh
            .kube_errors
            .with_label_values(&[resource, self.reason()])
            .inc();
        match self {
            Self::Forbidden(message) => {
                if first_time(&format!("forbidden {verb} {resource}"), None) {
                    tracing::error!(
                        %verb,
                        %resource,
                        %what,
                        error = %message,
                        fix = rbac_fix(resource),
                        "castellan is not allowed to {verb} {resource} ({what}); certificates are \
                         still issued, but this is not kept up to date until the RBAC is fixed"
                    );
                }
            }
            Self::Gone(_) | Self::Conflict(_) => {
                tracing::debug!(%verb, %resource, %what, error = %self, "API call lost a race; retrying");
            }
            Self::Unavailable(message) => {
                if first_time(
                    &format!("unavailable {resource}"),
                    Some(Duration::from_secs(60)),
                ) {
                    tracing::warn!(
                        %verb,
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

pub(crate) use crate::kube::WatchBackoff;

/// A writer that writes one object more often than a sane rate is fighting
/// something (another writer undoing each write, a renewal scheduled in the
/// past): it is slowed to the rate, and it says so.
#[derive(Debug)]
pub(crate) struct WriteGuard {
    resource: &'static str,
    limit: usize,
    per: Duration,
    recent: Mutex<HashMap<String, std::collections::VecDeque<Instant>>>,
}

impl WriteGuard {
    /// At most `limit` writes of one object per `per`.
    pub(crate) fn new(resource: &'static str, limit: usize, per: Duration) -> Self {
        Self {
            resource,
            limit: limit.max(1),
            per,
            recent: Mutex::default(),
        }
    }

    /// How long to wait before writing `object` now: zero within the
    /// rate; otherwise the write is logged (once a minute) and counted.
    pub(crate) fn wait(&self, object: &str, metrics: &Metrics) -> Duration {
        let now = Instant::now();
        let mut recent = self
            .recent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let writes = recent.entry(object.to_owned()).or_default();
        while writes
            .front()
            .is_some_and(|t| now.duration_since(*t) >= self.per)
        {
            writes.pop_front();
        }
        if writes.len() < self.limit {
            writes.push_back(now);
            return Duration::ZERO;
        }
        let wait = writes.front().map_or(self.per, |t| {
            self.per.saturating_sub(now.duration_since(*t))
        });
        metrics
            .mesh
            .kube_write_throttled
            .with_label_values(&[self.resource])
            .inc();
        if first_time(
            &format!("throttled {} {object}", self.resource),
            Some(Duration::from_secs(60)),
        ) {
            tracing::error!(
                resource = self.resource,
                object = %object,
                writes = self.limit,
                per_secs = self.per.as_secs(),
                "castellan wrote this object {} times in {} s: something undoes its writes \
                 (another controller writing it too?) or a renewal keeps coming due; slowed \
                 to that rate",
                self.limit,
                self.per.as_secs()
            );
        }
        wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_403_on_a_list_is_a_missing_permission() {
        let status = kube::core::Status::failure("forbidden", "Forbidden").with_code(403);
        let list = kube::runtime::watcher::Error::InitialListFailed(kube::Error::Api(Box::new(
            status.clone(),
        )));
        assert_eq!(Trouble::of_watch(&list).reason(), "forbidden");
        let watch = kube::runtime::watcher::Error::WatchError(Box::new(status));
        assert_eq!(Trouble::of_watch(&watch).reason(), "forbidden");
        let gone = kube::core::Status::failure("expired", "Expired").with_code(410);
        let gone = kube::runtime::watcher::Error::WatchError(Box::new(gone));
        assert_eq!(Trouble::of_watch(&gone).reason(), "not_found");
    }

    #[test]
    fn watches_are_retried_within_seconds() {
        let mut b = WatchBackoff::default();
        let waits: Vec<u128> = (0..6).map(|_| b.next().unwrap().as_millis()).collect();
        assert_eq!(waits, [500, 1000, 2000, 4000, 4000, 4000]);
        kube::runtime::utils::Backoff::reset(&mut b);
        assert_eq!(b.next(), Some(Duration::from_millis(500)));
    }

    #[test]
    fn a_writer_past_its_rate_waits_and_is_counted() {
        let metrics = Metrics::new().unwrap();
        let guard = WriteGuard::new("secrets", 3, Duration::from_secs(60));
        for _ in 0..3 {
            assert_eq!(guard.wait("ns/a", &metrics), Duration::ZERO);
        }
        assert!(guard.wait("ns/a", &metrics) > Duration::from_secs(50));
        assert_eq!(guard.wait("ns/b", &metrics), Duration::ZERO, "per object");
        assert_eq!(
            metrics
                .mesh
                .kube_write_throttled
                .with_label_values(&["secrets"])
                .get(),
            1
        );
    }
}
