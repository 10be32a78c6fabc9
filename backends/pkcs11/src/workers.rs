//! One thread per pooled session, fed from a bounded queue: a signature never
//! waits for a thread to be woken or spawned while others are queued, and a
//! busy worker takes the next job without sleeping. Measured: the thread
//! hand-offs of a general blocking pool cost more CPU than SoftHSM's own
//! signing. When the queue is full a request waits for room while it can
//! still be answered within its deadline (`castellan_signer::deadline`),
//! then is told the HSM is busy — never that it is down; a queued job whose
//! deadline has passed is not signed. The threads are joined when this is
//! dropped, so no thread is inside the PKCS#11 library when the process
//! exits or the module is finalized.

use std::{sync::Arc, thread::JoinHandle, time::Duration};

use castellan_signer::queue::{Place, Queue, QueueStats, Refused};
use tokio::{sync::oneshot, time::Instant};

use crate::{Error, Pkcs11Key, QUEUE_PER_SESSION};

struct Job {
    tbs: Vec<u8>,
    reply: oneshot::Sender<Result<(Vec<u8>, u64), Error>>,
    /// Not signed after this: nobody waits for it any more.
    deadline: Option<std::time::Instant>,
    /// Its place in the queue, given back once it is signed.
    _place: Place,
}

/// The signing threads of one key.
pub struct Workers {
    /// `None` once dropping: closing the queue is what stops the threads.
    jobs: Option<crossbeam_channel::Sender<Job>>,
    threads: Vec<JoinHandle<()>>,
    /// Places for signatures queued or being signed: a request waits for
    /// one, up to its deadline.
    queue: Queue,
}

// === impl Workers ===

impl Workers {
    /// Starts one thread per session of `key`'s pool.
    ///
    /// # Errors
    /// When the operating system refuses a thread.
    pub fn start(key: Arc<Pkcs11Key>) -> Result<Self, Error> {
        let capacity = key.pool_size().saturating_mul(QUEUE_PER_SESSION);
        let (jobs, queue) = crossbeam_channel::bounded::<Job>(capacity);
        let mut workers = Self {
            jobs: Some(jobs),
            threads: Vec::with_capacity(key.pool_size()),
            queue: Queue::new(capacity),
        };
        for n in 0..key.pool_size() {
            let (key, queue) = (Arc::clone(&key), queue.clone());
            let thread = std::thread::Builder::new()
                .name(format!("castellan-hsm-{n}"))
                .spawn(move || {
                    // A receiver spins briefly before it parks, so under load
                    // the next job is taken without a round trip through the
                    // scheduler; the loop ends when the queue is closed.
                    while let Ok(job) = queue.recv() {
                        if job.deadline.is_some_and(|d| std::time::Instant::now() >= d) {
                            // Its request has been answered already.
                            continue;
                        }
                        let _ = job.reply.send(key.sign(&job.tbs));
                    }
                })
                .map_err(|e| Error::Unavailable(format!("cannot start a signing thread: {e}")));
            // On failure `workers` is dropped here, joining the threads
            // already started.
            workers.threads.push(thread?);
        }
        Ok(workers)
    }

    /// Signs `tbs` on one of the key's threads; returns the signature and
    /// which lookup of the key made it.
    ///
    /// # Errors
    /// As [`Pkcs11Key::sign`]; [`Error::Busy`] when the request's deadline
    /// passes before a session gets to it.
    pub async fn sign(&self, tbs: Vec<u8>) -> Result<(Vec<u8>, u64), Error> {
        let deadline = castellan_signer::deadline::current();
        let busy = || {
            Error::Busy(format!(
                "all {} sessions are signing and {} signatures wait; the request's deadline \
                 would pass first (raise signer.pkcs11.pool_size, or add replicas)",
                self.threads.len(),
                self.queue.capacity()
            ))
        };
        let place = self
            .queue
            .enter_until(deadline)
            .await
            .map_err(|refused| match refused {
                Refused::Full => busy(),
                Refused::Closed => Error::Unavailable("the signing threads have stopped".into()),
            })?;
        let (reply, answer) = oneshot::channel();
        let jobs = self
            .jobs
            .as_ref()
            .ok_or_else(|| Error::Unavailable("the signing threads have stopped".into()))?;
        let job = Job {
            tbs,
            reply,
            deadline: deadline.map(|d| d.into_std()),
            _place: place,
        };
        jobs.try_send(job).map_err(|e| match e {
            // A place was taken: the channel cannot be full; said as busy.
            crossbeam_channel::TrySendError::Full(_) => busy(),
            crossbeam_channel::TrySendError::Disconnected(_) => {
                Error::Unavailable("the signing threads have stopped".into())
            }
        })?;
        match deadline {
            Some(d) => tokio::time::timeout_at(d, answer)
                .await
                .map_err(|_| busy())?,
            None => answer.await,
        }
        .map_err(|_| busy_or_stopped(deadline))?
    }

    /// The queue's counters, for castellan's metrics.
    pub fn queue(&self) -> Arc<QueueStats> {
        self.queue.stats()
    }
}

/// A reply dropped without an answer: the job was skipped for its deadline,
/// or its thread stopped.
fn busy_or_stopped(deadline: Option<Instant>) -> Error {
    if deadline.is_some_and(|d| Instant::now() + Duration::from_millis(1) >= d) {
        Error::Busy("the request's deadline passed before a session got to it".into())
    } else {
        Error::Unavailable("a signing thread stopped".into())
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        // Queued jobs are still signed; then each thread sees the closed
        // queue and returns.
        self.queue.close();
        self.jobs = None;
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

impl std::fmt::Debug for Workers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workers")
            .field("threads", &self.threads.len())
            .field("capacity", &self.queue.capacity())
            .finish()
    }
}
