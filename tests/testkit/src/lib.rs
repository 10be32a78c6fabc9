//! What castellan's tests and benches stand on, as a crate of its own so it
//! is built once and tested for itself: an in-process Kubernetes API
//! server (no kube-apiserver runs on this machine; [`kube`] stands in,
//! faithful to the API behaviour castellan relies on, which its own tests
//! check), PKI builders ([`pki`]), real OpenBao dev servers ([`bao`]) and
//! SoftHSM tokens ([`hsm`]), and the rule for tools a test needs
//! ([`tools`]).

// Test tooling: a failed step is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]
// Shared with every test module of castellan's integration binary.
#![allow(unreachable_pub, missing_debug_implementations)]

pub mod bao;
pub mod hsm;
pub mod kube;
pub mod pki;
pub mod tools;

/// The strings of a JSON array (none for anything else).
pub fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(str::to_owned))
        .collect()
}
