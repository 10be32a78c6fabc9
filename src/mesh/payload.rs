//! What a published ConfigMap holds in each namespace the trust bundle
//! goes to: the root bundle (Istio's `istio-ca-root-cert`) or the CRLs
//! (`istio-ca-crl`) — with several issuers, those of the issuer bound to
//! the namespace and of the issuers it trusts (plus, for the roots, the
//! main issuer's, which chain castellan's and istiod's certificates).
//! Contents are compared as sets of PEM blocks.

use std::{collections::BTreeSet, sync::Arc};

use prometheus::IntCounterVec;
use rustls_pki_types::pem::PemObject;
use tokio::sync::watch;

use crate::{metrics::Metrics, tenancy::Tenants};

/// Each issuer's CRL set as its keeper publishes it (PEM, `None` until a
/// whole set exists), in the order of [`Tenants::all`].
pub(crate) type CrlFeeds = Vec<watch::Receiver<Option<String>>>;

pub(crate) enum Payload {
    /// The roots of the issuers a namespace's workloads trust, in the
    /// namespaces that read this bundle name.
    Roots(Roots),
    /// The CRLs of those issuers, once each has signed one.
    Crl(Arc<Tenants>, CrlFeeds),
}

/// A trust-bundle name and who publishes under it.
pub(crate) struct Roots {
    pub(crate) tenants: Arc<Tenants>,
    /// The name published.
    pub(crate) name: String,
    /// The main issuer's name (`kubernetes.trust_bundle.configmap_name`).
    pub(crate) main: String,
}

impl Roots {
    /// What the ClusterTrustBundle of this name holds.
    pub(crate) fn cluster_bundle(&self) -> Option<String> {
        self.tenants.cluster_bundle(&self.name, &self.main)
    }

    /// Any issuer's roots changing, or a namespace's labels.
    pub(crate) fn changes(&self) -> Changes {
        Changes::Cas(
            self.tenants
                .all()
                .iter()
                .map(|t| t.issuer().ca().subscribe())
                .chain(self.tenants.labels_changes())
                .collect(),
        )
    }
}

/// Waits for what may have changed the payload.
pub(crate) enum Changes {
    Cas(Vec<watch::Receiver<u64>>),
    Crls(CrlFeeds, Option<watch::Receiver<u64>>),
}

impl Changes {
    /// False once a source is gone.
    pub(crate) async fn changed(&mut self) -> bool {
        match self {
            Self::Cas(rxs) => {
                let waits = rxs.iter_mut().map(|rx| Box::pin(rx.changed()));
                futures_util::future::select_all(waits).await.0.is_ok()
            }
            Self::Crls(rxs, labels) => {
                let waits = rxs.iter_mut().map(|rx| Box::pin(rx.changed()));
                let crls = futures_util::future::select_all(waits);
                match labels {
                    Some(l) => tokio::select! {
                        (r, ..) = crls => r.is_ok(),
                        r = l.changed() => r.is_ok(),
                    },
                    None => crls.await.0.is_ok(),
                }
            }
        }
    }
}

impl Payload {
    /// The ConfigMap key Istio mounts.
    pub(crate) fn key(&self) -> &'static str {
        match self {
            Self::Roots(_) => "root-cert.pem",
            Self::Crl(..) => "ca-crl.pem",
        }
    }

    /// What to publish in `namespace` now; `None`: nothing yet (a CRL set
    /// is published only once every issuer it needs has signed its own).
    pub(crate) fn current(&self, namespace: &str) -> Option<String> {
        match self {
            // Another name's namespace: nothing to publish under this one.
            Self::Roots(r) => (r.tenants.bundle_name_of(namespace, &r.main)? == r.name)
                .then(|| r.tenants.bundle_for(namespace))
                .flatten(),
            Self::Crl(tenants, feeds) => {
                let mut all = String::new();
                for i in tenants.reach(namespace).ok()? {
                    all.push_str(feeds.get(i)?.borrow().as_deref()?);
                }
                Some(all)
            }
        }
    }

    /// Everything published anywhere, to tell a change from a wake-up.
    /// A relabelled namespace may be bound elsewhere: the labels' change
    /// count is part of it.
    pub(crate) fn everything(&self) -> (u64, Vec<Option<BTreeSet<Vec<u8>>>>) {
        match self {
            Self::Roots(Roots { tenants, .. }) => (
                tenants.labels_version(),
                tenants
                    .all()
                    .iter()
                    .map(|t| Some(self.canon(t.issuer().ca().current().roots_pem())))
                    .collect(),
            ),
            Self::Crl(tenants, feeds) => (
                tenants.labels_version(),
                feeds
                    .iter()
                    .map(|rx| rx.borrow().as_deref().map(|p| self.canon(p)))
                    .collect(),
            ),
        }
    }

    pub(crate) fn changes(&self) -> Changes {
        match self {
            Self::Roots(r) => r.changes(),
            Self::Crl(tenants, feeds) => Changes::Crls(feeds.clone(), tenants.labels_changes()),
        }
    }

    /// The content as a set: order and spacing do not matter (Istio
    /// restarted every workload over an order-only change, istio#59909);
    /// what does not parse is left out, as Istio leaves it out.
    pub(crate) fn canon(&self, pem: &str) -> BTreeSet<Vec<u8>> {
        match self {
            Self::Roots(_) => crate::pem::certificate_set(pem),
            Self::Crl(..) => crls(pem),
        }
    }

    /// For log lines.
    pub(crate) fn describe(&self) -> &'static str {
        match self {
            Self::Roots(_) => "the trust bundle",
            Self::Crl(..) => "the CRL",
        }
    }

    /// Writes by reason.
    pub(crate) fn writes<'m>(&self, metrics: &'m Metrics) -> &'m IntCounterVec {
        match self {
            Self::Roots(_) => &metrics.mesh.trust_bundle_writes,
            Self::Crl(..) => &metrics.mesh.crl_writes,
        }
    }

    /// Whether the trust-bundle gauges follow this publisher (the main
    /// bundle name's; an issuer's own name is not in them).
    pub(crate) fn is_trust_bundle(&self) -> bool {
        matches!(self, Self::Roots(r) if r.name == r.main)
    }
}

fn crls(pem: &str) -> BTreeSet<Vec<u8>> {
    rustls_pki_types::CertificateRevocationListDer::pem_slice_iter(pem.as_bytes())
        .filter_map(Result::ok)
        .map(|c| c.as_ref().to_vec())
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn bundles_compare_as_sets() {
        let a = rcgen::generate_simple_self_signed(vec!["a".into()])
            .unwrap()
            .cert
            .pem();
        let b = rcgen::generate_simple_self_signed(vec!["b".into()])
            .unwrap()
            .cert
            .pem();
        assert_eq!(
            crate::pem::certificate_set(&format!("{a}{b}")),
            crate::pem::certificate_set(&format!("{b}\n{a}"))
        );
        assert_ne!(
            crate::pem::certificate_set(&a),
            crate::pem::certificate_set(&format!("{a}{b}"))
        );
        assert_eq!(
            crate::pem::certificate_set(&format!("{a}junk")),
            crate::pem::certificate_set(&a)
        );
    }
}
