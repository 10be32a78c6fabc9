//! The load: pre-made tokens and CSRs, sent over a fixed number of HTTP/2
//! connections by a fixed number of concurrent callers, latencies recorded.

use std::time::Duration;

use tokio::time::Instant;

use crate::cli::{
    KeyType,
    request::{connect, request_for, workload_csr},
    token::TokenIssuer,
};

/// What each caller sends: one (token, CSR) per identity.
#[derive(Debug)]
pub struct Work {
    pub tokens: Vec<String>,
    pub csrs: Vec<String>,
    /// (namespace, service account) of each token.
    pub identities: Vec<(String, String)>,
}

/// Where and how hard to drive the load.
#[derive(Debug)]
pub struct Plan {
    pub addr: String,
    pub root: Vec<u8>,
    pub connections: usize,
    pub concurrency: usize,
    pub warmup: Duration,
    pub duration: Duration,
}

/// What the load measured.
#[derive(Debug)]
pub struct Outcome {
    pub ok: u64,
    pub failed: u64,
    /// Milliseconds, sorted.
    latencies: Vec<f64>,
    elapsed: Duration,
    pub first_error: Option<String>,
}

impl Work {
    /// Mints a token and makes a CSR for each of `identities` workloads.
    ///
    /// # Errors
    /// When minting or key generation fails.
    pub async fn prepare(
        tokens: &TokenIssuer,
        key_type: KeyType,
        identities: usize,
    ) -> Result<Self, String> {
        let mut t = Vec::with_capacity(identities);
        let mut ids = Vec::with_capacity(identities);
        let mut tasks = Vec::with_capacity(identities);
        for i in 0..identities.max(1) {
            let (ns, sa) = (format!("bench-{}", i % 8), format!("workload-{i}"));
            ids.push((ns.clone(), sa.clone()));
            t.push(
                tokens
                    .mint(&ns, &sa, crate::config::DEFAULT_AUDIENCE, 3600)
                    .map_err(|e| e.to_string())?,
            );
            let id = format!("spiffe://cluster.local/ns/{ns}/sa/{sa}");
            tasks.push(tokio::task::spawn_blocking(move || {
                workload_csr(&id, key_type).map(|(_, csr)| csr)
            }));
        }
        let mut csrs = Vec::with_capacity(tasks.len());
        for task in tasks {
            csrs.push(
                task.await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| e.to_string())?,
            );
        }
        Ok(Self {
            tokens: t,
            csrs,
            identities: ids,
        })
    }
}

impl Outcome {
    /// Successful requests per second of the measured period.
    pub fn rps(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }

    /// The `p`th percentile latency in milliseconds (100 is the maximum).
    pub fn percentile(&self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return 0.0;
        }
        let rank = ((p / 100.0) * (self.latencies.len() - 1) as f64).round() as usize;
        self.latencies[rank.min(self.latencies.len() - 1)]
    }
}

/// Drives the load and collects latencies.
///
/// # Errors
/// When a connection cannot be made.
// Long: the load generator's measured loop: warm-up, the timed period and its counters share the connections.
pub async fn run(plan: &Plan, work: &Work) -> Result<Outcome, String> {
    let mut clients = Vec::with_capacity(plan.connections);
    for _ in 0..plan.connections {
        clients.push(connect(&plan.addr, None, &plan.root).await?);
    }
    let start = Instant::now();
    let measure_from = start + plan.warmup;
    let end = measure_from + plan.duration;
    let mut tasks = Vec::with_capacity(plan.concurrency);
    for caller in 0..plan.concurrency {
        let mut client = clients[caller % clients.len()].clone();
        let jobs: Vec<(String, String)> = (0..work.tokens.len())
            .map(|i| (i + caller) % work.tokens.len())
            .map(|i| (work.tokens[i].clone(), work.csrs[i].clone()))
            .collect();
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut failed, mut lat, mut first_error) = (0u64, 0u64, Vec::new(), None);
            let mut i = 0;
            loop {
                let now = Instant::now();
                if now >= end {
                    break;
                }
                let (token, csr) = &jobs[i % jobs.len()];
                i += 1;
                let Ok(req) = request_for(csr, 0, token, "Kubernetes") else {
                    continue;
                };
                let result = client.create_certificate(req).await;
                let done = Instant::now();
                if now < measure_from {
                    continue;
                }
                match result {
                    Ok(_) => {
                        ok += 1;
                        lat.push((done - now).as_secs_f64() * 1000.0);
                    }
                    Err(e) => {
                        failed += 1;
                        first_error
                            .get_or_insert_with(|| format!("{:?}: {}", e.code(), e.message()));
                    }
                }
            }
            (ok, failed, lat, first_error)
        }));
    }
    let mut outcome = Outcome {
        ok: 0,
        failed: 0,
        latencies: Vec::new(),
        elapsed: plan.duration,
        first_error: None,
    };
    for t in tasks {
        let (ok, failed, lat, err) = t.await.map_err(|e| e.to_string())?;
        outcome.ok += ok;
        outcome.failed += failed;
        outcome.latencies.extend(lat);
        if outcome.first_error.is_none() {
            outcome.first_error = err;
        }
    }
    outcome.latencies.sort_by(f64::total_cmp);
    Ok(outcome)
}
