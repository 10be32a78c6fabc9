//! What a published ConfigMap holds, in every namespace the trust bundle
//! goes to: the root bundle (Istio's `istio-ca-root-cert`) or the CRL
//! (`istio-ca-crl`). Contents are compared as sets of PEM blocks.

use std::{collections::BTreeSet, sync::Arc};

use prometheus::IntCounterVec;
use rustls_pki_types::pem::PemObject;
use tokio::sync::watch;

use crate::{ca::CaHandle, metrics::Metrics};

pub(crate) enum Payload {
    /// The root bundle of the CA in use.
    Roots(Arc<CaHandle>),
    /// The CRL in use, once one is signed.
    Crl(watch::Receiver<Option<String>>),
}

/// Waits for what may have changed the payload.
pub(crate) enum Changes {
    Ca(watch::Receiver<u64>),
    Crl(watch::Receiver<Option<String>>),
}

impl Changes {
    /// False once the source is gone.
    pub(crate) async fn changed(&mut self) -> bool {
        match self {
            Self::Ca(rx) => rx.changed().await.is_ok(),
            Self::Crl(rx) => rx.changed().await.is_ok(),
        }
    }
}

impl Payload {
    /// The ConfigMap key Istio mounts.
    pub(crate) fn key(&self) -> &'static str {
        match self {
            Self::Roots(_) => "root-cert.pem",
            Self::Crl(_) => "ca-crl.pem",
        }
    }

    /// What to publish now; `None`: nothing yet.
    pub(crate) fn current(&self) -> Option<String> {
        match self {
            Self::Roots(ca) => Some(ca.current().roots_pem().to_owned()),
            Self::Crl(rx) => rx.borrow().clone(),
        }
    }

    pub(crate) fn changes(&self) -> Changes {
        match self {
            Self::Roots(ca) => Changes::Ca(ca.subscribe()),
            Self::Crl(rx) => Changes::Crl(rx.clone()),
        }
    }

    /// The content as a set: order and spacing do not matter (Istio
    /// restarted every workload over an order-only change, istio#59909);
    /// what does not parse is left out, as Istio leaves it out.
    pub(crate) fn canon(&self, pem: &str) -> BTreeSet<Vec<u8>> {
        match self {
            Self::Roots(_) => crate::pem::certificate_set(pem),
            Self::Crl(_) => crls(pem),
        }
    }

    /// For log lines.
    pub(crate) fn describe(&self) -> &'static str {
        match self {
            Self::Roots(_) => "the trust bundle",
            Self::Crl(_) => "the CRL",
        }
    }

    /// Writes by reason.
    pub(crate) fn writes<'m>(&self, metrics: &'m Metrics) -> &'m IntCounterVec {
        match self {
            Self::Roots(_) => &metrics.mesh.trust_bundle_writes,
            Self::Crl(_) => &metrics.mesh.crl_writes,
        }
    }

    /// Whether the trust-bundle gauges follow this publisher.
    pub(crate) fn is_trust_bundle(&self) -> bool {
        matches!(self, Self::Roots(_))
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
