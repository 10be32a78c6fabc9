//! The operational listener: liveness, readiness and Prometheus metrics over
//! plain HTTP, apart from the gRPC port so probes need no TLS or token.

use std::{sync::Arc, time::SystemTime};

use axum::{Router, extract::State, http::StatusCode, routing::get};
use tokio::{net::TcpListener, sync::watch};

use crate::{ca::CaHandle, metrics::Metrics};

#[derive(Clone)]
struct Ops {
    ca: Arc<CaHandle>,
    metrics: Metrics,
    crl: Option<watch::Receiver<Option<String>>>,
}

/// Serves `/healthz`, `/readyz`, `/metrics` and, with `[trust.crl]`,
/// `/ca-crl.pem`, until `shutdown` resolves.
pub(super) fn spawn(
    listener: TcpListener,
    ca: Arc<CaHandle>,
    metrics: Metrics,
    crl: Option<watch::Receiver<Option<String>>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics_text))
        .route("/ca-crl.pem", get(crl_pem))
        .with_state(Ops { ca, metrics, crl });
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!(error = %e, "health listener failed");
        }
    })
}

/// Ready while the signing certificate in use is valid and its signer can
/// sign. A refused reload does not make castellan unready: the previous CA
/// keeps serving.
async fn ready(State(ops): State<Ops>) -> (StatusCode, &'static str) {
    let ca = ops.ca.current();
    if ca.facts().not_after <= SystemTime::now() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "signing certificate expired\n",
        )
    } else if !ca.healthy() {
        (StatusCode::SERVICE_UNAVAILABLE, "signer unavailable\n")
    } else {
        (StatusCode::OK, "ready\n")
    }
}

async fn metrics_text(State(ops): State<Ops>) -> String {
    ops.metrics.render()
}

/// The CRL in use, as Istio's `ca-crl.pem`; 404 without one.
async fn crl_pem(State(ops): State<Ops>) -> (StatusCode, String) {
    match ops.crl.as_ref().and_then(|rx| rx.borrow().clone()) {
        Some(pem) => (StatusCode::OK, pem),
        None => (StatusCode::NOT_FOUND, "no CRL\n".to_owned()),
    }
}
