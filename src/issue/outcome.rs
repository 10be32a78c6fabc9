//! What a refused request counts towards in `/metrics`, by its cause.

use crate::{authn, ca, error::Error, impersonation, issuer, metrics::Metrics, tenancy};

/// Counts a refused request where its cause is counted (failed
/// authentications, unparseable CSRs, signing errors by label, overload,
/// revoked identities); the latency histogram counts every request.
pub fn count(m: &Metrics, e: &Error) {
    match e {
        Error::Impersonation(impersonation::Error::Unavailable(..))
        | Error::Policy(_)
        | Error::Timeout(_) => {}
        // Not a failed authentication: counted by its queue
        // (castellan_backend_queue_turned_away_total) or the API server.
        Error::Authn(authn::Error::Busy { .. }) => {}
        // istiod counts a refused impersonation as an authentication failure.
        Error::Authn(_) | Error::Impersonation(_) => m.requests.authentication_failures.inc(),
        Error::Csr(_) => m.requests.csr_parsing_errors.inc(),
        Error::Issue(e) => {
            let label = sign_error_label(e);
            debug_assert!(crate::metrics::SIGN_ERROR_LABELS.contains(&label));
            m.requests.sign_errors.with_label_values(&[label]).inc();
        }
        Error::Overloaded(_) => m.requests.overloaded.inc(),
        Error::Revoked(_) => m.requests.revoked_refusals.inc(),
        Error::Tenancy(tenancy::Error::ForeignClientCert { .. }) => {
            m.requests.authentication_failures.inc();
        }
        Error::Tenancy(_) => m.requests.issuer_refusals.inc(),
        // Answered at the door, before the handler.
        Error::TooLarge(_) => {}
        Error::Unrecorded(_) => {
            m.requests
                .sign_errors
                .with_label_values(&["trust_record_unwritten"])
                .inc();
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
