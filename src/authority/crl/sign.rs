//! One CRL per signing CA this replica holds — the current one and every
//! one it replaced whose leaves may live — signed with that CA's own key
//! (or, for Vault PKI, Vault's for its issuer), re-signed when the
//! revocations change and at half its validity. Its nextUpdate reaches
//! past the last leaf that CA signed, so the CRL last signed before a key
//! is gone (a restart, a deleted HSM key) still covers every leaf of it.

use std::{
    collections::HashMap,
    time::{Duration, SystemTime},
};

use crate::{
    ca::{CrlEntry, Held, SigningCa},
    clock::{at, unix},
    trust::SignedCrl,
};

/// thisUpdate is this far back, for clients whose clocks are behind.
pub(super) const BACKDATE: Duration = Duration::from_secs(300);

/// What was last signed for one CA.
#[derive(Debug, Clone)]
pub(super) struct Signed {
    pub(super) crl: SignedCrl,
    /// The serials it lists.
    serials: Vec<Vec<u8>>,
    /// When it is due again (half its validity).
    due: u64,
}

/// The CRLs this replica signed, by generation fingerprint.
#[derive(Debug, Default)]
pub(super) struct Signer {
    signed: HashMap<String, Signed>,
    /// Monotonic across restarts and replicas: the signing time, or one more.
    number: u64,
}

/// The outcome of one round for one CA.
pub(super) enum Round {
    /// Nothing changed since it was last signed.
    Kept,
    /// A new CRL.
    Signed(SignedCrl),
    /// It could not be signed (or read); the last one stays.
    Failed(String),
}

impl Signer {
    /// The CRL last signed for `fingerprint`.
    pub(super) fn get(&self, fingerprint: &str) -> Option<&SignedCrl> {
        self.signed.get(fingerprint).map(|s| &s.crl)
    }

    /// Forgets CAs no longer held.
    pub(super) fn retain(&mut self, held: &[String]) {
        self.signed.retain(|f, _| held.contains(f));
    }

    /// The earliest time one of them is due again.
    pub(super) fn next_due(&self) -> Option<u64> {
        self.signed.values().map(|s| s.due).min()
    }

    /// Signs (or reads) the CRL of `held` if it is due: never signed, the
    /// revocations changed, or half its validity has passed. `keep_until`
    /// is when its last leaf expires.
    pub(super) async fn round(
        &mut self,
        fingerprint: &str,
        held: &Held,
        entries: &[CrlEntry],
        validity: Duration,
        keep_until: u64,
        now: SystemTime,
    ) -> Round {
        let secs = unix(now);
        let serials: Vec<Vec<u8>> = entries.iter().map(|e| e.serial.clone()).collect();
        let ca = &held.ca;
        if let Some(s) = self.signed.get(fingerprint)
            && secs < s.due
            && (s.serials == serials || !ca.signs_own_crl())
        {
            return Round::Kept;
        }
        let result = if ca.signs_own_crl() {
            self.sign(ca, entries, validity, keep_until, now).await
        } else {
            backend(ca).await
        };
        match result {
            Ok(crl) => {
                let due = if ca.signs_own_crl() {
                    secs.saturating_add((validity / 2).as_secs())
                } else {
                    // Vault's own: read again every round, changes or not.
                    secs
                };
                let changed = self
                    .signed
                    .get(fingerprint)
                    .is_none_or(|s| s.crl.pem != crl.pem);
                self.signed.insert(
                    fingerprint.to_owned(),
                    Signed {
                        crl: crl.clone(),
                        serials,
                        due,
                    },
                );
                if changed {
                    Round::Signed(crl)
                } else {
                    Round::Kept
                }
            }
            Err(e) => Round::Failed(e),
        }
    }

    async fn sign(
        &mut self,
        ca: &SigningCa,
        entries: &[CrlEntry],
        validity: Duration,
        keep_until: u64,
        now: SystemTime,
    ) -> Result<SignedCrl, String> {
        let secs = unix(now);
        self.number = secs.max(self.number.saturating_add(1));
        let this_update = now.checked_sub(BACKDATE).unwrap_or(now);
        // Every leaf it signed is covered, whatever happens to its key.
        let next_update = now.checked_add(validity).unwrap_or(now).max(at(keep_until));
        let der = ca
            .sign_crl(entries, self.number, this_update, next_update)
            .await
            .map_err(|e| e.to_string())?;
        let pem = crate::pem::crl(&der).map_err(|e| e.to_string())?;
        Ok(SignedCrl {
            pem,
            number: self.number,
            this_update: unix(this_update),
            next_update: unix(next_update),
        })
    }
}

/// The issuing back end's own CRL (Vault PKI), checked by the CA.
async fn backend(ca: &SigningCa) -> Result<SignedCrl, String> {
    let der = match ca.backend_crl().await {
        Ok(Some(der)) => der,
        Ok(None) => return Err("the signing back end keeps no CRL".into()),
        Err(e) => return Err(e.to_string()),
    };
    let parsed = crate::crl::Crl::parse(&der, "the back end's CRL").map_err(|e| e.to_string())?;
    Ok(SignedCrl {
        pem: parsed.pem(),
        number: unix(parsed.this_update()),
        this_update: unix(parsed.this_update()),
        next_update: parsed.next_update().map_or(u64::MAX, unix),
    })
}
