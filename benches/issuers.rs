//! What several issuers cost: the same load (64 identities over 8
//! namespaces, 4 connections × 64 streams, real TLS and gRPC) against a
//! castellan with one issuer and one with three (two `[[issuers]]` bound to
//! five of the namespaces), rounds paired and interleaved so both see the
//! same machine; the figure is the median of the paired ratios. Target: no
//! more than 3 % apart.
//!
//!     cargo bench --bench issuers
//!
//! With `BENCH_FIXED=<certificates>` and `BENCH_ISSUERS=1|3` it issues
//! exactly that many (64 callers over 4 connections) and exits: the whole
//! process's CPU time, timed from outside in pairs (one, three, one, …),
//! is the cost per certificate, steadier than a rate on shared cores.

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
use support::{
    Setup, TestCa,
    pki::{self, Ca, KeyAlg},
};

/// Rounds of a pair each, the order alternating (one–three, three–one) so
/// a machine slowing down or speeding up during the run favours neither.
const ROUNDS: usize = 10;
const SECONDS: u64 = 3;

/// An `[[issuers]]` entry with its own root and intermediate, from files.
fn issuer(dir: &std::path::Path, name: &str, namespaces: &str) -> String {
    let root = Ca::root(&format!("{name} Root"), KeyAlg::EcP256);
    let int = root.intermediate(&format!("{name} Intermediate"), KeyAlg::EcP256, |_| {});
    pki::write_cacerts(&dir.join(name), &int, &[&int, &root], &root.pem);
    format!(
        "[[issuers]]\nname = \"{name}\"\nnamespaces = {namespaces}\n[issuers.signer]\ntype = \"file\"\ndir = \"{}\"\n",
        dir.join(name).display()
    )
}

fn plan(ca: &TestCa) -> Plan {
    Plan {
        addr: ca.addr(),
        root: ca.root.pem.clone().into_bytes(),
        connections: 4,
        concurrency: 64,
        warmup: Duration::from_secs(1),
        duration: Duration::from_secs(SECONDS),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n.is_multiple_of(2) {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    } else {
        v[n / 2]
    }
}

/// A castellan with the main issuer alone, or with two `[[issuers]]` bound
/// to five of the eight namespaces the load comes from.
async fn castellan(dir: &std::path::Path, issuers: usize) -> TestCa {
    let extra = if issuers == 1 {
        String::new()
    } else {
        format!(
            "{}{}",
            issuer(dir, "tenant-a", "[\"bench-1\", \"bench-4\", \"bench-7\"]"),
            issuer(dir, "tenant-b", "[\"bench-2\", \"bench-5\"]")
        )
    };
    TestCa::start_with(Setup {
        extra,
        ..Setup::default()
    })
    .await
}

/// Issues exactly `count` certificates, 64 callers over 4 connections.
async fn fixed(ca: &TestCa, count: usize) {
    let work = Work::prepare(&ca.tokens, KeyType::EcP256, 64)
        .await
        .unwrap();
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(
            castellan::cli::request::connect(&ca.addr(), None, ca.root.pem.as_bytes())
                .await
                .unwrap(),
        );
    }
    let tasks: Vec<_> = (0..64)
        .map(|caller| {
            let mut client = clients[caller % 4].clone();
            let (token, csr) = (work.tokens[caller].clone(), work.csrs[caller].clone());
            tokio::spawn(async move {
                for _ in 0..count / 64 {
                    let req = castellan::cli::request::request_for(&csr, 0, &token, "Kubernetes")
                        .unwrap();
                    client.create_certificate(req).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    if let Ok(count) = std::env::var("BENCH_FIXED") {
        let issuers = std::env::var("BENCH_ISSUERS").map_or(1, |n| n.parse().unwrap());
        let ca = castellan(dir.path(), issuers).await;
        fixed(&ca, count.parse().unwrap()).await;
        return;
    }
    let one = castellan(dir.path(), 1).await;
    let three = castellan(dir.path(), 3).await;
    // The same identities and CSRs for both (each castellan trusts its own
    // token issuer, so each gets its own tokens for them).
    let work_one = Work::prepare(&one.tokens, KeyType::EcP256, 64)
        .await
        .unwrap();
    let work_three = Work::prepare(&three.tokens, KeyType::EcP256, 64)
        .await
        .unwrap();
    let namespaces: std::collections::BTreeSet<_> = work_one
        .identities
        .iter()
        .map(|(ns, _)| ns.clone())
        .collect();
    println!(
        "several issuers: {ROUNDS} interleaved rounds of {SECONDS} s, 4 connections x 64 streams, \
         64 identities in {} namespaces, P-256 file signers",
        namespaces.len()
    );
    let (mut r1, mut r3, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=ROUNDS {
        let mut pair = [
            ("one issuer", &one, &work_one, 0.0),
            ("three issuers", &three, &work_three, 0.0),
        ];
        let order = if round % 2 == 1 { [0, 1] } else { [1, 0] };
        for i in order {
            let (name, ca, work, rate) = &mut pair[i];
            let o = load::run(&plan(ca), work).await.unwrap();
            assert_eq!(o.failed, 0, "{name}: {:?}", o.first_error);
            println!(
                "round {round:>2}  {name:<14} {:>7.0} req/s  p50 {:>5.2} ms  p99 {:>5.2} ms",
                o.rps(),
                o.percentile(50.0),
                o.percentile(99.0)
            );
            *rate = o.rps();
        }
        r1.push(pair[0].3);
        r3.push(pair[1].3);
        ratios.push(pair[1].3 / pair[0].3);
    }
    let mut share = Vec::new();
    for issuer in ["default", "tenant-a", "tenant-b"] {
        let n = three
            .metric_with("castellan_issued_by_issuer_count", &[("issuer", issuer)])
            .await;
        share.push(format!("{issuer} {n:.0}"));
    }
    println!("three issuers' certificates: {}", share.join(", "));
    let (m1, m3) = (median(r1), median(r3));
    println!(
        "median: one issuer {m1:.0} req/s, three issuers {m3:.0} req/s; median of the \
         {ROUNDS} paired ratios three/one: {:+.1} % (target within 3 %)",
        (median(ratios) - 1.0) * 100.0
    );
}
