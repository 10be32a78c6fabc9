//! `[server]` and `[server.tls]`: the listeners, their limits, and
//! castellan's own serving certificate.

use std::{net::SocketAddr, path::PathBuf};

use serde::Deserialize;

/// The gRPC listener and the operational (health, metrics) listener.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Server {
    #[serde(deserialize_with = "super::defaults::socket_addr")]
    pub listen: SocketAddr,
    /// Plain HTTP: `/healthz`, `/readyz`, `/metrics`. Unset: not served.
    #[serde(deserialize_with = "super::defaults::optional_socket_addr")]
    pub metrics_listen: Option<SocketAddr>,
    /// Requests accepted at once (being received or handled); beyond it
    /// callers get RESOURCE_EXHAUSTED at once.
    pub max_in_flight: usize,
    /// Client connections served at once; beyond it new ones are closed.
    pub max_connections: usize,
    /// HTTP/2 `SETTINGS_MAX_CONCURRENT_STREAMS` advertised to each client.
    pub max_streams_per_connection: u32,
    /// Threads serving gRPC connections, each on its own runtime. Unset:
    /// one per core castellan may use.
    pub workers: Option<usize>,
    pub request_timeout_secs: u64,
    /// How long SIGTERM waits for in-flight requests.
    pub shutdown_grace_secs: u64,
    pub tls: ServerTls,
}

impl Server {
    /// `workers`, or one per core castellan may use (its CPU quota counted).
    pub fn workers(&self) -> usize {
        self.workers.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        })
    }
}

/// castellan's own serving certificate: files, or issued by its own signer.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerTls {
    /// PEM certificate chain (leaf first). With `key_file`; else castellan
    /// issues its serving certificate itself.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// Names the issued serving certificate carries (the host of Istio's `caAddress`).
    pub dns_names: Vec<String>,
    pub ip_addresses: Vec<std::net::IpAddr>,
    pub ttl_secs: u64,
}
