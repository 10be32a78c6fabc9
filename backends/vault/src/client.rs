//! The one authenticated Vault client of the process: HTTP with connection
//! pooling and keep-alive, the namespace header, TLS as configured, retries
//! with jittered back-off for what may succeed later, and a health flag.
//! Calls in progress are bounded (`max_concurrent`): the rest wait in line
//! while their request's deadline allows, and are told Vault is busy — not
//! down — when it does not; a Vault that rate-limits (429) past the
//! deadline is busy too.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use castellan_signer::queue::{Queue, QueueStats, Refused};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use tokio::{sync::RwLock, time::Instant};

use crate::{
    Config, Error,
    auth::{Login, Token},
    http::{errors, http_client, jitter},
    setting,
};

/// One attempt may take at most this long, whatever the overall deadline.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// An authenticated Vault client.
pub struct Vault {
    http: reqwest::Client,
    base: String,
    namespace: Option<String>,
    login: Login,
    token: RwLock<Option<Token>>,
    /// Serialises logins so concurrent 403s make one login.
    logging_in: tokio::sync::Mutex<()>,
    healthy: AtomicBool,
    timeout: Duration,
    /// The calls in progress, and the line for the rest.
    queue: Queue,
}

/// Why an attempt is worth repeating, which decides what running out of
/// time means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Retry {
    /// Vault said 429: up, but shedding load.
    Throttled,
    /// No answer within the attempt's time.
    TimedOut,
    /// Refused connection, 5xx: Vault is not serving.
    Failed,
}

/// How a failed attempt is handled.
enum Outcome {
    Done(Value),
    Retry {
        reason: String,
        kind: Retry,
    },
    /// 403: the token is not (or no longer) good.
    Refused(String),
    Fail(Error),
}

// === impl Vault ===

impl Vault {
    /// Builds the client and logs in once, so bad credentials stop start-up,
    /// then keeps the token fresh in the background.
    ///
    /// # Errors
    /// A message naming the setting at fault, or Vault's refusal.
    pub async fn connect(config: &Config) -> Result<Arc<Self>, Error> {
        let address = setting(config.address.as_deref(), &["VAULT_ADDR", "BAO_ADDR"])
            .ok_or_else(|| Error::Config("set address (or VAULT_ADDR)".into()))?;
        let (http, base) = http_client(config, &address)?;
        let vault = Arc::new(Self {
            http,
            base,
            namespace: setting(
                config.namespace.as_deref(),
                &["VAULT_NAMESPACE", "BAO_NAMESPACE"],
            ),
            login: Login::from_config(&config.auth)?,
            token: RwLock::new(None),
            logging_in: tokio::sync::Mutex::new(()),
            healthy: AtomicBool::new(true),
            timeout: Duration::from_secs(config.timeout_secs.max(1)),
            queue: Queue::new(config.max_concurrent),
        });
        vault.relogin(None).await?;
        crate::auth::spawn_renewal(Arc::downgrade(&vault));
        Ok(vault)
    }

    /// The line calls wait in, for castellan's metrics.
    pub fn queue(&self) -> Arc<QueueStats> {
        self.queue.stats()
    }

    /// False after a call ran out of retries, until one succeeds again.
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::SeqCst)
    }

    /// Asks Vault whether it can serve (unsealed, active or standby) and
    /// sets the health flag either way: this is how a sealed Vault is noticed
    /// without traffic, and how it is noticed back.
    pub async fn check(&self) -> bool {
        // sys/health lives outside namespaces; no token needed.
        let url = format!("{}sys/health?standbyok=true&perfstandbyok=true", self.base);
        let ok = self
            .http
            .get(url)
            .timeout(ATTEMPT_TIMEOUT)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        let was = self.healthy.swap(ok, Ordering::SeqCst);
        match (was, ok) {
            (false, true) => tracing::info!("Vault is reachable and unsealed again"),
            (true, false) => tracing::error!(
                "Vault is unreachable, sealed or not initialised (sys/health); \
                 callers get UNAVAILABLE until it is back"
            ),
            (true, true) | (false, false) => {}
        }
        ok
    }

    /// Calls `path` (relative to `/v1/`) with the current token, retrying
    /// connection errors, 412, 429, 500, 502, 503 and 504 until the
    /// configured timeout, and logging in again once on 403.
    ///
    /// # Errors
    /// [`Error::Busy`] when no call could start, or Vault rate-limited,
    /// before the request's deadline; [`Error::Unavailable`] when retries
    /// run out; [`Error::Refused`] for a final refusal.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, Error> {
        let place = self.queue.enter().await.map_err(|refused| match refused {
            Refused::Full => Error::Busy(format!(
                "{path}: all {} calls castellan allows in progress are, and the request's \
                 deadline would pass first (raise signer.vault.max_concurrent, or add replicas)",
                self.queue.capacity()
            )),
            Refused::Closed => Error::Unavailable("the Vault client is closed".into()),
        })?;
        let queued = !place.waited().is_zero();
        let token = self.current_token().await?;
        match self
            .call_within(Some(&token), method.clone(), path, body, queued)
            .await
        {
            Err(Error::Refused { status: 403, .. }) => {
                tracing::warn!(%path, "Vault refused the token (403); logging in again");
                let fresh = self.relogin(Some(&token)).await?;
                self.call_within(Some(&fresh), method, path, body, queued)
                    .await
            }
            other => other,
        }
    }

    /// One HTTP exchange, classified.
    // Long: one HTTP exchange classified: every status Vault answers with is a case here.
    async fn attempt(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        token: Option<&Token>,
        deadline: Instant,
    ) -> Outcome {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .timeout(left.min(ATTEMPT_TIMEOUT));
        if let Some(ns) = &self.namespace {
            req = req.header("X-Vault-Namespace", ns);
        }
        if let Some(t) = token {
            req = req.header("X-Vault-Token", t.secret());
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => {
                return Outcome::Retry {
                    reason: e.to_string(),
                    kind: if e.is_timeout() {
                        Retry::TimedOut
                    } else {
                        Retry::Failed
                    },
                };
            }
        };
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        if status.is_success() {
            if text.trim().is_empty() {
                return Outcome::Done(Value::Null);
            }
            return match serde_json::from_str(&text) {
                Ok(v) => Outcome::Done(v),
                Err(e) => Outcome::Fail(Error::Invalid(format!("{path}: not JSON: {e}"))),
            };
        }
        let message = errors(&text);
        match status {
            StatusCode::FORBIDDEN => Outcome::Refused(message),
            StatusCode::PRECONDITION_FAILED
            | StatusCode::TOO_MANY_REQUESTS
            | StatusCode::INTERNAL_SERVER_ERROR
            | StatusCode::BAD_GATEWAY
            | StatusCode::SERVICE_UNAVAILABLE
            | StatusCode::GATEWAY_TIMEOUT => Outcome::Retry {
                reason: format!("HTTP {}: {message}", status.as_u16()),
                kind: if status == StatusCode::TOO_MANY_REQUESTS {
                    Retry::Throttled
                } else {
                    Retry::Failed
                },
            },
            _ => Outcome::Fail(Error::Refused {
                path: path.to_owned(),
                status: status.as_u16(),
                message,
            }),
        }
    }

    /// A call made without a token (logins), with the same retries.
    pub(crate) async fn call_anonymous(&self, path: &str, body: &Value) -> Result<Value, Error> {
        self.call_as(None, Method::POST, path, Some(body)).await
    }

    /// A call with a given token or none, retried but never followed by a
    /// login (it is used while logging in).
    pub(crate) async fn call_as(
        &self,
        token: Option<&Token>,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, Error> {
        self.call_within(token, method, path, body, false).await
    }

    /// As [`Vault::call_as`]; `queued` when the call waited in line first,
    /// so a request's deadline cutting it short is a sign of load.
    // Long: the retry loop around one attempt: the deadline, the back-off and what each outcome leads to.
    async fn call_within(
        &self,
        token: Option<&Token>,
        method: Method,
        path: &str,
        body: Option<&Value>,
        queued: bool,
    ) -> Result<Value, Error> {
        // `timeout` is validated to 1–300 s. A request's own deadline may
        // come first: retrying past it helps nobody.
        let own = Instant::now() + self.timeout;
        let deadline = castellan_signer::deadline::current().map_or(own, |d| d.min(own));
        let mut backoff = FIRST_BACKOFF;
        // Sticky: once Vault said 429 in this call, running out of time
        // (the last attempt cut short by the deadline included) is busy.
        let mut throttled_once = false;
        loop {
            let (reason, kind) = match self
                .attempt(method.clone(), path, body, token, deadline)
                .await
            {
                Outcome::Done(v) => {
                    if !self.healthy.swap(true, Ordering::SeqCst) {
                        tracing::info!("Vault is reachable again");
                    }
                    return Ok(v);
                }
                Outcome::Fail(e) => return Err(e),
                Outcome::Refused(message) => {
                    return Err(Error::Refused {
                        path: path.to_owned(),
                        status: 403,
                        message,
                    });
                }
                Outcome::Retry { reason, kind } => (reason, kind),
            };
            throttled_once |= kind == Retry::Throttled;
            let pause = jitter(backoff);
            if Instant::now() + pause >= deadline {
                if throttled_once {
                    return Err(Error::Busy(format!(
                        "{path}: Vault is rate-limiting castellan ({reason})"
                    )));
                }
                // Waited in line, then the request's deadline (not Vault's
                // allowance) cut the answer short: load, not an outage.
                if queued && kind == Retry::TimedOut && deadline != own {
                    return Err(Error::Busy(format!(
                        "{path}: the request's deadline passed while Vault answered, after \
                         waiting for a call in progress ({reason})"
                    )));
                }
                // Only Vault's own allowance running out says it is down; a
                // request that had less time says nothing about Vault.
                if deadline == own && self.healthy.swap(false, Ordering::SeqCst) {
                    tracing::error!(%path, error = %reason, "Vault unavailable; callers get UNAVAILABLE");
                }
                return Err(Error::Unavailable(format!("{path}: {reason}")));
            }
            tokio::time::sleep(pause).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    async fn current_token(&self) -> Result<Token, Error> {
        if let Some(t) = self.token.read().await.clone() {
            return Ok(t);
        }
        self.relogin(None).await
    }

    /// Logs in (or re-reads the token file) unless another task already
    /// replaced `stale` meanwhile.
    pub(crate) async fn relogin(&self, stale: Option<&Token>) -> Result<Token, Error> {
        let _one = self.logging_in.lock().await;
        if let (Some(current), Some(stale)) = (self.token.read().await.clone(), stale)
            && !current.same(stale)
        {
            return Ok(current);
        }
        let token = self.login.login(self).await?;
        *self.token.write().await = Some(token.clone());
        Ok(token)
    }

    pub(crate) async fn token(&self) -> Option<Token> {
        self.token.read().await.clone()
    }

    pub(crate) async fn set_token(&self, token: Token) {
        *self.token.write().await = Some(token);
    }

    pub(crate) fn login_method(&self) -> &Login {
        &self.login
    }
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault")
            .field("base", &self.base)
            .field("namespace", &self.namespace)
            .field("login", &self.login)
            .field("healthy", &self.healthy())
            .finish_non_exhaustive()
    }
}
