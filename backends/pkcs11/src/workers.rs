//! One thread per pooled session, fed from a queue: a signature never waits
//! for a thread to be woken or spawned while others are queued, and a busy
//! worker takes the next job without sleeping. Measured: the thread hand-offs
//! of a general blocking pool cost more CPU than SoftHSM's own signing.

use std::sync::Arc;

use tokio::sync::oneshot;

use crate::{Error, Pkcs11Key};

struct Job {
    tbs: Vec<u8>,
    reply: oneshot::Sender<Result<Vec<u8>, Error>>,
}

/// The signing threads of one key; they stop when this is dropped.
pub struct Workers {
    jobs: crossbeam_channel::Sender<Job>,
}

// === impl Workers ===

impl Workers {
    /// Starts one thread per session of `key`'s pool.
    ///
    /// # Errors
    /// When the operating system refuses a thread.
    pub fn start(key: Arc<Pkcs11Key>) -> Result<Self, Error> {
        let (jobs, queue) = crossbeam_channel::unbounded::<Job>();
        for n in 0..key.pool_size() {
            let (key, queue) = (Arc::clone(&key), queue.clone());
            std::thread::Builder::new()
                .name(format!("castellan-hsm-{n}"))
                .spawn(move || {
                    // A receiver spins briefly before it parks, so under load
                    // the next job is taken without a round trip through the
                    // scheduler; the loop ends when `Workers` is dropped.
                    while let Ok(job) = queue.recv() {
                        let _ = job.reply.send(key.sign(&job.tbs));
                    }
                })
                .map_err(|e| Error::Unavailable(format!("cannot start a signing thread: {e}")))?;
        }
        Ok(Self { jobs })
    }

    /// Signs `tbs` on one of the key's threads.
    ///
    /// # Errors
    /// As [`Pkcs11Key::sign`].
    pub async fn sign(&self, tbs: Vec<u8>) -> Result<Vec<u8>, Error> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Job { tbs, reply })
            .map_err(|_| Error::Unavailable("the signing threads have stopped".into()))?;
        answer
            .await
            .map_err(|_| Error::Unavailable("a signing thread stopped".into()))?
    }
}

impl std::fmt::Debug for Workers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workers").finish_non_exhaustive()
    }
}
