//! TokenReview authentication against the in-process Kubernetes API server
//! of the tests, next to JWT authentication, in one process and one run:
//! warm-cache throughput (target: within 10% of JWT), cold-cache throughput,
//! and how many TokenReviews a burst of 10,000 CSRs from 100 workloads makes.
//!
//!     cargo bench --bench tokenreview

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
