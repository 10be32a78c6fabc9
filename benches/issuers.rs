//! What several issuers cost: the same load (64 identities over 8
//! namespaces, 4 connections × 64 streams, real TLS and gRPC) against a
//! castellan with one issuer and one with three (two `[[issuers]]` bound to
//! five of the namespaces), rounds interleaved so both see the same
//! machine. Target: no more than 3 % apart.
//!
//!     cargo bench --bench issuers

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

const ROUNDS: usize = 5;
const SECONDS: u64 = 5;

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
    v[v.len() / 2]
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let one = TestCa::start_with(Setup::default()).await;
    let three = TestCa::start_with(Setup {
        extra: format!(
            "{}{}",
            issuer(
                dir.path(),
                "tenant-a",
                "[\"bench-1\", \"bench-4\", \"bench-7\"]"
            ),
            issuer(dir.path(), "tenant-b", "[\"bench-2\", \"bench-5\"]")
        ),
        ..Setup::default()
    })
    .await;
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
    let (mut r1, mut r3) = (Vec::new(), Vec::new());
    for round in 1..=ROUNDS {
        for (name, ca, work, rates) in [
            ("one issuer", &one, &work_one, &mut r1),
            ("three issuers", &three, &work_three, &mut r3),
        ] {
            let o = load::run(&plan(ca), work).await.unwrap();
            assert_eq!(o.failed, 0, "{name}: {:?}", o.first_error);
            println!(
                "round {round}  {name:<14} {:>7.0} req/s  p50 {:>5.2} ms  p99 {:>5.2} ms",
                o.rps(),
                o.percentile(50.0),
                o.percentile(99.0)
            );
            rates.push(o.rps());
        }
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
        "median: one issuer {m1:.0} req/s, three issuers {m3:.0} req/s: {:+.1} % (target within 3 %)",
        (m3 / m1 - 1.0) * 100.0
    );
}
