//! Prometheus metrics, named as istiod names them (`citadel_server_*`) so
//! existing dashboards and alerts keep working, plus castellan's own.

mod ca;
mod listener;
mod mesh;
mod queues;
mod register;
mod requests;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use ca::CaMetrics;
pub use listener::Listener;
pub use mesh::MeshMetrics;
pub use queues::Queues;
pub use requests::Requests;

use prometheus::{Encoder, IntCounter, Registry, TextEncoder};

use register::Reg;

/// What the signing CA's integrity checks count (made by
/// [`Metrics::ca_counters`]).
#[derive(Clone, Debug)]
pub struct IntegrityCounters {
    /// Signatures or leaves that did not verify under the signing certificate.
    pub key_mismatches: IntCounter,
    /// Leaves an issuing back end returned outside castellan's profile.
    pub refused_leaves: IntCounter,
}

/// Every metric castellan exports, by the subsystem that updates it.
#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Registry,
    /// The other issuers' registries (`issuer` label on each series),
    /// shown with this one's (see [`Metrics::for_issuer`]).
    issuers: std::sync::Arc<std::sync::Mutex<Vec<Registry>>>,
    pub requests: Requests,
    pub ca: CaMetrics,
    pub listener: Listener,
    pub mesh: MeshMetrics,
    /// The lines requests wait in before each back end.
    pub queues: Queues,
}

// === impl Metrics ===

impl Metrics {
    /// # Errors
    /// Only if two metrics share a name, a bug caught by the tests.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        crypto_module(&Reg(&registry))?;
        Self::on(registry)
    }

    /// The metrics of one more issuer: every series carries
    /// `issuer="<name>"`, and its CA's series (expiry, rotation, health,
    /// CRL, back-end queue) are shown in this instance's `/metrics`.
    ///
    /// # Errors
    /// As [`Metrics::new`], or when `name` is not a label value.
    pub fn for_issuer(&self, name: &str) -> Result<Self, prometheus::Error> {
        let labels = [("issuer".to_owned(), name.to_owned())].into();
        let registry = Registry::new_custom(None, Some(labels))?;
        let issuer = Self::on(registry.clone())?;
        if let Ok(mut issuers) = self.issuers.lock() {
            issuers.push(registry);
        }
        Ok(issuer)
    }

    fn on(registry: Registry) -> Result<Self, prometheus::Error> {
        let r = Reg(&registry);
        Ok(Self {
            issuers: Default::default(),
            requests: Requests::register(&r)?,
            ca: CaMetrics::register(&r)?,
            listener: Listener::register(&r)?,
            mesh: MeshMetrics::register(&r)?,
            queues: r.collector(Queues::new()?)?,
            registry,
        })
    }

    /// The counters the signing CA's integrity checks update.
    pub fn ca_counters(&self) -> IntegrityCounters {
        IntegrityCounters {
            key_mismatches: self.ca.key_mismatches.clone(),
            refused_leaves: self.ca.refused_leaves.clone(),
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
        let ca = &self.ca;
        ca.root_expiry.set(unix(roots_not_after));
        ca.chain_expiry.set(unix(chain_not_after));
        ca.chain_certificate_expiry.reset();
        let last = path.len().saturating_sub(1);
        for (i, (subject, not_after)) in path.iter().enumerate() {
            let position = if i == last && i > 0 {
                "root".to_owned()
            } else {
                i.to_string()
            };
            ca.chain_certificate_expiry
                .with_label_values(&[position.as_str(), subject.as_str()])
                .set(unix(*not_after));
        }
    }

    /// Sets when the self-minted intermediate is due for replacement.
    pub fn observe_rotation(&self, due: SystemTime) {
        self.ca.next_rotation.set(unix(due));
    }

    pub fn observe_latency(&self, code: tonic::Code, elapsed: Duration) {
        self.requests
            .latency
            .with_label_values(&[code_label(code)])
            .observe(elapsed.as_secs_f64());
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut families = self.registry.gather();
        if let Ok(issuers) = self.issuers.lock() {
            for registry in issuers.iter() {
                merge_issuer(&mut families, registry.gather());
            }
        }
        let mut out = Vec::new();
        if TextEncoder::new().encode(&families, &mut out).is_err() {
            return String::new();
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

/// Another issuer's CA series, added to the families of the same name.
fn merge_issuer(
    families: &mut [prometheus::proto::MetricFamily],
    theirs: Vec<prometheus::proto::MetricFamily>,
) {
    const PER_ISSUER: [&str; 4] = [
        "castellan_ca_",
        "castellan_signer_",
        "castellan_crl_",
        "castellan_backend_queue_",
    ];
    for mut family in theirs {
        let name = family.name().to_owned();
        let per_issuer = (PER_ISSUER.iter().any(|p| name.starts_with(p))
            && name != "castellan_crl_writes_count")
            || name == "citadel_server_cert_chain_expiry_timestamp"
            || name == "citadel_server_root_cert_expiry_timestamp";
        if let Some(ours) = families.iter_mut().find(|f| f.name() == name)
            && per_issuer
        {
            ours.mut_metric().extend(family.take_metric());
        }
    }
}

/// The cryptographic module, set once: it cannot change while running.
fn crypto_module(r: &Reg<'_>) -> Result<(), prometheus::Error> {
    let module = crate::fips::module();
    r.int_gauge(
        "castellan_fips_mode",
        "1 when castellan runs on the AWS-LC FIPS module in FIPS mode (the FIPS build), else 0.",
    )?
    .set(i64::from(module.fips_mode));
    r.int_gauges(
        "castellan_crypto_module_info",
        "The cryptographic module castellan was built with (value 1).",
        &["module", "version"],
    )?
    .with_label_values(&[module.name, module.version])
    .set(1);
    Ok(())
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
