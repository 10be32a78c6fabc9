//! Which issuer signs for whom: every started issuer with its binding,
//! chosen by the namespace of the identity a certificate is for — never by
//! what the request says. `CertSigner` is the pod author's word: it is
//! checked against the binding, and refused when it names anything else.

mod bundles;
mod labels;

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

pub use labels::NamespaceLabels;

use spiffe::SpiffeId;

use crate::{
    config::{Binding, MAIN_ISSUER},
    issuer::{Issued, Issuer},
    trust::Revocations,
};

/// Why no issuer may sign for a request.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error(
        "namespace `{namespace}` is bound to no issuer, and no default issuer is configured \
         (the main issuer has a [binding])"
    )]
    Unbound { namespace: String },
    /// The value sent is not kept: it is the pod author's word, and
    /// neither the log nor the answer repeats it.
    #[error(
        "the CertSigner sent is not accepted for namespace `{namespace}`: its issuer \
         `{issuer}` accepts {allowed} (or no CertSigner)"
    )]
    CertSigner {
        namespace: String,
        issuer: String,
        allowed: String,
    },
    #[error("`{0}` is not a workload identity (spiffe://<domain>/ns/<namespace>/sa/<name>)")]
    NoNamespace(String),
    #[error(
        "namespace `{namespace}` carries the labels of two issuers' bindings, `{first}` and \
         `{second}`: bind it by name, or change its labels"
    )]
    Ambiguous {
        namespace: String,
        first: String,
        second: String,
    },
    #[error("the labels of namespace `{0}` are not known yet (the namespace watch has not synced)")]
    LabelsUnknown(String),
    /// A client certificate speaks for a namespace only under the roots of
    /// the issuer bound to it: another tenant's CA cannot vouch for it.
    #[error(
        "the client certificate for namespace `{namespace}` does not chain to the roots of \
         its issuer `{issuer}`: {reason}"
    )]
    ForeignClientCert {
        namespace: String,
        issuer: String,
        reason: String,
    },
}

/// One started issuer and what it signs for.
#[derive(Debug)]
pub struct Tenant {
    name: String,
    issuer: Issuer,
    revocations: Option<Arc<Revocations>>,
    /// `CertSigner` values accepted, exactly as a request may send them.
    accepts: Vec<String>,
    /// Indexes of the issuers whose roots this one's workloads also get.
    trusts: Vec<usize>,
    /// Namespaces carrying all these labels are bound to it.
    selector: BTreeMap<String, String>,
    /// The trust-bundle name its namespaces read, if not the main one's.
    bundle: Option<String>,
}

/// Every issuer castellan runs, the main one first.
#[derive(Debug)]
pub struct Tenants {
    tenants: Vec<Tenant>,
    by_namespace: HashMap<String, usize>,
    /// Serves every namespace bound to no other issuer.
    default: Option<usize>,
    /// Namespace labels, when a binding selects by them.
    labels: Option<Arc<NamespaceLabels>>,
}

/// An issuer as [`Tenants::new`] takes it.
#[derive(Debug)]
pub struct Started {
    pub name: String,
    pub binding: Option<Binding>,
    pub bundle_name: Option<String>,
    pub issuer: Issuer,
    pub revocations: Option<Arc<Revocations>>,
}

// === impl Tenant ===

impl Tenant {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn issuer(&self) -> &Issuer {
        &self.issuer
    }

    pub fn revocations(&self) -> Option<&Revocations> {
        self.revocations.as_deref()
    }
}

// === impl Tenants ===

impl Tenants {
    /// The issuers as the configuration bound them (the rules were checked
    /// when it was read: one issuer per namespace, `trusts` naming issuers).
    pub fn new(started: Vec<Started>, labels: Option<Arc<NamespaceLabels>>) -> Self {
        let index: HashMap<String, usize> = started
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.clone(), i))
            .collect();
        let mut by_namespace = HashMap::new();
        let mut default = None;
        let tenants = started
            .into_iter()
            .enumerate()
            .map(|(i, s)| {
                let binding = s.binding.unwrap_or_default();
                if s.name == MAIN_ISSUER
                    && binding.namespaces.is_empty()
                    && binding.namespace_labels.is_empty()
                {
                    default = Some(i);
                }
                for ns in &binding.namespaces {
                    by_namespace.insert(ns.clone(), i);
                }
                let mut accepts = vec![s.name.clone()];
                for value in &binding.cert_signers {
                    // istio-agent sends the bare name of an RA-form value.
                    let bare = value.split_once('/').map(|(_, bare)| bare.to_owned());
                    for v in std::iter::once(value.clone()).chain(bare) {
                        if !accepts.contains(&v) {
                            accepts.push(v);
                        }
                    }
                }
                Tenant {
                    name: s.name,
                    issuer: s.issuer,
                    revocations: s.revocations,
                    accepts,
                    trusts: binding
                        .trusts
                        .iter()
                        .filter_map(|t| index.get(t).copied())
                        .collect(),
                    selector: binding.namespace_labels,
                    bundle: s.bundle_name,
                }
            })
            .collect();
        Self {
            tenants,
            by_namespace,
            default,
            labels,
        }
    }

    /// One issuer serving everyone: a single-issuer castellan.
    pub fn single(issuer: Issuer, revocations: Option<Arc<Revocations>>) -> Self {
        Self::new(
            vec![Started {
                name: MAIN_ISSUER.to_owned(),
                binding: None,
                bundle_name: None,
                issuer,
                revocations,
            }],
            None,
        )
    }

    /// The main issuer: castellan's own and istiod's certificates.
    pub fn main(&self) -> Option<&Tenant> {
        self.tenants.first()
    }

    pub fn all(&self) -> &[Tenant] {
        &self.tenants
    }

    /// Whether more than one issuer runs (logs and metrics name it then).
    pub fn several(&self) -> bool {
        self.tenants.len() > 1
    }

    /// The issuer bound to `namespace`, if any: by name, else by label,
    /// else the default issuer.
    ///
    /// # Errors
    /// Two label bindings match, or the labels are not known yet.
    pub fn for_namespace(&self, namespace: &str) -> Result<Option<&Tenant>, Error> {
        Ok(self.index_of(namespace)?.and_then(|i| self.tenants.get(i)))
    }

    fn index_of(&self, namespace: &str) -> Result<Option<usize>, Error> {
        if let Some(&i) = self.by_namespace.get(namespace) {
            return Ok(Some(i));
        }
        if let Some(labels) = &self.labels {
            let mut found: Option<usize> = None;
            for (i, t) in self.tenants.iter().enumerate() {
                if t.selector.is_empty() {
                    continue;
                }
                let matched = labels
                    .matches(namespace, &t.selector)
                    .map_err(|_| Error::LabelsUnknown(namespace.to_owned()))?;
                if !matched {
                    continue;
                }
                if let Some(first) = found.and_then(|f| self.tenants.get(f)) {
                    return Err(Error::Ambiguous {
                        namespace: namespace.to_owned(),
                        first: first.name.clone(),
                        second: t.name.clone(),
                    });
                }
                found = Some(i);
            }
            if found.is_some() {
                return Ok(found);
            }
        }
        Ok(self.default)
    }

    /// The change count of the namespace labels bindings select by (0
    /// without any).
    pub fn labels_version(&self) -> u64 {
        self.labels.as_ref().map_or(0, |l| l.version())
    }

    /// Changes of the namespace labels, when a binding selects by them.
    pub fn labels_changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.labels.as_ref().map(|l| l.changes())
    }

    /// Indexes (in [`Tenants::all`]) of the issuers whose certificates
    /// `namespace`'s workloads trust: the bound one and those it trusts
    /// (the main issuer for a namespace no issuer serves).
    ///
    /// # Errors
    /// As [`Tenants::for_namespace`].
    pub fn reach(&self, namespace: &str) -> Result<Vec<usize>, Error> {
        let bound = self.index_of(namespace)?;
        Ok(match bound.and_then(|i| Some((i, self.tenants.get(i)?))) {
            Some((i, t)) => std::iter::once(i).chain(t.trusts.iter().copied()).collect(),
            None => vec![0],
        })
    }

    /// The namespace of `identity` and the issuer bound to it.
    fn bound<'i>(&self, identity: &'i SpiffeId) -> Result<(&'i str, &Tenant), Error> {
        let namespace =
            namespace_of(identity).ok_or_else(|| Error::NoNamespace(identity.to_string()))?;
        let tenant = self
            .for_namespace(namespace)?
            .ok_or_else(|| Error::Unbound {
                namespace: namespace.to_owned(),
            })?;
        Ok((namespace, tenant))
    }

    /// The issuer that signs for `identity`, checked against `cert_signer`.
    ///
    /// # Errors
    /// [`Error`]: the namespace is bound to no issuer, or `CertSigner`
    /// names another.
    pub fn select(&self, identity: &SpiffeId, cert_signer: Option<&str>) -> Result<&Tenant, Error> {
        let (namespace, tenant) = self.bound(identity)?;
        match cert_signer {
            Some(sent) if !tenant.accepts.iter().any(|a| a == sent) => Err(Error::CertSigner {
                namespace: namespace.to_owned(),
                issuer: tenant.name.clone(),
                allowed: tenant
                    .accepts
                    .iter()
                    .map(|a| format!("`{a}`"))
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
            Some(_) | None => Ok(tenant),
        }
    }

    /// With several issuers, a caller authenticated by its client
    /// certificate is one only if that certificate chains to the roots of
    /// the issuer bound to its namespace (every issuer's roots let it
    /// through TLS; a tenant's CA must not speak for another's namespaces).
    ///
    /// # Errors
    /// [`Error::ForeignClientCert`], or as [`Tenants::select`].
    pub fn vouches(
        &self,
        identity: &SpiffeId,
        chain: &[rustls_pki_types::CertificateDer<'static>],
    ) -> Result<(), Error> {
        if !self.several() {
            return Ok(());
        }
        let (namespace, tenant) = self.bound(identity)?;
        let foreign = |issuer: &str, reason: String| Error::ForeignClientCert {
            namespace: namespace.to_owned(),
            issuer: issuer.to_owned(),
            reason,
        };
        let ca = tenant.issuer.ca().current();
        let (leaf, intermediates) = chain
            .split_first()
            .ok_or_else(|| foreign(&tenant.name, "no certificate".into()))?;
        crate::verify::chain(
            leaf,
            intermediates,
            ca.roots(),
            crate::verify::Usage::Client,
            ca.clock().now(),
        )
        .map_err(|e| foreign(&tenant.name, format!("{e:?}")))
    }

    /// A workload certificate's chain with the root element its issuer's
    /// workloads receive (unchanged for an issuer that trusts no other).
    pub fn finish(&self, tenant: &Tenant, mut issued: Issued) -> Issued {
        if !tenant.trusts.is_empty()
            && let Some(last) = issued.chain.last_mut()
        {
            *last = self.roots_of(tenant);
        }
        issued
    }
}

/// The first two issuers whose signing certificates carry the same public
/// key (DER SubjectPublicKeyInfo), if any: they would be one CA under two
/// names. `serve` and `check` both refuse them.
pub fn shared_key<'a>(
    keys: impl IntoIterator<Item = (&'a str, Option<Vec<u8>>)>,
) -> Option<(String, String)> {
    let mut seen: Vec<(Vec<u8>, &str)> = Vec::new();
    for (name, key) in keys {
        let Some(key) = key else { continue };
        if let Some((_, first)) = seen.iter().find(|(k, _)| *k == key) {
            return Some(((*first).to_owned(), name.to_owned()));
        }
        seen.push((key, name));
    }
    None
}

/// The namespace of `spiffe://<domain>/ns/<namespace>/sa/<name>`.
pub fn namespace_of(id: &SpiffeId) -> Option<&str> {
    let mut parts = id.path().strip_prefix('/')?.split('/');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some("ns"), Some(ns), Some("sa"), Some(_)) if !ns.is_empty() => Some(ns),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::namespace_of;

    #[test]
    fn the_namespace_comes_from_the_identity_path() {
        let id = |s: &str| spiffe::SpiffeId::new(s).unwrap();
        assert_eq!(
            namespace_of(&id("spiffe://cluster.local/ns/payments/sa/api")),
            Some("payments")
        );
        assert_eq!(namespace_of(&id("spiffe://cluster.local/x/payments")), None);
        assert_eq!(namespace_of(&id("spiffe://cluster.local/ns/a/sb/b")), None);
    }
}
