//! One certificate authority as a unit: its signing source and the
//! generations it signed under, its roots, the trust record and the guards
//! that read it, the CRL keeper, the reloader, the rotator and the prober —
//! started by one function and stopped as one, so whoever serves
//! certificates (the gRPC front end, the mesh writers) holds one value.

mod crl;
mod recorder;
mod roots_file;
mod rules;

use std::{path::PathBuf, sync::Arc, time::Duration};

use tokio::{sync::watch, task::JoinHandle};

pub use rules::{read_roots, rules};

use crate::{
    ca::{self, CaHandle},
    clock::Clock,
    config::Config,
    metrics::Metrics,
    trust::{self, Revocations},
};

/// How often the back end is checked without traffic: a sealed Vault or a
/// vanished HSM shows in `/readyz` within this long.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// Why an authority cannot start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("signing CA: {0}")]
    Ca(#[from] ca::Error),
    #[error(transparent)]
    Trust(#[from] trust::Error),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Pem {
        path: PathBuf,
        source: rustls_pki_types::pem::Error,
    },
    #[error("{path}: no PEM certificate")]
    NoCertificate { path: PathBuf },
}

/// The CRL set as the keeper publishes it (PEM, `None` until a whole set
/// exists) and the ConfigMap it goes to.
pub type CrlFeed = (watch::Receiver<Option<String>>, String);

/// A started authority: its signing CA, what it revokes, the CRL it keeps
/// and the tasks that keep them current.
#[derive(Debug)]
pub struct Authority {
    ca: Arc<CaHandle>,
    revocations: Option<Arc<Revocations>>,
    crl: Option<CrlFeed>,
    tasks: Vec<JoinHandle<()>>,
}

// === impl Authority ===

impl Authority {
    /// Loads the signing CA as configured, judged against the rules and the
    /// trust record (read and proven writable), and starts what keeps it
    /// current: the recorder and the CRL keeper (with `[trust]`), the
    /// `ca.roots_file` watcher, the reloader (unless
    /// `ca.reload_interval_secs = 0`), the rotator (self-minted
    /// intermediates) and the prober.
    ///
    /// # Errors
    /// [`Error`] naming what stops the CA from being used.
    // Long: the unit's start-up in the order its tasks depend on each other, each step one call.
    pub async fn start(config: &Config, metrics: &Metrics, clock: Clock) -> Result<Self, Error> {
        let mut rules = rules(config, metrics.ca_counters(), clock.clone())?;
        let trust = trust::open_writable(config, clock).await?;
        if let Some((_, t)) = &trust {
            if t.force {
                tracing::warn!(
                    store = %t.store,
                    "root rotation guards FORCED by trust.force: castellan signs under a root \
                     workloads may not trust yet, and serves without roots whose leaves still live"
                );
            }
            rules.trust = Some(t.clone());
        }
        for waived in &rules.waived {
            tracing::warn!(
                practice = ?waived,
                "practice WAIVED by practices.waive: castellan serves what `castellan check` \
                 reports as a waived failure"
            );
        }
        let ca = Arc::new(CaHandle::load(ca::source(config), rules).await?);
        observe(metrics, &ca.current());
        let mut unit = Self {
            ca,
            revocations: None,
            crl: None,
            tasks: Vec::new(),
        };
        if let Some((store, t)) = trust {
            unit.keep_record(config, store, t, metrics);
        }
        let poll = Duration::from_secs(config.ca.reload_interval_secs);
        if let Some(path) = &config.ca.roots_file {
            let every = if poll.is_zero() {
                PROBE_INTERVAL * 5
            } else {
                poll
            };
            unit.tasks
                .push(roots_file::spawn(path.clone(), Arc::clone(&unit.ca), every));
        }
        if !poll.is_zero() {
            let (m1, m2) = (metrics.clone(), metrics.clone());
            unit.tasks.push(ca::spawn_reloader(
                Arc::clone(&unit.ca),
                poll,
                move |new| observe(&m1, new),
                move || m2.ca.reload_refused.inc(),
            ));
        }
        if unit.ca.self_rotating() {
            unit.rotate(metrics);
        }
        let healthy = metrics.ca.signer_healthy.clone();
        healthy.set(1);
        unit.tasks.push(ca::spawn_prober(
            Arc::clone(&unit.ca),
            PROBE_INTERVAL,
            move |ca| healthy.set(i64::from(ca.healthy())),
        ));
        Ok(unit)
    }

    /// The signing CA in use, swapped on reload and rotation.
    pub fn ca(&self) -> &Arc<CaHandle> {
        &self.ca
    }

    /// The revocations this authority enforces (with `[trust]`).
    pub fn revocations(&self) -> Option<&Arc<Revocations>> {
        self.revocations.as_ref()
    }

    /// The CRL set it keeps (with `[trust.crl]`).
    pub fn crl(&self) -> Option<&CrlFeed> {
        self.crl.as_ref()
    }

    /// Stops every task of the authority; the CA in use stays readable.
    pub fn stop(&self) {
        for task in &self.tasks {
            task.abort();
        }
    }

    /// Stops every task and returns once each has ended (what it held is
    /// dropped).
    pub async fn close(self) {
        self.stop();
        for task in self.tasks {
            let _ = task.await;
        }
    }

    /// The record's writer and, with `[trust.crl]`, the CRL keeper.
    fn keep_record(
        &mut self,
        config: &Config,
        store: trust::Store,
        t: trust::TrustRules,
        metrics: &Metrics,
    ) {
        let revocations = Arc::new(Revocations::new(&t, trust::ISSUED_CAPACITY));
        if let Some(c) = config.trust.as_ref().and_then(|t| t.crl.as_ref()) {
            // Retired generations stay signable while their leaves live, so
            // their CRLs can be signed again.
            self.ca.keep_replaced_for(t.leaf_life);
            let (rx, task) = crl::spawn_crl(
                crl::CrlConfig {
                    validity: Duration::from_secs(c.validity_secs),
                    upstream_files: c.upstream_files.clone(),
                },
                store.clone(),
                t.clone(),
                Arc::clone(&self.ca),
                metrics.clone(),
            );
            self.tasks.push(task);
            self.crl = Some((rx, c.configmap_name.clone()));
        }
        self.tasks.push(recorder::spawn_recorder(
            store,
            t,
            Arc::clone(&self.ca),
            Arc::clone(&revocations),
        ));
        self.revocations = Some(revocations);
    }

    /// The rotator of a self-minted intermediate, counted in `/metrics`.
    fn rotate(&mut self, metrics: &Metrics) {
        metrics.observe_rotation(ca::rotation_due(self.ca.current().facts()));
        let m = metrics.clone();
        self.tasks.push(ca::spawn_rotator(
            Arc::clone(&self.ca),
            move |outcome, now| {
                m.ca.rotations.with_label_values(&[outcome.label()]).inc();
                if outcome == ca::RotationOutcome::Refused {
                    m.ca.reload_refused.inc();
                }
                observe(&m, now);
                m.observe_rotation(ca::rotation_due(now.facts()));
            },
        ));
    }
}

/// The CA's expiry gauges and its back end's queue, in `/metrics`.
fn observe(metrics: &Metrics, ca: &ca::SigningCa) {
    let path: Vec<(String, std::time::SystemTime)> = ca
        .path()
        .iter()
        .map(|c| {
            let tbs = c.tbs_certificate();
            (
                tbs.subject().to_string(),
                tbs.validity().not_after.to_system_time(),
            )
        })
        .collect();
    metrics.observe_ca(ca.roots_not_after(), ca.not_after(), &path);
    if let Some(queue) = ca.queue() {
        metrics.queues.watch("signer", queue);
    }
}
