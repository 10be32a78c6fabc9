//! Turning an approved request into the certificate chain Istio clients expect.

use std::{
    net::IpAddr,
    sync::Arc,
    time::{Duration, SystemTime},
};

use rustls_pki_types::CertificateDer;

use crate::{
    ca::{self, CaHandle, LeafRequest, SigningCa},
    csr::KeyKind,
    pem,
    policy::Approved,
    profile::Subject,
};

/// Issues certificates with whatever signing CA is current.
#[derive(Debug, Clone)]
pub struct Issuer {
    ca: Arc<CaHandle>,
    /// NotBefore is backdated this much for clock skew.
    skew: Duration,
}

/// A workload certificate, ready to return.
#[derive(Debug)]
pub struct Issued {
    /// `[leaf, signing CA, intermediates…, root bundle]`, one PEM certificate
    /// per element (the root element may hold several roots), each ending in
    /// a newline: the shape istio-agent and ztunnel parse.
    pub chain: Vec<String>,
    /// Lower-case hex.
    pub serial: String,
    pub not_after: SystemTime,
    /// What the signer reported that an operator should know.
    pub warnings: Vec<String>,
}

/// A server certificate for castellan itself.
#[derive(Debug)]
pub struct ServerCert {
    /// Leaf first, then the signing CA and intermediates.
    pub chain: Vec<CertificateDer<'static>>,
    pub not_after: SystemTime,
}

/// Why issuance failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the signing certificate expired at {0}")]
    CaExpired(String),
    #[error(transparent)]
    Ca(#[from] ca::Error),
    #[error("encoding the certificate: {0}")]
    Encode(#[from] der::Error),
    #[error(transparent)]
    Profile(#[from] crate::profile::Error),
}

// === impl Issuer ===

impl Issuer {
    pub fn new(ca: Arc<CaHandle>, skew: Duration) -> Self {
        Self { ca, skew }
    }

    pub fn ca(&self) -> &Arc<CaHandle> {
        &self.ca
    }

    /// Issues the workload certificate an [`Approved`] request earned.
    ///
    /// # Errors
    /// [`Error`] when the CA has expired or the signer fails.
    pub async fn issue(&self, approved: &Approved) -> Result<Issued, Error> {
        let ca = self.ca.current();
        let (not_before, not_after) = self.validity(&ca, approved.ttl())?;
        let leaf = ca
            .issue_leaf(&LeafRequest {
                subject: Subject::Workload(approved.identity()),
                spki_der: approved.spki_der(),
                csr_pem: Some(approved.csr_pem()),
                rsa: matches!(approved.key(), KeyKind::Rsa { .. }),
                not_before,
                not_after,
            })
            .await?;
        let mut chain = Vec::with_capacity(ca.chain_pem().len() + 2);
        chain.push(pem::certificate(&leaf.der)?);
        chain.extend(ca.chain_pem().iter().cloned());
        chain.push(ca.roots_pem().to_owned());
        Ok(Issued {
            chain,
            serial: leaf.serial,
            not_after: leaf.not_after,
            warnings: leaf.warnings,
        })
    }

    /// Issues castellan's own TLS server certificate for `spki_der`.
    ///
    /// # Errors
    /// As [`Issuer::issue`].
    pub async fn issue_server(
        &self,
        spki_der: &[u8],
        dns_names: &[String],
        ip_addresses: &[IpAddr],
        ttl: Duration,
    ) -> Result<ServerCert, Error> {
        let ca = self.ca.current();
        let (not_before, not_after) = self.validity(&ca, ttl)?;
        let leaf = ca
            .issue_leaf(&LeafRequest {
                subject: Subject::Server {
                    dns_names,
                    ip_addresses,
                },
                spki_der,
                csr_pem: None,
                rsa: false,
                not_before,
                not_after,
            })
            .await?;
        let mut chain = vec![CertificateDer::from(leaf.der)];
        chain.extend(ca.chain().iter().cloned());
        Ok(ServerCert { chain, not_after })
    }

    /// NotBefore backdated for skew (not before the CA's own), NotAfter cut
    /// to the CA's: a certificate never outlives its issuer.
    fn validity(&self, ca: &SigningCa, ttl: Duration) -> Result<(SystemTime, SystemTime), Error> {
        let now = SystemTime::now();
        let facts = ca.facts();
        if facts.not_after <= now {
            return Err(Error::CaExpired(ca::date(facts.not_after)));
        }
        let not_before = now
            .checked_sub(self.skew)
            .unwrap_or(now)
            .max(facts.not_before);
        let not_after = now
            .checked_add(ttl)
            .unwrap_or(facts.not_after)
            .min(facts.not_after);
        Ok((not_before, not_after))
    }
}
