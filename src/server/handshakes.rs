//! The TLS handshakes in progress, bounded, and which of them may give way.
//! In a storm (a node pool restarting: thousands of agents connecting at
//! once) every handshake is busy, and throwing one away only makes its
//! client come back later: so a new connection waits for a slot (in the
//! accept queue and the kernel's backlog) rather than evicting work in
//! progress. Only a handshake that has stalled — castellan waiting on the
//! client, with no byte from it for [`STALL`] — may be evicted for a newer
//! one, so a flood of idle connections still cannot keep a real client out.

use std::{
    collections::VecDeque,
    io,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    sync::{OwnedSemaphorePermit, Semaphore, oneshot},
    time::Instant,
};

/// A handshake waiting this long on its client, with no byte from it, has
/// stalled (an idle connection, a client gone).
pub(super) const STALL: Duration = Duration::from_secs(2);

/// What a handshake's reads say about it: since when castellan has been
/// waiting on the client without a byte (0: not waiting), in milliseconds
/// from `epoch`.
#[derive(Debug)]
pub(super) struct Progress {
    epoch: Instant,
    waiting_since_ms: AtomicU64,
}

impl Progress {
    fn new(epoch: Instant) -> Self {
        Self {
            epoch,
            waiting_since_ms: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    fn read_pending(&self) {
        let _ = self.waiting_since_ms.compare_exchange(
            0,
            self.now_ms(),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    fn read_data(&self) {
        self.waiting_since_ms.store(0, Ordering::Relaxed);
    }

    /// When it will count as stalled, if it is waiting on its client.
    fn stalls_at(&self) -> Option<Instant> {
        match self.waiting_since_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(self.epoch + Duration::from_millis(ms) + STALL),
        }
    }
}

/// A connection whose reads are watched while it handshakes.
#[derive(Debug)]
pub(super) struct Watched<S> {
    inner: S,
    progress: Arc<Progress>,
}

impl<S> Watched<S> {
    pub(super) fn new(inner: S, progress: Arc<Progress>) -> Self {
        Self { inner, progress }
    }

    pub(super) fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        match &polled {
            Poll::Pending => self.progress.read_pending(),
            Poll::Ready(_) if buf.filled().len() > before => self.progress.read_data(),
            Poll::Ready(_) => {}
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// One handshake in progress.
#[derive(Debug)]
struct Entry {
    evict: oneshot::Sender<()>,
    progress: Arc<Progress>,
}

/// The handshakes in progress: at most `max` at once.
#[derive(Debug)]
pub(super) struct Pending {
    slots: Arc<Semaphore>,
    max: usize,
    epoch: Instant,
    /// Oldest first; entries of finished handshakes are closed and pruned.
    running: VecDeque<Entry>,
}

/// A slot for one handshake: held while it runs; `evicted` fires if it
/// stalled and a newer connection took its place.
#[derive(Debug)]
pub(super) struct Admitted {
    pub(super) slot: OwnedSemaphorePermit,
    pub(super) evicted: oneshot::Receiver<()>,
    pub(super) progress: Arc<Progress>,
}

impl Pending {
    pub(super) fn new(max: usize) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(max)),
            max,
            epoch: Instant::now(),
            running: VecDeque::with_capacity(max),
        }
    }

    /// Waits for a slot: a free one, or one a stalled handshake gives up.
    /// Never evicts a handshake that is making progress.
    pub(super) async fn admit(&mut self) -> Admitted {
        let slot = loop {
            self.running.retain(|e| !e.evict.is_closed());
            if let Ok(p) = Arc::clone(&self.slots).try_acquire_owned() {
                break p;
            }
            let now = Instant::now();
            if let Some(i) = self
                .running
                .iter()
                .position(|e| e.progress.stalls_at().is_some_and(|t| t <= now))
                && let Some(stalled) = self.running.remove(i)
            {
                // Its task gives its slot back when it sees the eviction.
                let _ = stalled.evict.send(());
                continue;
            }
            let next_stall = self
                .running
                .iter()
                .filter_map(|e| e.progress.stalls_at())
                .min()
                .unwrap_or(now + STALL);
            tokio::select! {
                p = Arc::clone(&self.slots).acquire_owned() => match p {
                    Ok(p) => break p,
                    Err(_) => continue,
                },
                () = tokio::time::sleep_until(next_stall) => {}
            }
        };
        let (evict, evicted) = oneshot::channel();
        let progress = Arc::new(Progress::new(self.epoch));
        if self.running.len() >= self.max.saturating_mul(2) {
            self.running.retain(|e| !e.evict.is_closed());
        }
        self.running.push_back(Entry {
            evict,
            progress: Arc::clone(&progress),
        });
        Admitted {
            slot,
            evicted,
            progress,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_busy_handshake_is_never_evicted_a_stalled_one_is() {
        let mut pending = Pending::new(2);
        let a = pending.admit().await;
        let b = pending.admit().await;
        // a's task gives its slot back when it is evicted, as the accept
        // loop's tasks do.
        let Admitted {
            slot: a_slot,
            evicted: a_evicted,
            progress: a_progress,
        } = a;
        let a_task = tokio::spawn(async move {
            let evicted = a_evicted.await.is_ok();
            drop(a_slot);
            evicted
        });
        // Both busy (castellan computing, or data arriving): a third waits,
        // however long.
        b.progress.read_data();
        let third = tokio::time::timeout(Duration::from_secs(30), pending.admit()).await;
        assert!(third.is_err(), "no slot taken from a handshake in progress");
        // a now waits on its client with no byte: past STALL it gives way.
        a_progress.read_pending();
        let started = Instant::now();
        let third = tokio::time::timeout(Duration::from_secs(30), pending.admit())
            .await
            .expect("the stalled handshake gave way");
        assert!(started.elapsed() >= STALL);
        assert!(a_task.await.unwrap_or(false), "a was told it was evicted");
        drop((third, b));
    }

    #[test]
    fn reading_data_ends_waiting() {
        let p = Progress::new(Instant::now());
        assert!(p.stalls_at().is_none());
        p.read_pending();
        let first = p.stalls_at().unwrap();
        p.read_pending();
        assert_eq!(p.stalls_at(), Some(first), "the first wait counts");
        p.read_data();
        assert!(p.stalls_at().is_none());
    }
}
