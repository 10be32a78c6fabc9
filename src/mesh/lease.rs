//! Leader election for the writers, with client-go's protocol on a
//! `coordination.k8s.io/v1` Lease through kube-rs: read the Lease, take it
//! only when its holder has not renewed it for a lease duration (timed by
//! this replica's own clock since it last saw the record change, so clock
//! skew between nodes does not matter), and write with the resourceVersion
//! read, so of two replicas racing for it the API server lets exactly one
//! win (409 Conflict for the other). A leader whose renewal fails — a 409
//! included: client-go retries until its renew deadline — keeps leading and
//! tries again every retry period; only a leader that has not renewed for the
//! renew deadline, or finds another holder, stops leading at once. A
//! graceful shutdown releases the Lease.
//!
//! The kept crates were read and set aside: kube-leader-election writes
//! without a resourceVersion (two replicas can both win a race), and
//! kube-lease-manager depends on server-side apply's field ownership.

use std::{sync::Arc, time::Duration};

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::Timestamp,
};
use kube::{Api, Client, api::PostParams};
use tokio::{
    sync::watch,
    time::{Instant, MissedTickBehavior},
};

use super::api::{self, Trouble};
use crate::{config, metrics::Metrics};

/// Whether this replica leads, as the writers ask it.
#[derive(Clone, Debug)]
pub(crate) struct Leadership {
    leading: watch::Receiver<bool>,
    /// Leadership is valid until then (the last renewal plus the renew
    /// deadline), whatever the elector has got round to noticing.
    until: Arc<std::sync::Mutex<Option<Instant>>>,
}

/// The elector's state between attempts.
struct Elector {
    api: Api<Lease>,
    namespace: String,
    name: String,
    identity: String,
    duration: Duration,
    deadline: Duration,
    /// The record last seen, and when this replica saw it change.
    observed: Option<(Record, Instant)>,
    /// When this replica last renewed (or acquired) the Lease.
    renewed: Option<Instant>,
    metrics: Metrics,
    leading: watch::Sender<bool>,
    until: Arc<std::sync::Mutex<Option<Instant>>>,
}

/// How one attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attempt {
    /// This replica holds the Lease now.
    Held,
    /// Another replica holds it.
    Other,
    /// The write lost a race (409): said nothing about who holds it.
    Raced,
}

/// What makes two Lease records the same for expiry: who holds it, and
/// when it was last renewed or taken.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Record {
    holder: String,
    /// The holder's own lease duration (1 s once released).
    duration_secs: i32,
    renew: Option<Timestamp>,
    acquire: Option<Timestamp>,
    transitions: i32,
}

// === impl Leadership ===

impl Leadership {
    /// True while this replica holds the Lease and renewed it within the
    /// renew deadline.
    pub(crate) fn is_leader(&self) -> bool {
        *self.leading.borrow()
            && self
                .until
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .is_some_and(|u| Instant::now() < u)
    }

    /// Notified when leadership is gained or lost.
    pub(crate) fn changes(&self) -> watch::Receiver<bool> {
        self.leading.clone()
    }
}

/// Runs leader election until `stop` turns true, then releases the Lease
/// if held.
pub(crate) fn spawn(
    client: Client,
    namespace: &str,
    identity: String,
    config: &config::LeaderElection,
    metrics: Metrics,
    mut stop: watch::Receiver<bool>,
) -> (Leadership, tokio::task::JoinHandle<()>) {
    let (leading, rx) = watch::channel(false);
    let until = Arc::new(std::sync::Mutex::new(None));
    let mut elector = Elector {
        api: Api::namespaced(client, namespace),
        namespace: namespace.to_owned(),
        name: config.lease_name.clone(),
        identity,
        duration: Duration::from_secs(config.lease_duration_secs),
        deadline: Duration::from_secs(config.renew_deadline_secs),
        observed: None,
        renewed: None,
        metrics,
        leading,
        until: Arc::clone(&until),
    };
    let retry = Duration::from_secs(config.retry_period_secs);
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(retry);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.wait_for(|s| *s) => break,
            }
            elector.attempt().await;
        }
        elector.release().await;
    });
    (Leadership { leading: rx, until }, task)
}

// === impl Elector ===

impl Elector {
    async fn attempt(&mut self) {
        let attempt = tokio::time::timeout(self.deadline, self.try_acquire_or_renew()).await;
        match attempt {
            Ok(Ok(Attempt::Held)) => {
                let now = Instant::now();
                self.renewed = Some(now);
                *self.lock_until() = Some(now + self.deadline);
                self.set_leading(true);
            }
            Ok(Ok(Attempt::Other)) => {
                self.renewed = None;
                self.set_leading(false);
            }
            // A leader's renewal that lost a race is tried again next
            // period, read afresh; leadership lasts to the renew deadline.
            Ok(Ok(Attempt::Raced)) => self.lost_if_late(),
            Ok(Err(trouble)) => {
                let what = format!("{}/{}", self.namespace, self.name);
                trouble.report(&self.metrics, "leases", "get/update", &what);
                self.lost_if_late();
            }
            Err(_) => self.lost_if_late(),
        }
    }

    /// A leader that has not renewed within the deadline stops at once.
    fn lost_if_late(&mut self) {
        if self.renewed.is_none_or(|r| r.elapsed() >= self.deadline) {
            self.renewed = None;
            self.set_leading(false);
        }
    }

    fn lock_until(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn set_leading(&mut self, leading: bool) {
        if !leading {
            *self.lock_until() = None;
        }
        let was = self.leading.send_replace(leading);
        self.metrics.mesh.leader.set(i64::from(leading));
        match (was, leading) {
            (false, true) => tracing::info!(
                lease = %self.name,
                identity = %self.identity,
                "leading: this replica writes the trust bundle and istiod's certificate"
            ),
            (true, false) => tracing::warn!(
                lease = %self.name,
                identity = %self.identity,
                "no longer leading: stopped writing; another replica takes over within the lease duration"
            ),
            (true, true) | (false, false) => {}
        }
    }

    /// client-go's tryAcquireOrRenew.
    async fn try_acquire_or_renew(&mut self) -> Result<Attempt, Trouble> {
        let now = Timestamp::now();
        let Some(lease) = self.api.get_opt(&self.name).await.map_err(Trouble::from)? else {
            return self.create(now).await;
        };
        let record = Record::of(&lease);
        let seen = match &self.observed {
            Some((r, at)) if *r == record => *at,
            _ => Instant::now(),
        };
        self.observed = Some((record.clone(), seen));
        let mine = record.holder == self.identity;
        let held_for = Duration::from_secs(u64::try_from(record.duration_secs).unwrap_or(0));
        if !record.holder.is_empty() && !mine && seen.elapsed() < held_for {
            return Ok(Attempt::Other);
        }
        let (acquire, transitions) = if mine {
            (record.acquire, record.transitions)
        } else {
            (Some(now), record.transitions.saturating_add(1))
        };
        let mut update = lease;
        update.spec = Some(LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: i32::try_from(self.duration.as_secs()).ok(),
            acquire_time: acquire.map(MicroTime),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        });
        match self
            .api
            .replace(&self.name, &PostParams::default(), &update)
            .await
        {
            Ok(written) => {
                self.observed = Some((Record::of(&written), Instant::now()));
                Ok(Attempt::Held)
            }
            // Someone else wrote it first: who holds it now is read next time.
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(Attempt::Raced),
            Err(e) => Err(e.into()),
        }
    }

    async fn create(&mut self, now: Timestamp) -> Result<Attempt, Trouble> {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(self.identity.clone()),
                lease_duration_seconds: i32::try_from(self.duration.as_secs()).ok(),
                acquire_time: Some(MicroTime(now)),
                renew_time: Some(MicroTime(now)),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        };
        match self.api.create(&PostParams::default(), &lease).await {
            Ok(written) => {
                self.observed = Some((Record::of(&written), Instant::now()));
                Ok(Attempt::Held)
            }
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(Attempt::Raced),
            Err(e) => Err(e.into()),
        }
    }

    /// Gives the Lease up on shutdown, so a successor need not wait out
    /// the lease duration (client-go's ReleaseOnCancel).
    async fn release(&mut self) {
        let was_leading = *self.leading.borrow();
        self.set_leading(false);
        if !was_leading {
            return;
        }
        let released = async {
            let Some(mut lease) = self.api.get_opt(&self.name).await? else {
                return Ok(());
            };
            if Record::of(&lease).holder != self.identity {
                return Ok(());
            }
            let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
            spec.holder_identity = Some(String::new());
            spec.lease_duration_seconds = Some(1);
            spec.renew_time = Some(MicroTime(Timestamp::now()));
            self.api
                .replace(&self.name, &PostParams::default(), &lease)
                .await
                .map(|_| ())
        };
        match tokio::time::timeout(self.deadline, released).await {
            Ok(Ok(())) => tracing::info!(lease = %self.name, "lease released"),
            Ok(Err(e)) => {
                tracing::warn!(lease = %self.name, error = %api::describe(&e), "lease not released; it expires by itself")
            }
            Err(_) => {
                tracing::warn!(lease = %self.name, "lease not released in time; it expires by itself")
            }
        }
    }
}

// === impl Record ===

impl Record {
    fn of(lease: &Lease) -> Self {
        let spec = lease.spec.clone().unwrap_or_default();
        Self {
            holder: spec.holder_identity.unwrap_or_default(),
            duration_secs: spec.lease_duration_seconds.unwrap_or(0),
            renew: spec.renew_time.map(|t| t.0),
            acquire: spec.acquire_time.map(|t| t.0),
            transitions: spec.lease_transitions.unwrap_or(0),
        }
    }
}
