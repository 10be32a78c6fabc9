//! The TLS side of the listener: what castellan offers (so every Istio client
//! mode, FIPS and post-quantum included, can connect) and the accept loop
//! that hands finished handshakes to the gRPC server.

use std::{
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use prometheus::IntGauge;
use rustls::{
    RootCertStore, ServerConfig,
    crypto::{CryptoProvider, aws_lc_rs},
    server::{ResolvesServerCert, WebPkiClientVerifier, danger::ClientCertVerifier},
};
use rustls_pki_types::CertificateDer;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{Semaphore, watch},
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};

use super::{
    handshakes::{Admitted, Pending, Watched},
    shards::{Load, Shards},
};
use crate::metrics::Metrics;

/// A client that has not finished its handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(5);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// The suites and groups castellan offers.
///
/// - TLS 1.3 with AES-GCM: ztunnel accepts nothing else.
/// - TLS 1.2 with ECDHE and AES-GCM: istio-agent with
///   `COMPLIANCE_POLICY=fips-140-2` speaks only TLS 1.2, P-256.
/// - X25519MLKEM768 first: `COMPLIANCE_POLICY=pqc` offers only that group.
///
/// The FIPS build offers P-256 and P-384 only: X25519 is not an approved
/// group, and rustls counts X25519MLKEM768 as approved whenever the module is
/// in FIPS mode, which the module's own service indicator (not exposed by
/// aws-lc-rs) cannot confirm for ML-KEM, so castellan does not offer it.
/// Every other choice is the FIPS provider's (its signature algorithms and
/// key loading check FIPS mode too).
pub fn provider() -> CryptoProvider {
    use aws_lc_rs::{cipher_suite as cs, kx_group as kx};
    let cipher_suites = vec![
        cs::TLS13_AES_256_GCM_SHA384,
        cs::TLS13_AES_128_GCM_SHA256,
        cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    ];
    let kx_groups = if crate::fips::BUILD {
        vec![kx::SECP256R1, kx::SECP384R1]
    } else {
        vec![kx::X25519MLKEM768, kx::X25519, kx::SECP256R1, kx::SECP384R1]
    };
    // With `fips`, rustls's aws-lc-rs provider is its FIPS provider
    // (`default_fips_provider` is this same provider).
    CryptoProvider {
        cipher_suites,
        kx_groups,
        ..aws_lc_rs::default_provider()
    }
}

/// Makes [`provider`] the process's default, so that every TLS client
/// castellan's libraries build (Vault, Kubernetes, JWKS) uses it: in the
/// FIPS build, the FIPS provider. The first call wins; later ones (tests
/// starting several servers in one process) change nothing.
pub(super) fn install_default() {
    let _ = provider().install_default();
}

/// A server configuration that asks for, but does not require, a client
/// certificate chaining to the current roots (VM renewal presents one).
///
/// # Errors
/// When the protocol versions cannot be set.
pub(super) fn server_config(
    certs: Arc<dyn ResolvesServerCert>,
    client_roots: Arc<ClientRoots>,
) -> Result<ServerConfig, rustls::Error> {
    let mut config = ServerConfig::builder_with_provider(Arc::new(provider()))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_client_cert_verifier(client_roots)
        .with_cert_resolver(certs);
    config.alpn_protocols = vec![b"h2".to_vec()];
    // No session tickets: agents keep one connection for months of
    // renewals, a restarted castellan forgets every session anyway, and a
    // storm of new agents has none to resume — each ticket was two more
    // records and a session-cache insert per handshake, for nothing.
    config.send_tls13_tickets = 0;
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    Ok(config)
}

/// Client-certificate verification against the roots in use now: when a
/// reload changes the root bundle, the next handshake is judged by the new
/// one.
#[derive(Debug)]
pub(super) struct ClientRoots {
    current: arc_swap::ArcSwap<Arc<dyn ClientCertVerifier>>,
}

impl ClientRoots {
    /// # Errors
    /// When the roots cannot be used as trust anchors.
    pub(super) fn new(roots: &[CertificateDer<'static>]) -> Result<Self, rustls::Error> {
        Ok(Self {
            current: arc_swap::ArcSwap::from_pointee(verifier(roots)?),
        })
    }

    /// Judges later handshakes by `roots`.
    ///
    /// # Errors
    /// When the roots cannot be used; the previous ones stay in force.
    pub(super) fn update(&self, roots: &[CertificateDer<'static>]) -> Result<(), rustls::Error> {
        self.current.store(Arc::new(verifier(roots)?));
        Ok(())
    }

    fn now(&self) -> Arc<Arc<dyn ClientCertVerifier>> {
        self.current.load_full()
    }
}

fn verifier(
    roots: &[CertificateDer<'static>],
) -> Result<Arc<dyn ClientCertVerifier>, rustls::Error> {
    let mut store = RootCertStore::empty();
    for r in roots {
        store.add(r.clone())?;
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(store), Arc::new(provider()))
        .allow_unauthenticated()
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))
}

impl ClientCertVerifier for ClientRoots {
    fn offer_client_auth(&self) -> bool {
        self.now().offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.now().client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        // Hints borrow from the verifier, which a swap may drop: send none
        // (clients then offer whatever certificate they have).
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        self.now()
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.now().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.now().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.now().supported_verify_schemes()
    }
}

/// How many connections are served, and how many handshake at once.
#[derive(Clone, Copy, Debug)]
pub(super) struct Limits {
    pub(super) connections: usize,
    pub(super) handshakes: usize,
}

/// A served connection; its slot of the connection limit is given back
/// when it closes.
#[derive(Debug)]
pub(super) struct Conn {
    tls: TlsStream<Watched<TcpStream>>,
    _slot: tokio::sync::OwnedSemaphorePermit,
    _load: Load,
    open: IntGauge,
}

/// Accepts connections and has the worker serving the fewest complete their
/// TLS handshakes, concurrently, so one slow client cannot hold up the
/// others; each finished TLS stream goes to that worker's gRPC server.
/// Beyond `limits.connections` a new connection is closed at once (counted,
/// logged at most once a second): descriptors never run out, so outgoing
/// calls (Vault, Kubernetes) and files keep working. At most
/// `limits.handshakes` handshakes run at once; a new connection beyond that
/// waits for one to finish — or takes the place of one that has stalled
/// (see [`super::handshakes`]), so a storm is served whole and a flood of
/// idle connections cannot keep a real client out. Accept errors back off
/// instead of spinning. Closes the listening socket once `stop` turns true.
pub(super) fn incoming(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    limits: Limits,
    metrics: Metrics,
    mut stop: watch::Receiver<bool>,
    shards: Shards,
) -> tokio::task::JoinHandle<()> {
    let connections = Arc::new(Semaphore::new(limits.connections));
    let mut pending = Pending::new(limits.handshakes);
    tokio::spawn(async move {
        let mut backoff = Backoff::default();
        let mut refused_log = RateLimited::default();
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = stop.wait_for(|stop| *stop) => break,
            };
            let (tcp, peer) = match accepted {
                Ok(conn) => {
                    backoff.reset();
                    conn
                }
                Err(e) => {
                    backoff.wait(&e).await;
                    continue;
                }
            };
            let Ok(slot) = Arc::clone(&connections).try_acquire_owned() else {
                drop(tcp);
                metrics.listener.connections_refused.inc();
                if refused_log.due() {
                    tracing::warn!(
                        limit = limits.connections,
                        "over server.max_connections: closing new connections at once \
                         (castellan_connections_refused_count counts each)"
                    );
                }
                continue;
            };
            // Without NODELAY every unary call waits ~40 ms on Nagle + delayed ACK.
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(%peer, error = %e, "TCP_NODELAY not set");
            }
            let Admitted {
                slot: handshake,
                evicted,
                progress,
            } = pending.admit().await;
            let Some(shard) = shards.least_loaded() else {
                break;
            };
            // Registered again with the worker's own reactor, so its I/O
            // readiness wakes that worker and no other thread.
            let tcp = match tcp.into_std() {
                Ok(tcp) => tcp,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "connection lost before its handshake");
                    continue;
                }
            };
            let acceptor = acceptor.clone();
            let conn_tx = shard.connections();
            let open = metrics.listener.connections.clone();
            shard.spawn(move |load| async move {
                let tcp = match TcpStream::from_std(tcp) {
                    Ok(tcp) => Watched::new(tcp, progress),
                    Err(e) => {
                        tracing::debug!(%peer, error = %e, "connection lost before its handshake");
                        return;
                    }
                };
                let done = tokio::select! {
                    done = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)) => done,
                    _ = evicted => {
                        tracing::debug!(%peer, "stalled TLS handshake evicted by a newer connection");
                        return;
                    }
                };
                drop(handshake);
                match done {
                    Ok(Ok(tls)) => {
                        open.inc();
                        let _ = conn_tx
                            .send(Ok(Conn {
                                tls,
                                _slot: slot,
                                _load: load,
                                open,
                            }))
                            .await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
            // A worker whose server ended: the server is stopping or failed
            // (which `Serving` reports).
            if shard.is_closed() {
                break;
            }
        }
    })
}

/// Exponential back-off on accept errors (EMFILE, ENFILE, ENOBUFS…), logged
/// once per spell of errors.
#[derive(Debug)]
struct Backoff {
    pause: Duration,
    failing: bool,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            pause: ACCEPT_BACKOFF_MIN,
            failing: false,
        }
    }
}

impl Backoff {
    fn reset(&mut self) {
        if self.failing {
            tracing::info!("accepting connections again");
        }
        *self = Self::default();
    }

    async fn wait(&mut self, e: &io::Error) {
        if !self.failing {
            tracing::warn!(error = %e, "accept failed; backing off (up to 1 s between tries)");
            self.failing = true;
        }
        tokio::time::sleep(self.pause).await;
        self.pause = (self.pause * 2).min(ACCEPT_BACKOFF_MAX);
    }
}

/// Lets one log line through per second.
#[derive(Debug, Default)]
struct RateLimited(Option<tokio::time::Instant>);

impl RateLimited {
    fn due(&mut self) -> bool {
        let due = self.0.is_none_or(|t| t.elapsed() >= Duration::from_secs(1));
        if due {
            self.0 = Some(tokio::time::Instant::now());
        }
        due
    }
}

// === impl Conn ===

impl Drop for Conn {
    fn drop(&mut self) {
        self.open.dec();
    }
}

impl tonic::transport::server::Connected for Watched<TcpStream> {
    type ConnectInfo = <TcpStream as tonic::transport::server::Connected>::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.get_ref().connect_info()
    }
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo =
        <TlsStream<Watched<TcpStream>> as tonic::transport::server::Connected>::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.tls.connect_info()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tls).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tls).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tls).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tls).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tls).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tls.is_write_vectored()
    }
}
