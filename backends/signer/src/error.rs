//! The one error shape castellan maps for every back end: what an operator
//! must fix, what waiting fixes, and what failed this once. The back end's
//! own structured error is kept as the cause.

/// A back end's own error, kept whole for logs and messages.
pub type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a back end could not load, sign or issue.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration or the material is wrong: nothing works until an
    /// operator fixes it.
    #[error("{0}")]
    Config(Cause),
    /// The back end cannot serve now (unreachable, sealed, token gone, key
    /// changed); castellan keeps trying and callers may retry.
    #[error("{0}")]
    Unavailable(Cause),
    /// The back end refused or broke this one operation.
    #[error("{0}")]
    Failed(Cause),
    /// The back end works but is busy: every session taken and the
    /// request's deadline would pass before one is free. Overload, not an
    /// outage: the caller gets RESOURCE_EXHAUSTED and retries later.
    #[error("{0}")]
    Busy(Cause),
}

// === impl Error ===

impl Error {
    pub fn config(cause: impl Into<Cause>) -> Self {
        Self::Config(cause.into())
    }

    pub fn unavailable(cause: impl Into<Cause>) -> Self {
        Self::Unavailable(cause.into())
    }

    pub fn failed(cause: impl Into<Cause>) -> Self {
        Self::Failed(cause.into())
    }

    pub fn busy(cause: impl Into<Cause>) -> Self {
        Self::Busy(cause.into())
    }
}

impl From<crate::FileError> for Error {
    fn from(e: crate::FileError) -> Self {
        Self::Config(Box::new(e))
    }
}
