//! What happens to requests: received, issued, refused by cause, how long
//! they took — istiod's `citadel_server_*` names where istiod has one.

use prometheus::{HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge};

use super::{
    CODE_LABELS, SIGN_ERROR_LABELS,
    register::{Reg, one_label},
};

/// The request path's metrics.
#[derive(Clone, Debug)]
pub struct Requests {
    pub csr_count: IntCounter,
    pub authentication_failures: IntCounter,
    pub csr_parsing_errors: IntCounter,
    pub sign_errors: IntCounterVec,
    pub issued: IntCounter,
    pub ttl_clamped: IntCounter,
    pub overloaded: IntCounter,
    pub in_flight: IntGauge,
    pub latency: HistogramVec,
    pub authn_cache_hits: IntCounter,
    pub authn_cache_misses: IntCounter,
    pub signer_warnings: IntCounter,
    pub lifetime_cut: IntCounter,
    /// Requests refused because their identity is revoked.
    pub revoked_refusals: IntCounter,
    /// Requests whose namespace no issuer serves, or whose `CertSigner`
    /// its issuer does not accept.
    pub issuer_refusals: IntCounter,
    /// Certificates issued, by issuer (with `[[issuers]]`).
    pub issued_by_issuer: IntCounterVec,
}

impl Requests {
    // Long: a declaration list, one metric per entry.
    pub(super) fn register(r: &Reg<'_>) -> Result<Self, prometheus::Error> {
        let latency = r.histograms(
            HistogramOpts::new(
                "castellan_request_duration_seconds",
                "CreateCertificate latency, by gRPC status code.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["code"],
        )?;
        // Every series that can appear exists from the start, at zero.
        for code in CODE_LABELS {
            latency.with_label_values(&[code]);
        }
        Ok(Self {
            csr_count: r.counter("citadel_server_csr_count", "CSRs received.")?,
            authentication_failures: r.counter(
                "citadel_server_authentication_failure_count",
                "Requests whose caller could not be authenticated.",
            )?,
            csr_parsing_errors: r.counter(
                "citadel_server_csr_parsing_err_count",
                "CSRs that could not be parsed or verified.",
            )?,
            sign_errors: r.counters(
                "citadel_server_csr_sign_err_count",
                "CSRs that failed to be signed, by error.",
                &["error"],
                &one_label(&SIGN_ERROR_LABELS),
            )?,
            issued: r.counter(
                "citadel_server_success_cert_issuance_count",
                "Certificates issued.",
            )?,
            ttl_clamped: r.counter(
                "castellan_ttl_clamped_count",
                "Requests whose lifetime was cut to the maximum.",
            )?,
            overloaded: r.counter(
                "castellan_overloaded_count",
                "Requests refused with RESOURCE_EXHAUSTED after waiting out their deadline for a \
                 slot under server.max_in_flight.",
            )?,
            in_flight: r.int_gauge(
                "castellan_requests_in_flight",
                "Requests being handled now.",
            )?,
            latency,
            authn_cache_hits: r.counter(
                "castellan_authn_cache_hits_count",
                "Requests whose credential was verified recently and not checked again.",
            )?,
            authn_cache_misses: r.counter(
                "castellan_authn_cache_misses_count",
                "Credential verifications performed.",
            )?,
            signer_warnings: r.counter(
                "castellan_signer_warnings_count",
                "Certificates for which the back end reported warnings (e.g. Vault's).",
            )?,
            lifetime_cut: r.counter(
                "castellan_lifetime_cut_count",
                "Certificates that end earlier than asked (the signing certificate's expiry, a \
                 Vault role's max_ttl).",
            )?,
            revoked_refusals: r.counter(
                "castellan_revoked_refusals_count",
                "Requests refused because `castellan revoke --identity` denied their identity.",
            )?,
            issuer_refusals: r.counter(
                "castellan_issuer_refusals_count",
                "Requests refused PERMISSION_DENIED because no issuer is bound to their namespace, \
                 or their CertSigner names an issuer their namespace is not bound to.",
            )?,
            issued_by_issuer: r.counters(
                "castellan_issued_by_issuer_count",
                "Certificates issued, by issuer (several issuers only).",
                &["issuer"],
                &[],
            )?,
        })
    }
}
