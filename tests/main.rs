//! castellan's integration tests: a real server over real TLS, real gRPC
//! clients, PKI made by rcgen per test. One binary, one module per concern.

// Test helpers are `pub` to share them between modules of this one binary.
#![allow(unreachable_pub)]
// A failed step in a test helper is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

mod ambient;
mod authn;
mod certify;
mod config;
mod crl_set;
mod demo;
mod deploy;
mod fips;
mod integrity;
mod issue;
mod issuers;
mod kubernetes;
mod layers;
mod lifetimes;
mod limits;
mod logs;
mod mesh;
mod mesh_writers;
mod mint;
mod mint_lifecycle;
mod one_truth;
mod pkcs11;
mod record;
mod refusals;
mod reload;
mod revocation;
mod server;
mod startup;
mod storm;
mod trust;
mod vault;
mod vault_faults;
