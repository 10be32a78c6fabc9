//! A bound on the calls in progress to one back end, with a line for the
//! rest that a request stands in only while its deadline
//! ([`crate::deadline`]) allows: a storm waits its turn instead of piling
//! onto an HSM, a Vault or an API server, and a request that cannot be
//! answered in time is told "busy" — never "down". Every queue counts what
//! it does, so an operator sees depth and waiting per back end.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore},
    time::Instant,
};

/// Admits at most `capacity` calls at once; the rest wait in line.
#[derive(Clone, Debug)]
pub struct Queue {
    slots: Arc<Semaphore>,
    stats: Arc<QueueStats>,
}

/// What a [`Queue`] has done, read by castellan's metrics at scrape time.
#[derive(Debug)]
pub struct QueueStats {
    capacity: usize,
    waiting: AtomicUsize,
    in_use: AtomicUsize,
    admitted: AtomicU64,
    turned_away: AtomicU64,
    waited_micros: AtomicU64,
}

/// A place in the queue, given back when dropped.
#[derive(Debug)]
pub struct Place {
    _permit: OwnedSemaphorePermit,
    stats: Arc<QueueStats>,
    waited: Duration,
}

/// Why no place was given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// Every place stayed taken until the request's deadline.
    Full,
    /// The queue was closed: its back end is going away.
    Closed,
}

// === impl Queue ===

impl Queue {
    /// A queue of `capacity` places (at least one).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            slots: Arc::new(Semaphore::new(capacity)),
            stats: Arc::new(QueueStats {
                capacity,
                waiting: AtomicUsize::new(0),
                in_use: AtomicUsize::new(0),
                admitted: AtomicU64::new(0),
                turned_away: AtomicU64::new(0),
                waited_micros: AtomicU64::new(0),
            }),
        }
    }

    /// Waits for a place until the current request's deadline (without
    /// one, until a place frees).
    ///
    /// # Errors
    /// [`Refused::Full`] when the deadline passes first.
    pub async fn enter(&self) -> Result<Place, Refused> {
        self.enter_until(crate::deadline::current()).await
    }

    /// As [`Queue::enter`], with the deadline given.
    ///
    /// # Errors
    /// As [`Queue::enter`].
    pub async fn enter_until(&self, deadline: Option<Instant>) -> Result<Place, Refused> {
        let stats = &self.stats;
        // Fast path: a free place costs no bookkeeping of waiting.
        if let Ok(permit) = Arc::clone(&self.slots).try_acquire_owned() {
            return Ok(self.admit(permit, Duration::ZERO));
        }
        let started = Instant::now();
        // Counted out on drop too: a request given up in line leaves it.
        let in_line = InLine::join(&stats.waiting);
        let acquire = Arc::clone(&self.slots).acquire_owned();
        let got = match deadline {
            Some(d) => match tokio::time::timeout_at(d, acquire).await {
                Ok(got) => got.map_err(|_| Refused::Closed),
                Err(_) => Err(Refused::Full),
            },
            None => acquire.await.map_err(|_| Refused::Closed),
        };
        drop(in_line);
        match got {
            Ok(permit) => Ok(self.admit(permit, started.elapsed())),
            Err(refused) => {
                if refused == Refused::Full {
                    stats.turned_away.fetch_add(1, Ordering::Relaxed);
                }
                Err(refused)
            }
        }
    }

    fn admit(&self, permit: OwnedSemaphorePermit, waited: Duration) -> Place {
        let stats = &self.stats;
        stats.in_use.fetch_add(1, Ordering::Relaxed);
        stats.admitted.fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(waited.as_micros()).unwrap_or(u64::MAX);
        stats.waited_micros.fetch_add(micros, Ordering::Relaxed);
        Place {
            _permit: permit,
            stats: Arc::clone(stats),
            waited,
        }
    }

    /// Refuses every waiting and future caller: the back end is going away.
    pub fn close(&self) {
        self.slots.close();
    }

    pub fn capacity(&self) -> usize {
        self.stats.capacity
    }

    /// The counters, shared: they keep counting after this is dropped.
    pub fn stats(&self) -> Arc<QueueStats> {
        Arc::clone(&self.stats)
    }
}

// === impl QueueStats ===

impl QueueStats {
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Requests standing in line now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Places taken now.
    pub fn in_use(&self) -> usize {
        self.in_use.load(Ordering::Relaxed)
    }

    /// Requests given a place, ever.
    pub fn admitted(&self) -> u64 {
        self.admitted.load(Ordering::Relaxed)
    }

    /// Requests whose deadline passed in line, ever.
    pub fn turned_away(&self) -> u64 {
        self.turned_away.load(Ordering::Relaxed)
    }

    /// Time the admitted requests spent in line, in total.
    pub fn waited(&self) -> Duration {
        Duration::from_micros(self.waited_micros.load(Ordering::Relaxed))
    }
}

// === impl Place ===

impl Place {
    /// How long the request stood in line for it: zero when a place was free.
    pub fn waited(&self) -> Duration {
        self.waited
    }
}

/// One request counted as waiting while it lives.
struct InLine<'a>(&'a AtomicUsize);

impl<'a> InLine<'a> {
    fn join(waiting: &'a AtomicUsize) -> Self {
        waiting.fetch_add(1, Ordering::Relaxed);
        Self(waiting)
    }
}

impl Drop for InLine<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        self.stats.in_use.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::time::Instant;

    use super::{Queue, Refused};

    #[tokio::test(start_paused = true)]
    async fn a_request_waits_for_a_place_while_its_deadline_allows() {
        let queue = Queue::new(1);
        let first = queue.enter_until(None).await.unwrap();
        let stats = queue.stats();
        assert_eq!((stats.in_use(), stats.waiting()), (1, 0));

        // The place frees after 2 s; a request with 3 s gets it.
        let release = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            drop(first);
        });
        let patient = queue
            .enter_until(Some(Instant::now() + Duration::from_secs(3)))
            .await
            .unwrap();
        release.await.unwrap();
        assert_eq!(stats.admitted(), 2);
        assert_eq!(stats.waited(), Duration::from_secs(2));
        assert_eq!(patient.waited(), Duration::from_secs(2));

        // With the place held, a request with 1 s is turned away at its
        // deadline, not before.
        let started = Instant::now();
        let refused = queue
            .enter_until(Some(Instant::now() + Duration::from_secs(1)))
            .await
            .unwrap_err();
        assert_eq!(refused, Refused::Full);
        assert_eq!(started.elapsed(), Duration::from_secs(1));
        assert_eq!((stats.turned_away(), stats.waiting()), (1, 0));
        drop(patient);
        assert_eq!(stats.in_use(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_abandoned_in_line_leaves_it() {
        let queue = Queue::new(1);
        let _held = queue.enter_until(None).await.unwrap();
        let stats = queue.stats();
        let waiting = tokio::spawn({
            let queue = queue.clone();
            async move { queue.enter_until(None).await.map(drop) }
        });
        tokio::task::yield_now().await;
        assert_eq!(stats.waiting(), 1);
        waiting.abort();
        let _ = waiting.await;
        assert_eq!(stats.waiting(), 0);
        queue.close();
        assert_eq!(queue.enter_until(None).await.unwrap_err(), Refused::Closed);
    }
}
