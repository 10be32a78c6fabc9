//! Why signing material cannot be used or a certificate cannot be made.

use super::{Practice, ProbeError, Refusal};
use crate::profile;

/// Why signing material cannot be used or a certificate cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The back end failed to load, sign or issue.
    #[error(transparent)]
    Backend(#[from] castellan_signer::Error),
    #[error("{what} is not a valid certificate: {source}")]
    Parse { what: String, source: der::Error },
    #[error(
        "no root certificates: set ca.roots_file to the enterprise root bundle \
         (or ship root-cert.pem / ca.crt with the signing material)"
    )]
    NoRoots,
    #[error(
        "{source_name}: its key is {found}, which castellan cannot sign with; use ECDSA \
         P-256/P-384 or RSA"
    )]
    UnsupportedKey { source_name: String, found: String },
    /// An enforced practice failed; the evidence says how to fix it.
    #[error("{}: {}", .0.name, .0.evidence)]
    Practice(Box<Practice>),
    #[error("issuing the probe certificate: {0}")]
    Profile(#[from] profile::Error),
    #[error(transparent)]
    Probe(#[from] ProbeError),
    /// A signature or a leaf does not verify under the signing certificate:
    /// the key behind the back end is not the certified one.
    #[error(
        "{cert_source}: {what} does not verify under the signing certificate's key (the back \
         end holds another key)"
    )]
    KeyMismatch {
        cert_source: String,
        what: &'static str,
    },
    /// An issuing back end returned a leaf outside castellan's profile.
    #[error("refusing the back end's certificate: {0}")]
    Refused(#[from] Refusal),
    /// The signer is known not to work now; failing at once spares the
    /// caller the back end's timeout.
    #[error("signer unavailable: {0}")]
    Unhealthy(String),
    /// Vault PKI mode names workloads only.
    #[error(
        "the issuing back end issues workload certificates only; give castellan's listener \
         server.tls.cert_file"
    )]
    WorkloadOnly,
}

impl From<der::Error> for Error {
    fn from(source: der::Error) -> Self {
        Self::Parse {
            what: "a certificate".into(),
            source,
        }
    }
}
