//! Renewal by client certificate (VMs with `PROV_CERT`): a caller whose TLS
//! client certificate chained to the mesh roots during the handshake is the
//! single SPIFFE ID its certificate names.

use std::time::SystemTime;

use der::Decode;
use rustls_pki_types::CertificateDer;
use spiffe::{SpiffeId, TrustDomain};
use x509_cert::{
    Certificate,
    ext::pkix::{SubjectAltName, name::GeneralName},
};

use super::Error;
use crate::identity::{Caller, ServiceAccount};

/// The authenticator's name in [`crate::identity::Caller::authenticator`].
pub const NAME: &str = "client_cert";

/// Identifies callers by their verified client certificate.
#[derive(Debug, Clone)]
pub struct ClientCertAuthenticator {
    trust_domain: TrustDomain,
    clock: crate::clock::Clock,
}

// === impl ClientCertAuthenticator ===

impl ClientCertAuthenticator {
    pub fn new(trust_domain: TrustDomain, clock: crate::clock::Clock) -> Self {
        Self {
            trust_domain,
            clock,
        }
    }

    /// The caller named by `chain[0]`. The TLS layer has verified the chain
    /// to the roots; the validity is checked again here because a connection
    /// can outlive the certificate it was opened with.
    ///
    /// # Errors
    /// [`Error::Rejected`] for an expired certificate or one that does not
    /// name exactly one workload of this trust domain.
    // Long: the checks of a presented chain in the order that makes them safe, each with its own refusal.
    pub fn authenticate(
        &self,
        chain: &[CertificateDer<'static>],
    ) -> Result<(Caller, Option<SystemTime>), Error> {
        let reject = |reason: String| Error::Rejected {
            authenticator: NAME,
            reason,
        };
        let leaf = chain
            .first()
            .ok_or_else(|| reject("empty certificate chain".into()))?;
        let cert =
            Certificate::from_der(leaf).map_err(|e| reject(format!("client certificate: {e}")))?;
        let tbs = cert.tbs_certificate();
        let now = self.clock.now();
        let not_after = tbs.validity().not_after.to_system_time();
        if now < tbs.validity().not_before.to_system_time() || now > not_after {
            return Err(reject(
                "client certificate is expired or not yet valid".into(),
            ));
        }
        let names = tbs
            .get_extension::<SubjectAltName>()
            .map_err(|e| reject(format!("client certificate SAN: {e}")))?
            .map(|(_, san)| san.0)
            .unwrap_or_default();
        let uris: Vec<String> = names
            .into_iter()
            .filter_map(|n| match n {
                GeneralName::UniformResourceIdentifier(u) => Some(u.to_string()),
                _ => None,
            })
            .collect();
        let [uri] = uris.as_slice() else {
            return Err(reject(format!(
                "client certificate names {} URIs, not one",
                uris.len()
            )));
        };
        let id = SpiffeId::new(uri).map_err(|e| reject(format!("`{uri}`: {e}")))?;
        if id.trust_domain() != &self.trust_domain {
            return Err(reject(format!(
                "`{id}` is not in trust domain {}",
                self.trust_domain
            )));
        }
        let segments: Vec<&str> = id.path().trim_start_matches('/').split('/').collect();
        let ["ns", namespace, "sa", name] = segments.as_slice() else {
            return Err(reject(format!(
                "`{id}` is not a workload identity (…/ns/<ns>/sa/<sa>)"
            )));
        };
        let sa = ServiceAccount {
            namespace: (*namespace).to_owned(),
            name: (*name).to_owned(),
        };
        Ok((
            Caller {
                identity: id,
                service_account: sa,
                pod: None,
                cluster_id: None,
                authenticator: NAME,
            },
            Some(not_after),
        ))
    }
}
