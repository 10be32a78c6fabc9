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

use aws_lc_rs::digest;
use prometheus::IntCounter;
use quick_cache::sync::Cache;
use tokio::time::Instant;

use super::Error;
use crate::identity::Caller;

/// A verified caller and how long the verdict may be reused.
#[derive(Clone, Debug)]
struct Entry {
    caller: Arc<Caller>,
    until: Instant,
}

/// Bounded, expiring, single-flight cache of authentication verdicts.
#[derive(Debug)]
pub(super) struct VerdictCache {
    entries: Cache<[u8; 32], Entry>,
    max_age: Duration,
    hits: IntCounter,
    misses: IntCounter,
}

// === impl VerdictCache ===

impl VerdictCache {
    pub(super) fn new(
        capacity: usize,
        max_age: Duration,
        hits: IntCounter,
        misses: IntCounter,
    ) -> Self {
        Self {
            entries: Cache::new(capacity.max(1)),
            max_age,
            hits,
            misses,
        }
    }

    /// The cached caller for `token` in `cluster`, or the result of
    /// `verify`, which returns the caller and when its credential expires.
    pub(super) async fn get_or_verify(
        &self,
        cluster: Option<&str>,
        token: &str,
        verify: impl Future<Output = Result<(Caller, Option<SystemTime>), Error>>,
    ) -> Result<Arc<Caller>, Error> {
        if self.max_age.is_zero() {
            return verify.await.map(|(caller, _)| Arc::new(caller));
        }
        let key = key(cluster, token);
        let now = Instant::now();
        match self.entries.get(&key) {
            Some(e) if e.until > now => {
                self.hits.inc();
                return Ok(e.caller);
            }
            Some(_) => {
                self.entries.remove(&key);
            }
            None => {}
        }
        let max_age = self.max_age;
        let misses = &self.misses;
        let entry = self
            .entries
            .get_or_insert_async(&key, async move {
                misses.inc();
                let (caller, expires) = verify.await?;
                let left = expires
                    .and_then(|t| t.duration_since(SystemTime::now()).ok())
                    .map_or(max_age, |d| d.min(max_age));
                Ok::<_, Error>(Entry {
                    caller: Arc::new(caller),
                    until: Instant::now() + left,
                })
            })
            .await?;
        Ok(entry.caller)
    }
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
