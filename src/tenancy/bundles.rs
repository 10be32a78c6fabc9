//! What each namespace's workloads trust, as the responses and the mesh
//! writers hand it out: an issuer's roots with those it trusts, a
//! namespace's bundle with the main issuer's, each bundle name's
//! ClusterTrustBundle.

use super::{Tenant, Tenants};

impl Tenants {
    /// The roots `tenant`'s workloads receive: its own, then those of the
    /// issuers it trusts, each certificate once.
    pub fn roots_of(&self, tenant: &Tenant) -> String {
        let own = tenant.issuer.ca().current();
        let mut bundles = vec![own.roots_pem().to_owned()];
        for &i in &tenant.trusts {
            if let Some(t) = self.tenants.get(i) {
                bundles.push(t.issuer.ca().current().roots_pem().to_owned());
            }
        }
        merge(&bundles)
    }

    /// Every trust-bundle name published, `main` (the main issuer's) first.
    pub fn bundle_names(&self, main: &str) -> Vec<String> {
        let mut names = vec![main.to_owned()];
        for t in &self.tenants {
            if let Some(b) = &t.bundle
                && !names.contains(b)
            {
                names.push(b.clone());
            }
        }
        names
    }

    /// The trust-bundle name `namespace` reads (`main` unless its issuer
    /// has its own); `None` while its issuer cannot be told.
    pub fn bundle_name_of<'a>(&'a self, namespace: &str, main: &'a str) -> Option<&'a str> {
        let tenant = self.for_namespace(namespace).ok()?;
        Some(tenant.and_then(|t| t.bundle.as_deref()).unwrap_or(main))
    }

    /// What the ClusterTrustBundle named after `name` holds: the roots of
    /// every issuer whose namespaces read that name (and of those they
    /// trust), and the main issuer's.
    pub fn cluster_bundle(&self, name: &str, main: &str) -> Option<String> {
        let main_roots = self.main()?.issuer.ca().current().roots_pem().to_owned();
        let mut bundles: Vec<String> = self
            .tenants
            .iter()
            .filter(|t| t.bundle.as_deref().unwrap_or(main) == name)
            .map(|t| self.roots_of(t))
            .collect();
        bundles.push(main_roots);
        Some(merge(&bundles))
    }

    /// What namespace `namespace`'s `istio-ca-root-cert` holds: the roots
    /// its workloads receive, and the main issuer's, which the agent needs
    /// to verify castellan's serving certificate and istiod's.
    ///
    /// `None` while the namespace's issuer cannot be told (its labels not
    /// known yet, or claimed by two bindings).
    pub fn bundle_for(&self, namespace: &str) -> Option<String> {
        let main = self.main()?;
        let own = self
            .for_namespace(namespace)
            .ok()?
            .map(|t| self.roots_of(t));
        let main_roots = main.issuer.ca().current().roots_pem().to_owned();
        Some(merge(&[own.unwrap_or_default(), main_roots]))
    }
}

/// PEM bundles joined, each certificate once, in first-seen order.
fn merge(bundles: &[String]) -> String {
    use rustls_pki_types::{CertificateDer, pem::PemObject};
    let mut seen = std::collections::HashSet::new();
    let mut out = String::new();
    for bundle in bundles {
        for der in CertificateDer::pem_slice_iter(bundle.as_bytes()).filter_map(Result::ok) {
            if seen.insert(der.to_vec())
                && let Ok(pem) = crate::pem::certificate(&der)
            {
                out.push_str(&pem);
            }
        }
    }
    out
}
