//! The integrity guarantee: no certificate leaves castellan unless it
//! verifies under the signing certificate sent with it.
//!
//! A signature is checked against the certificate's key unless it comes
//! from a key resolution already proven (a key in memory, an HSM handle
//! whose object cannot change); a remote key named anew on every call is
//! checked every time. A signature that fails turns the CA unhealthy until
//! a probe proves the right key is back.

use std::sync::{
    Arc,
    atomic::{AtomicBool, AtomicU64, Ordering},
};

use arc_swap::ArcSwapOption;
use aws_lc_rs::signature::{ParsedPublicKey, UnparsedPublicKey};
use castellan_signer::{KeyAlgorithm, KeyBinding, Signature};
use spki::SubjectPublicKeyInfoOwned;

use crate::metrics::IntegrityCounters;

/// What is known of the signing key's integrity.
pub(super) struct KeyProof {
    /// The signing certificate's public key, parsed once.
    key: Option<ParsedPublicKey>,
    /// The raw key, when it does not parse for `algorithm` (then every
    /// check fails, as it should).
    raw: Vec<u8>,
    algorithm: KeyAlgorithm,
    /// One more than the highest key resolution proven; 0: none yet.
    proven: AtomicU64,
    /// Why the key is not trusted now.
    broken: ArcSwapOption<String>,
    /// Set once the CA serves: a mismatch before is a start-up refusal that
    /// the assessment reports, not a key that changed.
    serving: AtomicBool,
    counters: IntegrityCounters,
}

/// A failed check, before it is turned into [`super::Error::KeyMismatch`].
#[derive(Debug)]
pub(super) struct Mismatch;

// === impl KeyProof ===

impl KeyProof {
    pub(super) fn new(
        spki: &SubjectPublicKeyInfoOwned,
        algorithm: KeyAlgorithm,
        counters: IntegrityCounters,
    ) -> Self {
        let raw = spki.subject_public_key.raw_bytes().to_vec();
        Self {
            key: ParsedPublicKey::new(algorithm.verification(), &raw).ok(),
            raw,
            algorithm,
            proven: AtomicU64::new(0),
            broken: ArcSwapOption::empty(),
            serving: AtomicBool::new(false),
            counters,
        }
    }

    /// Whether `signature` over `tbs` is the certified key's. With `always`,
    /// the signature is verified even from a proven resolution (probes).
    pub(super) fn check(
        &self,
        tbs: &[u8],
        signature: &Signature,
        always: bool,
        source: &str,
    ) -> Result<(), Mismatch> {
        if let KeyBinding::Resolved(n) = signature.key
            && !always
            && self.proven.load(Ordering::Acquire) == n.saturating_add(1)
        {
            return Ok(());
        }
        let verified = match &self.key {
            Some(key) => key.verify_sig(tbs, &signature.value).is_ok(),
            None => UnparsedPublicKey::new(self.algorithm.verification(), &self.raw)
                .verify(tbs, &signature.value)
                .is_ok(),
        };
        if !verified {
            self.mismatch(source, "a signature from the back end");
            return Err(Mismatch);
        }
        if let KeyBinding::Resolved(n) = signature.key {
            self.proven.fetch_max(n.saturating_add(1), Ordering::AcqRel);
        }
        Ok(())
    }

    /// Records that something the back end made is not the certified key's.
    pub(super) fn mismatch(&self, source: &str, what: &str) {
        if !self.serving.load(Ordering::Acquire) {
            return;
        }
        self.counters.key_mismatches.inc();
        let reason = format!(
            "{what} does not verify under the key of {source}: the key behind the back end \
             changed (replaced, recreated or rotated)"
        );
        if self.broken.swap(Some(Arc::new(reason.clone()))).is_none() {
            tracing::error!(
                %source,
                reason = %reason,
                "signing stopped: requests get UNAVAILABLE and /readyz 503 until the certified \
                 key is back or new signing material is configured"
            );
        }
    }

    /// The CA passed its assessment and serves from now on.
    pub(super) fn serve(&self) {
        self.serving.store(true, Ordering::Release);
    }

    /// Why the key is not trusted now, if it is not.
    pub(super) fn broken(&self) -> Option<String> {
        self.broken.load().as_deref().cloned()
    }

    pub(super) fn counters(&self) -> &IntegrityCounters {
        &self.counters
    }

    /// A probe verified: the key is trusted again. True if it was not.
    pub(super) fn repair(&self) -> bool {
        self.broken.swap(None).is_some()
    }
}

impl std::fmt::Debug for KeyProof {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyProof")
            .field("algorithm", &self.algorithm)
            .field("proven", &self.proven.load(Ordering::Relaxed))
            .field("broken", &self.broken())
            .finish_non_exhaustive()
    }
}
