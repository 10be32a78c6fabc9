//! Keeps a current CRL of the record's revocations: signed by the signing
//! CA (and verified under it) at start, whenever the revocations or the CA
//! change, and again at half its validity; the last good one stays when a
//! signing fails, so an invalid or empty-by-accident CRL is never handed out.

use std::{
    sync::Arc,
    time::{Duration, UNIX_EPOCH},
};

use tokio::{sync::watch, task::JoinHandle};

use super::TrustRules;
use crate::{
    ca::{self, CaHandle, CrlEntry},
    metrics::Metrics,
};

/// A failed signing is tried again after this long.
const RETRY: Duration = Duration::from_secs(10);

/// Starts the keeper; the receiver holds the CRL in use, PEM.
pub fn spawn_crl(
    validity: Duration,
    rules: TrustRules,
    ca: Arc<CaHandle>,
    metrics: Metrics,
) -> (watch::Receiver<Option<String>>, JoinHandle<()>) {
    let (tx, rx) = watch::channel(None);
    let task = tokio::spawn(async move {
        let mut record = rules.changed.subscribe();
        let mut cas = ca.subscribe();
        let mut number = 0u64;
        let mut said_unsupported = false;
        loop {
            let now = rules.clock.now();
            let secs = crate::clock::unix(now);
            // Monotonic across restarts and replicas: the signing time.
            number = secs.max(number.saturating_add(1));
            let listed = entries(&rules, secs);
            let signed = serials(&listed);
            let next = now + validity;
            let wait = match ca.current().sign_crl(&listed, number, now, next).await {
                Ok(der) => match crate::pem::crl(&der) {
                    Ok(pem) => {
                        tx.send_replace(Some(pem));
                        metrics.crl_signed.inc();
                        metrics.crl_next_update.set(
                            i64::try_from(secs.saturating_add(validity.as_secs()))
                                .unwrap_or(i64::MAX),
                        );
                        tracing::info!(revoked = listed.len(), crl_number = number, "CRL signed");
                        validity / 2
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "CRL not encoded; keeping the previous one");
                        RETRY
                    }
                },
                // The key is the back end's (Vault PKI): publish its CRL,
                // read again every round (it changes when Vault revokes).
                Err(ca::Error::WorkloadOnly) => match ca.current().backend_crl().await {
                    Ok(Some(der)) => match crate::pem::crl(&der) {
                        Ok(pem) => {
                            if tx.borrow().as_deref() != Some(pem.as_str()) {
                                tracing::info!("the back end's CRL read and checked");
                                metrics.crl_signed.inc();
                            }
                            metrics.crl_next_update.set(next_update(&der));
                            tx.send_replace(Some(pem));
                            rules.interval
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "CRL not encoded; keeping the previous one");
                            RETRY
                        }
                    },
                    Ok(None) => {
                        if !said_unsupported {
                            tracing::warn!("the signing back end keeps no CRL: none is published");
                            said_unsupported = true;
                        }
                        validity
                    }
                    Err(e) => {
                        tracing::error!(
                            error = %e,
                            "the back end's CRL not read or not signed by the signing CA; \
                             keeping the previous one, retrying"
                        );
                        RETRY
                    }
                },
                Err(e) => {
                    tracing::error!(error = %e, "CRL not signed; keeping the previous one, retrying");
                    RETRY
                }
            };
            // Until the timer, the CA changes, or the record's revocations
            // do (the record also changes as replicas note their signing).
            let deadline = tokio::time::Instant::now() + wait;
            loop {
                tokio::select! {
                    () = tokio::time::sleep_until(deadline) => break,
                    r = cas.changed() => if r.is_err() { return } else { break },
                    r = record.changed() => {
                        if r.is_err() {
                            return;
                        }
                        let secs = rules.clock.unix();
                        if serials(&entries(&rules, secs)) != signed {
                            break;
                        }
                    }
                }
            }
        }
    });
    (rx, task)
}

/// The record's unexpired revocations, in serial order.
fn entries(rules: &TrustRules, now: u64) -> Vec<CrlEntry> {
    let state = rules.state.load();
    state
        .revoked
        .iter()
        .filter(|(_, r)| r.until >= now)
        .filter_map(|(serial, r)| {
            Some(CrlEntry {
                serial: super::serial_bytes(serial)?,
                revoked_at: UNIX_EPOCH.checked_add(Duration::from_secs(r.at))?,
                reason: r.reason,
            })
        })
        .collect()
}

/// A CRL's nextUpdate, seconds since the epoch (0 when it has none).
fn next_update(der: &[u8]) -> i64 {
    use der::Decode;
    x509_cert::crl::CertificateList::<x509_cert::certificate::Rfc5280>::from_der(der)
        .ok()
        .and_then(|l| l.tbs_cert_list.next_update)
        .and_then(|t| t.to_system_time().duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn serials(entries: &[CrlEntry]) -> Vec<Vec<u8>> {
    entries.iter().map(|e| e.serial.clone()).collect()
}
