//! The operational listener: liveness, readiness and Prometheus metrics over
//! plain HTTP, apart from the gRPC port so probes need no TLS or token.

use std::sync::Arc;

use axum::{Router, extract::State, http::StatusCode, routing::get};
use tokio::{net::TcpListener, sync::watch};

use crate::{ca::CaHandle, metrics::Metrics, trust::Revocations};

#[derive(Clone)]
struct Ops {
    ca: Arc<CaHandle>,
    metrics: Metrics,
    /// Every issuer's CRL set (empty: no `[trust.crl]`).
    crl: Vec<watch::Receiver<Option<String>>>,
    trust: Option<Arc<Revocations>>,
}

/// Serves `/healthz`, `/readyz`, `/metrics` and, with `[trust.crl]`,
/// `/ca-crl.pem`, until `shutdown` resolves.
pub(super) fn spawn(
    listener: TcpListener,
    ca: Arc<CaHandle>,
    metrics: Metrics,
    crl: Vec<watch::Receiver<Option<String>>>,
    trust: Option<Arc<Revocations>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics_text))
        .route("/ca-crl.pem", get(crl_pem))
        .with_state(Ops {
            ca,
            metrics,
            crl,
            trust,
        });
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!(error = %e, "health listener failed");
        }
    })
}

/// Ready while the signing chain in use is valid, its signer can sign, and
/// the trust record keeps up. A refused reload does not make castellan
/// unready: the previous CA keeps serving.
async fn ready(State(ops): State<Ops>) -> (StatusCode, &'static str) {
    if ops.trust.as_ref().is_some_and(|t| t.unrecorded().is_some()) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "trust record not written for longer than trust.max_unrecorded_secs\n",
        );
    }
    let ca = ops.ca.current();
    if ca.not_after() <= ca.clock().now() {
        (StatusCode::SERVICE_UNAVAILABLE, "signing chain expired\n")
    } else if !ca.healthy() {
        (StatusCode::SERVICE_UNAVAILABLE, "signer unavailable\n")
    } else {
        (StatusCode::OK, "ready\n")
    }
}

async fn metrics_text(State(ops): State<Ops>) -> String {
    ops.metrics.render()
}

/// The CRLs in use, as Istio's `ca-crl.pem` (every issuer's set); 404
/// until each issuer has a whole set.
async fn crl_pem(State(ops): State<Ops>) -> (StatusCode, String) {
    let all: Option<String> = (!ops.crl.is_empty())
        .then(|| {
            ops.crl
                .iter()
                .map(|rx| rx.borrow().clone())
                .collect::<Option<String>>()
        })
        .flatten();
    match all {
        Some(pem) => (StatusCode::OK, pem),
        None => (StatusCode::NOT_FOUND, "no CRL\n".to_owned()),
    }
}
