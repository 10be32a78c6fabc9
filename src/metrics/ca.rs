//! The signing CA's health over time: when its chain and roots end, its
//! rotations and refused reloads, the integrity checks, the CRL it keeps.

use prometheus::{Gauge, GaugeVec, IntCounter, IntCounterVec, IntGauge};

use super::{
    ROTATION_RESULTS,
    register::{Reg, one_label},
};

/// The authority's metrics.
#[derive(Clone, Debug)]
pub struct CaMetrics {
    pub root_expiry: Gauge,
    pub chain_expiry: Gauge,
    /// Each certificate of the signing chain's expiry, by position.
    pub chain_certificate_expiry: GaugeVec,
    pub reload_refused: IntCounter,
    /// Self-minted intermediates replaced, by result (rotated, unavailable, refused).
    pub rotations: IntCounterVec,
    /// When the serving self-minted intermediate is due for replacement.
    pub next_rotation: Gauge,
    pub key_mismatches: IntCounter,
    pub refused_leaves: IntCounter,
    pub signer_healthy: IntGauge,
    /// The next update of the CRL in use (seconds since the epoch; 0: none).
    pub crl_next_update: IntGauge,
    /// CRLs signed and verified.
    pub crl_signed: IntCounter,
    /// Generations (or the signing CA) whose chain lacks a current CRL.
    pub crl_missing: IntGauge,
    /// Generations whose CRLs the published set holds.
    pub crl_generations: IntGauge,
}

impl CaMetrics {
    // Long: a declaration list, one metric per entry.
    pub(super) fn register(r: &Reg<'_>) -> Result<Self, prometheus::Error> {
        Ok(Self {
            root_expiry: r.gauge(
                "citadel_server_root_cert_expiry_timestamp",
                "Unix time the root of the bundle that expires first expires.",
            )?,
            chain_expiry: r.gauge(
                "citadel_server_cert_chain_expiry_timestamp",
                "Unix time the signing chain ends: the earliest expiry of the signing CA, the CAs \
                 above it and its root.",
            )?,
            chain_certificate_expiry: r.gauges(
                "castellan_ca_certificate_expiry_timestamp",
                "Unix time each certificate of the signing chain expires: position 0 is the \
                 signing CA, then each CA above it; the root is `root`.",
                &["position", "subject"],
            )?,
            reload_refused: r.counter(
                "castellan_signer_reload_refused_count",
                "Changed signing material refused by the checks.",
            )?,
            rotations: r.counters(
                "castellan_ca_rotations_count",
                "Attempts to replace the self-minted intermediate, by result (rotated, \
                 unavailable, refused).",
                &["result"],
                &one_label(&ROTATION_RESULTS),
            )?,
            next_rotation: r.gauge(
                "castellan_ca_next_rotation_timestamp",
                "Unix time the self-minted intermediate is due for replacement (0: the signer \
                 does not rotate by itself).",
            )?,
            key_mismatches: r.counter(
                "castellan_signer_key_mismatch_count",
                "Signatures or issued leaves that did not verify under the signing certificate's \
                 key.",
            )?,
            refused_leaves: r.counter(
                "castellan_signer_leaf_refused_count",
                "Leaves an issuing back end returned outside castellan's profile, refused.",
            )?,
            signer_healthy: r.int_gauge(
                "castellan_signer_healthy",
                "1 while the signing CA can issue (back end working, key proven), else 0.",
            )?,
            crl_next_update: r.int_gauge(
                "castellan_crl_next_update_timestamp",
                "When the CRL castellan publishes must be replaced (its nextUpdate); 0 without \
                 one.",
            )?,
            crl_signed: r.counter(
                "castellan_crl_signed_count",
                "CRLs signed by the signing CA and verified under its certificate.",
            )?,
            crl_missing: r.int_gauge(
                "castellan_crl_missing",
                "Generations (signing CAs whose leaves may live) whose chain lacks a current CRL \
                 from some CA; 0 when the published set covers them all.",
            )?,
            crl_generations: r.int_gauge(
                "castellan_crl_generations",
                "Generations whose CRLs, and their CAs' above, the published set holds.",
            )?,
        })
    }
}
