//! One certificate from the signing CA: built here and signed by the back
//! end, or issued by the back end from the CSR; either way checked against
//! the signing certificate before it is handed out.

use std::time::SystemTime;

use castellan_signer::{Backend, LeafOrder};
use der::Decode;
use rustls_pki_types::CertificateDer;
use x509_cert::Certificate;

use super::{Error, SigningCa};
use crate::profile::{self, Subject, Template};

/// What to certify.
#[derive(Clone, Copy, Debug)]
pub struct LeafRequest<'a> {
    pub subject: Subject<'a>,
    pub spki_der: &'a [u8],
    /// The requester's CSR, for back ends that issue from it.
    pub csr_pem: Option<&'a str>,
    pub rsa: bool,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

/// A certificate, ready to hand out.
#[derive(Debug)]
pub struct Leaf {
    pub der: Vec<u8>,
    /// Lower-case hex.
    pub serial: String,
    pub not_after: SystemTime,
    /// What the back end said that an operator should know (Vault warnings,
    /// a lifetime cut below the request).
    pub warnings: Vec<String>,
}

// === impl SigningCa ===

impl SigningCa {
    /// Certifies `req` with this CA, at once refused while the CA is known
    /// not to work.
    ///
    /// # Errors
    /// [`Error::Unhealthy`], back-end errors, [`Error::KeyMismatch`] when
    /// what the back end made is not the certified key's, [`Error::Refused`]
    /// for an issued leaf outside the profile.
    pub async fn issue_leaf(&self, req: &LeafRequest<'_>) -> Result<Leaf, Error> {
        if let Some(reason) = self.why_unhealthy() {
            return Err(Error::Unhealthy(reason));
        }
        self.issue_checked(req, false).await
    }

    /// Certifies `req` whatever the CA's health; with `always_verify`, the
    /// signature is verified even from a key already proven (probes).
    // Long: the two back-end kinds' issuing paths side by side, each followed by the same proof.
    pub(super) async fn issue_checked(
        &self,
        req: &LeafRequest<'_>,
        always_verify: bool,
    ) -> Result<Leaf, Error> {
        match &self.backend {
            Backend::Signs(signer) => {
                let serial = self.serial()?;
                let template = Template {
                    subject: req.subject,
                    spki_der: req.spki_der,
                    rsa: req.rsa,
                    serial,
                    not_before: req.not_before,
                    not_after: req.not_after,
                };
                let tbs = profile::tbs(&self.facts, &template)?;
                let signature = signer.sign(&tbs).await?;
                self.proof
                    .check(&tbs, &signature, always_verify, &self.cert_source)
                    .map_err(|_| Error::KeyMismatch {
                        cert_source: self.cert_source.clone(),
                        what: "a signature from the back end",
                    })?;
                Ok(Leaf {
                    der: profile::assemble(
                        &tbs,
                        &self.facts.signature_algorithm,
                        &signature.value,
                    )?,
                    serial: serial.to_hex(),
                    not_after: req.not_after,
                    warnings: Vec::new(),
                })
            }
            Backend::Issues(issuer) => {
                let Subject::Workload(identity) = req.subject else {
                    return Err(Error::WorkloadOnly);
                };
                let csr_pem = req.csr_pem.ok_or(Error::WorkloadOnly)?;
                let identity = identity.to_string();
                let ttl = req
                    .not_after
                    .duration_since(self.clock.now())
                    .unwrap_or_default();
                let issued = issuer
                    .issue(&LeafOrder {
                        csr_pem,
                        uri_san: &identity,
                        ttl,
                    })
                    .await?;
                let der = CertificateDer::from(issued.der);
                self.recheck(&der, &identity, req.spki_der)?;
                let cert = Certificate::from_der(&der)?;
                let tbs = cert.tbs_certificate();
                let not_after = tbs.validity().not_after.to_system_time();
                let warnings = issued.warnings;
                let serial = profile::hex(tbs.serial_number().as_bytes());
                Ok(Leaf {
                    der: der.to_vec(),
                    serial,
                    not_after,
                    warnings,
                })
            }
        }
    }
}
