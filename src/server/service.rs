//! The gRPC method itself: authenticate, check the CSR, apply policy, issue;
//! one log line and one set of metrics per request.

use std::{sync::Arc, time::Duration};

use prometheus::IntGauge;
use tokio::{
    sync::{Semaphore, SemaphorePermit},
    time::Instant,
};
use tonic::{Request, Response, Status, metadata::MetadataMap};

use rustls_pki_types::CertificateDer;

use crate::{
    authn::{self, Credentials},
    ca, csr,
    error::Error,
    impersonation::{self, NodeAuthorizer},
    issuer::{self, Issued, Issuer},
    metrics::Metrics,
    policy::{self, TtlRules},
    proto::{
        IMPERSONATED_IDENTITY, IstioCertificateRequest, IstioCertificateResponse,
        istio_certificate_service_server::IstioCertificateService,
    },
};

/// castellan's implementation of `istio.v1.auth.IstioCertificateService`.
#[derive(Clone, Debug)]
pub struct CaService {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    authn: authn::Chain,
    nodes: Option<NodeAuthorizer>,
    issuer: Issuer,
    ttl: TtlRules,
    metrics: Metrics,
    in_flight: Semaphore,
    max_in_flight: usize,
    timeout: Duration,
}

/// A slot of the in-flight limit, counted in the gauge while held.
struct InFlight<'a> {
    _permit: SemaphorePermit<'a>,
    gauge: &'a IntGauge,
}

impl<'a> InFlight<'a> {
    fn new(permit: SemaphorePermit<'a>, gauge: &'a IntGauge) -> Self {
        gauge.inc();
        Self {
            _permit: permit,
            gauge,
        }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// What is known about a request when it ends, for its log line.
#[derive(Default)]
struct Trace {
    caller: Option<String>,
    /// The identity ztunnel asked for on a pod's behalf.
    on_behalf_of: Option<String>,
    clamped_from: Option<Duration>,
}

// === impl CaService ===

impl CaService {
    pub fn new(
        authn: authn::Chain,
        nodes: Option<NodeAuthorizer>,
        issuer: Issuer,
        ttl: TtlRules,
        metrics: Metrics,
        max_in_flight: usize,
        timeout: Duration,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                authn,
                nodes,
                issuer,
                ttl,
                metrics,
                in_flight: Semaphore::new(max_in_flight),
                max_in_flight,
                timeout,
            }),
        }
    }
}

#[tonic::async_trait]
impl IstioCertificateService for CaService {
    async fn create_certificate(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        let started = Instant::now();
        let me = &self.inner;
        me.metrics.csr_count.inc();
        let peer_certs = request.peer_certs();
        let (meta, _, req) = request.into_parts();
        let cluster = header(&meta, "clusterid").map(str::to_owned);
        let mut trace = Trace::default();

        let result = match me.in_flight.try_acquire() {
            Err(_) => Err(Error::Overloaded(me.max_in_flight)),
            Ok(permit) => {
                // Dropped however the request ends, cancellation included.
                let _in_flight = InFlight::new(permit, &me.metrics.in_flight);
                let deadline = deadline(&meta).map_or(me.timeout, |d| d.min(me.timeout));
                let certs = peer_certs.as_deref().map(Vec::as_slice);
                let work = me.handle(&meta, certs, cluster.as_deref(), req, &mut trace);
                tokio::time::timeout(deadline, work)
                    .await
                    .unwrap_or(Err(Error::Timeout(deadline)))
            }
        };
        me.finish(result, &trace, cluster.as_deref(), started.elapsed())
    }
}

// === impl Inner ===

impl Inner {
    async fn handle(
        &self,
        meta: &MetadataMap,
        peer_certs: Option<&[CertificateDer<'static>]>,
        cluster_id: Option<&str>,
        req: IstioCertificateRequest,
        trace: &mut Trace,
    ) -> Result<Issued, Error> {
        let creds = Credentials {
            bearer: header(meta, "authorization").and_then(bearer),
            cluster_id,
            peer_certs,
        };
        let caller = self.authn.authenticate(creds).await?;
        trace.caller = Some(caller.identity.to_string());
        let csr = csr::verify(&req.csr)?;
        let impersonate = req
            .metadata
            .as_ref()
            .and_then(|m| m.fields.get(IMPERSONATED_IDENTITY))
            .and_then(|v| match &v.kind {
                Some(prost_types::value::Kind::StringValue(s)) if !s.is_empty() => Some(s.as_str()),
                _ => None,
            });
        let identity = match impersonate {
            None => caller.identity.clone(),
            Some(requested) => {
                trace.on_behalf_of = Some(requested.chars().take(256).collect());
                let nodes = self
                    .nodes
                    .as_ref()
                    .ok_or(impersonation::Error::NotConfigured)?;
                nodes.authorize(&caller, requested).await?
            }
        };
        let approved = policy::check(csr, &identity, req.validity_duration, &self.ttl)?;
        trace.clamped_from = approved.clamped_from();
        Ok(self.issuer.issue(&approved).await?)
    }

    /// Metrics, the request's one log line, and the status: the only place a
    /// request's outcome is turned into what the client sees.
    fn finish(
        &self,
        result: Result<Issued, Error>,
        trace: &Trace,
        cluster: Option<&str>,
        elapsed: Duration,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        let caller = trace.caller.as_deref().unwrap_or("-");
        let on_behalf_of = trace.on_behalf_of.as_deref().unwrap_or("-");
        let cluster = cluster.unwrap_or("-");
        let latency_ms = elapsed.as_secs_f64() * 1000.0;
        match result {
            Ok(issued) => {
                self.metrics.issued.inc();
                for warning in &issued.warnings {
                    self.metrics.signer_warnings.inc();
                    tracing::warn!(caller, %warning, "signer warning");
                }
                self.metrics.observe_latency(tonic::Code::Ok, elapsed);
                if let Some(asked) = trace.clamped_from {
                    self.metrics.ttl_clamped.inc();
                    tracing::info!(
                        caller,
                        requested_secs = asked.as_secs(),
                        "validity clamped to the maximum"
                    );
                }
                tracing::info!(
                    caller,
                    on_behalf_of,
                    cluster,
                    outcome = "issued",
                    serial = %issued.serial,
                    not_after = %ca::date(issued.not_after),
                    latency_ms,
                    "CreateCertificate"
                );
                Ok(Response::new(IstioCertificateResponse {
                    cert_chain: issued.chain,
                }))
            }
            Err(e) => {
                let status = Status::from(&e);
                self.count(&e);
                self.metrics.observe_latency(status.code(), elapsed);
                tracing::warn!(
                    caller,
                    on_behalf_of,
                    cluster,
                    outcome = ?status.code(),
                    reason = %e,
                    latency_ms,
                    "CreateCertificate"
                );
                Err(status)
            }
        }
    }

    fn count(&self, e: &Error) {
        let m = &self.metrics;
        match e {
            Error::Authn(_) => m.authentication_failures.inc(),
            Error::Csr(_) => m.csr_parsing_errors.inc(),
            Error::Issue(e) => m
                .sign_errors
                .with_label_values(&[sign_error_label(e)])
                .inc(),
            Error::Overloaded(_) => m.overloaded.inc(),
            Error::Policy(_) | Error::Impersonation(_) | Error::Timeout(_) => {}
        }
    }
}

fn sign_error_label(e: &issuer::Error) -> &'static str {
    match e {
        issuer::Error::CaExpired(_) => "ca_expired",
        issuer::Error::Ca(
            ca::Error::Backend(castellan_signer::Error::Unavailable(_)) | ca::Error::Unhealthy(_),
        ) => "signer_unavailable",
        issuer::Error::Ca(ca::Error::KeyMismatch { .. }) => "key_mismatch",
        issuer::Error::Ca(ca::Error::Refused(_)) => "leaf_refused",
        issuer::Error::Ca(
            ca::Error::Backend(
                castellan_signer::Error::Config(_) | castellan_signer::Error::Failed(_),
            )
            | ca::Error::Parse { .. }
            | ca::Error::NoRoots
            | ca::Error::UnsupportedKey { .. }
            | ca::Error::Practice(_)
            | ca::Error::Profile(_)
            | ca::Error::Probe(_)
            | ca::Error::WorkloadOnly,
        ) => "signer_failed",
        issuer::Error::Encode(_) | issuer::Error::Profile(_) => "encoding",
    }
}

fn header<'a>(meta: &'a MetadataMap, name: &str) -> Option<&'a str> {
    meta.get(name).and_then(|v| v.to_str().ok())
}

/// `Bearer <token>`; the scheme is case-insensitive (RFC 7235).
fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// The client's `grpc-timeout`, e.g. `9995m`.
fn deadline(meta: &MetadataMap) -> Option<Duration> {
    let value = header(meta, "grpc-timeout")?;
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
    fn bearer_scheme() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
        assert_eq!(bearer("Bearer"), None);
    }

    #[test]
    fn grpc_timeout() {
        let mut m = MetadataMap::new();
        m.insert("grpc-timeout", "250m".parse().unwrap());
        assert_eq!(deadline(&m), Some(Duration::from_millis(250)));
        m.insert("grpc-timeout", "3S".parse().unwrap());
        assert_eq!(deadline(&m), Some(Duration::from_secs(3)));
        m.insert("grpc-timeout", "x".parse().unwrap());
        assert_eq!(deadline(&m), None);
    }
}
