//! The mesh writers: leadership, what the trust bundle and CRL reached,
//! writes by reason, throttled writes, API errors, istiod's certificate.

use prometheus::{Gauge, GaugeVec, IntCounterVec, IntGauge};

use super::{
    KUBE_ERROR_REASONS, KUBE_RESOURCES, TRUST_BUNDLE_WRITES,
    register::{Reg, one_label},
};

/// The mesh writers' metrics.
#[derive(Clone, Debug)]
pub struct MeshMetrics {
    pub leader: IntGauge,
    pub trust_bundle_namespaces: IntGauge,
    pub trust_bundle_selected: IntGauge,
    /// When each target last held the bundle in use, as the leader confirmed.
    pub trust_bundle_last_publish: GaugeVec,
    /// Writes a writer delayed for going past a sane rate, by resource.
    pub kube_write_throttled: IntCounterVec,
    pub trust_bundle_writes: IntCounterVec,
    /// CRL ConfigMaps written, by reason.
    pub crl_writes: IntCounterVec,
    pub kube_errors: IntCounterVec,
    pub istiod_cert_expiry: Gauge,
}

impl MeshMetrics {
    pub(super) fn register(r: &Reg<'_>) -> Result<Self, prometheus::Error> {
        let every_error: Vec<[&str; 2]> = KUBE_RESOURCES
            .iter()
            .flat_map(|res| KUBE_ERROR_REASONS.iter().map(move |why| [*res, *why]))
            .collect();
        let every_error: Vec<&[&str]> = every_error.iter().map(<[&str; 2]>::as_slice).collect();
        Ok(Self {
            leader: r.int_gauge(
                "castellan_leader",
                "1 while this replica holds the Lease and writes to the cluster, else 0.",
            )?,
            trust_bundle_namespaces: r.int_gauge(
                "castellan_trust_bundle_namespaces",
                "Namespaces whose trust-bundle ConfigMap holds the root bundle in use (as seen by \
                 the leader).",
            )?,
            trust_bundle_selected: r.int_gauge(
                "castellan_trust_bundle_namespaces_selected",
                "Active namespaces the trust-bundle selector matches (as seen by the leader).",
            )?,
            trust_bundle_last_publish: r.gauges(
                "castellan_trust_bundle_last_publish_timestamp",
                "Unix time the leader last confirmed that a target holds the trust bundle in \
                 use: target configmaps (every selected namespace's), clustertrustbundle.",
                &["target"],
            )?,
            kube_write_throttled: r.counters(
                "castellan_kube_write_throttled_count",
                "Writes of one object delayed for going past a sane rate (something undoes \
                 castellan's writes, or a renewal keeps coming due), by resource.",
                &["resource"],
                &[],
            )?,
            trust_bundle_writes: r.counters(
                "castellan_trust_bundle_writes_count",
                "Trust-bundle ConfigMaps written, by reason (created, updated, repaired).",
                &["reason"],
                &one_label(&TRUST_BUNDLE_WRITES),
            )?,
            crl_writes: r.counters(
                "castellan_crl_writes_count",
                "CRL ConfigMaps written, by reason (created, updated, repaired).",
                &["reason"],
                &one_label(&TRUST_BUNDLE_WRITES),
            )?,
            kube_errors: r.counters(
                "castellan_kube_errors_count",
                "Failed Kubernetes API calls of the cluster writers, by resource and reason \
                 (forbidden, unavailable, conflict, not_found).",
                &["resource", "reason"],
                &every_error,
            )?,
            istiod_cert_expiry: r.gauge(
                "castellan_istiod_cert_expiry_timestamp",
                "Unix time istiod's certificate (the Secret castellan keeps) expires.",
            )?,
        })
    }
}
