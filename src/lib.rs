//! castellan: an external certificate authority for Istio.
//!
//! A request travels through [`issue`], the issuance pipeline, whatever
//! front end carries it:
//!
//! 1. [`authn`] turns the caller's bearer token into an [`identity::Caller`];
//! 2. [`csr`] parses the PEM CSR and checks its proof of possession;
//! 3. [`impersonation`] decides whether a node proxy may ask for a pod;
//! 4. [`trust`] refuses revoked identities; [`policy`] decides what may be
//!    issued to that caller: an [`policy::Approved`];
//! 5. [`issuer`] builds the certificate from [`profile`] and has the signing
//!    CA of [`ca`] sign it.
//!
//! [`authority`] is one CA as a unit — the signing CA with its record, CRL
//! keeper, reloader, rotator and prober. [`server`] carries requests over
//! gRPC and maps every failure to a status code in exactly one place
//! ([`error`]); [`mesh`] publishes trust to the cluster. The modules are
//! layered without cycles (`tests/layers.rs`, `docs/architecture.md`).

pub mod authn;
pub mod authority;
pub mod ca;
pub mod cli;
pub mod clock;
pub mod config;
pub mod crl;
pub mod csr;
pub mod error;
pub mod fips;
pub mod identity;
pub mod impersonation;
pub mod issue;
pub mod issuer;
pub mod kube;
pub mod mesh;
pub mod metrics;
pub mod pem;
pub mod policy;
pub mod profile;
pub mod proto;
pub mod server;
pub mod tenancy;
pub mod trust;
pub mod verify;
