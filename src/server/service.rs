//! The gRPC method itself: authenticate, check the CSR, apply policy, issue;
//! one log line and one set of metrics per request.

use std::{sync::Arc, time::Duration};

use tokio::time::Instant;
use tonic::{Request, Response, Status, metadata::MetadataMap};

use rustls_pki_types::CertificateDer;

use super::admission::{Deadline, HANDLER_MARGIN, busy_margin};
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
    /// castellan's deadline, for a request that came without the door's.
    timeout: Duration,
    /// Refused identities, and the leaves issued here (`[trust]`).
    revocations: Option<Arc<crate::trust::Revocations>>,
}

/// What is known about a request when it ends, for its log line.
#[derive(Default)]
struct Trace {
    caller: Option<String>,
    /// The identity ztunnel asked for on a pod's behalf, if it is a valid
    /// SPIFFE ID; a marker otherwise.
    on_behalf_of: Option<String>,
    /// The `clusterid` header, if it names a configured cluster; a marker otherwise.
    cluster: Option<String>,
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
        timeout: Duration,
        revocations: Option<Arc<crate::trust::Revocations>>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                authn,
                nodes,
                issuer,
                ttl,
                metrics,
                timeout,
                revocations,
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
        // Set at the door when the request arrived; without one (a service
        // used without the admission layer), castellan's own timeout.
        let deadline = request
            .extensions()
            .get::<Deadline>()
            .map_or(started + me.timeout, |d| d.0);
        let budget = deadline.saturating_duration_since(started);
        let (meta, _, req) = request.into_parts();
        let cluster = header(&meta, "clusterid");
        let mut trace = Trace {
            // Only a value castellan knows reaches the log.
            cluster: cluster.map(|c| me.authn.describe_cluster(c)),
            ..Trace::default()
        };
        let certs = peer_certs.as_deref().map(Vec::as_slice);
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
            me.handle(&meta, certs, cluster, req, &mut trace),
        ));
        let result = tokio::time::timeout_at(handler_deadline, work)
            .await
            .unwrap_or(Err(Error::Timeout(budget)));
        me.finish(result, &trace, started.elapsed())
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
                trace.on_behalf_of = Some(loggable_identity(requested));
                let nodes = self
                    .nodes
                    .as_ref()
                    .ok_or(impersonation::Error::NotConfigured)?;
                nodes.authorize(&caller, requested).await?
            }
        };
        let revocations = self
            .revocations
            .as_deref()
            .map(|r| (r, identity.to_string()));
        if let Some((r, id)) = &revocations {
            if r.is_denied(id) {
                return Err(Error::Revoked(id.clone()));
            }
            if let Some(why) = r.unrecorded() {
                return Err(Error::Unrecorded(why));
            }
        }
        let approved = policy::check(csr, &identity, req.validity_duration, &self.ttl)?;
        trace.clamped_from = approved.clamped_from();
        let issued = self.issuer.issue(&approved).await?;
        if let Some((r, id)) = &revocations {
            let not_after = issued
                .not_after
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            r.issued(id, &issued.serial, not_after);
        }
        Ok(issued)
    }

    /// Metrics, the request's one log line, and the status: the only place a
    /// request's outcome is turned into what the client sees.
    fn finish(
        &self,
        result: Result<Issued, Error>,
        trace: &Trace,
        elapsed: Duration,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        let caller = trace.caller.as_deref().unwrap_or("-");
        let on_behalf_of = trace.on_behalf_of.as_deref().unwrap_or("-");
        let cluster = trace.cluster.as_deref().unwrap_or("-");
        let latency_ms = elapsed.as_secs_f64() * 1000.0;
        match result {
            Ok(issued) => {
                self.metrics.issued.inc();
                self.metrics.observe_latency(tonic::Code::Ok, elapsed);
                if trace.clamped_from.is_some() {
                    self.metrics.ttl_clamped.inc();
                }
                if !issued.warnings.is_empty() {
                    self.metrics.signer_warnings.inc();
                }
                if issued.cut_from.is_some() {
                    self.metrics.lifetime_cut.inc();
                }
                let requested_secs = trace
                    .clamped_from
                    .map_or_else(|| "-".to_owned(), |d| d.as_secs().to_string());
                let cut_from = issued
                    .cut_from
                    .map_or_else(|| "-".to_owned(), crate::clock::date);
                let warnings = issued.warnings.join("; ");
                if issued.warnings.is_empty() && issued.cut_from.is_none() {
                    tracing::info!(
                        caller,
                        on_behalf_of,
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
            Error::Impersonation(impersonation::Error::Unavailable(..))
            | Error::Policy(_)
            | Error::Timeout(_) => {}
            // Not a failed authentication: counted by its queue
            // (castellan_backend_queue_turned_away_total) or the API server.
            Error::Authn(authn::Error::Busy { .. }) => {}
            // istiod counts a refused impersonation as an authentication failure.
            Error::Authn(_) | Error::Impersonation(_) => m.authentication_failures.inc(),
            Error::Csr(_) => m.csr_parsing_errors.inc(),
            Error::Issue(e) => {
                let label = sign_error_label(e);
                debug_assert!(crate::metrics::SIGN_ERROR_LABELS.contains(&label));
                m.sign_errors.with_label_values(&[label]).inc();
            }
            Error::Overloaded(_) => m.overloaded.inc(),
            Error::Revoked(_) => m.revoked_refusals.inc(),
            // Answered at the door, before the handler.
            Error::TooLarge(_) => {}
            Error::Unrecorded(_) => {
                m.sign_errors
                    .with_label_values(&["trust_record_unwritten"])
                    .inc();
            }
        }
    }
}

fn sign_error_label(e: &issuer::Error) -> &'static str {
    match e {
        issuer::Error::CaExpired(_) => "ca_expired",
        issuer::Error::CaExpiring { .. } => "ca_expiring",
        issuer::Error::Ca(
            ca::Error::Backend(castellan_signer::Error::Unavailable(_)) | ca::Error::Unhealthy(_),
        ) => "signer_unavailable",
        issuer::Error::Ca(ca::Error::Backend(castellan_signer::Error::Busy(_))) => "signer_busy",
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

/// A requested identity as the log may show it: a valid SPIFFE ID, or a
/// fixed marker (the value is the caller's, untrusted).
fn loggable_identity(requested: &str) -> String {
    match spiffe::SpiffeId::new(requested) {
        Ok(id) if requested.len() <= 512 => id.to_string(),
        Ok(_) | Err(_) => "<not a SPIFFE ID>".into(),
    }
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
    fn only_valid_identities_are_logged() {
        assert_eq!(
            loggable_identity("spiffe://cluster.local/ns/a/sa/b"),
            "spiffe://cluster.local/ns/a/sa/b"
        );
        for bad in ["eyJhbGciOiJSUzI1NiJ9.secret.token", "", "spiffe://", "x\ny"] {
            assert_eq!(loggable_identity(bad), "<not a SPIFFE ID>");
        }
    }
}
