//! Signing with a SoftHSM2 key: the raw `C_Sign` rate of the token with N
//! sessions, castellan's issuance rate through its PKCS#11 signer with a pool
//! of N sessions (certificate built, digest made, signed, DER-encoded), and
//! the end-to-end gRPC rate, all in one run. Raw and castellan alternate over
//! several rounds and the median share is reported.
//!
//!     scripts/bench-hsm.sh      (sets up SoftHSM, then `cargo bench --bench pkcs11`)

#![allow(
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    missing_debug_implementations
)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use castellan::{
    ca::{self, CaHandle, Rules},
    cli::{
        KeyType,
        bench::load::{self, Plan, Work},
    },
    config, csr,
    issuer::Issuer,
    policy::{self, Approved, TtlRules},
};
use cryptoki::{
    context::Pkcs11,
    mechanism::Mechanism,
    object::{Attribute, ObjectClass},
    session::UserType,
    slot::Slot,
    types::AuthPin,
};
use support::{Setup, TestCa, hsm, pki::Ca};

/// Alternating raw and castellan measurements, and the length of each.
const ROUNDS: usize = 5;
const ROUND: Duration = Duration::from_secs(2);

/// Sessions in castellan's pool and in the raw measurement (`BENCH_POOL`).
fn pool() -> usize {
    std::env::var("BENCH_POOL")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2)
}

/// `C_Sign` (CKM_ECDSA over a SHA-256 digest) per second with `threads`
/// sessions signing at once: the token's own ceiling.
fn raw_sign_rate(ctx: &Pkcs11, slot: Slot, threads: usize, each: Duration) -> f64 {
    let pin = AuthPin::new(hsm::PIN.into());
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (ctx, pin) = (ctx.clone(), pin.clone());
            std::thread::spawn(move || {
                let s = ctx.open_ro_session(slot).unwrap();
                let _ = s.login(UserType::User, Some(&pin));
                let key = s
                    .find_objects(&[
                        Attribute::Class(ObjectClass::PRIVATE_KEY),
                        Attribute::Label(b"ca-key".to_vec()),
                    ])
                    .unwrap()[0];
                let digest = [0x5a; 32];
                let start = Instant::now();
                let mut n = 0u64;
                while start.elapsed() < each {
                    s.sign(&Mechanism::Ecdsa, key, &digest).unwrap();
                    n += 1;
                }
                n as f64 / start.elapsed().as_secs_f64()
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).sum()
}

/// Certificates per second through castellan's issuer from `tasks` tasks.
async fn issue_rate(issuer: &Issuer, approved: &Approved, tasks: usize, each: Duration) -> f64 {
    let deadline = Instant::now() + each;
    let tasks: Vec<_> = (0..tasks)
        .map(|_| {
            let (issuer, approved) = (issuer.clone(), approved.clone());
            tokio::spawn(async move {
                let mut n = 0u64;
                while Instant::now() < deadline {
                    issuer.issue(&approved).await.unwrap();
                    n += 1;
                }
                n
            })
        })
        .collect();
    let start = Instant::now();
    let mut issued = 0;
    for t in tasks {
        issued += t.await.unwrap();
    }
    issued as f64 / start.elapsed().as_secs_f64()
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
        let pool = pool();
        let label = format!("bench-{}", std::process::id());
        hsm::token_with_key(&label, "EC:prime256v1");
        let files = tempfile::tempdir().unwrap();
        let root = Ca::root("HSM Bench Root", support::KeyAlg::EcP256);
        let signer = hsm::signer_files(files.path(), &label, &root, &format!("pool_size = {pool}"));
        println!("castellan PKCS#11 benchmark: SoftHSM2 P-256 key, pool of {pool} sessions, {seconds} s");

        // Kept open for the whole run: dropping the last handle would
        // finalize the module under castellan's feet.
        let (ctx, slot) = hsm::slot(&label);

        // castellan's issuing path with the HSM: build, hash, sign, encode.
        let config_text = format!("[server.tls]\ndns_names = [\"localhost\"]\n{signer}\n[[authn]]\ntype = \"jwt\"\nissuers = [\"x\"]\njwks_file = \"/dev/null\"\n");
        let config = config::Config::parse(&config_text, std::path::Path::new("bench.toml")).unwrap();
        let rules = Rules {
            trust_domain: config.trust_domain.clone(),
            default_ttl: Duration::from_secs(3600),
            min_ttl: Duration::from_secs(600),
            max_ttl: Duration::from_secs(86400),
            roots: None,
            counters: castellan::metrics::Metrics::new().unwrap().ca_counters(),
            waived: Vec::new(),
            trust: None,
            crl: None,
            clock: castellan::clock::Clock::system(),
        };
        let handle = Arc::new(CaHandle::load(ca::source(&config), rules).await.unwrap());
        let issuer = Issuer::new(handle, Duration::from_secs(120), Duration::from_secs(600));
        let (_, csr_pem) = support::csr::ztunnel(&support::id("bench", "w"));
        let verified = csr::verify(&csr_pem).unwrap();
        let id = spiffe::SpiffeId::new(support::id("bench", "w")).unwrap();
        let approved = policy::check(verified, &id, 3600, &TtlRules::from(&config.issuance)).unwrap();

        // Raw and castellan alternate, so a slow spell of this shared machine
        // weighs on both sides of a ratio rather than on one.
        let mut shares = Vec::new();
        for round in 1..=ROUNDS {
            let raw = tokio::task::spawn_blocking({
                let ctx = ctx.clone();
                move || raw_sign_rate(&ctx, slot, pool, ROUND)
            })
            .await
            .unwrap();
            let rate = issue_rate(&issuer, &approved, pool * 4, ROUND).await;
            shares.push(rate / raw);
            println!(
                "round {round}: raw C_Sign {raw:>7.0}/s, castellan issuance {rate:>7.0} certificates/s ({:.0}% of raw)",
                100.0 * rate / raw
            );
        }
        shares.sort_by(f64::total_cmp);
        println!(
            "castellan issuance / raw C_Sign, {pool} sessions: median {:.0}% (range {:.0}–{:.0}%)",
            100.0 * shares[shares.len() / 2],
            100.0 * shares[0],
            100.0 * shares[shares.len() - 1]
        );

        // End to end over gRPC/TLS, CSR verification and authentication included.
        let ca = TestCa::start_with(Setup {
            signer: Some(signer.clone()),
            root: Some(root),
            ..Setup::default()
        })
        .await;
        let work = Work::prepare(&ca.tokens, KeyType::EcP256, 64).await.unwrap();
        let plan = Plan {
            addr: ca.addr(),
            root: ca.root.pem.clone().into_bytes(),
            connections: 4,
            concurrency: 64,
            warmup: Duration::from_secs(2),
            duration: Duration::from_secs(seconds),
        };
        let out = load::run(&plan, &work).await.unwrap();
        println!(
            "end to end (gRPC, TLS, JWT, CSR checks):    {:>8.0} requests/s  p50 {:.2} ms  p99 {:.2} ms  ({} failed)",
            out.rps(),
            out.percentile(50.0),
            out.percentile(99.0),
            out.failed
        );
    });
}
