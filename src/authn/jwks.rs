//! The public keys JWTs are checked against: a JWKS document from a file or
//! an HTTPS URL, cached, refreshed on a period and when an unknown key id
//! shows up (key rotation), and kept when a refresh fails.

use std::{collections::HashMap, path::PathBuf, sync::Arc, time::Duration};

use arc_swap::ArcSwapOption;
use jsonwebtoken::{
    Algorithm, DecodingKey,
    jwk::{AlgorithmParameters, JwkSet},
};
use tokio::{sync::Mutex, time::Instant};

/// An unknown `kid` triggers a refresh at most this often, so a flood of
/// forged tokens cannot turn into a flood of JWKS fetches.
const UNKNOWN_KID_REFRESH: Duration = Duration::from_secs(30);
/// After a failed fetch, callers fail fast for this long instead of each
/// waiting on another fetch of an endpoint that is down.
const FAILED_FETCH_BACKOFF: Duration = Duration::from_secs(1);
/// JWKS documents above this size are refused.
const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// A cached, refreshing JWKS.
#[derive(Debug)]
pub struct Jwks {
    source: Source,
    refresh: Duration,
    keys: ArcSwapOption<KeySet>,
    /// Serialises refreshes (concurrent callers wait for one fetch) and
    /// remembers when the last fetch failed.
    refreshing: Mutex<Option<Instant>>,
}

#[derive(Debug)]
enum Source {
    File(PathBuf),
    Url {
        client: reqwest::Client,
        url: String,
    },
}

struct KeySet {
    by_kid: HashMap<String, Arc<DecodingKey>>,
    /// Keys without a `kid`, tried when the token names none.
    anonymous: Vec<Arc<DecodingKey>>,
    fetched_at: Instant,
}

/// Why no key could be found.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("JWKS unavailable: {0}")]
    Unavailable(String),
    #[error("no JWKS key with kid `{0}`")]
    UnknownKid(String),
    #[error("the token names no kid and the JWKS has no key without one")]
    NoKid,
}

// === impl Jwks ===

impl Jwks {
    /// A JWKS read from a file now (so a bad file stops start-up).
    ///
    /// # Errors
    /// Why the file cannot be used.
    pub async fn from_file(path: PathBuf, refresh: Duration) -> Result<Self, Error> {
        let jwks = Self::new(Source::File(path), refresh);
        jwks.fetch().await?;
        Ok(jwks)
    }

    /// A JWKS fetched from `url`. A failed first fetch is logged, not fatal:
    /// callers get UNAVAILABLE until the URL answers.
    pub async fn from_url(client: reqwest::Client, url: String, refresh: Duration) -> Self {
        let jwks = Self::new(Source::Url { client, url }, refresh);
        if let Err(e) = jwks.fetch().await {
            tracing::warn!(error = %e, "JWKS not fetched at start; will retry on demand");
        }
        jwks
    }

    fn new(source: Source, refresh: Duration) -> Self {
        Self {
            source,
            refresh,
            keys: ArcSwapOption::empty(),
            refreshing: Mutex::new(None),
        }
    }

    /// The key for a token's `kid`.
    ///
    /// # Errors
    /// [`Error::Unavailable`] when no keys could ever be fetched; the others
    /// when the token names a key the issuer does not publish.
    pub async fn key(&self, kid: Option<&str>) -> Result<Vec<Arc<DecodingKey>>, Error> {
        let stale = self
            .keys
            .load()
            .as_ref()
            .is_none_or(|k| k.fetched_at.elapsed() >= self.refresh);
        if stale {
            self.refresh_keeping_old(self.refresh).await?;
        }
        if let Some(found) = self.lookup(kid)? {
            return Ok(found);
        }
        // Perhaps the issuer rotated its keys since the last fetch.
        self.refresh_keeping_old(UNKNOWN_KID_REFRESH.min(self.refresh))
            .await?;
        self.lookup(kid)?.ok_or_else(|| match kid {
            Some(k) => Error::UnknownKid(k.to_owned()),
            None => Error::NoKid,
        })
    }

    fn lookup(&self, kid: Option<&str>) -> Result<Option<Vec<Arc<DecodingKey>>>, Error> {
        let guard = self.keys.load();
        let keys = guard
            .as_ref()
            .ok_or_else(|| Error::Unavailable("no keys fetched yet".into()))?;
        Ok(match kid {
            Some(kid) => keys.by_kid.get(kid).map(|k| vec![Arc::clone(k)]),
            None if !keys.anonymous.is_empty() => Some(keys.anonymous.clone()),
            None => None,
        })
    }

    /// Refreshes unless the keys are younger than `max_age` (checked again
    /// under the lock, so concurrent callers share one fetch); on failure the
    /// old keys stay in use, and only a JWKS never fetched is an error.
    async fn refresh_keeping_old(&self, max_age: Duration) -> Result<(), Error> {
        let mut failed_at = self.refreshing.lock().await;
        let fresh = self
            .keys
            .load()
            .as_ref()
            .is_some_and(|k| k.fetched_at.elapsed() < max_age);
        if fresh {
            return Ok(());
        }
        let have_keys = self.keys.load().is_some();
        if failed_at.is_some_and(|t| t.elapsed() < FAILED_FETCH_BACKOFF) {
            return if have_keys {
                Ok(())
            } else {
                Err(Error::Unavailable("JWKS fetch failed moments ago".into()))
            };
        }
        match self.fetch().await {
            Ok(()) => {
                *failed_at = None;
                Ok(())
            }
            Err(e) => {
                *failed_at = Some(Instant::now());
                if have_keys {
                    tracing::warn!(error = %e, "JWKS refresh failed; keeping the previous keys");
                    Ok(())
                } else {
                    Err(e)
                }
            }
        }
    }

    async fn fetch(&self) -> Result<(), Error> {
        let body = match &self.source {
            Source::File(path) => tokio::fs::read(path)
                .await
                .map_err(|e| Error::Unavailable(format!("{}: {e}", path.display())))?,
            Source::Url { client, url } => {
                let resp = client
                    .get(url)
                    .send()
                    .await
                    .and_then(reqwest::Response::error_for_status)
                    .map_err(|e| Error::Unavailable(format!("{url}: {e}")))?;
                resp.bytes()
                    .await
                    .map_err(|e| Error::Unavailable(format!("{url}: {e}")))?
                    .to_vec()
            }
        };
        if body.len() > MAX_JWKS_BYTES {
            return Err(Error::Unavailable(format!(
                "JWKS of {} bytes is too large",
                body.len()
            )));
        }
        let set: JwkSet = serde_json::from_slice(&body)
            .map_err(|e| Error::Unavailable(format!("JWKS is not valid JSON: {e}")))?;
        self.keys.store(Some(Arc::new(KeySet::from(set))));
        Ok(())
    }
}

// === impl KeySet ===

impl From<JwkSet> for KeySet {
    /// Keeps RSA and EC signing keys only: an `oct` (HMAC) key in a JWKS
    /// would let anyone who reads the JWKS mint tokens.
    fn from(set: JwkSet) -> Self {
        let mut by_kid = HashMap::new();
        let mut anonymous = Vec::new();
        for jwk in set.keys {
            let asymmetric = matches!(
                jwk.algorithm,
                AlgorithmParameters::RSA(_) | AlgorithmParameters::EllipticCurve(_)
            );
            let Ok(key) = DecodingKey::from_jwk(&jwk) else {
                continue;
            };
            if !asymmetric {
                continue;
            }
            match jwk.common.key_id {
                Some(kid) => {
                    by_kid.insert(kid, Arc::new(key));
                }
                None => anonymous.push(Arc::new(key)),
            }
        }
        Self {
            by_kid,
            anonymous,
            fetched_at: Instant::now(),
        }
    }
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySet")
            .field("kids", &self.by_kid.keys().collect::<Vec<_>>())
            .field("anonymous", &self.anonymous.len())
            .finish()
    }
}

/// The algorithms castellan accepts on tokens: public-key only, no `none`,
/// no HMAC.
pub(super) const ALLOWED_ALGORITHMS: [Algorithm; 5] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::PS256,
];
