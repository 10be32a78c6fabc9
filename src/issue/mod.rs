//! The issuance pipeline, whatever carries the request: authenticate the
//! caller, verify the CSR, settle whose certificate it is (the caller's, or
//! a pod's that a node proxy may ask for), refuse revoked or unrecorded
//! identities, apply policy, issue, record. The gRPC service only
//! translates to and from it; another front end would do the same.

mod outcome;

use std::{sync::Arc, time::Duration};

pub use outcome::count;

use crate::{
    authn::{self, Credentials},
    csr,
    error::Error,
    impersonation::{self, NodeAuthorizer},
    issuer::Issued,
    policy::{self, TtlRules},
    tenancy::Tenants,
};

/// What a front end asks for, already out of its wire format.
#[derive(Clone, Copy)]
pub struct Ask<'a> {
    /// Who is calling, as the transport saw it.
    pub credentials: Credentials<'a>,
    /// The PEM CSR as received.
    pub csr: &'a str,
    /// The lifetime asked for, in seconds (0 or less: the default).
    pub validity_secs: i64,
    /// The identity a node proxy asks for on a pod's behalf, if any
    /// (unvalidated: it is the caller's word).
    pub on_behalf_of: Option<&'a str>,
    /// The issuer the request names (`CertSigner`), if any (unvalidated:
    /// the pod's author sets it).
    pub cert_signer: Option<&'a str>,
}

/// Neither the token nor the caller's unvalidated words reach `Debug`.
impl std::fmt::Debug for Ask<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ask")
            .field("bearer", &self.credentials.bearer.map(|_| "<redacted>"))
            .field("csr_bytes", &self.csr.len())
            .field("validity_secs", &self.validity_secs)
            .field("on_behalf_of", &self.on_behalf_of.map(|_| "<unvalidated>"))
            .field("cert_signer", &self.cert_signer.map(|_| "<unvalidated>"))
            .finish_non_exhaustive()
    }
}

/// What is known about a request as the pipeline goes, for the front end's
/// one log line: filled in step by step, so a failure shows how far it got.
#[derive(Debug, Default)]
pub struct Trace {
    caller: Option<String>,
    on_behalf_of: Option<String>,
    clamped_from: Option<Duration>,
    issuer: Option<String>,
}

// === impl Trace ===

impl Trace {
    /// The authenticated caller, once known.
    pub fn caller(&self) -> Option<&str> {
        self.caller.as_deref()
    }

    /// The identity asked for on a pod's behalf: a valid SPIFFE ID, or a
    /// fixed marker (the value is the caller's, untrusted).
    pub fn on_behalf_of(&self) -> Option<&str> {
        self.on_behalf_of.as_deref()
    }

    /// The issuer chosen for the request, once chosen.
    pub fn issuer(&self) -> Option<&str> {
        self.issuer.as_deref()
    }

    /// The lifetime asked for, when policy shortened it.
    pub fn clamped_from(&self) -> Option<Duration> {
        self.clamped_from
    }
}

/// The steps of issuance and what each needs.
#[derive(Debug)]
pub struct Pipeline {
    authn: authn::Chain,
    nodes: Option<NodeAuthorizer>,
    /// Every issuer, each with its refused identities and the leaves it
    /// issued (`[trust]`).
    tenants: Arc<Tenants>,
    ttl: TtlRules,
}

// === impl Pipeline ===

impl Pipeline {
    pub fn new(
        authn: authn::Chain,
        nodes: Option<NodeAuthorizer>,
        tenants: Arc<Tenants>,
        ttl: TtlRules,
    ) -> Self {
        Self {
            authn,
            nodes,
            tenants,
            ttl,
        }
    }

    /// A cluster name a caller sent, as the log may show it: a configured
    /// cluster, or a fixed marker.
    pub fn describe_cluster(&self, cluster: &str) -> String {
        self.authn.describe_cluster(cluster)
    }

    /// Runs every step for one request.
    ///
    /// # Errors
    /// The first step that refuses, as [`Error`].
    pub async fn issue(&self, ask: Ask<'_>, trace: &mut Trace) -> Result<Issued, Error> {
        let caller = self.authn.authenticate(ask.credentials).await?;
        trace.caller = Some(caller.identity.to_string());
        if caller.authenticator == authn::CLIENT_CERT
            && let Some(chain) = ask.credentials.peer_certs
        {
            self.tenants.vouches(&caller.identity, chain)?;
        }
        let csr = csr::verify(ask.csr)?;
        let identity = match ask.on_behalf_of {
            None => caller.identity.clone(),
            Some(requested) => {
                trace.on_behalf_of = Some(loggable_identity(requested));
                let nodes = self
                    .nodes
                    .as_ref()
                    .ok_or(impersonation::Error::NotConfigured)?;
                nodes.authorize(&caller, requested).await?
            }
        };
        // By whose certificate it is, never by the request alone.
        let tenant = self.tenants.select(&identity, ask.cert_signer)?;
        if self.tenants.several() {
            trace.issuer = Some(tenant.name().to_owned());
        }
        let revocations = tenant.revocations().map(|r| (r, identity.to_string()));
        if let Some((r, id)) = &revocations {
            if r.is_denied(id) {
                return Err(Error::Revoked(id.clone()));
            }
            if let Some(why) = r.unrecorded() {
                return Err(Error::Unrecorded(why));
            }
        }
        let approved = policy::check(csr, &identity, ask.validity_secs, &self.ttl)?;
        trace.clamped_from = approved.clamped_from();
        let issued = self
            .tenants
            .finish(tenant, tenant.issuer().issue(&approved).await?);
        if let Some((r, id)) = &revocations {
            let not_after = issued
                .not_after
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            r.issued(id, &issued.serial, not_after);
        }
        Ok(issued)
    }
}

/// A requested identity as the log may show it: a valid SPIFFE ID, or a
/// fixed marker (the value is the caller's, untrusted).
fn loggable_identity(requested: &str) -> String {
    match spiffe::SpiffeId::new(requested) {
        Ok(id) if requested.len() <= 512 => id.to_string(),
        Ok(_) | Err(_) => "<not a SPIFFE ID>".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::loggable_identity;

    #[test]
    fn only_valid_identities_are_logged() {
        assert_eq!(
            loggable_identity("spiffe://cluster.local/ns/a/sa/b"),
            "spiffe://cluster.local/ns/a/sa/b"
        );
        for bad in ["eyJhbGciOiJSUzI1NiJ9.secret.token", "", "spiffe://", "x\ny"] {
            assert_eq!(loggable_identity(bad), "<not a SPIFFE ID>");
        }
    }
}
