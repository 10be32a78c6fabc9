//! The lines requests wait in before a back end (HSM sessions, Vault calls,
//! TokenReviews), read at scrape time: how deep each is, how long requests
//! waited and how many were turned away at their deadline — what tells an
//! operator "busy" apart from "down" during a storm.

use std::sync::{Arc, Mutex, PoisonError};

use castellan_signer::queue::QueueStats;
use prometheus::{
    Counter, CounterVec, IntCounterVec, IntGaugeVec, Opts,
    core::{Collector, Desc},
    proto::MetricFamily,
};

/// Each back end's queue by name, exported as one set of metrics. Clones
/// share everything: one is registered, others are told what to watch.
#[derive(Clone, Debug)]
pub struct Queues {
    queues: Arc<Mutex<Vec<Watched>>>,
    capacity: IntGaugeVec,
    in_use: IntGaugeVec,
    waiting: IntGaugeVec,
    admitted: IntCounterVec,
    turned_away: IntCounterVec,
    waited: CounterVec,
}

/// A queue's name (its metrics label) and its counters.
type Watched = (String, Arc<QueueStats>);

// === impl Queues ===

impl Queues {
    /// # Errors
    /// Only for a malformed metric name, a bug caught by the tests.
    pub fn new() -> Result<Self, prometheus::Error> {
        let opts = |name: &str, help: &str| Opts::new(name, help);
        let labels = &["queue"];
        Ok(Self {
            queues: Arc::default(),
            capacity: IntGaugeVec::new(
                opts(
                    "castellan_backend_queue_capacity",
                    "Calls a back end may have in progress at once, by queue.",
                ),
                labels,
            )?,
            in_use: IntGaugeVec::new(
                opts(
                    "castellan_backend_queue_in_use",
                    "Calls in progress (or handed to a signing thread), by queue.",
                ),
                labels,
            )?,
            waiting: IntGaugeVec::new(
                opts(
                    "castellan_backend_queue_waiting",
                    "Requests waiting for room, by queue.",
                ),
                labels,
            )?,
            admitted: IntCounterVec::new(
                opts(
                    "castellan_backend_queue_admitted_total",
                    "Requests given room, by queue.",
                ),
                labels,
            )?,
            turned_away: IntCounterVec::new(
                opts(
                    "castellan_backend_queue_turned_away_total",
                    "Requests whose deadline passed while they waited (answered \
                     RESOURCE_EXHAUSTED), by queue.",
                ),
                labels,
            )?,
            waited: CounterVec::new(
                opts(
                    "castellan_backend_queue_wait_seconds_total",
                    "Time admitted requests spent waiting, by queue; divided by \
                     admitted_total it is the mean wait.",
                ),
                labels,
            )?,
        })
    }

    /// Exports `stats` as `name`, replacing a queue of that name (a back end
    /// loaded again has a new one).
    pub fn watch(&self, name: &str, stats: Arc<QueueStats>) {
        let mut queues = self.queues.lock().unwrap_or_else(PoisonError::into_inner);
        match queues.iter_mut().find(|(n, _)| n == name) {
            Some(entry) => entry.1 = stats,
            None => queues.push((name.to_owned(), stats)),
        }
    }
}

impl Collector for Queues {
    fn desc(&self) -> Vec<&Desc> {
        [
            self.capacity.desc(),
            self.in_use.desc(),
            self.waiting.desc(),
            self.admitted.desc(),
            self.turned_away.desc(),
            self.waited.desc(),
        ]
        .concat()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        // Held while the values are copied, so two scrapes never interleave
        // the reset and the refill of a counter.
        let queues = self.queues.lock().unwrap_or_else(PoisonError::into_inner);
        for (name, stats) in queues.iter() {
            let labels = [name.as_str()];
            let as_i64 = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
            self.capacity
                .with_label_values(&labels)
                .set(as_i64(stats.capacity()));
            self.in_use
                .with_label_values(&labels)
                .set(as_i64(stats.in_use()));
            self.waiting
                .with_label_values(&labels)
                .set(as_i64(stats.waiting()));
            // The counts live in the queue; a counter here mirrors them.
            set_count(&self.admitted.with_label_values(&labels), stats.admitted());
            set_count(
                &self.turned_away.with_label_values(&labels),
                stats.turned_away(),
            );
            set_seconds(
                &self.waited.with_label_values(&labels),
                stats.waited().as_secs_f64(),
            );
        }
        [
            self.capacity.collect(),
            self.in_use.collect(),
            self.waiting.collect(),
            self.admitted.collect(),
            self.turned_away.collect(),
            self.waited.collect(),
        ]
        .concat()
    }
}

fn set_count(counter: &prometheus::IntCounter, value: u64) {
    counter.reset();
    counter.inc_by(value);
}

fn set_seconds(counter: &Counter, value: f64) {
    counter.reset();
    counter.inc_by(value);
}
