//! Every way a request can fail, and the single place each becomes a gRPC
//! status. Codes follow what Istio clients retry: UNAVAILABLE,
//! RESOURCE_EXHAUSTED and DEADLINE_EXCEEDED are retried; the others are not.

use tonic::{Code, Status};

use crate::{authn, csr, impersonation, issuer, policy};

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
    #[error("over the limit of {0} requests in flight")]
    Overloaded(usize),
    #[error("request deadline of {0:?} exceeded")]
    Timeout(std::time::Duration),
}

// === impl Error ===

impl Error {
    /// The status code, without the message (for metrics and logs).
    pub fn code(&self) -> Code {
        Status::from(self).code()
    }
}

impl From<&Error> for Status {
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
            Error::Csr(e) => Self::invalid_argument(e.to_string()),
            Error::Policy(e @ policy::Error::IdentityMismatch { .. }) => {
                Self::permission_denied(e.to_string())
            }
            Error::Impersonation(impersonation::Error::Unavailable(..)) => {
                Self::unavailable("node authorization unavailable")
            }
            // The reason is logged; it may describe other pods.
            Error::Impersonation(_) => Self::permission_denied("impersonation not allowed"),
            Error::Policy(
                e @ (policy::Error::NegativeTtl(_) | policy::Error::TtlTooLong { .. }),
            ) => Self::invalid_argument(e.to_string()),
            Error::Issue(issuer::Error::CaExpired(_)) => Self::unavailable("signer unavailable"),
            Error::Issue(issuer::Error::Ca(crate::ca::Error::Sign(
                crate::ca::SignError::Unavailable(_),
            ))) => Self::unavailable("signer unavailable"),
            Error::Issue(
                issuer::Error::Ca(_) | issuer::Error::Encode(_) | issuer::Error::Profile(_),
            ) => Self::internal("internal error"),
            Error::Overloaded(_) => Self::resource_exhausted("too many requests in flight; retry"),
            Error::Timeout(_) => Self::deadline_exceeded("request deadline exceeded"),
        }
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        Self::from(&e)
    }
}
