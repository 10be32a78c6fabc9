//! The gRPC method: `CreateCertificate` translated to the issuance
//! pipeline ([`crate::issue`]) and back, within the request's deadline;
//! one log line and one set of metrics per request.

use std::{sync::Arc, time::Duration};

use tokio::time::Instant;
use tonic::{Request, Response, Status, metadata::MetadataMap};

use super::admission::{Deadline, HANDLER_MARGIN, busy_margin};
use crate::{
    authn::Credentials,
    error::Error,
    issue::{self, Ask, Pipeline, Trace},
    issuer::Issued,
    metrics::Metrics,
    proto::{
        CERT_SIGNER, IMPERSONATED_IDENTITY, IstioCertificateRequest, IstioCertificateResponse,
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
    pipeline: Pipeline,
    metrics: Metrics,
    /// castellan's deadline, for a request that came without the door's.
    timeout: Duration,
}

// === impl CaService ===

impl CaService {
    pub fn new(pipeline: Pipeline, metrics: Metrics, timeout: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                pipeline,
                metrics,
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
        me.metrics.requests.csr_count.inc();
        let peer_certs = request.peer_certs();
        // Set at the door when the request arrived; without one (a service
        // used without the admission layer), castellan's own timeout.
        let deadline = request
            .extensions()
            .get::<Deadline>()
            .map_or(started + me.timeout, |d| d.0);
        let budget = deadline.saturating_duration_since(started);
        let (meta, _, req) = request.into_parts();
        let cluster = header(&meta, "clusterid");
        // Only a value castellan knows reaches the log.
        let cluster_logged = cluster.map(|c| me.pipeline.describe_cluster(c));
        let mut trace = Trace::default();
        let ask = Ask {
            credentials: Credentials {
                bearer: header(&meta, "authorization").and_then(bearer),
                cluster_id: cluster,
                peer_certs: peer_certs.as_deref().map(Vec::as_slice),
            },
            csr: &req.csr,
            validity_secs: req.validity_duration,
            on_behalf_of: metadata_string(&req, IMPERSONATED_IDENTITY),
            cert_signer: metadata_string(&req, CERT_SIGNER),
        };
        let handler_deadline = deadline
            .checked_sub(HANDLER_MARGIN.min(budget / 2))
            .unwrap_or(deadline);
        // What queues inside (HSM sessions, API calls) stops waiting a little
        // before the handler's deadline, so a busy back end is answered as
        // busy (RESOURCE_EXHAUSTED), not as a timeout.
        let waits_until = deadline
            .checked_sub(busy_margin(budget))
            .unwrap_or(handler_deadline);
        // Boxed: the handler's state (authentication, impersonation, signing
        // futures) is kilobytes, moved on every wrapping otherwise.
        let work = Box::pin(castellan_signer::deadline::scope(
            waits_until,
            me.pipeline.issue(ask, &mut trace),
        ));
        let result = tokio::time::timeout_at(handler_deadline, work)
            .await
            .unwrap_or(Err(Error::Timeout(budget)));
        me.finish(result, &trace, cluster_logged.as_deref(), started.elapsed())
    }
}

// === impl Inner ===

impl Inner {
    /// Metrics, the request's one log line, and the status: the only place a
    /// request's outcome is turned into what the client sees.
    fn finish(
        &self,
        result: Result<Issued, Error>,
        trace: &Trace,
        cluster: Option<&str>,
        elapsed: Duration,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        let caller = trace.caller().unwrap_or("-");
        let on_behalf_of = trace.on_behalf_of().unwrap_or("-");
        let issuer = trace.issuer().unwrap_or("-");
        let cluster = cluster.unwrap_or("-");
        let latency_ms = elapsed.as_secs_f64() * 1000.0;
        match result {
            Ok(issued) => {
                self.issued(&issued, trace, (caller, on_behalf_of, cluster), elapsed);
                Ok(Response::new(IstioCertificateResponse {
                    cert_chain: issued.chain,
                }))
            }
            Err(e) => {
                let status = Status::from(&e);
                issue::count(&self.metrics, &e);
                self.metrics.observe_latency(status.code(), elapsed);
                tracing::warn!(
                    caller,
                    on_behalf_of,
                    issuer,
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

    /// An issued certificate's metrics and its one log line: INFO, or WARN
    /// with what the operator should act on (a lifetime cut short, the
    /// back end's warnings).
    fn issued(
        &self,
        issued: &Issued,
        trace: &Trace,
        (caller, on_behalf_of, cluster): (&str, &str, &str),
        elapsed: Duration,
    ) {
        let latency_ms = elapsed.as_secs_f64() * 1000.0;
        self.count_issued(issued, trace, elapsed);
        let issuer = trace.issuer().unwrap_or("-");
        let requested_secs = trace
            .clamped_from()
            .map_or_else(|| "-".to_owned(), |d| d.as_secs().to_string());
        let cut_from = issued
            .cut_from
            .map_or_else(|| "-".to_owned(), crate::clock::date);
        let warnings = issued.warnings.join("; ");
        if issued.warnings.is_empty() && issued.cut_from.is_none() {
            tracing::info!(
                caller,
                on_behalf_of,
                issuer,
                cluster,
                outcome = "issued",
                serial = %issued.serial,
                not_after = %crate::clock::date(issued.not_after),
                ttl_clamped_from_secs = %requested_secs,
                latency_ms,
                "CreateCertificate"
            );
        } else {
            // What the operator should act on, in the same one line.
            tracing::warn!(
                caller,
                on_behalf_of,
                issuer,
                cluster,
                outcome = "issued",
                serial = %issued.serial,
                not_after = %crate::clock::date(issued.not_after),
                asked_until = %cut_from,
                ttl_clamped_from_secs = %requested_secs,
                signer_warnings = %warnings,
                latency_ms,
                "CreateCertificate"
            );
        }
    }
}

impl Inner {
    /// An issued certificate in `/metrics`.
    fn count_issued(&self, issued: &Issued, trace: &Trace, elapsed: Duration) {
        let requests = &self.metrics.requests;
        requests.issued.inc();
        if let Some(name) = trace.issuer() {
            requests.issued_by_issuer.with_label_values(&[name]).inc();
        }
        self.metrics.observe_latency(tonic::Code::Ok, elapsed);
        if trace.clamped_from().is_some() {
            requests.ttl_clamped.inc();
        }
        if !issued.warnings.is_empty() {
            requests.signer_warnings.inc();
        }
        if issued.cut_from.is_some() {
            requests.lifetime_cut.inc();
        }
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

/// A string in the request metadata, when set and not empty: the identity
/// ztunnel asks for on a pod's behalf (`ImpersonatedIdentity`), the issuer
/// istio-agent names (`CertSigner`).
fn metadata_string<'r>(req: &'r IstioCertificateRequest, key: &str) -> Option<&'r str> {
    req.metadata
        .as_ref()
        .and_then(|m| m.fields.get(key))
        .and_then(|v| match &v.kind {
            Some(prost_types::value::Kind::StringValue(s)) if !s.is_empty() => Some(s.as_str()),
            _ => None,
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
}
