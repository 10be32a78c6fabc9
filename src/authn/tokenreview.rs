//! Tokens checked by the cluster that issued them, with the TokenReview API,
//! exactly as istiod's Kubernetes authenticator does — plus caching (in the
//! chain) so a burst of CSRs does not become a burst of TokenReviews, and a
//! bound on the reviews in progress (`max_concurrent`) so a storm of new
//! tokens waits its turn instead of flooding the API server: a request
//! that cannot be reviewed before its deadline is told "busy", as is one
//! the API server sheds (429).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::dangerous::insecure_decode_claims;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use kube::{Api, Client, api::PostParams};
use serde::Deserialize;
use spiffe::TrustDomain;

use castellan_signer::queue::{Queue, QueueStats, Refused};

use super::Error;
use crate::{
    config,
    identity::{Caller, PodRef, ServiceAccount},
};

const NAME: &str = "tokenreview";
const GROUP: &str = "system:serviceaccounts";
const POD_NAME: &str = "authentication.kubernetes.io/pod-name";
const POD_UID: &str = "authentication.kubernetes.io/pod-uid";

/// TokenReview against one cluster.
#[derive(Clone)]
pub struct TokenReviewAuthenticator {
    client: Client,
    watch_client: Client,
    cluster_id: String,
    aliases: Vec<String>,
    audiences: Vec<String>,
    timeout: Duration,
    trust_domain: TrustDomain,
    /// The reviews in progress, and the line for the rest.
    queue: Queue,
}

// === impl TokenReviewAuthenticator ===

impl TokenReviewAuthenticator {
    /// # Errors
    /// When the cluster's configuration cannot be loaded.
    pub async fn new(
        config: &config::TokenReview,
        trust_domain: TrustDomain,
    ) -> Result<Self, super::SetupError> {
        let timeout = Duration::from_secs(config.timeout_secs);
        let setup = |source| super::SetupError::Cluster {
            cluster: config.cluster_id.clone(),
            source,
        };
        let kube = crate::kube::config(config.kubeconfig.as_deref(), config.context.as_deref())
            .await
            .map_err(setup)?;
        let client = crate::kube::request_client(&kube, timeout).map_err(setup)?;
        let watch_client = crate::kube::watch_client(&kube, timeout).map_err(setup)?;
        Ok(Self {
            client,
            watch_client,
            cluster_id: config.cluster_id.clone(),
            aliases: config.cluster_aliases.clone(),
            audiences: config.audiences.clone(),
            timeout,
            trust_domain,
            queue: Queue::new(config.max_concurrent),
        })
    }

    /// The line reviews wait in, for the metrics.
    pub fn queue(&self) -> std::sync::Arc<QueueStats> {
        self.queue.stats()
    }

    pub fn cluster_id(&self) -> &str {
        &self.cluster_id
    }

    /// Whether `cluster` (from the `clusterid` header) names this cluster.
    pub fn serves(&self, cluster: &str) -> bool {
        self.cluster_id == cluster || self.aliases.iter().any(|a| a == cluster)
    }

    /// A client without read timeout, for watches of this cluster.
    pub fn watch_client(&self) -> &Client {
        &self.watch_client
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Asks the API server who the token belongs to.
    ///
    /// # Errors
    /// [`Error::Rejected`] when the API server says no or the answer is not a
    /// service account; [`Error::Busy`] when no review could be made before
    /// the request's deadline; [`Error::Unavailable`] when the API server
    /// cannot be asked.
    pub async fn authenticate(&self, token: &str) -> Result<(Caller, Option<SystemTime>), Error> {
        let _place = self.queue.enter().await.map_err(|refused| match refused {
            Refused::Full => Error::Busy {
                authenticator: NAME,
                reason: format!(
                    "cluster {}: all {} TokenReviews castellan allows in progress are, and the \
                     request's deadline would pass first (raise authn.max_concurrent, or add replicas)",
                    self.cluster_id,
                    self.queue.capacity()
                ),
            },
            Refused::Closed => unavailable(format!("cluster {}: closed", self.cluster_id)),
        })?;
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_owned(),
                audiences: Some(self.audiences.clone()),
            },
            ..TokenReview::default()
        };
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let answer = tokio::time::timeout(self.timeout, api.create(&PostParams::default(), &review))
            .await
            .map_err(|_| unavailable(format!("cluster {}: TokenReview timed out", self.cluster_id)))?
            .map_err(|e| {
                let what = crate::kube::describe(&e);
                if matches!(&e, kube::Error::Api(status) if status.code == 429) {
                    // API Priority and Fairness shed it: up, but busy.
                    Error::Busy {
                        authenticator: NAME,
                        reason: format!("cluster {}: {what}", self.cluster_id),
                    }
                } else if crate::kube::is_unavailable(&e) {
                    unavailable(format!("cluster {}: {what}", self.cluster_id))
                } else {
                    // 401/403/404: castellan itself is misconfigured (RBAC);
                    // callers should retry once it is fixed, so UNAVAILABLE.
                    unavailable(format!(
                        "cluster {}: {what} (castellan needs `create tokenreviews`: bind system:auth-delegator)",
                        self.cluster_id
                    ))
                }
            })?;
        let status = answer.status.unwrap_or_default();
        let caller = self.caller(status).map_err(|reason| Error::Rejected {
            authenticator: NAME,
            reason: format!("cluster {}: {reason}", self.cluster_id),
        })?;
        Ok((caller, expiry(token)))
    }

    fn caller(&self, status: TokenReviewStatus) -> Result<Caller, String> {
        if status.authenticated != Some(true) {
            return Err(format!(
                "not authenticated: {}",
                status.error.as_deref().unwrap_or("no reason given")
            ));
        }
        if let Some(granted) = &status.audiences
            && !granted.iter().any(|a| self.audiences.contains(a))
        {
            return Err(format!(
                "token audiences {granted:?} include none of {:?}",
                self.audiences
            ));
        }
        let user = status.user.unwrap_or_default();
        let groups = user.groups.unwrap_or_default();
        if !groups.iter().any(|g| g == GROUP) {
            return Err(format!("user is not in group {GROUP}"));
        }
        let username = user.username.unwrap_or_default();
        let sa = ServiceAccount::from_username(&username).map_err(|e| e.to_string())?;
        let extra = user.extra.unwrap_or_default();
        let first = |key: &str| extra.get(key).and_then(|v| v.first()).cloned();
        let pod = match (first(POD_NAME), first(POD_UID)) {
            (Some(name), Some(uid)) => Some(PodRef { name, uid }),
            _ => None,
        };
        Ok(Caller {
            identity: sa
                .spiffe_id(&self.trust_domain)
                .map_err(|e| e.to_string())?,
            service_account: sa,
            pod,
            cluster_id: Some(self.cluster_id.clone()),
            authenticator: NAME,
        })
    }
}

impl std::fmt::Debug for TokenReviewAuthenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenReviewAuthenticator")
            .field("cluster_id", &self.cluster_id)
            .field("aliases", &self.aliases)
            .field("audiences", &self.audiences)
            .finish_non_exhaustive()
    }
}

fn unavailable(reason: String) -> Error {
    Error::Unavailable {
        authenticator: NAME,
        reason,
    }
}

/// The token's `exp`, read once the API server has vouched for the token.
fn expiry(token: &str) -> Option<SystemTime> {
    #[derive(Deserialize)]
    struct Exp {
        exp: Option<u64>,
    }
    insecure_decode_claims::<Exp>(token)
        .ok()?
        .exp
        .and_then(|s| UNIX_EPOCH.checked_add(Duration::from_secs(s)))
}
