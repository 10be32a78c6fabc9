//! The operational listener: liveness, readiness and Prometheus metrics over
//! plain HTTP, apart from the gRPC port so probes need no TLS or token.

use std::{sync::Arc, time::SystemTime};

use axum::{Router, extract::State, http::StatusCode, routing::get};
use tokio::net::TcpListener;

use crate::{ca::CaHandle, metrics::Metrics};

#[derive(Clone)]
struct Ops {
    ca: Arc<CaHandle>,
    metrics: Metrics,
}

/// Serves `/healthz`, `/readyz` and `/metrics` until `shutdown` resolves.
pub(super) fn spawn(
    listener: TcpListener,
    ca: Arc<CaHandle>,
    metrics: Metrics,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics_text))
        .with_state(Ops { ca, metrics });
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
