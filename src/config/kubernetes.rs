//! `[kubernetes]`: the cluster castellan runs in, and what it keeps there —
//! leader election, the trust bundle, istiod's certificate.

use std::path::PathBuf;

use serde::Deserialize;

use super::{Error, validate::invalid};

/// The cluster castellan runs in and what it keeps there.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Kubernetes {
    /// A kubeconfig; unset: in-cluster configuration, or `KUBECONFIG` /
    /// `~/.kube/config`.
    pub kubeconfig: Option<PathBuf>,
    pub context: Option<String>,
    /// castellan's own namespace (the Lease lives there). Unset: the
    /// `POD_NAMESPACE` environment variable, the in-cluster service account's
    /// namespace, else `istio-system`.
    pub namespace: Option<String>,
    /// This replica's name in the Lease. Unset: `POD_NAME` or the host
    /// name, with a random suffix.
    pub identity: Option<String>,
    /// One API request may take this long.
    #[serde(default = "super::defaults::default_api_timeout")]
    pub timeout_secs: u64,
    #[serde(default)]
    pub leader_election: LeaderElection,
    pub trust_bundle: Option<TrustBundle>,
    pub istiod_cert: Option<IstiodCert>,
}

impl Kubernetes {
    /// castellan's own namespace: configured, `POD_NAMESPACE`, the
    /// in-cluster service account's, or `istio-system`.
    pub fn own_namespace(&self) -> String {
        self.namespace
            .clone()
            .or_else(|| {
                std::env::var("POD_NAMESPACE")
                    .ok()
                    .filter(|s| !s.is_empty())
            })
            .or_else(|| {
                std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
                    .ok()
                    .map(|s| s.trim().to_owned())
                    .filter(|s| !s.is_empty())
            })
            .unwrap_or_else(|| "istio-system".to_owned())
    }
}

/// client-go's leader election timings, and the Lease's name.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LeaderElection {
    pub lease_name: String,
    /// How long a Lease not renewed keeps others away.
    pub lease_duration_secs: u64,
    /// The leader stops writing when it could not renew for this long.
    pub renew_deadline_secs: u64,
    /// How often acquiring and renewing are tried.
    pub retry_period_secs: u64,
}

/// The root bundle, published where workloads read it.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrustBundle {
    /// Istio's `values.global.trustBundleName`.
    pub configmap_name: String,
    /// Namespaces to publish in, as a label selector; empty: all.
    pub namespace_selector: String,
    /// Also keep the ClusterTrustBundle `istio.io:istiod-ca:<configmap_name>`
    /// (Istio's `ENABLE_CLUSTER_TRUST_BUNDLE_API`; needs RBAC `attest`).
    pub cluster_trust_bundle: bool,
    /// ConfigMaps written at once when many namespaces need it.
    pub concurrency: usize,
}

/// istiod's serving certificate, from the same PKI.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IstiodCert {
    /// istiod's namespace; the Secret is written there.
    pub namespace: String,
    pub secret_name: String,
    /// istiod's service account (its SPIFFE ID's last segment).
    pub service_account: String,
    /// Revisions other than `default` add `istiod-<rev>.<ns>.svc`.
    pub revisions: Vec<String>,
    /// More DNS names.
    pub dns_names: Vec<String>,
    pub ttl_secs: u64,
    pub key_type: IstiodKeyType,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum IstiodKeyType {
    EcP256,
    Rsa2048,
}

/// istiod's certificate is never due again sooner than this after a write.
pub(crate) const ISTIOD_MIN_RENEWAL_GAP_SECS: u64 = 20;

/// The shortest `kubernetes.istiod_cert.ttl_secs` with backdating `skew`:
/// two thirds of (ttl + skew) must lie `ISTIOD_MIN_RENEWAL_GAP_SECS` past
/// the write, i.e. 2·ttl − skew ≥ 3·gap.
fn istiod_min_ttl(skew: u64) -> u64 {
    (3 * ISTIOD_MIN_RENEWAL_GAP_SECS)
        .saturating_add(skew)
        .div_ceil(2)
        .max(5)
}

impl Kubernetes {
    // Long: the [kubernetes] rules, one per key, each naming its key and the fix.
    pub(super) fn validate(&self, skew: u64) -> Result<(), Error> {
        let le = &self.leader_election;
        if self.timeout_secs == 0 || self.timeout_secs > 300 {
            return invalid("kubernetes.timeout_secs", "must be between 1 and 300");
        }
        if le.lease_name.is_empty() {
            return invalid("kubernetes.leader_election.lease_name", "must not be empty");
        }
        // client-go's rules: duration > deadline > retry period, all set.
        if le.retry_period_secs == 0 {
            return invalid(
                "kubernetes.leader_election.retry_period_secs",
                "must be above 0",
            );
        }
        if le.renew_deadline_secs <= le.retry_period_secs {
            return invalid(
                "kubernetes.leader_election.renew_deadline_secs",
                "must be longer than retry_period_secs",
            );
        }
        if le.lease_duration_secs <= le.renew_deadline_secs || le.lease_duration_secs > 3600 {
            return invalid(
                "kubernetes.leader_election.lease_duration_secs",
                "must be longer than renew_deadline_secs, and at most 3600",
            );
        }
        if let Some(t) = &self.trust_bundle {
            if t.configmap_name.is_empty() {
                return invalid(
                    "kubernetes.trust_bundle.configmap_name",
                    "must not be empty",
                );
            }
            if t.concurrency == 0 || t.concurrency > 256 {
                return invalid(
                    "kubernetes.trust_bundle.concurrency",
                    "must be between 1 and 256",
                );
            }
        }
        if let Some(c) = &self.istiod_cert {
            if c.namespace.is_empty() || c.secret_name.is_empty() || c.service_account.is_empty() {
                return invalid(
                    "kubernetes.istiod_cert",
                    "namespace, secret_name and service_account must not be empty",
                );
            }
            // Renewed at two thirds of its life from its notBefore, which
            // issuance backdates by the skew: the next renewal must come
            // at least MIN_RENEWAL_GAP after a write, or it would loop.
            let min = istiod_min_ttl(skew);
            if c.ttl_secs < min || c.ttl_secs > 30 * 24 * 3600 {
                return Err(Error::Invalid {
                    key: "kubernetes.istiod_cert.ttl_secs",
                    problem: format!(
                        "is {} s: it must be between {min} and 2592000 (30 days); hours are the \
                         norm. istiod's certificate is renewed two thirds into its life counted \
                         from its notBefore, which is backdated issuance.not_before_skew_secs \
                         ({skew} s): below {min} s the next renewal would be due less than \
                         {} s after each write",
                        c.ttl_secs, ISTIOD_MIN_RENEWAL_GAP_SECS
                    ),
                });
            }
        }
        Ok(())
    }
}
