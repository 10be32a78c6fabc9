//! `[[authn]]`, `[authn_cache]` and `[impersonation]`: who may call, how
//! their credentials are checked, and which node proxies may ask on a pod's
//! behalf.

use std::path::PathBuf;

use serde::Deserialize;

use super::{Error, validate::invalid};

/// One authenticator of the chain (read by `tagged.rs`, by its `type`).
#[derive(Clone, Debug)]
pub enum Authn {
    Jwt(Jwt),
    TokenReview(TokenReview),
    ClientCert(ClientCert),
}

/// Tokens checked by a Kubernetes API server (TokenReview), as istiod does.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenReview {
    /// A kubeconfig for this cluster. Unset: in-cluster configuration, or
    /// `KUBECONFIG` / `~/.kube/config`.
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context; unset: the current one.
    pub context: Option<String>,
    /// The `clusterid` header value that selects this cluster.
    #[serde(default = "super::defaults::default_cluster_id")]
    pub cluster_id: String,
    /// Other names of this cluster (istiod's cluster aliases).
    #[serde(default)]
    pub cluster_aliases: Vec<String>,
    #[serde(default = "super::defaults::default_audiences")]
    pub audiences: Vec<String>,
    /// A TokenReview that takes longer fails as UNAVAILABLE.
    #[serde(default = "super::defaults::default_api_timeout")]
    pub timeout_secs: u64,
    /// TokenReviews in progress at once towards this cluster; more wait
    /// while their request's deadline allows, then are answered busy.
    #[serde(default = "super::defaults::default_tokenreview_concurrency")]
    pub max_concurrent: usize,
}

/// Callers presenting a client certificate issued under the mesh roots
/// (VM renewal with `PROV_CERT`) are who its SPIFFE URI SAN says.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientCert {}

/// ztunnel asking for certificates on behalf of the pods on its node.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Impersonation {
    /// `namespace/serviceaccount` of the node agents allowed to impersonate,
    /// e.g. `istio-system/ztunnel` (istiod's CA_TRUSTED_NODE_ACCOUNTS).
    pub trusted_node_accounts: Vec<String>,
    /// Impersonation is refused (UNAVAILABLE) while the pod index behind it
    /// is older than this; each watch is renewed every half of it.
    pub max_staleness_secs: u64,
}

/// JWT bearer tokens (Kubernetes projected service-account tokens) checked
/// against a JWKS.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Jwt {
    /// Accepted `iss` values; a token with another issuer is left to the next authenticator.
    pub issuers: Vec<String>,
    #[serde(default = "super::defaults::default_audiences")]
    pub audiences: Vec<String>,
    /// A JWKS document on disk (re-read when it changes)…
    pub jwks_file: Option<PathBuf>,
    /// …or fetched over HTTPS and cached.
    pub jwks_url: Option<String>,
    /// PEM CA bundle for `jwks_url`; unset: the system roots.
    pub jwks_ca_file: Option<PathBuf>,
    #[serde(default = "super::defaults::default_jwks_refresh")]
    pub jwks_refresh_secs: u64,
    /// Allowance for clock differences on `exp`, `nbf` and `iat`.
    #[serde(default = "super::defaults::default_jwt_skew")]
    pub clock_skew_secs: u64,
    /// `clusterid` header values this issuer serves; empty: any cluster.
    #[serde(default)]
    pub cluster_ids: Vec<String>,
}

/// How long an authentication verdict is reused for the same credential.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthnCache {
    /// Credentials remembered at once.
    pub capacity: usize,
    /// Upper bound on reuse, below the credential's own expiry; 0 disables.
    pub max_age_secs: u64,
    /// How long a rejected credential is remembered as rejected.
    pub negative_max_age_secs: u64,
}

impl TokenReview {
    pub(super) fn validate(&self) -> Result<(), Error> {
        if self.cluster_id.is_empty() {
            return invalid("authn.cluster_id", "must not be empty");
        }
        if self.audiences.is_empty() {
            return invalid(
                "authn.audiences",
                "is empty: Istio clients use \"istio-ca\"",
            );
        }
        if self.timeout_secs == 0 {
            return invalid("authn.timeout_secs", "must be above 0");
        }
        if !(1..=super::defaults::MAX_TOKENREVIEW_CONCURRENCY).contains(&self.max_concurrent) {
            return invalid(
                "authn.max_concurrent",
                &format!(
                    "must be between 1 and {}: the TokenReviews in progress at once",
                    super::defaults::MAX_TOKENREVIEW_CONCURRENCY
                ),
            );
        }
        Ok(())
    }
}

impl Jwt {
    pub(super) fn validate(&self) -> Result<(), Error> {
        if self.issuers.is_empty() {
            return invalid(
                "authn.issuers",
                "is empty: list the accepted token issuers (`iss`)",
            );
        }
        if self.audiences.is_empty() {
            return invalid(
                "authn.audiences",
                "is empty: Istio clients use \"istio-ca\"",
            );
        }
        match (&self.jwks_file, &self.jwks_url) {
            (Some(_), None) | (None, Some(_)) => {}
            _ => return invalid("authn.jwks_file", "or authn.jwks_url: set exactly one"),
        }
        if let Some(url) = &self.jwks_url
            && !url.starts_with("https://")
            && !url.starts_with("http://127.0.0.1")
            && !url.starts_with("http://localhost")
        {
            return invalid(
                "authn.jwks_url",
                "must be https:// (plain http only on loopback)",
            );
        }
        if self.jwks_refresh_secs == 0 {
            return invalid("authn.jwks_refresh_secs", "must be above 0");
        }
        Ok(())
    }
}
