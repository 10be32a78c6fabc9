//! Who is calling: an ordered chain of authenticators, each of which either
//! recognises a credential and decides, or passes it on.
//!
//! Failures carry the real reason for the log; the caller only ever learns
//! "authentication failed" (or "unavailable", so it retries).

mod cache;
mod jwks;
mod jwt;

pub use jwks::Jwks;
pub use jwt::JwtAuthenticator;

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use spiffe::TrustDomain;

use crate::{config, identity::Caller, metrics::Metrics};

/// Tokens longer than this are refused unread. Projected service-account
/// tokens are 1–2 KiB; HTTP/2 itself stops headers at 16 KiB.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// What the caller presented.
#[derive(Clone, Copy)]
pub struct Credentials<'a> {
    /// The token from `authorization: Bearer …`.
    pub bearer: Option<&'a str>,
    /// The `clusterid` header: which cluster the caller says it is in.
    pub cluster_id: Option<&'a str>,
}

/// One way of authenticating callers.
#[derive(Debug)]
pub enum Authenticator {
    Jwt(JwtAuthenticator),
}

/// Authenticators in configured order, behind a cache of recent verdicts.
#[derive(Debug)]
pub struct Chain {
    authenticators: Vec<Authenticator>,
    cache: cache::VerdictCache,
}

/// Why a caller is not authenticated. Logged in full, never returned.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no credential: the request has no `authorization: Bearer` token")]
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
}

// === impl Credentials ===

impl std::fmt::Debug for Credentials<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("bearer", &self.bearer.map(|_| "[redacted]"))
            .field("cluster_id", &self.cluster_id)
            .finish()
    }
}

// === impl Chain ===

impl Chain {
    /// Builds every configured authenticator; JWKS files are read now so a
    /// broken one stops start-up.
    ///
    /// # Errors
    /// A message naming the authenticator and what is wrong.
    pub async fn from_config(
        configs: &[config::Authn],
        cache: &config::AuthnCache,
        trust_domain: &TrustDomain,
        metrics: &Metrics,
    ) -> Result<Self, String> {
        let mut authenticators = Vec::with_capacity(configs.len());
        for c in configs {
            authenticators.push(match c {
                config::Authn::Jwt(jwt) => {
                    Authenticator::Jwt(JwtAuthenticator::new(jwt, trust_domain.clone()).await?)
                }
            });
        }
        Ok(Self {
            authenticators,
            cache: cache::VerdictCache::new(
                cache.capacity,
                Duration::from_secs(cache.max_age_secs),
                metrics.authn_cache_hits.clone(),
                metrics.authn_cache_misses.clone(),
            ),
        })
    }

    /// Authenticates with the first authenticator that recognises the
    /// credential, or with a recent verdict for the same credential.
    ///
    /// # Errors
    /// [`Error`], for the log.
    pub async fn authenticate(&self, creds: Credentials<'_>) -> Result<Arc<Caller>, Error> {
        let token = creds.bearer.ok_or(Error::NoCredential)?;
        if token.len() > MAX_TOKEN_BYTES {
            return Err(Error::NotRecognised(format!(
                "token of {} bytes",
                token.len()
            )));
        }
        self.cache
            .get_or_verify(creds.cluster_id, token, self.verify(token))
            .await
    }

    /// The caller, and when its credential expires.
    async fn verify(&self, token: &str) -> Result<(Caller, Option<SystemTime>), Error> {
        for a in &self.authenticators {
            match a {
                Authenticator::Jwt(jwt) if jwt.recognises(token) => {
                    return jwt.authenticate(token).await;
                }
                Authenticator::Jwt(_) => {}
            }
        }
        Err(Error::NotRecognised(jwt::describe_unrecognised(token)))
    }
}
