//! Remembers who a credential proved to be, so a workload renewing with the
//! same token, or many sidecars of one pod restarting at once, costs one
//! verification instead of one per request.
//!
//! Keys are SHA-256 digests of (cluster, token): the cache never holds a
//! token. Entries live until the credential expires or `max_age` passes,
//! whichever is first; concurrent misses on one key share one verification.

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use super::Error;
use crate::{clock::Clock, identity::Caller};
use aws_lc_rs::digest;
use prometheus::IntCounter;
use quick_cache::sync::Cache;

/// A verdict and how long it may be reused.
#[derive(Clone, Debug)]
struct Entry {
    verdict: Result<Arc<Caller>, Error>,
    until: SystemTime,
}

/// A dependency that is down is asked again at most this often per
/// credential, so a burst of retries does not become a burst of calls.
const UNAVAILABLE_REUSE: Duration = Duration::from_secs(1);

/// Bounded, expiring, single-flight cache of authentication verdicts.
#[derive(Debug)]
pub(super) struct VerdictCache {
    entries: Cache<[u8; 32], Entry>,
    max_age: Duration,
    negative_max_age: Duration,
    hits: IntCounter,
    misses: IntCounter,
    clock: Clock,
}

// === impl VerdictCache ===

impl VerdictCache {
    pub(super) fn new(
        capacity: usize,
        max_age: Duration,
        negative_max_age: Duration,
        hits: IntCounter,
        misses: IntCounter,
        clock: Clock,
    ) -> Self {
        Self {
            entries: Cache::new(capacity.max(1)),
            max_age,
            negative_max_age,
            hits,
            misses,
            clock,
        }
    }

    /// The cached verdict for `token` in `cluster`, or the result of
    /// `verify()`, which returns the caller and when its credential expires.
    /// Rejections are remembered only when `remember_rejections` (the verdict
    /// cost a remote call); an unavailable dependency is remembered for 1 s.
    ///
    /// A verification is the cold path and its future is large (a
    /// TokenReview's HTTP call): it is made and boxed only on a miss, so
    /// every request's future stays small (it is moved and allocated per
    /// request; 13 KB of it was this).
    pub(super) async fn get_or_verify<F>(
        &self,
        cluster: Option<&str>,
        token: &str,
        remember_rejections: bool,
        verify: impl FnOnce() -> F,
    ) -> Result<Arc<Caller>, Error>
    where
        F: Future<Output = super::Verdict>,
    {
        if self.max_age.is_zero() {
            return Box::pin(verify()).await.map(|(caller, _)| Arc::new(caller));
        }
        let key = key(cluster, token);
        match self.entries.get(&key) {
            Some(e) if e.until > self.clock.now() => {
                self.hits.inc();
                return e.verdict;
            }
            Some(_) => {
                self.entries.remove(&key);
            }
            None => {}
        }
        let verified_here = std::sync::atomic::AtomicBool::new(false);
        let entry = self
            .entries
            .get_or_insert_async(&key, async {
                verified_here.store(true, std::sync::atomic::Ordering::Relaxed);
                self.misses.inc();
                let verdict = Box::pin(verify()).await;
                let reuse = match &verdict {
                    Ok((_, expires)) => expires
                        .and_then(|t| t.duration_since(self.clock.now()).ok())
                        .map_or(self.max_age, |d| d.min(self.max_age)),
                    Err(Error::Unavailable { .. }) => UNAVAILABLE_REUSE,
                    // Busy says nothing about the credential: the next
                    // request asks again.
                    Err(Error::Busy { .. }) => Duration::ZERO,
                    Err(_) if remember_rejections => self.negative_max_age,
                    Err(_) => Duration::ZERO,
                };
                Ok::<_, Error>(Entry {
                    verdict: verdict.map(|(caller, _)| Arc::new(caller)),
                    until: later(self.clock.now(), reuse),
                })
            })
            .await?;
        if !verified_here.load(std::sync::atomic::Ordering::Relaxed) {
            // Waited for a verification another request started: a hit.
            self.hits.inc();
        }
        entry.verdict
    }
}

/// `now + d`, or a far future for a `d` no clock can add (never a panic).
fn later(now: SystemTime, d: Duration) -> SystemTime {
    now.checked_add(d)
        .or_else(|| now.checked_add(Duration::from_secs(365 * 24 * 3600)))
        .unwrap_or(now)
}

fn key(cluster: Option<&str>, token: &str) -> [u8; 32] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(cluster.unwrap_or("").as_bytes());
    ctx.update(&[0]);
    ctx.update(token.as_bytes());
    let mut out = [0; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::{clock::ManualClock, identity::ServiceAccount};

    fn caller() -> Caller {
        let sa = ServiceAccount {
            namespace: "apps".into(),
            name: "web".into(),
        };
        Caller {
            identity: sa
                .spiffe_id(&spiffe::TrustDomain::new("cluster.local").unwrap())
                .unwrap(),
            service_account: sa,
            pod: None,
            cluster_id: None,
            authenticator: "test",
        }
    }

    #[tokio::test]
    async fn a_verdict_lives_until_its_token_expires_on_castellans_clock() {
        let start = SystemTime::now();
        let (manual, clock) = ManualClock::starting_at(start);
        let cache = VerdictCache::new(
            10,
            Duration::from_secs(300),
            Duration::from_secs(10),
            IntCounter::new("h", "h").unwrap(),
            IntCounter::new("m", "m").unwrap(),
            clock,
        );
        let verified = AtomicUsize::new(0);
        let ask = || async {
            cache
                .get_or_verify(None, "token", true, || async {
                    verified.fetch_add(1, Ordering::Relaxed);
                    Ok((caller(), Some(start + Duration::from_secs(100))))
                })
                .await
                .unwrap()
        };
        ask().await;
        manual.advance(Duration::from_secs(99));
        ask().await;
        assert_eq!(
            verified.load(Ordering::Relaxed),
            1,
            "reused while the token lives"
        );
        manual.advance(Duration::from_secs(2));
        ask().await;
        assert_eq!(
            verified.load(Ordering::Relaxed),
            2,
            "verified again once it expired"
        );
        // Hours later the max age bounds a token that lives for days.
        manual.advance(Duration::from_secs(3 * 3600));
        ask().await;
        assert_eq!(verified.load(Ordering::Relaxed), 3);
    }
}
