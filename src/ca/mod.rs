//! The signing CA: a key in some back end, its certificate, the chain up to
//! the enterprise root — loaded, judged fit (never self-signed, rooted in the
//! configured roots, valid long enough) and swapped atomically on change.

mod assess;
mod chain;
mod leaf;
mod reload;
mod signer;
mod source;

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use aws_lc_rs::rand::SystemRandom;
use der::Decode;
use rustls_pki_types::CertificateDer;
use spiffe::TrustDomain;
use x509_cert::Certificate;

pub use assess::{Assessment, Practice, date};
pub use leaf::{Leaf, LeafRequest};
pub use reload::{CaHandle, spawn_recovery, spawn_reloader};
pub use signer::{Algorithm, SignError, Signer};
pub use source::{Material, Source};

use crate::{pem, profile};

/// What the signing material is judged against.
#[derive(Clone, Debug)]
pub struct Rules {
    pub trust_domain: TrustDomain,
    pub default_ttl: Duration,
    pub max_ttl: Duration,
    /// The enterprise roots from `ca.roots_file`; when unset, the roots that
    /// came with the signing material.
    pub roots: Option<Vec<CertificateDer<'static>>>,
}

/// A signing CA judged fit for use.
#[derive(Debug)]
pub struct SigningCa {
    signer: Arc<Signer>,
    facts: profile::IssuerFacts,
    /// The signing certificate, then each intermediate up to the root.
    chain: Vec<CertificateDer<'static>>,
    /// `chain` as PEM, one certificate per element, as the response carries it.
    chain_pem: Vec<String>,
    roots: Vec<CertificateDer<'static>>,
    /// The whole root bundle as one PEM element: the response's last element.
    roots_pem: String,
    roots_not_after: SystemTime,
    fingerprint: Option<[u8; 32]>,
    assessment: Assessment,
    rng: SystemRandom,
}

/// Why signing material cannot be used, naming what to fix.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Source(#[from] castellan_file::Error),
    #[error("{what} is not a valid certificate: {source}")]
    Parse { what: String, source: der::Error },
    #[error(
        "no root certificates: set ca.roots_file to the enterprise root bundle \
         (or ship root-cert.pem / ca.crt with the signing material)"
    )]
    NoRoots,
    #[error("{0}")]
    Unfit(String),
    #[error("issuing the probe certificate: {0}")]
    Profile(#[from] profile::Error),
    #[error(transparent)]
    Sign(#[from] SignError),
}

// === impl SigningCa ===

impl SigningCa {
    /// Judges `material` signed by `signer` against `rules`, and keeps it if
    /// every enforced practice passes.
    ///
    /// # Errors
    /// [`Error::Unfit`] with the first failing practice's reason, or a parse
    /// or signer error.
    pub async fn new(signer: Signer, material: Material, rules: &Rules) -> Result<Self, Error> {
        let ca = Self::assess(signer, material, rules).await?;
        match ca.assessment.first_failure() {
            Some(reason) => Err(Error::Unfit(reason)),
            None => Ok(ca),
        }
    }

    /// Like [`SigningCa::new`] but keeps the material even when practices
    /// fail, so `castellan check` can show every result.
    ///
    /// # Errors
    /// Parse and signer errors only.
    pub async fn assess(signer: Signer, material: Material, rules: &Rules) -> Result<Self, Error> {
        let cert = Certificate::from_der(&material.cert).map_err(|source| Error::Parse {
            what: material.cert_source.clone(),
            source,
        })?;
        let roots = match &rules.roots {
            Some(roots) => roots.clone(),
            None => material.roots.clone(),
        };
        if roots.is_empty() {
            return Err(Error::NoRoots);
        }
        let roots_not_after = chain::earliest_expiry(&roots)?;
        let intermediates = chain::path_order(&cert, &material.chain, &roots)?;
        let mut chain = vec![material.cert.clone()];
        chain.extend(intermediates);

        let signer = Arc::new(signer);
        let facts = chain::issuer_facts(&cert, signer.algorithm())?;
        let mut ca = Self {
            signer,
            facts,
            chain_pem: chain
                .iter()
                .map(|c| pem::certificate(c))
                .collect::<Result<_, _>>()?,
            chain,
            roots_pem: pem::bundle(&roots)?,
            roots,
            roots_not_after,
            fingerprint: material.fingerprint,
            assessment: Assessment::default(),
            rng: SystemRandom::new(),
        };
        ca.assessment = assess::run(&ca, &cert, &material.cert_source, rules).await?;
        Ok(ca)
    }

    /// Signs one certificate built from `template`; returns its DER.
    ///
    /// # Errors
    /// [`Error::Profile`] for an unencodable template, [`Error::Sign`] from the back end.
    pub async fn certify(&self, template: &profile::Template<'_>) -> Result<Vec<u8>, Error> {
        let tbs = profile::tbs(&self.facts, template)?;
        let tbs_copy = tbs.clone();
        let signature = self.signer.sign(tbs).await?;
        Ok(profile::assemble(
            &tbs_copy,
            &self.facts.signature_algorithm,
            &signature,
        )?)
    }

    /// A fresh serial number.
    ///
    /// # Errors
    /// When the system RNG fails.
    pub fn serial(&self) -> Result<profile::Serial, profile::Error> {
        profile::Serial::random(&self.rng)
    }

    pub fn facts(&self) -> &profile::IssuerFacts {
        &self.facts
    }

    /// The signing certificate and each intermediate above it, as PEM.
    pub fn chain_pem(&self) -> &[String] {
        &self.chain_pem
    }

    /// The signing certificate and each intermediate above it, as DER.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    /// All roots, one PEM element.
    pub fn roots_pem(&self) -> &str {
        &self.roots_pem
    }

    pub fn roots_not_after(&self) -> SystemTime {
        self.roots_not_after
    }

    pub fn fingerprint(&self) -> Option<[u8; 32]> {
        self.fingerprint
    }

    pub fn assessment(&self) -> &Assessment {
        &self.assessment
    }

    pub fn algorithm(&self) -> Algorithm {
        self.signer.algorithm()
    }

    /// Whether the signer can sign now (an HSM may be recovering).
    pub fn healthy(&self) -> bool {
        self.signer.healthy()
    }

    /// Lets an unhealthy signer reconnect.
    pub async fn recover(&self) {
        self.signer.recover().await;
    }
}

impl From<der::Error> for Error {
    fn from(source: der::Error) -> Self {
        Self::Parse {
            what: "a certificate".into(),
            source,
        }
    }
}
