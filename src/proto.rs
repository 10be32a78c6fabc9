//! The generated Istio CA API; the only module that sees generated names.

#![allow(
    clippy::all,
    unreachable_pub,
    missing_debug_implementations,
    unused_qualifications
)]

tonic::include_proto!("istio.v1.auth");

/// The metadata key ztunnel sets to ask for a certificate on behalf of a pod.
pub const IMPERSONATED_IDENTITY: &str = "ImpersonatedIdentity";
/// The metadata key istio-agent names the issuer it wants under
/// (`ISTIO_META_CERT_SIGNER`; empty when unset). ztunnel never sends it.
pub const CERT_SIGNER: &str = "CertSigner";
