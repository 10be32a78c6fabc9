//! The accept loop: each new connection gets a slot of the connection
//! limit and a handshake slot, is handshaken on the serving worker with the
//! fewest connections, and goes to that worker's gRPC server; accept errors
//! back off instead of spinning.

use std::{
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use prometheus::IntGauge;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{Semaphore, mpsc, watch},
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
// Long: the accept loop: each refusal (over the connection limit, no worker left) is decided where the connection is in hand.
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
            let admitted = pending.admit().await;
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
            let ready = Ready {
                acceptor: acceptor.clone(),
                to: shard.connections(),
                slot,
                open: metrics.listener.connections.clone(),
            };
            shard.spawn(move |load| handshake(tcp, peer, admitted, ready, load));
            // A worker whose server ended: the server is stopping or failed
            // (which `Serving` reports).
            if shard.is_closed() {
                break;
            }
        }
    })
}

/// Where a connection goes once its handshake is done, and what it holds.
struct Ready {
    acceptor: TlsAcceptor,
    /// The serving worker's gRPC server.
    to: mpsc::Sender<io::Result<Conn>>,
    /// Its place under `server.max_connections`.
    slot: tokio::sync::OwnedSemaphorePermit,
    open: IntGauge,
}

/// One TLS handshake on the worker it was given to, within
/// [`HANDSHAKE_TIMEOUT`] — or until a newer connection evicts it for having
/// stalled; a finished one goes to that worker's gRPC server.
async fn handshake(
    tcp: std::net::TcpStream,
    peer: std::net::SocketAddr,
    admitted: Admitted,
    ready: Ready,
    load: Load,
) {
    let Admitted {
        slot: handshake,
        evicted,
        progress,
    } = admitted;
    let tcp = match TcpStream::from_std(tcp) {
        Ok(tcp) => Watched::new(tcp, progress),
        Err(e) => {
            tracing::debug!(%peer, error = %e, "connection lost before its handshake");
            return;
        }
    };
    let done = tokio::select! {
        done = tokio::time::timeout(HANDSHAKE_TIMEOUT, ready.acceptor.accept(tcp)) => done,
        _ = evicted => {
            tracing::debug!(%peer, "stalled TLS handshake evicted by a newer connection");
            return;
        }
    };
    drop(handshake);
    match done {
        Ok(Ok(tls)) => {
            ready.open.inc();
            let _ = ready
                .to
                .send(Ok(Conn {
                    tls,
                    _slot: ready.slot,
                    _load: load,
                    open: ready.open,
                }))
                .await;
        }
        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
    }
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
