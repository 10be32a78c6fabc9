//! The running CA: gRPC over TLS, the operational listener, hot reload of the
//! signing material and of the serving certificate, and graceful shutdown.

mod accept;
mod admission;
mod grpc;
mod handshakes;
mod health;
mod issuers;
mod limits;
mod preflight;
mod service;
mod serving;
mod shards;
mod tls;

use std::{io, net::SocketAddr, sync::Arc, time::Duration};

use tokio::{net::TcpListener, sync::watch, task::JoinHandle};

pub use preflight::{check_listeners, crypto_ready};
pub use service::CaService;
pub use tls::provider as tls_provider;

use crate::{
    authn, authority,
    ca::CaHandle,
    clock::Clock,
    config::Config,
    impersonation::NodeAuthorizer,
    issue::Pipeline,
    issuer::{self, Issuer},
    metrics::Metrics,
    policy::TtlRules,
};

/// Why castellan cannot start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Authority(#[from] authority::Error),
    #[error("issuer \"{name}\": {source}")]
    Issuer {
        name: String,
        source: authority::Error,
    },
    #[error(
        "issuers \"{first}\" and \"{second}\" sign with the same key: each issuer needs its own \
         (a tenant's rotation and revocations would otherwise not be its own)"
    )]
    SharedKey { first: String, second: String },
    #[error("no issuer configured")]
    NoIssuer,
    #[error("{0}")]
    Issue(#[from] issuer::Error),
    #[error(transparent)]
    Authn(#[from] authn::SetupError),
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    #[error("{path}: {source}")]
    Pem {
        path: std::path::PathBuf,
        source: rustls_pki_types::pem::Error,
    },
    #[error("{path}: no PEM certificate")]
    NoCertificate { path: std::path::PathBuf },
    #[error("serving key: {0}")]
    ServingKey(rustls::Error),
    #[error("serving key: {0}")]
    KeyGeneration(&'static str),
    #[error("server task: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("cannot start the serving workers: {0}")]
    Workers(io::Error),
    #[error("a serving worker stopped unexpectedly")]
    WorkerLost,
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error(transparent)]
    Mesh(#[from] crate::mesh::Error),
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error(transparent)]
    Fips(#[from] crate::fips::Error),
}

/// A started server.
#[derive(Debug)]
pub struct Running {
    /// Where gRPC is served (the real port when the config said 0).
    pub addr: SocketAddr,
    pub metrics_addr: Option<SocketAddr>,
    pub ca: Arc<CaHandle>,
    pub metrics: Metrics,
    shutdown: watch::Sender<bool>,
    server: shards::Serving,
    issuers: issuers::Issuers,
    background: Vec<JoinHandle<()>>,
    /// Tasks that end by themselves on shutdown (the Lease released).
    releasing: Vec<JoinHandle<()>>,
}

// === impl Running ===

impl Running {
    /// Stops accepting connections; in-flight requests finish.
    pub fn shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    /// Stops everything at once, as a crash would: nothing is released
    /// (for tests of what the other replicas do then).
    pub fn kill(self) {
        self.server.abort();
        self.issuers.stop();
        for task in self.background.iter().chain(&self.releasing) {
            task.abort();
        }
    }

    /// Stops everything at once, as [`Running::kill`] does, and returns once
    /// every task and serving thread has ended and what they held (the
    /// signing back ends, their HSM sessions) is released: for whoever must
    /// know castellan is gone (tests that reset a PKCS#11 module
    /// in-process).
    pub async fn close(self) {
        self.server.close().await;
        for task in self.background.into_iter().chain(self.releasing) {
            task.abort();
            let _ = task.await;
        }
        self.issuers.close().await;
    }

    /// Waits for the server to stop (after [`Running::shutdown`]), at most `grace`.
    ///
    /// # Errors
    /// When the gRPC server failed.
    pub async fn wait(mut self, grace: Duration) -> Result<(), Error> {
        let outcome = tokio::time::timeout(grace, &mut self.server.joined).await;
        for task in self.releasing.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
        self.issuers.stop();
        for task in &self.background {
            task.abort();
        }
        match outcome {
            Ok(Ok(result)) => result,
            Ok(Err(join)) => Err(Error::Task(join)),
            Err(_) => {
                tracing::warn!(
                    ?grace,
                    "in-flight requests did not finish within the grace period"
                );
                self.server.abort();
                Ok(())
            }
        }
    }
}

/// Starts castellan as configured and returns once it is serving.
///
/// # Errors
/// [`Error`] naming what stops it from starting.
pub async fn start(config: &Config) -> Result<Running, Error> {
    start_with_clock(config, Clock::system()).await
}

/// As [`start`], with every rule about time reading `clock`.
///
/// # Errors
/// As [`start`].
pub async fn start_with_clock(config: &Config, clock: Clock) -> Result<Running, Error> {
    crypto_ready()?;
    let metrics = Metrics::new()?;
    let issuers = issuers::start(config, &metrics, &clock).await?;
    let authority = issuers.main()?;
    let ca = Arc::clone(authority.ca());
    let mut background = Vec::new();
    let authn = authn::Chain::from_config(
        &config.authn,
        &config.authn_cache,
        &config.trust_domain,
        &metrics,
        &clock,
    )
    .await?;
    // The main issuer, as the routing table made it: castellan's own and
    // istiod's certificates.
    let issuer = issuers
        .tenants
        .main()
        .ok_or(Error::NoIssuer)?
        .issuer()
        .clone();
    let tls = listener_tls(config, &issuer, &issuers, &mut background).await?;
    let listener = bind(config.server.listen, "server.listen").await?;
    let addr = local_addr(&listener)?;
    let (shutdown, shutdown_rx) = watch::channel(false);
    let metrics_addr =
        operational(config, &issuers, &metrics, &shutdown_rx, &mut background).await?;
    let releasing = mesh_writers(config, &issuer, &issuers, &metrics, &shutdown_rx).await?;
    let nodes = NodeAuthorizer::start(&config.impersonation, &authn, &config.trust_domain);
    let pipeline = Pipeline::new(
        authn,
        nodes,
        Arc::clone(&issuers.tenants),
        TtlRules::from(&config.issuance),
    );
    let (server, accept) = grpc::serve(config, pipeline, &metrics, tls, listener, shutdown_rx)?;
    background.push(accept);
    tracing::info!(%addr, metrics = ?metrics_addr, "castellan serving");
    Ok(Running {
        addr,
        metrics_addr,
        ca,
        metrics,
        shutdown,
        server,
        issuers,
        background,
        releasing,
    })
}

/// The listener's TLS: castellan's serving certificate (renewed in the
/// background) and the roots client certificates are verified against,
/// which follow the CA in use — in the FIPS build, required to be FIPS.
async fn listener_tls(
    config: &Config,
    issuer: &Issuer,
    issuers: &issuers::Issuers,
    background: &mut Vec<JoinHandle<()>>,
) -> Result<rustls::ServerConfig, Error> {
    let poll = Duration::from_secs(config.ca.reload_interval_secs);
    let (serving, renewal) = serving::start(&config.server.tls, issuer, poll).await?;
    background.push(renewal);
    let client_roots = Arc::new(tls::ClientRoots::new(&issuers.all_roots())?);
    let cas: Vec<Arc<CaHandle>> = issuers
        .authorities
        .iter()
        .map(|a| Arc::clone(a.ca()))
        .collect();
    for ca in &cas {
        background.push(issuers::follow_roots(
            Arc::clone(ca),
            cas.clone(),
            Arc::clone(&client_roots),
        ));
    }
    let tls = tls::server_config(serving, client_roots)?;
    crate::fips::require(&[("castellan's listener", tls.fips())])?;
    Ok(tls)
}

/// The operational listener (`/metrics`, `/readyz`, `/healthz`,
/// `/ca-crl.pem`), when `server.metrics_listen` is set: its address.
async fn operational(
    config: &Config,
    issuers: &issuers::Issuers,
    metrics: &Metrics,
    shutdown: &watch::Receiver<bool>,
    background: &mut Vec<JoinHandle<()>>,
) -> Result<Option<SocketAddr>, Error> {
    let Some(listen) = config.server.metrics_listen else {
        return Ok(None);
    };
    let listener = bind(listen, "server.metrics_listen").await?;
    let addr = local_addr(&listener)?;
    let authority = issuers.main()?;
    background.push(health::spawn(
        listener,
        Arc::clone(authority.ca()),
        metrics.clone(),
        issuers.crl_feeds(),
        authority.revocations().cloned(),
        stopped(shutdown.clone()),
    ));
    Ok(Some(addr))
}

/// The mesh writers, with `[kubernetes]`: the tasks that end by themselves
/// at shutdown (the elector releases the Lease; the writers stop with it).
async fn mesh_writers(
    config: &Config,
    issuer: &Issuer,
    issuers: &issuers::Issuers,
    metrics: &Metrics,
    shutdown: &watch::Receiver<bool>,
) -> Result<Vec<JoinHandle<()>>, Error> {
    let Some(k) = &config.kubernetes else {
        return Ok(Vec::new());
    };
    // Every issuer keeps a CRL when the main one does (a configuration
    // rule); published under the main one's ConfigMap name.
    let crl = issuers
        .main()?
        .crl()
        .map(|(_, name)| (issuers.crl_feeds(), name.clone()));
    Ok(crate::mesh::start(
        k,
        &config.trust_domain,
        issuer,
        Arc::clone(&issuers.tenants),
        metrics,
        crl,
        shutdown.clone(),
    )
    .await?)
}

/// Resolves once `rx` turns true.
async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

/// Runs until SIGTERM or Ctrl-C, then shuts down gracefully.
///
/// # Errors
/// As [`start`], or when the server fails.
pub async fn run(config: &Config) -> Result<(), Error> {
    let running = start(config).await?;
    run_until_terminated(running, config).await
}

/// Serves a started server until SIGTERM or Ctrl-C, then shuts down gracefully.
///
/// # Errors
/// When the server fails.
pub async fn run_until_terminated(running: Running, config: &Config) -> Result<(), Error> {
    terminated().await;
    tracing::info!("shutting down: no new connections, finishing requests in flight");
    running.shutdown();
    let outcome = running
        .wait(Duration::from_secs(config.server.shutdown_grace_secs))
        .await;
    if outcome.is_ok() {
        tracing::info!("stopped");
    }
    outcome
}

async fn terminated() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// Connections a listener lets wait in the kernel's accept queue (capped
/// by `net.core.somaxconn`): in a storm, thousands of agents connect at
/// once, and those castellan is not handshaking with yet wait there rather
/// than being refused and retrying later.
const BACKLOG: u32 = 4096;

pub(super) async fn bind(addr: SocketAddr, key: &str) -> Result<TcpListener, Error> {
    let io = |source| Error::Io {
        what: format!("{key} {addr}"),
        source,
    };
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .map_err(io)?;
    // As std's bind does: a restarted castellan rebinds at once.
    socket.set_reuseaddr(true).map_err(io)?;
    socket.bind(addr).map_err(io)?;
    socket.listen(BACKLOG).map_err(io)
}

fn local_addr(l: &TcpListener) -> Result<SocketAddr, Error> {
    l.local_addr().map_err(|source| Error::Io {
        what: "listener address".into(),
        source,
    })
}
