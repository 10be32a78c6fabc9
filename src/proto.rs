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
