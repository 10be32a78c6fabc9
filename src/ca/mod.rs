//! The signing CA: a key in some back end, its certificate, the chain up to
//! the enterprise root — loaded, judged fit (never self-signed, rooted in the
//! configured roots, valid long enough), checked on every certificate it
//! makes, and swapped atomically on change.

mod assess;
mod backends;
mod chain;
mod crl;
mod error;
mod health;
mod leaf;
mod proof;
mod recheck;
mod reload;
mod rotate;
#[cfg(test)]
pub(crate) mod testkit;
#[cfg(test)]
mod timeline;

use std::time::SystemTime;

use aws_lc_rs::rand::SystemRandom;
use castellan_signer::{Backend, Fingerprint, Material};
use der::Decode;
use rustls_pki_types::CertificateDer;
use spiffe::TrustDomain;
use x509_cert::Certificate;

pub use assess::{Assessment, CRL_SET_PRACTICE, Practice, ProbeError};
pub use backends::{source, source_for};
pub use castellan_signer::KeyAlgorithm;
pub use crl::CrlEntry;
pub use error::Error;
pub use leaf::{Leaf, LeafRequest};
pub use recheck::{Refusal, Verdict, check_issued_leaf};
pub use reload::{CaHandle, Held, spawn_prober, spawn_reloader};
pub use rotate::{Outcome as RotationOutcome, due as rotation_due, spawn_rotator};

use crate::{clock::Clock, config::Waivable, metrics::IntegrityCounters, pem, profile};

/// What the signing material is judged against.
#[derive(Clone, Debug)]
pub struct Rules {
    pub trust_domain: TrustDomain,
    pub default_ttl: std::time::Duration,
    /// Below this much life left the CA issues nothing (`issuance.min_ttl_secs`).
    pub min_ttl: std::time::Duration,
    pub max_ttl: std::time::Duration,
    /// The enterprise roots from `ca.roots_file`; when unset, the roots that
    /// came with the signing material.
    pub roots: Option<Vec<CertificateDer<'static>>>,
    /// Where integrity failures are counted.
    pub counters: IntegrityCounters,
    /// Practices the operator waived (`practices.waive`): reported, not enforced.
    pub waived: Vec<Waivable>,
    /// The root rotation guards (`[trust]`), when configured.
    pub trust: Option<crate::trust::TrustRules>,
    /// With `[trust.crl]`: what the CRL set must hold for this CA.
    pub crl: Option<CrlRules>,
    /// What every rule about time asks.
    pub clock: Clock,
}

/// With CRLs published, every CA of the chain needs a current one.
#[derive(Clone, Debug)]
pub struct CrlRules {
    /// CRLs of the CAs above the signing CA (`trust.crl.upstream_files`).
    pub upstream_files: Vec<std::path::PathBuf>,
}

/// A signing CA judged fit for use.
#[derive(Debug)]
pub struct SigningCa {
    backend: Backend,
    /// What the back end names the signing certificate as.
    cert_source: String,
    algorithm: KeyAlgorithm,
    facts: profile::IssuerFacts,
    /// The signing certificate, then each intermediate up to the root.
    chain: Vec<CertificateDer<'static>>,
    /// `chain` as PEM, one certificate per element, as the response carries it.
    chain_pem: Vec<String>,
    roots: Vec<CertificateDer<'static>>,
    /// The whole root bundle as one PEM element: the response's last element.
    roots_pem: String,
    roots_not_after: SystemTime,
    /// The earliest notAfter along the chain, up to the root it ends at,
    /// and the subject of the certificate that sets it.
    limit: Limit,
    /// Each root's fingerprint and subject, for the trust record.
    root_names: Vec<(String, String)>,
    /// The roots the signing chain was verified to end at.
    active_roots: Vec<String>,
    fingerprint: Option<Fingerprint>,
    assessment: Assessment,
    proof: proof::KeyProof,
    min_ttl: std::time::Duration,
    rng: SystemRandom,
    clock: Clock,
    /// CRLs of the CAs above it that came with the material.
    upstream_crls: Vec<crate::crl::Crl>,
}

/// What ends a chain's life: the certificate along it that expires first.
#[derive(Clone, Debug)]
pub struct Limit {
    pub not_after: SystemTime,
    pub subject: String,
}

// === impl SigningCa ===

impl SigningCa {
    /// Judges `material` signed by `backend` against `rules`, and keeps it
    /// if every enforced practice passes.
    ///
    /// # Errors
    /// [`Error::Practice`] with the first failing practice, or a parse or
    /// back-end error.
    pub async fn new(backend: Backend, material: Material, rules: &Rules) -> Result<Self, Error> {
        let ca = Self::assess(backend, material, rules).await?;
        match ca.assessment.first_failure() {
            Some(practice) => Err(Error::Practice(Box::new(practice.clone()))),
            None => {
                ca.proof.serve();
                Ok(ca)
            }
        }
    }

    /// Like [`SigningCa::new`] but keeps the material even when practices
    /// fail, so `castellan check` can show every result.
    ///
    /// # Errors
    /// Parse and back-end errors only.
    // Long: a signing CA built from loaded material step by step: parse, order the chain, facts, judge.
    pub async fn assess(
        backend: Backend,
        material: Material,
        rules: &Rules,
    ) -> Result<Self, Error> {
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
        let limit = chain::limit(&chain)?;

        let spki = cert.tbs_certificate().subject_public_key_info();
        let algorithm = match &backend {
            Backend::Signs(signer) => signer.algorithm(),
            Backend::Issues(_) => {
                let owned = der::Encode::to_der(spki)?;
                let parsed = spki::SubjectPublicKeyInfoRef::from_der(&owned)?;
                KeyAlgorithm::usual_for(parsed).ok_or_else(|| Error::UnsupportedKey {
                    source_name: material.cert_source.clone(),
                    found: spki.algorithm.oid.to_string(),
                })?
            }
        };
        let facts = chain::issuer_facts(&cert, algorithm)?;
        let proof = proof::KeyProof::new(spki, algorithm, rules.counters.clone());
        let mut ca = Self {
            backend,
            cert_source: material.cert_source.clone(),
            algorithm,
            facts,
            chain_pem: chain
                .iter()
                .map(|c| pem::certificate(c))
                .collect::<Result<_, _>>()?,
            chain,
            roots_pem: pem::bundle(&roots)?,
            root_names: roots
                .iter()
                .map(|r| {
                    let subject = Certificate::from_der(r)
                        .map(|c| c.tbs_certificate().subject().to_string())
                        .unwrap_or_default();
                    (crate::trust::fingerprint(r), subject)
                })
                .collect(),
            active_roots: Vec::new(),
            limit,
            roots,
            roots_not_after,
            fingerprint: material.fingerprint,
            assessment: Assessment::default(),
            proof,
            min_ttl: rules.min_ttl,
            rng: SystemRandom::new(),
            clock: rules.clock.clone(),
            upstream_crls: material
                .upstream_crls
                .iter()
                .filter_map(|der| crate::crl::Crl::parse(der, &material.cert_source).ok())
                .collect(),
        };
        assess::run(&mut ca, &cert, &material.cert_source, rules).await?;
        Ok(ca)
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

    /// The signing certificate's public key (DER SubjectPublicKeyInfo):
    /// what tells two CAs apart whatever their names.
    pub fn public_key(&self) -> Option<Vec<u8>> {
        let cert = Certificate::from_der(self.chain.first()?).ok()?;
        der::Encode::to_der(cert.tbs_certificate().subject_public_key_info()).ok()
    }

    /// All roots, one PEM element.
    pub fn roots_pem(&self) -> &str {
        &self.roots_pem
    }

    pub fn roots_not_after(&self) -> SystemTime {
        self.roots_not_after
    }

    /// When the chain ends: no leaf under it is valid later, whatever the
    /// signing certificate says.
    pub fn not_after(&self) -> SystemTime {
        self.limit.not_after
    }

    /// Until when it issues: `issuance.min_ttl_secs` before the chain ends.
    pub fn usable_until(&self) -> SystemTime {
        self.limit
            .not_after
            .checked_sub(self.min_ttl)
            .unwrap_or(std::time::UNIX_EPOCH)
    }

    /// The certificate whose expiry ends the chain.
    pub fn limit(&self) -> &Limit {
        &self.limit
    }

    /// The clock the CA's rules read.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// CRLs of the CAs above it that came with its material.
    pub fn upstream_crls(&self) -> &[crate::crl::Crl] {
        &self.upstream_crls
    }

    /// The signing certificate, each CA above it and the root its chain
    /// was verified to end at: every certificate a client checks a CRL for.
    pub fn path(&self) -> Vec<Certificate> {
        let root = self
            .active_roots
            .first()
            .and_then(|f| self.root_names.iter().position(|(fp, _)| fp == f))
            .and_then(|i| self.roots.get(i));
        self.chain
            .iter()
            .chain(root)
            .filter_map(|der| Certificate::from_der(der).ok())
            .collect()
    }

    /// Whether it signs with a key castellan holds (a CRL castellan signs),
    /// rather than an issuing back end (a CRL the back end signs).
    pub fn signs_own_crl(&self) -> bool {
        matches!(self.backend, Backend::Signs(_))
    }

    /// Each root's fingerprint and subject.
    pub fn root_names(&self) -> &[(String, String)] {
        &self.root_names
    }

    /// The fingerprints of the roots the signing chain ends at.
    pub fn active_roots(&self) -> &[String] {
        &self.active_roots
    }

    pub fn fingerprint(&self) -> Option<Fingerprint> {
        self.fingerprint
    }

    pub fn assessment(&self) -> &Assessment {
        &self.assessment
    }

    pub fn algorithm(&self) -> KeyAlgorithm {
        self.algorithm
    }
}
