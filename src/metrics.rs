//! Prometheus metrics, named as istiod names them (`citadel_server_*`) so
//! existing dashboards and alerts keep working, plus castellan's own.

mod queues;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use queues::Queues;

use prometheus::{
    Encoder, Gauge, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

/// What the signing CA's integrity checks count (made by
/// [`Metrics::ca_counters`]).
#[derive(Clone, Debug)]
pub struct IntegrityCounters {
    /// Signatures or leaves that did not verify under the signing certificate.
    pub key_mismatches: IntCounter,
    /// Leaves an issuing back end returned outside castellan's profile.
    pub refused_leaves: IntCounter,
}

/// Every metric castellan exports.
#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Registry,
    pub csr_count: IntCounter,
    pub authentication_failures: IntCounter,
    pub csr_parsing_errors: IntCounter,
    pub sign_errors: IntCounterVec,
    pub issued: IntCounter,
    pub ttl_clamped: IntCounter,
    pub overloaded: IntCounter,
    pub in_flight: IntGauge,
    pub latency: HistogramVec,
    pub root_expiry: Gauge,
    pub chain_expiry: Gauge,
    pub reload_refused: IntCounter,
    /// Self-minted intermediates replaced, by result (rotated, unavailable, refused).
    pub rotations: IntCounterVec,
    /// When the serving self-minted intermediate is due for replacement.
    pub next_rotation: Gauge,
    pub authn_cache_hits: IntCounter,
    pub authn_cache_misses: IntCounter,
    pub signer_warnings: IntCounter,
    pub lifetime_cut: IntCounter,
    /// Requests refused because their identity is revoked.
    pub revoked_refusals: IntCounter,
    /// The next update of the CRL in use (seconds since the epoch; 0: none).
    pub crl_next_update: IntGauge,
    /// CRLs signed and verified.
    pub crl_signed: IntCounter,
    /// Generations (or the signing CA) whose chain lacks a current CRL.
    pub crl_missing: IntGauge,
    /// Generations whose CRLs the published set holds.
    pub crl_generations: IntGauge,
    /// Each certificate of the signing chain's expiry, by position.
    pub chain_certificate_expiry: prometheus::GaugeVec,
    pub key_mismatches: IntCounter,
    pub refused_leaves: IntCounter,
    pub signer_healthy: IntGauge,
    pub connections: IntGauge,
    /// Connections each serving worker has (`server.workers`).
    pub worker_connections: prometheus::IntGaugeVec,
    pub connections_refused: IntCounter,
    pub leader: IntGauge,
    pub trust_bundle_namespaces: IntGauge,
    pub trust_bundle_selected: IntGauge,
    /// When each target last held the bundle in use, as the leader confirmed.
    pub trust_bundle_last_publish: prometheus::GaugeVec,
    /// Writes a writer delayed for going past a sane rate, by resource.
    pub kube_write_throttled: IntCounterVec,
    pub trust_bundle_writes: IntCounterVec,
    /// CRL ConfigMaps written, by reason.
    pub crl_writes: IntCounterVec,
    pub kube_errors: IntCounterVec,
    pub istiod_cert_expiry: Gauge,
    /// The lines requests wait in before each back end.
    pub queues: Queues,
}

// === impl Metrics ===

impl Metrics {
    /// # Errors
    /// Only if two metrics share a name, a bug caught by the tests.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let counter = |name: &str, help: &str| -> Result<IntCounter, prometheus::Error> {
            let c = IntCounter::new(name, help)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let gauge = |name: &str, help: &str| -> Result<Gauge, prometheus::Error> {
            let g = Gauge::new(name, help)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let sign_errors = IntCounterVec::new(
            Opts::new(
                "citadel_server_csr_sign_err_count",
                "CSRs that failed to be signed, by error.",
            ),
            &["error"],
        )?;
        registry.register(Box::new(sign_errors.clone()))?;
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "castellan_request_duration_seconds",
                "CreateCertificate latency, by gRPC status code.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["code"],
        )?;
        registry.register(Box::new(latency.clone()))?;
        let in_flight = IntGauge::new(
            "castellan_requests_in_flight",
            "Requests being handled now.",
        )?;
        registry.register(Box::new(in_flight.clone()))?;
        let trust_bundle_last_publish = prometheus::GaugeVec::new(
            Opts::new(
                "castellan_trust_bundle_last_publish_timestamp",
                "Unix time the leader last confirmed that a target holds the trust bundle in use: \
                 target configmaps (every selected namespace's), clustertrustbundle.",
            ),
            &["target"],
        )?;
        registry.register(Box::new(trust_bundle_last_publish.clone()))?;
        let kube_write_throttled = IntCounterVec::new(
            Opts::new(
                "castellan_kube_write_throttled_count",
                "Writes of one object delayed for going past a sane rate (something undoes \
                 castellan's writes, or a renewal keeps coming due), by resource.",
            ),
            &["resource"],
        )?;
        registry.register(Box::new(kube_write_throttled.clone()))?;
        let chain_certificate_expiry = prometheus::GaugeVec::new(
            Opts::new(
                "castellan_ca_certificate_expiry_timestamp",
                "Unix time each certificate of the signing chain expires: position 0 is the \
                 signing CA, then each CA above it; the root is `root`.",
            ),
            &["position", "subject"],
        )?;
        registry.register(Box::new(chain_certificate_expiry.clone()))?;
        let signer_healthy = IntGauge::new(
            "castellan_signer_healthy",
            "1 while the signing CA can issue (back end working, key proven), else 0.",
        )?;
        registry.register(Box::new(signer_healthy.clone()))?;
        let connections = IntGauge::new(
            "castellan_connections_open",
            "Client connections open now (TLS established).",
        )?;
        registry.register(Box::new(connections.clone()))?;
        let worker_connections = prometheus::IntGaugeVec::new(
            Opts::new(
                "castellan_worker_connections",
                "Client connections each serving thread has, handshakes included \
                 (a new connection goes to the one with the fewest).",
            ),
            &["worker"],
        )?;
        registry.register(Box::new(worker_connections.clone()))?;
        let int_gauge = |name: &str, help: &str| -> Result<IntGauge, prometheus::Error> {
            let g = IntGauge::new(name, help)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let counter_vec =
            |name: &str, help: &str, labels: &[&str]| -> Result<IntCounterVec, prometheus::Error> {
                let c = IntCounterVec::new(Opts::new(name, help), labels)?;
                registry.register(Box::new(c.clone()))?;
                Ok(c)
            };
        let leader = int_gauge(
            "castellan_leader",
            "1 while this replica holds the Lease and writes to the cluster, else 0.",
        )?;
        let trust_bundle_namespaces = int_gauge(
            "castellan_trust_bundle_namespaces",
            "Namespaces whose trust-bundle ConfigMap holds the root bundle in use (as seen by the leader).",
        )?;
        let trust_bundle_selected = int_gauge(
            "castellan_trust_bundle_namespaces_selected",
            "Active namespaces the trust-bundle selector matches (as seen by the leader).",
        )?;
        let trust_bundle_writes = counter_vec(
            "castellan_trust_bundle_writes_count",
            "Trust-bundle ConfigMaps written, by reason (created, updated, repaired).",
            &["reason"],
        )?;
        let crl_writes = counter_vec(
            "castellan_crl_writes_count",
            "CRL ConfigMaps written, by reason (created, updated, repaired).",
            &["reason"],
        )?;
        // The cryptographic module, set once: it cannot change while running.
        let module = crate::fips::module();
        int_gauge(
            "castellan_fips_mode",
            "1 when castellan runs on the AWS-LC FIPS module in FIPS mode (the FIPS build), else 0.",
        )?
        .set(i64::from(module.fips_mode));
        let info = prometheus::IntGaugeVec::new(
            Opts::new(
                "castellan_crypto_module_info",
                "The cryptographic module castellan was built with (value 1).",
            ),
            &["module", "version"],
        )?;
        registry.register(Box::new(info.clone()))?;
        info.with_label_values(&[module.name, module.version])
            .set(1);
        let rotations = counter_vec(
            "castellan_ca_rotations_count",
            "Attempts to replace the self-minted intermediate, by result (rotated, unavailable, refused).",
            &["result"],
        )?;
        for result in ROTATION_RESULTS {
            rotations.with_label_values(&[result]);
        }
        let kube_errors = counter_vec(
            "castellan_kube_errors_count",
            "Failed Kubernetes API calls of the cluster writers, by resource and reason (forbidden, unavailable, conflict, not_found).",
            &["resource", "reason"],
        )?;
        // Every series that can appear exists from the start, at zero, so
        // rates and alerts see the first event instead of a new series.
        for code in CODE_LABELS {
            latency.with_label_values(&[code]);
        }
        for error in SIGN_ERROR_LABELS {
            sign_errors.with_label_values(&[error]);
        }
        for resource in KUBE_RESOURCES {
            for reason in KUBE_ERROR_REASONS {
                kube_errors.with_label_values(&[resource, reason]);
            }
        }
        for reason in TRUST_BUNDLE_WRITES {
            trust_bundle_writes.with_label_values(&[reason]);
            crl_writes.with_label_values(&[reason]);
        }
        let queues = Queues::new()?;
        registry.register(Box::new(queues.clone()))?;
        Ok(Self {
            queues,
            csr_count: counter("citadel_server_csr_count", "CSRs received.")?,
            authentication_failures: counter(
                "citadel_server_authentication_failure_count",
                "Requests whose caller could not be authenticated.",
            )?,
            csr_parsing_errors: counter(
                "citadel_server_csr_parsing_err_count",
                "CSRs that could not be parsed or verified.",
            )?,
            issued: counter(
                "citadel_server_success_cert_issuance_count",
                "Certificates issued.",
            )?,
            ttl_clamped: counter(
                "castellan_ttl_clamped_count",
                "Requests whose lifetime was cut to the maximum.",
            )?,
            overloaded: counter(
                "castellan_overloaded_count",
                "Requests refused with RESOURCE_EXHAUSTED after waiting out their deadline for a slot under server.max_in_flight.",
            )?,
            root_expiry: gauge(
                "citadel_server_root_cert_expiry_timestamp",
                "Unix time the root of the bundle that expires first expires.",
            )?,
            chain_expiry: gauge(
                "citadel_server_cert_chain_expiry_timestamp",
                "Unix time the signing chain ends: the earliest expiry of the signing CA, the CAs \
                 above it and its root.",
            )?,
            reload_refused: counter(
                "castellan_signer_reload_refused_count",
                "Changed signing material refused by the checks.",
            )?,
            rotations,
            next_rotation: gauge(
                "castellan_ca_next_rotation_timestamp",
                "Unix time the self-minted intermediate is due for replacement (0: the signer does not rotate by itself).",
            )?,
            signer_warnings: counter(
                "castellan_signer_warnings_count",
                "Certificates for which the back end reported warnings (e.g. Vault's).",
            )?,
            lifetime_cut: counter(
                "castellan_lifetime_cut_count",
                "Certificates that end earlier than asked (the signing certificate's expiry, a Vault role's max_ttl).",
            )?,
            revoked_refusals: counter(
                "castellan_revoked_refusals_count",
                "Requests refused because `castellan revoke --identity` denied their identity.",
            )?,
            crl_next_update: int_gauge(
                "castellan_crl_next_update_timestamp",
                "When the CRL castellan publishes must be replaced (its nextUpdate); 0 without one.",
            )?,
            crl_signed: counter(
                "castellan_crl_signed_count",
                "CRLs signed by the signing CA and verified under its certificate.",
            )?,
            crl_missing: int_gauge(
                "castellan_crl_missing",
                "Generations (signing CAs whose leaves may live) whose chain lacks a current CRL \
                 from some CA; 0 when the published set covers them all.",
            )?,
            crl_generations: int_gauge(
                "castellan_crl_generations",
                "Generations whose CRLs, and their CAs' above, the published set holds.",
            )?,
            chain_certificate_expiry,
            authn_cache_hits: counter(
                "castellan_authn_cache_hits_count",
                "Requests whose credential was verified recently and not checked again.",
            )?,
            authn_cache_misses: counter(
                "castellan_authn_cache_misses_count",
                "Credential verifications performed.",
            )?,
            key_mismatches: counter(
                "castellan_signer_key_mismatch_count",
                "Signatures or issued leaves that did not verify under the signing certificate's key.",
            )?,
            refused_leaves: counter(
                "castellan_signer_leaf_refused_count",
                "Leaves an issuing back end returned outside castellan's profile, refused.",
            )?,
            signer_healthy,
            leader,
            trust_bundle_namespaces,
            trust_bundle_selected,
            trust_bundle_last_publish,
            kube_write_throttled,
            trust_bundle_writes,
            crl_writes,
            kube_errors,
            istiod_cert_expiry: gauge(
                "castellan_istiod_cert_expiry_timestamp",
                "Unix time istiod's certificate (the Secret castellan keeps) expires.",
            )?,
            connections,
            worker_connections,
            connections_refused: counter(
                "castellan_connections_refused_count",
                "New connections closed at once over server.max_connections.",
            )?,
            sign_errors,
            latency,
            in_flight,
            registry,
        })
    }

    /// The counters the signing CA's integrity checks update.
    pub fn ca_counters(&self) -> IntegrityCounters {
        IntegrityCounters {
            key_mismatches: self.key_mismatches.clone(),
            refused_leaves: self.refused_leaves.clone(),
        }
    }

    /// Sets the expiry gauges from the current CA: the bundle's earliest
    /// root, the chain's end, and each certificate of the path (signing CA
    /// first, the root last) — the series of a previous CA are removed.
    pub fn observe_ca(
        &self,
        roots_not_after: SystemTime,
        chain_not_after: SystemTime,
        path: &[(String, SystemTime)],
    ) {
        self.root_expiry.set(unix(roots_not_after));
        self.chain_expiry.set(unix(chain_not_after));
        self.chain_certificate_expiry.reset();
        let last = path.len().saturating_sub(1);
        for (i, (subject, not_after)) in path.iter().enumerate() {
            let position = if i == last && i > 0 {
                "root".to_owned()
            } else {
                i.to_string()
            };
            self.chain_certificate_expiry
                .with_label_values(&[position.as_str(), subject.as_str()])
                .set(unix(*not_after));
        }
    }

    /// Sets when the self-minted intermediate is due for replacement.
    pub fn observe_rotation(&self, due: SystemTime) {
        self.next_rotation.set(unix(due));
    }

    pub fn observe_latency(&self, code: tonic::Code, elapsed: Duration) {
        self.latency
            .with_label_values(&[code_label(code)])
            .observe(elapsed.as_secs_f64());
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        if TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .is_err()
        {
            return String::new();
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

fn unix(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The `result` label's values of `castellan_ca_rotations_count`.
pub const ROTATION_RESULTS: [&str; 3] = ["rotated", "unavailable", "refused"];

/// The `code` label's values.
const CODE_LABELS: [&str; 9] = [
    "OK",
    "INVALID_ARGUMENT",
    "UNAUTHENTICATED",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "UNAVAILABLE",
    "DEADLINE_EXCEEDED",
    "INTERNAL",
    "OTHER",
];

/// The `error` label's values of `citadel_server_csr_sign_err_count`.
pub(crate) const SIGN_ERROR_LABELS: [&str; 9] = [
    "ca_expired",
    "ca_expiring",
    "trust_record_unwritten",
    "signer_busy",
    "signer_unavailable",
    "key_mismatch",
    "leaf_refused",
    "signer_failed",
    "encoding",
];

/// The resources the cluster writers call, and why a call fails.
pub(crate) const KUBE_RESOURCES: [&str; 5] = [
    "configmaps",
    "namespaces",
    "secrets",
    "leases",
    "clustertrustbundles",
];
pub(crate) const KUBE_ERROR_REASONS: [&str; 4] =
    ["forbidden", "unavailable", "conflict", "not_found"];
pub(crate) const TRUST_BUNDLE_WRITES: [&str; 3] = ["created", "updated", "repaired"];

fn code_label(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::Unauthenticated => "UNAUTHENTICATED",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::Unavailable => "UNAVAILABLE",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::Internal => "INTERNAL",
        _ => "OTHER",
    }
}
