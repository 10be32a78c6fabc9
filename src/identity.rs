//! Who is calling: a Kubernetes service account and the SPIFFE ID it maps to.

use std::fmt;

use spiffe::{SpiffeId, TrustDomain};

/// A Kubernetes service account, `namespace/name`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ServiceAccount {
    pub namespace: String,
    pub name: String,
}

/// The pod a projected token was bound to, when the token says so.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodRef {
    pub name: String,
    pub uid: String,
}

/// An authenticated caller, as the authenticator that recognised it saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// `spiffe://<trust-domain>/ns/<ns>/sa/<sa>`: the only identity a
    /// certificate for this caller may carry.
    pub identity: SpiffeId,
    pub service_account: ServiceAccount,
    pub pod: Option<PodRef>,
    /// The cluster whose API server vouched for the caller, when one did.
    pub cluster_id: Option<String>,
    /// Which authenticator decided, for logs.
    pub authenticator: &'static str,
}

/// Why a Kubernetes username or SPIFFE path is not a service account.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum Error {
    #[error("`{0}` is not of the form system:serviceaccount:<namespace>:<name>")]
    NotServiceAccount(String),
    #[error("service account `{0}` does not make a valid SPIFFE ID: {1}")]
    Spiffe(String, spiffe::SpiffeIdError),
}

// === impl ServiceAccount ===

impl ServiceAccount {
    /// Parses a Kubernetes username `system:serviceaccount:<ns>:<name>`,
    /// requiring exactly those four parts, as the API server writes them.
    ///
    /// # Errors
    /// [`Error::NotServiceAccount`] for any other username.
    pub fn from_username(username: &str) -> Result<Self, Error> {
        let parts: Vec<&str> = username.split(':').collect();
        match parts.as_slice() {
            ["system", "serviceaccount", ns, name] if !ns.is_empty() && !name.is_empty() => {
                Ok(Self {
                    namespace: (*ns).to_owned(),
                    name: (*name).to_owned(),
                })
            }
            _ => Err(Error::NotServiceAccount(username.to_owned())),
        }
    }

    /// `spiffe://<trust-domain>/ns/<namespace>/sa/<name>`.
    ///
    /// # Errors
    /// [`Error::Spiffe`] when a name holds characters a SPIFFE path may not.
    pub fn spiffe_id(&self, trust_domain: &TrustDomain) -> Result<SpiffeId, Error> {
        SpiffeId::from_segments(
            trust_domain.clone(),
            &["ns", &self.namespace, "sa", &self.name],
        )
        .map_err(|e| Error::Spiffe(self.to_string(), e))
    }
}

impl fmt::Display for ServiceAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_exactly_four_parts() {
        let sa = ServiceAccount::from_username("system:serviceaccount:default:bookinfo").unwrap();
        assert_eq!(sa.to_string(), "default/bookinfo");
        for bad in [
            "system:serviceaccount:default",
            "system:serviceaccount:a:b:c",
            "system:serviceaccount::b",
            "system:node:a:b",
            "",
        ] {
            assert!(ServiceAccount::from_username(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn maps_to_spiffe() {
        let td = TrustDomain::new("cluster.local").unwrap();
        let sa = ServiceAccount::from_username("system:serviceaccount:ns1:sa1").unwrap();
        assert_eq!(
            sa.spiffe_id(&td).unwrap().to_string(),
            "spiffe://cluster.local/ns/ns1/sa/sa1"
        );
        let odd = ServiceAccount {
            namespace: "a/b".into(),
            name: "c".into(),
        };
        assert!(odd.spiffe_id(&td).is_err());
    }
}
