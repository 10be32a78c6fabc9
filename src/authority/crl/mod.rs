//! Keeps the CRL file clients can live with: every generation's own CRL
//! (signed here with its key while this replica holds it, or kept in the
//! record) and a current CRL from every CA above each, up to the root
//! (`trust.crl.upstream_files`, and what the back end fetches). Published
//! only when the current signing CA's chain is wholly covered — Envoy fails
//! every handshake of a chain with a CA lacking a CRL — and otherwise the
//! last whole set stays, with an error naming what is missing.

mod set;
mod sign;
#[cfg(test)]
mod timeline;

use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, SystemTime},
};

use tokio::{sync::watch, task::JoinHandle};

use crate::{
    ca::{CaHandle, CrlEntry, Held},
    clock::{at, unix},
    crl::Crl,
    metrics::Metrics,
    trust::{Store, TrustRules, TrustState, fingerprint},
};

/// A failed signing or an incomplete set is looked at again after this.
const RETRY: Duration = Duration::from_secs(10);
/// What the back end fetches for the CAs above (the Vault issuer's CRL,
/// valid for days) is read again at most this often, and when the signing
/// CA changes: one call every few minutes, not every record interval.
const FETCH_EVERY: Duration = Duration::from_secs(300);

/// `[trust.crl]` as the keeper uses it.
#[derive(Clone, Debug)]
pub(super) struct CrlConfig {
    /// The least nextUpdate − thisUpdate of castellan's own CRLs; each is
    /// signed again at half of it.
    pub validity: Duration,
    /// CRLs of the CAs above the signing CA, re-read every round.
    pub upstream_files: Vec<PathBuf>,
}

/// Starts the keeper; the receiver holds the set in use, PEM.
pub(super) fn spawn_crl(
    config: CrlConfig,
    store: Store,
    rules: TrustRules,
    ca: Arc<CaHandle>,
    metrics: Metrics,
) -> (watch::Receiver<Option<String>>, JoinHandle<()>) {
    let (mut keeper, rx) = Keeper::new(config, store, rules, ca, metrics);
    let task = tokio::spawn(async move {
        let mut record = keeper.rules.changed.subscribe();
        let mut cas = keeper.ca.subscribe();
        loop {
            let wait = keeper.round().await;
            let deadline = tokio::time::Instant::now() + wait;
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => {}
                r = cas.changed() => if r.is_err() { return },
                r = record.changed() => if r.is_err() { return },
            }
        }
    });
    (rx, task)
}

struct Keeper {
    config: CrlConfig,
    store: Store,
    rules: TrustRules,
    ca: Arc<CaHandle>,
    metrics: Metrics,
    tx: watch::Sender<Option<String>>,
    signer: sign::Signer,
    /// The upstream files as last read whole.
    files: Vec<Crl>,
    /// What the back end fetched last, when, and for which signing CA.
    fetched: Vec<Crl>,
    fetched_at: Option<(SystemTime, String)>,
    /// The last problem logged, so each is said once.
    said: Option<String>,
}

impl Keeper {
    fn new(
        config: CrlConfig,
        store: Store,
        rules: TrustRules,
        ca: Arc<CaHandle>,
        metrics: Metrics,
    ) -> (Self, watch::Receiver<Option<String>>) {
        let (tx, rx) = watch::channel(None);
        let keeper = Self {
            config,
            store,
            rules,
            ca,
            metrics,
            tx,
            signer: sign::Signer::default(),
            files: Vec::new(),
            fetched: Vec::new(),
            fetched_at: None,
            said: None,
        };
        (keeper, rx)
    }

    /// Signs what is due, records it, re-reads the CAs above, and
    /// publishes the set if it is whole. Returns how long to wait.
    async fn round(&mut self) -> Duration {
        let now = self.rules.clock.now();
        let secs = unix(now);
        let leaf_life = self.rules.leaf_life;
        self.ca.release(now, leaf_life);
        let held: Vec<(String, Held)> = self
            .ca
            .held()
            .into_iter()
            .map(|h| (h.ca.chain().first().map(fingerprint).unwrap_or_default(), h))
            .collect();
        self.signer
            .retain(&held.iter().map(|(f, _)| f.clone()).collect::<Vec<_>>());
        let entries = entries(&self.rules, secs);
        let state = self.rules.state.load_full();
        let mut delta = TrustState::default();
        let mut failed = false;
        for (f, h) in &held {
            let keep = set::keep_until(state.generations.get(f), h, leaf_life.as_secs(), secs);
            match self
                .signer
                .round(f, h, &entries, self.config.validity, keep, now)
                .await
            {
                sign::Round::Kept => {}
                sign::Round::Signed(crl) => {
                    self.metrics.ca.crl_signed.inc();
                    tracing::info!(
                        ca = %h.ca.facts().subject,
                        revoked = entries.len(),
                        crl_number = crl.number,
                        next_update = %crate::clock::date(at(crl.next_update)),
                        "CRL signed"
                    );
                    delta.record_crl(f, &crl);
                }
                sign::Round::Failed(e) => {
                    failed = true;
                    tracing::error!(
                        ca = %h.ca.facts().subject,
                        error = %e,
                        "CRL not signed; the last one stays, retrying"
                    );
                }
            }
        }
        if !delta.crls.is_empty() {
            self.record(&delta, secs).await;
        }
        self.refresh_upstream(&held, now).await;
        self.publish(&held, now);
        let due = self.signer.next_due().map_or(self.rules.interval, |d| {
            Duration::from_secs(d.saturating_sub(secs))
        });
        let wait = due.min(self.rules.interval).max(Duration::from_secs(1));
        if failed { wait.min(RETRY) } else { wait }
    }

    /// Merges this replica's new CRLs into the record, for the other
    /// replicas and for after a restart.
    async fn record(&self, delta: &TrustState, secs: u64) {
        match self.store.merge(delta, secs).await {
            Ok(merged) => {
                if **self.rules.state.load() != merged {
                    self.rules.state.store(Arc::new(merged));
                }
            }
            Err(e) => tracing::warn!(
                error = %e,
                "the new CRL is published but not in the trust record yet; the recorder retries"
            ),
        }
    }

    /// Re-reads the upstream files (a file that fails keeps what was read
    /// last) and what the back end fetches.
    async fn refresh_upstream(&mut self, held: &[(String, Held)], now: SystemTime) {
        match Crl::read_files(&self.config.upstream_files, "trust.crl.upstream_files") {
            Ok(crls) => self.files = crls,
            Err(e) => tracing::error!(error = %e, "keeping the upstream CRLs read last"),
        }
        let current = held.first().map(|(f, _)| f.clone()).unwrap_or_default();
        let fresh = self.fetched_at.as_ref().is_some_and(|(at, f)| {
            *f == current && now.duration_since(*at).unwrap_or_default() < FETCH_EVERY
        });
        if fresh {
            return;
        }
        match self.ca.upstream_crls().await {
            Ok(ders) if !ders.is_empty() => {
                self.fetched = ders
                    .iter()
                    .filter_map(|d| Crl::parse(d, "the back end's upstream CRL").ok())
                    .collect();
                self.fetched_at = Some((now, current));
            }
            Ok(_) => {
                // Nothing fetched now: what came with the material.
                self.fetched = held
                    .iter()
                    .flat_map(|(_, h)| h.ca.upstream_crls().iter().cloned())
                    .collect();
                self.fetched_at = Some((now, current));
            }
            Err(e) => tracing::warn!(error = %e, "the upstream CRL from the back end not read"),
        }
    }

    fn publish(&mut self, held: &[(String, Held)], now: SystemTime) {
        let state = self.rules.state.load_full();
        let current = self.ca.current();
        let roots: Vec<(String, Vec<u8>)> = current
            .roots()
            .iter()
            .map(|r| (fingerprint(r), r.to_vec()))
            .collect();
        let signer = &self.signer;
        let wanted = set::wanted(
            held,
            &state,
            |f| signer.get(f).map(|c| c.pem.as_str()),
            &roots,
            unix(now),
        );
        let upstream: Vec<Crl> = self.files.iter().chain(&self.fetched).cloned().collect();
        let set = set::assemble(&wanted, &upstream, now);
        self.metrics
            .ca
            .crl_missing
            .set(i64::try_from(set.problems.len()).unwrap_or(i64::MAX));
        let problems = set.problems.join("; ");
        if problems.is_empty() {
            if self.said.take().is_some() {
                tracing::info!("every generation's chain has a current CRL again");
            }
        } else if self.said.as_deref() != Some(problems.as_str()) {
            if set.complete {
                tracing::warn!(problems = %problems, "CRLs missing for older generations");
            } else {
                tracing::error!(
                    problems = %problems,
                    "CRL set incomplete for the signing CA: not published (clients that check \
                     CRLs would reject every chain); the last whole set stays"
                );
            }
            self.said = Some(problems);
        }
        if !set.complete || set.pem.is_empty() {
            return;
        }
        self.metrics.ca.crl_next_update.set(
            set.next_update
                .map_or(0, |t| i64::try_from(unix(t)).unwrap_or(i64::MAX)),
        );
        self.metrics
            .ca
            .crl_generations
            .set(i64::try_from(set.generations).unwrap_or(i64::MAX));
        self.tx.send_if_modified(|published| {
            let changed = published.as_deref() != Some(set.pem.as_str());
            if changed {
                *published = Some(set.pem);
            }
            changed
        });
    }
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
                serial: crate::trust::serial_bytes(serial)?,
                revoked_at: at(r.at),
                reason: r.reason,
            })
        })
        .collect()
}
