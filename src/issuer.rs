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
    profile::{MIN_SERVING_LIFETIME, Subject},
};

/// Issues certificates with whatever signing CA is current.
#[derive(Debug, Clone)]
pub struct Issuer {
    ca: Arc<CaHandle>,
    /// NotBefore is backdated this much for clock skew.
    skew: Duration,
    /// Workload certificates are never issued shorter (`issuance.min_ttl_secs`).
    min_lifetime: Duration,
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
    /// When the certificate was asked to end, if it ends more than a minute
    /// earlier (the signing certificate's expiry, a Vault role's max_ttl).
    pub cut_from: Option<SystemTime>,
    /// What the back end reported that an operator should know.
    pub warnings: Vec<String>,
}

/// A certificate's validity, and the NotAfter the request asked for.
struct Validity {
    not_before: SystemTime,
    not_after: SystemTime,
    asked: SystemTime,
}

/// A NotAfter this much (or a tenth of the lifetime) shorter than asked
/// for is reported as cut.
const CUT_TOLERANCE: Duration = Duration::from_secs(60);

/// A server certificate for castellan itself.
#[derive(Debug)]
pub struct ServerCert {
    /// Leaf first, then the signing CA and intermediates.
    pub chain: Vec<CertificateDer<'static>>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

/// Why issuance failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the signing chain ended at {}, when `{}` expired", crate::clock::date(.0.not_after), .0.subject)]
    CaExpired(ca::Limit),
    #[error(
        "the signing chain ends at {}, when `{}` expires: less than the shortest useful \
         lifetime ({} s) from now; renew it",
        crate::clock::date(limit.not_after),
        limit.subject,
        min.as_secs()
    )]
    CaExpiring { limit: ca::Limit, min: Duration },
    #[error(transparent)]
    Ca(#[from] ca::Error),
    #[error("encoding the certificate: {0}")]
    Encode(#[from] der::Error),
    #[error(transparent)]
    Profile(#[from] crate::profile::Error),
}

// === impl Issuer ===

impl Issuer {
    pub fn new(ca: Arc<CaHandle>, skew: Duration, min_lifetime: Duration) -> Self {
        Self {
            ca,
            skew,
            min_lifetime,
        }
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
        let Validity {
            not_before,
            not_after,
            asked,
        } = self.validity(&ca, approved.ttl(), self.min_lifetime)?;
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
        let tolerance = CUT_TOLERANCE.min(approved.ttl() / 10);
        let cut_from = (leaf
            .not_after
            .checked_add(tolerance)
            .unwrap_or(leaf.not_after)
            < asked)
            .then_some(asked);
        Ok(Issued {
            chain,
            serial: leaf.serial,
            not_after: leaf.not_after,
            cut_from,
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
        self.issue_tls(
            spki_der,
            Subject::Server {
                dns_names,
                ip_addresses,
            },
            false,
            ttl,
        )
        .await
    }

    /// Issues a TLS certificate (castellan's own, istiod's) for `spki_der`.
    ///
    /// # Errors
    /// As [`Issuer::issue`].
    pub async fn issue_tls(
        &self,
        spki_der: &[u8],
        subject: Subject<'_>,
        rsa: bool,
        ttl: Duration,
    ) -> Result<ServerCert, Error> {
        let ca = self.ca.current();
        let Validity {
            not_before,
            not_after,
            ..
        } = self.validity(&ca, ttl, MIN_SERVING_LIFETIME.min(ttl))?;
        let leaf = ca
            .issue_leaf(&LeafRequest {
                subject,
                spki_der,
                csr_pem: None,
                rsa,
                not_before,
                not_after,
            })
            .await?;
        let mut chain = vec![CertificateDer::from(leaf.der)];
        chain.extend(ca.chain().iter().cloned());
        Ok(ServerCert {
            chain,
            not_before,
            not_after,
        })
    }

    /// NotBefore backdated for skew (not before the CA's own), NotAfter cut
    /// to the end of the CA's chain: a certificate never outlives any
    /// certificate above it. Below `min` of life left the CA is refused
    /// rather than handing out certificates that make their holders renew in
    /// a loop.
    fn validity(&self, ca: &SigningCa, ttl: Duration, min: Duration) -> Result<Validity, Error> {
        let now = ca.clock().now();
        let facts = ca.facts();
        let limit = ca.limit();
        if limit.not_after <= now {
            return Err(Error::CaExpired(limit.clone()));
        }
        let not_before = now
            .checked_sub(self.skew)
            .unwrap_or(now)
            .max(facts.not_before);
        let asked = now.checked_add(ttl).unwrap_or(limit.not_after);
        let not_after = asked.min(limit.not_after);
        if not_after.duration_since(now).unwrap_or_default() < min {
            return Err(Error::CaExpiring {
                limit: limit.clone(),
                min,
            });
        }
        Ok(Validity {
            not_before,
            not_after,
            asked,
        })
    }
}
