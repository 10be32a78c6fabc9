//! Every way a request can fail, and the single place each becomes a gRPC
//! status. Codes follow what Istio clients retry: UNAVAILABLE,
//! RESOURCE_EXHAUSTED and DEADLINE_EXCEEDED are retried; the others are not.

use tonic::{Code, Status};

use crate::{authn, ca, csr, impersonation, issuer, policy, tenancy};

/// A failed CreateCertificate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("authentication: {0}")]
    Authn(#[from] authn::Error),
    #[error("{0}")]
    Csr(#[from] csr::Error),
    #[error("{0}")]
    Policy(#[from] policy::Error),
    #[error("impersonation: {0}")]
    Impersonation(#[from] impersonation::Error),
    #[error("issuance: {0}")]
    Issue(#[from] issuer::Error),
    #[error("issuer: {0}")]
    Tenancy(#[from] tenancy::Error),
    #[error("over the limit of {0} requests in flight")]
    Overloaded(usize),
    #[error("request deadline of {0:?} exceeded")]
    Timeout(std::time::Duration),
    /// `castellan revoke --identity` refused it new certificates.
    #[error("{0} is revoked: refused new certificates until the denial is lifted")]
    Revoked(String),
    /// What castellan signs must be recorded for the guards to hold.
    #[error("not issuing: {0}")]
    Unrecorded(String),
    /// A request message over the size castellan reads.
    #[error("the request message is over the {0} bytes castellan reads")]
    TooLarge(usize),
}

// === impl Error ===

impl Error {
    /// The status code, without the message (for metrics and logs).
    pub fn code(&self) -> Code {
        Status::from(self).code()
    }
}

impl From<&Error> for Status {
    // Long: one match over every refusal, the one place each gets its status.
    fn from(e: &Error) -> Self {
        match e {
            // Opaque on purpose: the reason is logged, never told (istiod's rule).
            Error::Authn(
                authn::Error::NoCredential
                | authn::Error::NotRecognised(_)
                | authn::Error::Rejected { .. },
            ) => Self::unauthenticated("authentication failed"),
            Error::Authn(authn::Error::Unavailable { .. }) => {
                Self::unavailable("authentication backend unavailable")
            }
            // Overload, not an outage: the client backs off and retries.
            Error::Authn(authn::Error::Busy { .. }) => {
                Self::resource_exhausted("authentication backend busy; retry")
            }
            Error::Csr(e) => Self::invalid_argument(e.to_string()),
            Error::Policy(e @ policy::Error::IdentityMismatch { .. }) => {
                Self::permission_denied(e.to_string())
            }
            Error::Policy(
                e @ (policy::Error::NegativeTtl(_) | policy::Error::TtlTooLong { .. }),
            ) => Self::invalid_argument(e.to_string()),
            Error::Impersonation(impersonation::Error::Unavailable(..)) => {
                Self::unavailable("node authorization unavailable")
            }
            // The reason is logged; it may describe other pods.
            Error::Impersonation(
                impersonation::Error::NotConfigured
                | impersonation::Error::NotTrusted(_)
                | impersonation::Error::BadIdentity(_)
                | impersonation::Error::NoPodBinding
                | impersonation::Error::NoCluster
                | impersonation::Error::CallerPodMissing(_)
                | impersonation::Error::CallerPodUid { .. }
                | impersonation::Error::CallerPodAccount { .. }
                | impersonation::Error::NotScheduled(_)
                | impersonation::Error::NotOnNode { .. },
            ) => Self::permission_denied("impersonation not allowed"),
            Error::Issue(e) => issue_status(e),
            // Told to the (authenticated) caller: what it may ask for instead.
            Error::Tenancy(
                e @ (tenancy::Error::CertSigner { .. }
                | tenancy::Error::Unbound { .. }
                | tenancy::Error::Ambiguous { .. }
                | tenancy::Error::NoNamespace(_)),
            ) => Self::permission_denied(e.to_string()),
            // As any failed authentication: opaque, the reason logged.
            Error::Tenancy(tenancy::Error::ForeignClientCert { .. }) => {
                Self::unauthenticated("authentication failed")
            }
            // Retried by the client: the namespace watch is starting.
            Error::Tenancy(tenancy::Error::LabelsUnknown(_)) => {
                Self::unavailable("issuer bindings not known yet")
            }
            Error::Overloaded(_) => Self::resource_exhausted("too many requests in flight; retry"),
            Error::Timeout(_) => Self::deadline_exceeded("request deadline exceeded"),
            Error::Revoked(_) => Self::permission_denied("identity revoked"),
            Error::Unrecorded(_) => Self::unavailable("trust record unavailable"),
            Error::TooLarge(max) => Self::resource_exhausted(format!(
                "request message too large: castellan reads at most {max} bytes (a CSR is a few \
                 hundred)"
            )),
        }
    }
}

/// Issuance failures: what a retry can fix is UNAVAILABLE (Istio clients
/// retry it), the rest INTERNAL; details stay in the log.
fn issue_status(e: &issuer::Error) -> Status {
    match e {
        issuer::Error::CaExpired(_) | issuer::Error::CaExpiring { .. } => {
            Status::unavailable("signer unavailable")
        }
        issuer::Error::Ca(e) => match e {
            // Busy is overload, not an outage: the client backs off and retries.
            ca::Error::Backend(castellan_signer::Error::Busy(_)) => Status::resource_exhausted(
                "signer busy: every call it allows is in progress; retry",
            ),
            ca::Error::Backend(castellan_signer::Error::Unavailable(_))
            | ca::Error::KeyMismatch { .. }
            | ca::Error::Unhealthy(_) => Status::unavailable("signer unavailable"),
            ca::Error::Backend(
                castellan_signer::Error::Config(_) | castellan_signer::Error::Failed(_),
            )
            | ca::Error::Refused(_)
            | ca::Error::Parse { .. }
            | ca::Error::NoRoots
            | ca::Error::UnsupportedKey { .. }
            | ca::Error::Practice(_)
            | ca::Error::Profile(_)
            | ca::Error::Probe(_)
            | ca::Error::WorkloadOnly => Status::internal("internal error"),
        },
        issuer::Error::Encode(_) | issuer::Error::Profile(_) => Status::internal("internal error"),
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        Self::from(&e)
    }
}
