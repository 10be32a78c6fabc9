//! The seam between castellan and the back ends that hold its signing keys.
//!
//! A back end is one crate with one [`Source`]: it reads its configuration
//! section, loads the key and the certificates that came with it, and says
//! when they change. What it loads is one of two kinds of [`Backend`]:
//!
//! - a [`KeySigner`] signs certificates castellan built (file, PKCS#11,
//!   Vault Transit);
//! - a [`LeafIssuer`] issues the leaf itself from the CSR (Vault PKI).
//!
//! Back ends are never trusted for the result: castellan checks every
//! signature a back end could have made with another key (see
//! [`KeyBinding`]) and every leaf a back end issued, whatever it reports.

mod algorithm;
mod backend;
mod capabilities;
pub mod deadline;
mod error;
mod files;
mod keymaker;
pub mod mint;
pub mod queue;

pub use algorithm::{KeyAlgorithm, RsaPadding};
pub use backend::{
    Backend, IssuedLeaf, KeyBinding, KeySigner, LeafIssuer, LeafOrder, Loaded, Material, Signature,
    Source,
};
pub use capabilities::Capabilities;
pub use error::{Cause, Error};
pub use files::{
    CertFiles, Certs, FileError, Fingerprint, fingerprint_files, parse_certs, read_certs, resolve,
    resolve_opt,
};
pub use keymaker::KeyMaker;

/// Re-exported so back ends implement the traits without naming the crate.
pub use async_trait::async_trait;
