//! TokenReview authentication against the in-process Kubernetes API server
//! of the tests, next to JWT authentication, in one process and one run:
//! warm-cache throughput (target: within 10% of JWT), cold-cache throughput,
//! how many TokenReviews a burst of 10,000 CSRs from 100 workloads makes,
//! and a storm of 2,000 new agents (each a new token and a new TLS
//! connection) with castellan's bound on reviews in progress and without.
//!
//!     cargo bench --bench tokenreview
//!     BENCH_ONLY=storm cargo bench --bench tokenreview     (the storm alone)

#![allow(
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    missing_debug_implementations
)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::Duration;

use castellan::cli::{
    KeyType,
    bench::load::{self, Plan, Work},
};
use support::{Setup, TestCa, kube::FakeKube};

async fn tokenreview_ca(kube: &FakeKube, dir: &std::path::Path, cache: &str) -> TestCa {
    let kubeconfig = kube.kubeconfig(dir, &format!("bench{}", cache.len()));
    TestCa::start_with(Setup {
        authn_sections: Some(format!(
            "[[authn]]\ntype = \"tokenreview\"\nkubeconfig = \"{}\"\n",
            kubeconfig.display()
        )),
        extra: cache.to_owned(),
        ..Setup::default()
    })
    .await
}

async fn work_for(ca: &TestCa, kube: Option<&FakeKube>) -> Work {
    let work = Work::prepare(&ca.tokens, KeyType::EcP256, 100)
        .await
        .unwrap();
    if let Some(kube) = kube {
        for (token, (ns, sa)) in work.tokens.iter().zip(&work.identities) {
            kube.add_token(token, ns, sa, None);
        }
    }
    work
}

fn plan(ca: &TestCa, seconds: u64) -> Plan {
    Plan {
        addr: ca.addr(),
        root: ca.root.pem.clone().into_bytes(),
        connections: 4,
        concurrency: 64,
        warmup: Duration::from_secs(2),
        duration: Duration::from_secs(seconds),
    }
}

fn report(name: &str, o: &load::Outcome) {
    println!(
        "{name:<34} {:>7.0} req/s  p50 {:>6.2} ms  p99 {:>6.2} ms  ({} ok, {} failed)",
        o.rps(),
        o.percentile(50.0),
        o.percentile(99.0),
        o.ok,
        o.failed
    );
}

/// castellan with TokenReview allowing `bound` reviews at once.
async fn storm_ca(kube: &FakeKube, dir: &std::path::Path, bound: usize) -> TestCa {
    let kubeconfig = kube.kubeconfig(dir, &format!("storm{bound}"));
    TestCa::start_with(Setup {
        authn_sections: Some(format!(
            "[[authn]]\ntype = \"tokenreview\"\nkubeconfig = \"{}\"\nmax_concurrent = {bound}\n",
            kubeconfig.display()
        )),
        ..Setup::default()
    })
    .await
}

/// 2,000 agents at once, each with a new token on a new TLS connection,
/// against an API server taking `review` per TokenReview.
async fn storm(kube: &FakeKube, dir: &std::path::Path, bound: usize, review: Duration) {
    const AGENTS: usize = 2000;
    let ca = storm_ca(kube, dir, bound).await;
    let work = Work::prepare(&ca.tokens, KeyType::EcP256, AGENTS)
        .await
        .unwrap();
    for (token, (ns, sa)) in work.tokens.iter().zip(&work.identities) {
        kube.add_token(token, ns, sa, None);
    }
    kube.set_review_delay(review);
    let before = kube.reviews();
    let peak_before = kube.peak_concurrent_reviews();
    let started = std::time::Instant::now();
    let tasks: Vec<_> = work
        .tokens
        .iter()
        .zip(&work.csrs)
        .map(|(token, csr)| {
            let (addr, root) = (ca.addr(), ca.root.pem.clone());
            let (token, csr) = (token.clone(), csr.clone());
            tokio::spawn(async move {
                let mut client = castellan::cli::request::connect(&addr, None, root.as_bytes())
                    .await
                    .map_err(|e| format!("connect: {e}"))?;
                let req = castellan::cli::request::request_for(&csr, 3600, &token, "Kubernetes")?;
                client
                    .create_certificate(req)
                    .await
                    .map(|_| started.elapsed())
                    .map_err(|s| format!("{:?}", s.code()))
            })
        })
        .collect();
    let mut done = Vec::with_capacity(AGENTS);
    let mut failed = std::collections::BTreeMap::<String, usize>::new();
    for t in tasks {
        match t.await.unwrap() {
            Ok(at) => done.push(at),
            Err(code) => *failed.entry(code).or_default() += 1,
        }
    }
    let all = started.elapsed();
    done.sort();
    let at = |q: f64| {
        done.get(((done.len().max(1) - 1) as f64 * q) as usize)
            .map_or(0.0, |d| d.as_secs_f64() * 1e3)
    };
    let reviews = kube.reviews() - before;
    println!(
        "storm, authn.max_concurrent = {bound:>3}, {} ms per review: {} of {AGENTS} issued, turned away {failed:?}; \
         p50 {:.0} ms, p99 {:.0} ms, last {:.0} ms; {reviews} TokenReviews, at most {} at once at the API server, {:.0}/s",
        review.as_millis(),
        done.len(),
        at(0.5),
        at(0.99),
        at(1.0),
        kube.peak_concurrent_reviews().max(peak_before),
        reviews as f64 / all.as_secs_f64()
    );
    kube.set_review_delay(Duration::ZERO);
}

fn main() {
    let seconds: u64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        if std::env::var("BENCH_ONLY").as_deref() == Ok("storm") {
            // A fresh API server per run, so its peak counts this storm only.
            for bound in [32, 512] {
                let kube = FakeKube::start().await;
                storm(&kube, dir.path(), bound, Duration::from_millis(5)).await;
            }
            return;
        }
        let kube = FakeKube::start().await;
        println!("castellan authentication benchmark: P-256 CSRs, 100 workloads, 4 connections x 64 streams, {seconds} s");

        let jwt = TestCa::start().await;
        let jwt_work = work_for(&jwt, None).await;
        let jwt_out = load::run(&plan(&jwt, seconds), &jwt_work).await.unwrap();
        report("JWT (JWKS file), cached verdicts", &jwt_out);
        drop(jwt);

        let warm = tokenreview_ca(&kube, dir.path(), "").await;
        let warm_work = work_for(&warm, Some(&kube)).await;
        let before = kube.reviews();
        let warm_out = load::run(&plan(&warm, seconds), &warm_work).await.unwrap();
        report("TokenReview, warm cache", &warm_out);
        println!("  TokenReviews made: {}", kube.reviews() - before);
        println!("  warm TokenReview / JWT: {:.1}%", 100.0 * warm_out.rps() / jwt_out.rps());
        drop(warm);

        let cold = tokenreview_ca(&kube, dir.path(), "[authn_cache]\nmax_age_secs = 0\n").await;
        let cold_work = work_for(&cold, Some(&kube)).await;
        let before = kube.reviews();
        let cold_out = load::run(&plan(&cold, seconds), &cold_work).await.unwrap();
        report("TokenReview, no cache (cold)", &cold_out);
        println!("  TokenReviews made: {} (one per request)", kube.reviews() - before);
        drop(cold);

        // The burst: 10,000 CSRs from 100 workloads against a fresh cache.
        let burst = tokenreview_ca(&kube, dir.path(), "\n").await;
        let work = work_for(&burst, Some(&kube)).await;
        let before = kube.reviews();
        let started = std::time::Instant::now();
        let mut tasks = Vec::new();
        for caller in 0..64usize {
            let mut client = burst.client().await;
            let jobs: Vec<(String, String)> = (0..10_000usize)
                .filter(|n| n % 64 == caller)
                .map(|n| (work.tokens[n % 100].clone(), work.csrs[n % 100].clone()))
                .collect();
            tasks.push(tokio::spawn(async move {
                let mut failed = 0;
                for (token, csr) in jobs {
                    let req = castellan::cli::request::request_for(&csr, 0, &token, "Kubernetes").unwrap();
                    if client.create_certificate(req).await.is_err() {
                        failed += 1;
                    }
                }
                failed
            }));
        }
        let mut failed = 0;
        for t in tasks {
            failed += t.await.unwrap();
        }
        println!(
            "burst: 10,000 CSRs from 100 workloads in {:.2} s, {failed} failed: {} TokenReviews",
            started.elapsed().as_secs_f64(),
            kube.reviews() - before
        );
    });
}
