//! Admission at the door: every gRPC request takes a slot of
//! `server.max_in_flight` when its headers arrive — before its body is read
//! — waiting for one while it could still be handled within its deadline
//! (castellan's, or the client's `grpc-timeout` if shorter), then answered
//! RESOURCE_EXHAUSTED; the deadline covers waiting, receiving the request
//! and handling it. So the limit bounds what is being handled, a storm
//! waits its turn instead of being turned away, and a body that never
//! arrives is answered in time.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use prometheus::IntGauge;
use tokio::{sync::Semaphore, time::Instant};
use tonic::{Status, body::Body};

use crate::{error::Error, metrics::Metrics};

/// castellan's deadline fires this much before the client's, so the
/// answer is castellan's DEADLINE_EXCEEDED (logged, counted) rather than
/// the transport's own cancellation.
const DOOR_MARGIN: Duration = Duration::from_millis(2);
/// The handler's deadline fires before the door's, so a request being
/// handled is answered by the handler, with its caller in the log line.
pub(super) const HANDLER_MARGIN: Duration = Duration::from_millis(4);

/// How long before its deadline a request still waiting (for a slot at the
/// door, an HSM session, an API call) is answered busy. The client's clock
/// started before its request reached castellan — the network, the
/// client's own scheduling — so a fixed few milliseconds lose the race to
/// the client's timeout on a loaded node and the caller sees a cancelled
/// call instead of RESOURCE_EXHAUSTED. A tenth of the budget, at least
/// 6 ms and at most 250 ms, never more than half of it.
pub(super) fn busy_margin(budget: Duration) -> Duration {
    (budget / 10)
        .clamp(DOOR_MARGIN + HANDLER_MARGIN, Duration::from_millis(250))
        .min(budget / 2)
}

/// When a request must be answered by, set at the door.
#[derive(Clone, Copy, Debug)]
pub(super) struct Deadline(pub(super) Instant);

/// The shared state of the door.
#[derive(Debug)]
pub(super) struct Door {
    slots: Arc<Semaphore>,
    max_in_flight: usize,
    timeout: Duration,
    metrics: Metrics,
    /// When the last overload line was logged (at most one a second).
    last_overload_log: std::sync::Mutex<Option<Instant>>,
}

/// The tower layer putting [`Door`] in front of the gRPC routes.
#[derive(Clone, Debug)]
pub(super) struct AdmissionLayer(Arc<Door>);

/// The service the layer makes.
#[derive(Clone, Debug)]
pub(super) struct Admission<S> {
    inner: S,
    door: Arc<Door>,
}

/// A slot held until the request's answer is made, counted in the gauge.
struct Slot {
    _permit: tokio::sync::OwnedSemaphorePermit,
    gauge: IntGauge,
}

// === impl AdmissionLayer ===

impl AdmissionLayer {
    pub(super) fn new(max_in_flight: usize, timeout: Duration, metrics: Metrics) -> Self {
        Self(Arc::new(Door {
            slots: Arc::new(Semaphore::new(max_in_flight)),
            max_in_flight,
            timeout,
            metrics,
            last_overload_log: std::sync::Mutex::new(None),
        }))
    }
}

impl<S> tower_layer::Layer<S> for AdmissionLayer {
    type Service = Admission<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Admission {
            inner,
            door: Arc::clone(&self.0),
        }
    }
}

// === impl Admission ===

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S> tower_service::Service<http::Request<Body>> for Admission<S>
where
    S: tower_service::Service<http::Request<Body>, Response = http::Response<Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<Body>) -> Self::Future {
        let arrived = Instant::now();
        let door = Arc::clone(&self.door);
        let budget = client_timeout(req.headers()).map_or(door.timeout, |c| c.min(door.timeout));
        let deadline = arrived + budget;
        req.extensions_mut().insert(Deadline(deadline));
        let door_deadline = deadline
            .checked_sub(DOOR_MARGIN.min(budget / 4))
            .unwrap_or(deadline);
        // A request waits for a slot while it could still be handled in
        // time; then it is refused as busy, never before.
        let waits_until = deadline
            .checked_sub(busy_margin(budget))
            .unwrap_or(door_deadline);
        // The ready service answers this request; a clone waits for the next.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let permit = match Arc::clone(&door.slots).try_acquire_owned() {
                Ok(permit) => Ok(permit),
                Err(_) => {
                    tokio::time::timeout_at(waits_until, Arc::clone(&door.slots).acquire_owned())
                        .await
                        .map_err(|_| ())
                        .and_then(|got| got.map_err(|_| ()))
                }
            };
            let Ok(permit) = permit else {
                door.refuse_overloaded(arrived);
                return Ok(Status::from(&Error::Overloaded(door.max_in_flight)).into_http());
            };
            let _slot = Slot::new(permit, door.metrics.requests.in_flight.clone());
            match tokio::time::timeout_at(door_deadline, inner.call(req)).await {
                Ok(answer) => answer.map(|r| too_large(r, &door, arrived)),
                Err(_) => {
                    let e = Error::Timeout(budget);
                    let status = Status::from(&e);
                    door.metrics
                        .observe_latency(status.code(), arrived.elapsed());
                    tracing::warn!(
                        caller = "-",
                        outcome = ?status.code(),
                        reason = "the request was not received and handled within the deadline",
                        latency_ms = arrived.elapsed().as_secs_f64() * 1000.0,
                        "CreateCertificate"
                    );
                    Ok(status.into_http())
                }
            }
        })
    }
}

/// tonic answers a request over its decoding limit with OUT_OF_RANGE and
/// its own words; gRPC's convention for a message over a limit is
/// RESOURCE_EXHAUSTED, said in castellan's (castellan never answers
/// OUT_OF_RANGE otherwise).
fn too_large(
    response: http::Response<Body>,
    door: &Door,
    arrived: Instant,
) -> http::Response<Body> {
    let out_of_range = response
        .headers()
        .get("grpc-status")
        .is_some_and(|v| v.as_bytes() == b"11");
    if !out_of_range {
        return response;
    }
    let status = Status::from(&Error::TooLarge(super::limits::MAX_MESSAGE));
    door.metrics
        .observe_latency(status.code(), arrived.elapsed());
    tracing::warn!(
        caller = "-",
        outcome = ?status.code(),
        reason = %status.message(),
        latency_ms = arrived.elapsed().as_secs_f64() * 1000.0,
        "CreateCertificate"
    );
    status.into_http()
}

// === impl Door ===

impl Door {
    /// A request waited out its deadline at the door.
    fn refuse_overloaded(&self, arrived: Instant) {
        self.metrics.requests.overloaded.inc();
        self.metrics
            .observe_latency(tonic::Code::ResourceExhausted, arrived.elapsed());
        let mut last = self
            .last_overload_log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
            *last = Some(Instant::now());
            tracing::warn!(
                max_in_flight = self.max_in_flight,
                "over server.max_in_flight until their deadline: refusing requests with \
                 RESOURCE_EXHAUSTED (castellan_overloaded_count counts each; logged at most once \
                 a second)"
            );
        }
    }
}

// === impl Slot ===

impl Slot {
    fn new(permit: tokio::sync::OwnedSemaphorePermit, gauge: IntGauge) -> Self {
        gauge.inc();
        Self {
            _permit: permit,
            gauge,
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// The client's `grpc-timeout`, e.g. `9995m` (at most 8 digits and a unit).
pub(super) fn client_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    if value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_answers_come_ahead_of_the_client_deadline() {
        let ms = Duration::from_millis;
        assert_eq!(busy_margin(ms(400)), ms(40));
        assert_eq!(busy_margin(ms(20)), ms(6), "at least a few ms");
        assert_eq!(busy_margin(ms(8)), ms(4), "never more than half");
        assert_eq!(busy_margin(Duration::ZERO), Duration::ZERO);
        assert_eq!(
            busy_margin(Duration::from_secs(10)),
            ms(250),
            "at most 250 ms"
        );
    }

    #[test]
    fn grpc_timeout() {
        let mut h = http::HeaderMap::new();
        h.insert("grpc-timeout", "250m".parse().unwrap());
        assert_eq!(client_timeout(&h), Some(Duration::from_millis(250)));
        h.insert("grpc-timeout", "3S".parse().unwrap());
        assert_eq!(client_timeout(&h), Some(Duration::from_secs(3)));
        h.insert("grpc-timeout", "99999999H".parse().unwrap());
        assert!(client_timeout(&h).is_some(), "saturates, never panics");
        for bad in ["x", "", "5", "1234567890m", "-1S", "1.5S"] {
            h.insert("grpc-timeout", bad.parse().unwrap());
            assert_eq!(client_timeout(&h), None, "{bad:?}");
        }
    }
}
