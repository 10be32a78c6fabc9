//! Whether a signing CA can issue now, and the probe that finds out
//! without traffic: a back end that stopped working, a key that no longer
//! matches, a chain about to end.

use castellan_signer::Backend;
use spiffe::TrustDomain;

use super::{SigningCa, assess};

impl SigningCa {
    /// Whether the CA can issue now: the back end works and its key is the
    /// certified one.
    pub fn healthy(&self) -> bool {
        self.why_unhealthy().is_none()
    }

    /// What keeps the CA from issuing, if anything.
    pub fn why_unhealthy(&self) -> Option<String> {
        if let Some(reason) = self.proof.broken() {
            return Some(reason);
        }
        let left = self
            .limit
            .not_after
            .duration_since(self.clock.now())
            .unwrap_or_default();
        if left < self.min_ttl {
            return Some(format!(
                "the signing chain ends at {} (`{}` expires then), in less than \
                 issuance.min_ttl_secs; renew it",
                crate::clock::date(self.limit.not_after),
                self.limit.subject
            ));
        }
        let backend_ok = match &self.backend {
            Backend::Signs(s) => s.healthy(),
            Backend::Issues(i) => i.healthy(),
        };
        (!backend_ok).then(|| "the back end is unreachable or not working".to_owned())
    }

    /// The line signing requests wait in, when the back end bounds its calls.
    pub fn queue(&self) -> Option<std::sync::Arc<castellan_signer::queue::QueueStats>> {
        match &self.backend {
            Backend::Signs(s) => s.queue(),
            Backend::Issues(i) => i.queue(),
        }
    }

    /// Checks the back end without traffic (see [`spawn_prober`]); with
    /// `prove`, also issues and verifies a probe certificate, which is how a
    /// changed key is noticed without traffic and how its return is noticed.
    pub async fn probe(&self, prove: bool, trust_domain: &TrustDomain) {
        match &self.backend {
            Backend::Signs(s) => s.probe().await,
            Backend::Issues(i) => i.probe().await,
        }
        let backend_ok = match &self.backend {
            Backend::Signs(s) => s.healthy(),
            Backend::Issues(i) => i.healthy(),
        };
        let broken = self.proof.broken().is_some();
        if !backend_ok || !(prove || broken) {
            return;
        }
        if broken && let Backend::Signs(s) = &self.backend {
            s.reresolve().await;
        }
        match assess::probe(self, trust_domain, true).await {
            Ok(_) => {
                if self.proof.repair() {
                    tracing::info!(
                        source = %self.cert_source,
                        "the signing key verifies under the certificate again; issuing resumes"
                    );
                }
            }
            Err(e) => tracing::debug!(error = %e, "probe certificate not issued"),
        }
    }
}
