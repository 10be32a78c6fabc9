//! The listener: connections open, per serving worker, and refused.

use prometheus::{IntCounter, IntGauge, IntGaugeVec};

use super::register::Reg;

/// The listener's metrics.
#[derive(Clone, Debug)]
pub struct Listener {
    pub connections: IntGauge,
    /// Connections each serving worker has (`server.workers`).
    pub worker_connections: IntGaugeVec,
    pub connections_refused: IntCounter,
}

impl Listener {
    pub(super) fn register(r: &Reg<'_>) -> Result<Self, prometheus::Error> {
        Ok(Self {
            connections: r.int_gauge(
                "castellan_connections_open",
                "Client connections open now (TLS established).",
            )?,
            worker_connections: r.int_gauges(
                "castellan_worker_connections",
                "Client connections each serving thread has, handshakes included (a new \
                 connection goes to the one with the fewest).",
                &["worker"],
            )?,
            connections_refused: r.counter(
                "castellan_connections_refused_count",
                "New connections closed at once over server.max_connections.",
            )?,
        })
    }
}
