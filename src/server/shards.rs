//! gRPC connections are served by one single-threaded runtime per worker
//! (`server.workers`, by default one per core), as Envoy pins connections to
//! its workers: a connection's TLS, its HTTP/2 streams and their crypto stay
//! on one thread, so a request is never handed between threads and no thread
//! wakes another to run it. Each new connection goes to the worker serving
//! the fewest. Everything else (the accept loop, watches, renewals, metrics)
//! runs on the main runtime.

use std::{future::Future, io, sync::Arc};

use prometheus::IntGauge;
use tokio::{
    runtime::Handle,
    sync::{mpsc, oneshot, watch},
    task::JoinHandle,
};
use tokio_stream::wrappers::ReceiverStream;

use super::accept::Conn;
use crate::metrics::Metrics;

/// Finished handshakes queued for a worker's gRPC server.
const QUEUED_CONNECTIONS: usize = 256;

/// The workers, shared by the accept loop.
#[derive(Clone, Debug)]
pub(super) struct Shards(Arc<[Shard]>);

/// One worker: its runtime, where its gRPC server takes connections, and
/// how many it serves (`castellan_worker_connections`).
#[derive(Debug)]
pub(super) struct Shard {
    handle: Handle,
    conns: mpsc::Sender<io::Result<Conn>>,
    load: IntGauge,
}

/// A worker's share of one connection, given back when the connection closes.
#[derive(Debug)]
pub(super) struct Load(IntGauge);

/// The workers' gRPC servers, as one.
#[derive(Debug)]
pub(super) struct Serving {
    /// Ends when every worker's server has ended: the first error, if any.
    pub(super) joined: JoinHandle<Result<(), super::Error>>,
    kill: watch::Sender<bool>,
}

// === impl Shards ===

impl Shards {
    /// Starts `workers` threads, each running the gRPC server
    /// `serve(connections)` returns on its own runtime.
    ///
    /// # Errors
    /// When a runtime or a thread cannot be had.
    pub(super) fn start<F>(
        workers: usize,
        metrics: &Metrics,
        serve: impl Fn(ReceiverStream<io::Result<Conn>>) -> F,
    ) -> io::Result<(Self, Serving)>
    where
        F: Future<Output = Result<(), tonic::transport::Error>> + Send + 'static,
    {
        let (kill, killed) = watch::channel(false);
        let mut shards = Vec::with_capacity(workers);
        let mut done = Vec::with_capacity(workers);
        for i in 0..workers.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (tx, rx) = mpsc::channel(QUEUED_CONNECTIONS);
            let server = serve(ReceiverStream::new(rx));
            let (finished, outcome) = oneshot::channel();
            let mut killed = killed.clone();
            shards.push(Shard {
                handle: runtime.handle().clone(),
                conns: tx,
                load: metrics
                    .listener
                    .worker_connections
                    .with_label_values(&[i.to_string().as_str()]),
            });
            std::thread::Builder::new()
                .name(format!("castellan-worker-{i}"))
                .spawn(move || {
                    let result = runtime.block_on(async {
                        tokio::select! {
                            result = server => result,
                            // Killed: whatever is in flight is dropped.
                            _ = killed.wait_for(|k| *k) => Ok(()),
                        }
                    });
                    // Connections still open are dropped with the runtime.
                    drop(runtime);
                    let _ = finished.send(result);
                })?;
            done.push(outcome);
        }
        let joined = tokio::spawn(async move {
            let mut first = Ok(());
            for outcome in done {
                let result = match outcome.await {
                    Ok(result) => result.map_err(super::Error::Transport),
                    Err(_) => Err(super::Error::WorkerLost),
                };
                if first.is_ok() {
                    first = result;
                }
            }
            first
        });
        Ok((Self(shards.into()), Serving { joined, kill }))
    }

    /// The worker serving the fewest connections now (`None` only for no
    /// workers, which [`Shards::start`] never makes).
    pub(super) fn least_loaded(&self) -> Option<&Shard> {
        self.0.iter().min_by_key(|s| s.load.get())
    }
}

// === impl Shard ===

impl Shard {
    /// Runs `handshake` on this worker; what it makes counts against the
    /// worker's load from now on.
    pub(super) fn spawn<F>(&self, handshake: impl FnOnce(Load) -> F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.load.inc();
        let load = Load(self.load.clone());
        drop(self.handle.spawn(handshake(load)));
    }

    /// Where this worker's gRPC server takes its connections.
    pub(super) fn connections(&self) -> mpsc::Sender<io::Result<Conn>> {
        self.conns.clone()
    }

    pub(super) fn is_closed(&self) -> bool {
        self.conns.is_closed()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.0.dec();
    }
}

// === impl Serving ===

impl Serving {
    /// Stops every worker at once, dropping what is in flight.
    pub(super) fn abort(&self) {
        self.kill.send_replace(true);
        self.joined.abort();
    }

    /// Stops every worker at once and returns when each worker's thread
    /// has dropped its runtime (and what its connections held).
    pub(super) async fn close(self) {
        self.kill.send_replace(true);
        let _ = self.joined.await;
    }
}
