//! Connecting to a Kubernetes API server: from a kubeconfig file, or the
//! standard resolution (in-cluster service account, `KUBECONFIG`, `~/.kube/config`).

use std::{path::Path, time::Duration};

use kube::{
    Client,
    config::{KubeConfigOptions, Kubeconfig},
};

/// Why a cluster cannot be reached.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubeconfig {path}: {source}")]
    Kubeconfig {
        path: std::path::PathBuf,
        source: kube::config::KubeconfigError,
    },
    #[error("no Kubernetes configuration (not in a cluster, no KUBECONFIG): {0}")]
    Infer(kube::config::InferConfigError),
    #[error("Kubernetes client: {0}")]
    Client(kube::Error),
}

/// One cluster's connection settings, from `kubeconfig` + `context`, or
/// the standard resolution.
///
/// # Errors
/// When the kubeconfig cannot be read or names no usable cluster.
pub async fn config(
    kubeconfig: Option<&Path>,
    context: Option<&str>,
) -> Result<kube::Config, Error> {
    let options = KubeConfigOptions {
        context: context.map(str::to_owned),
        ..KubeConfigOptions::default()
    };
    match kubeconfig {
        Some(path) => {
            let err = |source| Error::Kubeconfig {
                path: path.to_owned(),
                source,
            };
            let file = Kubeconfig::read_from(path).map_err(err)?;
            kube::Config::from_custom_kubeconfig(file, &options)
                .await
                .map_err(err)
        }
        None => kube::Config::infer().await.map_err(Error::Infer),
    }
}

/// A client for requests: `timeout` bounds connecting and every read and
/// write, so a hung API server fails the request instead of holding it.
///
/// # Errors
/// When the configuration names no usable cluster.
pub fn request_client(config: &kube::Config, timeout: Duration) -> Result<Client, Error> {
    let mut config = config.clone();
    config.connect_timeout = Some(timeout);
    config.read_timeout = Some(timeout);
    config.write_timeout = Some(timeout);
    // One attempt per request: an API server that is down makes the request
    // UNAVAILABLE (remembered for a second, retried by the client), and
    // castellan logs one line for it, not one per internal retry.
    config.default_retry = false;
    Client::try_from(config).map_err(Error::Client)
}

/// A client for watches: a watch is silent between events for minutes, so
/// no read timeout; the server ends each watch after its `timeoutSeconds`
/// and kube-rs detects a dead connection a few seconds after that.
///
/// # Errors
/// When the configuration names no usable cluster.
pub fn watch_client(config: &kube::Config, connect_timeout: Duration) -> Result<Client, Error> {
    let mut config = config.clone();
    config.connect_timeout = Some(connect_timeout);
    config.read_timeout = None;
    config.write_timeout = Some(connect_timeout);
    Client::try_from(config).map_err(Error::Client)
}

/// Whether a failed API call is the server's (or the network's) fault, so
/// the caller should retry, rather than a verdict.
pub fn is_unavailable(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(status) => status.code >= 500 || status.code == 429,
        _ => true,
    }
}

/// A failed API call in words: `HTTP 503 ServiceUnavailable: the server is
/// currently unable to handle the request`, not a debug dump.
pub fn describe(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => {
            let reason = if s.reason.is_empty() {
                "-"
            } else {
                s.reason.as_str()
            };
            format!("HTTP {} {reason}: {}", s.code, s.message)
        }
        other => other.to_string(),
    }
}

/// How a watch that failed is retried: from half a second, doubling to four
/// seconds — a permission granted, or an API server back, is seen within
/// seconds (kube's default waits up to thirty).
#[derive(Debug, Clone)]
pub struct WatchBackoff {
    next: Duration,
}

const WATCH_RETRY_FIRST: Duration = Duration::from_millis(500);
const WATCH_RETRY_MAX: Duration = Duration::from_secs(4);

impl Default for WatchBackoff {
    fn default() -> Self {
        Self {
            next: WATCH_RETRY_FIRST,
        }
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let now = self.next;
        self.next = (now * 2).min(WATCH_RETRY_MAX);
        Some(now)
    }
}

impl kube::runtime::utils::Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.next = WATCH_RETRY_FIRST;
    }
}
