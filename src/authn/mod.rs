//! Who is calling: an ordered chain of authenticators, each of which either
//! recognises a credential and decides, or passes it on, behind a cache of
//! recent verdicts.
//!
//! Failures carry the real reason for the log; the caller only ever learns
//! "authentication failed" (or "unavailable", so it retries).

mod cache;
mod client_cert;
mod jwks;
mod jwt;
#[cfg(feature = "testing")]
pub use jwt::fuzz as fuzz_jwt;
mod tokenreview;

pub use client_cert::{ClientCertAuthenticator, NAME as CLIENT_CERT};
pub use jwks::Jwks;
pub use jwt::JwtAuthenticator;
pub use tokenreview::TokenReviewAuthenticator;

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use rustls_pki_types::CertificateDer;
use spiffe::TrustDomain;

use crate::{config, identity::Caller, metrics::Metrics};

/// Tokens longer than this are refused unread. Projected service-account
/// tokens are 1–2 KiB; HTTP/2 itself stops headers at 16 KiB.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// What the caller presented.
#[derive(Clone, Copy, Default)]
pub struct Credentials<'a> {
    /// The token from `authorization: Bearer …`.
    pub bearer: Option<&'a str>,
    /// The `clusterid` header: which cluster the caller says it is in.
    pub cluster_id: Option<&'a str>,
    /// The client certificate chain verified during the TLS handshake.
    pub peer_certs: Option<&'a [CertificateDer<'static>]>,
}

/// One way of authenticating callers.
#[derive(Debug)]
pub enum Authenticator {
    Jwt(JwtAuthenticator),
    TokenReview(TokenReviewAuthenticator),
    ClientCert(ClientCertAuthenticator),
}

/// Authenticators in configured order, behind a cache of recent verdicts.
#[derive(Debug)]
pub struct Chain {
    authenticators: Vec<Authenticator>,
    cache: cache::VerdictCache,
    /// The cluster a request without a `clusterid` header is from: the
    /// first TokenReview authenticator's.
    local_cluster: Option<String>,
}

/// Why a caller is not authenticated. Logged in full, never returned.
#[derive(Clone, Debug, thiserror::Error)]
pub enum Error {
    #[error("no credential: neither an `authorization: Bearer` token nor a client certificate")]
    NoCredential,
    #[error("no authenticator recognises the credential ({0})")]
    NotRecognised(String),
    #[error("{authenticator}: {reason}")]
    Rejected {
        authenticator: &'static str,
        reason: String,
    },
    /// The authenticator's own dependency is down; the caller should retry.
    #[error("{authenticator} unavailable: {reason}")]
    Unavailable {
        authenticator: &'static str,
        reason: String,
    },
    /// The dependency is up but no call to it could be made before the
    /// request's deadline (castellan's bound, or the API server's 429).
    #[error("{authenticator} busy: {reason}")]
    Busy {
        authenticator: &'static str,
        reason: String,
    },
}

/// Why an authenticator cannot be built at start.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("authn.jwks_file {path}: {source}")]
    JwksFile {
        path: std::path::PathBuf,
        source: jwks::Error,
    },
    #[error("authn.jwks_ca_file {path}: {source}")]
    JwksCaRead {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("authn.jwks_ca_file {path}: not a PEM certificate bundle: {source}")]
    JwksCaPem {
        path: std::path::PathBuf,
        source: reqwest::Error,
    },
    #[error("authn: the HTTP client for authn.jwks_url: {0}")]
    HttpClient(reqwest::Error),
    #[error("authn: a jwt section needs jwks_file or jwks_url")]
    NoJwks,
    #[error("authn (tokenreview, cluster {cluster}): {source}")]
    Cluster {
        cluster: String,
        source: crate::kube::Error,
    },
}

// === impl Credentials ===

impl std::fmt::Debug for Credentials<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("bearer", &self.bearer.map(|_| "[redacted]"))
            .field("cluster_id", &self.cluster_id)
            .field("peer_certs", &self.peer_certs.map(<[_]>::len))
            .finish()
    }
}

// === impl Chain ===

impl Chain {
    /// Builds every configured authenticator; JWKS files are read and
    /// kubeconfigs loaded now, so a broken one stops start-up.
    ///
    /// # Errors
    /// A message naming the authenticator and what is wrong.
    pub async fn from_config(
        configs: &[config::Authn],
        cache: &config::AuthnCache,
        trust_domain: &TrustDomain,
        metrics: &Metrics,
        clock: &crate::clock::Clock,
    ) -> Result<Self, SetupError> {
        let mut authenticators = Vec::with_capacity(configs.len());
        for c in configs {
            authenticators.push(match c {
                config::Authn::Jwt(jwt) => Authenticator::Jwt(
                    JwtAuthenticator::new(jwt, trust_domain.clone(), clock.clone()).await?,
                ),
                config::Authn::TokenReview(tr) => {
                    let t = TokenReviewAuthenticator::new(tr, trust_domain.clone()).await?;
                    metrics
                        .queues
                        .watch(&format!("tokenreview:{}", t.cluster_id()), t.queue());
                    Authenticator::TokenReview(t)
                }
                config::Authn::ClientCert(_) => Authenticator::ClientCert(
                    ClientCertAuthenticator::new(trust_domain.clone(), clock.clone()),
                ),
            });
        }
        let local_cluster = authenticators.iter().find_map(|a| match a {
            Authenticator::TokenReview(t) => Some(t.cluster_id().to_owned()),
            _ => None,
        });
        Ok(Self {
            authenticators,
            cache: cache::VerdictCache::new(
                cache.capacity,
                Duration::from_secs(cache.max_age_secs),
                Duration::from_secs(cache.negative_max_age_secs),
                metrics.requests.authn_cache_hits.clone(),
                metrics.requests.authn_cache_misses.clone(),
                clock.clone(),
            ),
            local_cluster,
        })
    }

    /// The TokenReview authenticators, one per cluster, for whoever needs
    /// the same clusters' APIs (node authorization).
    pub fn clusters(&self) -> impl Iterator<Item = &TokenReviewAuthenticator> {
        self.authenticators.iter().filter_map(|a| match a {
            Authenticator::TokenReview(t) => Some(t),
            _ => None,
        })
    }

    /// Whether some authenticator serves `cluster`.
    fn serves(&self, cluster: &str) -> bool {
        self.authenticators.iter().any(|a| match a {
            Authenticator::TokenReview(t) => t.serves(cluster),
            Authenticator::Jwt(j) => j.serves(Some(cluster)),
            Authenticator::ClientCert(_) => false,
        })
    }

    /// A `clusterid` header value as the log may show it: a cluster named
    /// in the configuration, or a fixed marker (the value is untrusted and
    /// may even be a token sent in the wrong header).
    pub fn describe_cluster(&self, cluster: &str) -> String {
        let named = self.authenticators.iter().any(|a| match a {
            Authenticator::TokenReview(t) => t.serves(cluster),
            Authenticator::Jwt(j) => j.lists(cluster),
            Authenticator::ClientCert(_) => false,
        });
        if named {
            cluster.to_owned()
        } else if self.serves(cluster) {
            "<unlisted cluster>".to_owned()
        } else {
            "<unknown cluster>".to_owned()
        }
    }

    /// Authenticates with the first authenticator that recognises the
    /// credential, or with a recent verdict for the same credential.
    ///
    /// # Errors
    /// [`Error`], for the log.
    pub async fn authenticate(&self, creds: Credentials<'_>) -> Result<Arc<Caller>, Error> {
        let cluster = creds
            .cluster_id
            .filter(|c| !c.is_empty())
            .or(self.local_cluster.as_deref());
        if let Some(token) = creds.bearer
            && token.len() > MAX_TOKEN_BYTES
        {
            return Err(Error::NotRecognised(format!(
                "token of {} bytes",
                token.len()
            )));
        }
        for a in &self.authenticators {
            match (a, creds.bearer, creds.peer_certs) {
                (Authenticator::ClientCert(c), _, Some(certs)) => {
                    return c.authenticate(certs).map(|(caller, _)| Arc::new(caller));
                }
                (Authenticator::Jwt(j), Some(token), _)
                    if j.serves(cluster) && j.recognises(token) =>
                {
                    let verify = || j.authenticate(token);
                    return self
                        .cache
                        .get_or_verify(cluster, token, false, verify)
                        .await;
                }
                (Authenticator::TokenReview(t), Some(token), _)
                    if cluster.is_some_and(|c| t.serves(c)) =>
                {
                    let verify = || t.authenticate(token);
                    return self.cache.get_or_verify(cluster, token, true, verify).await;
                }
                _ => {}
            }
        }
        Err(match (creds.bearer, creds.peer_certs) {
            (None, None) => Error::NoCredential,
            (Some(_), _) if cluster.is_some_and(|c| !self.serves(c)) => Error::NotRecognised(
                "the clusterid header names no configured cluster (cluster_id, \
                 cluster_aliases or cluster_ids)"
                    .into(),
            ),
            (Some(token), _) => Error::NotRecognised(format!(
                "cluster {}: {}",
                cluster.map_or_else(|| "-".to_owned(), |c| self.describe_cluster(c)),
                jwt::describe_unrecognised(token)
            )),
            (None, Some(_)) => {
                Error::NotRecognised("client certificate, but no client_cert authenticator".into())
            }
        })
    }
}

/// The caller and when its credential stops being valid.
pub type Verdict = Result<(Caller, Option<SystemTime>), Error>;
