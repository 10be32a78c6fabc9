//! One thread per pooled session, fed from a bounded queue: a signature never
//! waits for a thread to be woken or spawned while others are queued, and a
//! busy worker takes the next job without sleeping. Measured: the thread
//! hand-offs of a general blocking pool cost more CPU than SoftHSM's own
//! signing. The threads are joined when this is dropped, so no thread is
//! inside the PKCS#11 library when the process exits or the module is
//! finalized.

use std::{sync::Arc, thread::JoinHandle};

use tokio::sync::oneshot;

use crate::{Error, Pkcs11Key, QUEUE_PER_SESSION};

struct Job {
    tbs: Vec<u8>,
    reply: oneshot::Sender<Result<(Vec<u8>, u64), Error>>,
}

/// The signing threads of one key.
pub struct Workers {
    /// `None` once dropping: closing the queue is what stops the threads.
    jobs: Option<crossbeam_channel::Sender<Job>>,
    threads: Vec<JoinHandle<()>>,
    capacity: usize,
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
            capacity,
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
    /// As [`Pkcs11Key::sign`]; [`Error::Unavailable`] when the queue is full.
    pub async fn sign(&self, tbs: Vec<u8>) -> Result<(Vec<u8>, u64), Error> {
        let (reply, answer) = oneshot::channel();
        let jobs = self
            .jobs
            .as_ref()
            .ok_or_else(|| Error::Unavailable("the signing threads have stopped".into()))?;
        jobs.try_send(Job { tbs, reply }).map_err(|e| match e {
            crossbeam_channel::TrySendError::Full(_) => Error::Unavailable(format!(
                "every HSM session is busy and {} signatures are queued",
                self.capacity
            )),
            crossbeam_channel::TrySendError::Disconnected(_) => {
                Error::Unavailable("the signing threads have stopped".into())
            }
        })?;
        answer
            .await
            .map_err(|_| Error::Unavailable("a signing thread stopped".into()))?
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        // Queued jobs are still signed; then each thread sees the closed
        // queue and returns.
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
            .field("capacity", &self.capacity)
            .finish()
    }
}
