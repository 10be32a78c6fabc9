//! Lifetimes at the edges: a request for a few seconds is raised to the
//! minimum, and near the intermediate's expiry castellan cuts lifetimes (and
//! says so), then refuses with UNAVAILABLE — never a certificate of a few
//! seconds — while the listener stays usable.

use std::time::{Duration, SystemTime};

use der::Decode;
use rustls_pki_types::{CertificateDer, pem::PemObject};
use tonic::Code;
use x509_cert::Certificate;

use crate::support::{
    Setup, TestCa, csr, id,
    pki::{Ca, KeyAlg},
};

fn not_after(chain: &[String]) -> SystemTime {
    let der = CertificateDer::from_pem_slice(chain[0].as_bytes()).unwrap();
    Certificate::from_der(&der)
        .unwrap()
        .tbs_certificate()
        .validity()
        .not_after
        .to_system_time()
}

#[tokio::test]
async fn a_few_seconds_are_raised_to_the_minimum_lifetime() {
    let ca = TestCa::start().await;
    let (_, csr) = csr::ztunnel(&id("ns", "sa"));
    let resp = ca.send(&csr, "ns", "sa", 1).await.unwrap();
    let life = not_after(&resp.cert_chain)
        .duration_since(SystemTime::now())
        .unwrap();
    assert!(
        (Duration::from_secs(590)..=Duration::from_secs(600)).contains(&life),
        "{life:?}: issuance.min_ttl_secs defaults to 600"
    );
    assert_eq!(ca.metric("castellan_ttl_clamped_count").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn near_the_intermediates_expiry_lifetimes_are_cut_then_refused() {
    let root = Ca::root("Test Root", KeyAlg::EcP256);
    let files = tempfile::tempdir().unwrap();
    let tls = TestCa::serving_files(&root, files.path());
    let ca = TestCa::start_with(Setup {
        root: Some(root),
        tls: Some(tls),
        intermediate_life: Some(Duration::from_secs(16)),
        issuance: "min_ttl_secs = 4\ndefault_ttl_secs = 8\nmax_ttl_secs = 8".into(),
        ..Setup::default()
    })
    .await;
    let expiry = ca.running.ca.current().facts().not_after;
    let left = || expiry.duration_since(SystemTime::now()).unwrap_or_default();
    let (_, csr) = csr::ztunnel(&id("ns", "sa"));

    // Plenty of life: the full lifetime.
    let resp = ca.send(&csr, "ns", "sa", 8).await.unwrap();
    assert!(not_after(&resp.cert_chain) < expiry);
    assert_eq!(ca.metric("castellan_lifetime_cut_count").await, 0.0);

    // Less than the lifetime asked for, more than the minimum: cut, counted.
    while left() > Duration::from_secs(7) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let resp = ca.send(&csr, "ns", "sa", 8).await.unwrap();
    assert_eq!(
        not_after(&resp.cert_chain),
        expiry,
        "never outlives its issuer"
    );
    assert_eq!(ca.metric("castellan_lifetime_cut_count").await, 1.0);

    // Below the minimum: refused, unready, never a certificate of seconds.
    while left() > Duration::from_millis(3500) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let s = ca.send(&csr, "ns", "sa", 8).await.unwrap_err();
    assert_eq!(s.code(), Code::Unavailable, "{s:?}");
    assert_eq!(ca.readyz().await, 503);

    // Expired: the listener (serving certificate from files) still answers,
    // with UNAVAILABLE.
    while left() > Duration::ZERO {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let s = ca.send(&csr, "ns", "sa", 8).await.unwrap_err();
    assert_eq!(s.code(), Code::Unavailable, "{s:?}");
    assert_eq!(ca.readyz().await, 503);
    assert_eq!(ca.metric("castellan_signer_healthy").await, 0.0);
}

/// Root → an enterprise CA ending in 16 s → castellan's intermediate (a
/// year) written as a file signer's material.
fn under_a_parent_ending_soon(dir: &std::path::Path, parent_life: Duration) -> (Ca, Ca) {
    let root = Ca::root("Test Root", KeyAlg::EcP256);
    let parent = root.intermediate("Enterprise CA", KeyAlg::EcP256, |p| {
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(1));
        p.not_after = time::OffsetDateTime::now_utc() + parent_life;
    });
    let int = parent.intermediate("Test Intermediate", KeyAlg::EcP256, |_| {});
    crate::support::pki::write_cacerts(&dir.join("ca"), &int, &[&int, &parent, &root], &root.pem);
    (root, parent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parent_ca_ending_first_ends_the_chain_leaves_are_cut_to_it_then_refused() {
    let files = tempfile::tempdir().unwrap();
    let (root, parent) = under_a_parent_ending_soon(files.path(), Duration::from_secs(16));
    let parent_end = Certificate::from_der(&parent.der)
        .unwrap()
        .tbs_certificate()
        .validity()
        .not_after
        .to_system_time();
    let tls = TestCa::serving_files(&root, &files.path().join("tls"));
    let ca = TestCa::start_with(Setup {
        root: Some(root),
        tls: Some(tls),
        signer: Some(format!(
            "[signer]\ntype = \"file\"\ndir = \"{}\"\n",
            files.path().join("ca").display()
        )),
        issuance: "min_ttl_secs = 4\ndefault_ttl_secs = 8\nmax_ttl_secs = 8".into(),
        ..Setup::default()
    })
    .await;
    let current = ca.running.ca.current();
    assert_eq!(
        current.not_after(),
        parent_end,
        "the chain ends with the parent"
    );
    assert_eq!(current.limit().subject, "CN=Enterprise CA");
    assert!(current.facts().not_after > parent_end + Duration::from_secs(86_400));
    let unix = |t: SystemTime| t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as f64;
    assert_eq!(
        ca.metric("citadel_server_cert_chain_expiry_timestamp")
            .await,
        unix(parent_end)
    );
    assert_eq!(
        ca.metric_with(
            "castellan_ca_certificate_expiry_timestamp",
            &[("position", "1"), ("subject", "CN=Enterprise CA")]
        )
        .await,
        unix(parent_end)
    );
    let out = crate::one_truth::run(&["check"], &ca.dir.path().join("castellan.toml"));
    let text = crate::one_truth::text(&out);
    assert!(
        text.contains("the chain ends earlier") && text.contains("`CN=Enterprise CA` above it"),
        "{text}"
    );
    let left = || {
        parent_end
            .duration_since(SystemTime::now())
            .unwrap_or_default()
    };
    let (_, csr) = csr::ztunnel(&id("ns", "sa"));
    while left() > Duration::from_secs(7) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let resp = ca.send(&csr, "ns", "sa", 8).await.unwrap();
    assert_eq!(
        not_after(&resp.cert_chain),
        parent_end,
        "a leaf never outlives any CA above it"
    );
    assert_eq!(ca.readyz().await, 200);
    while left() > Duration::from_millis(3500) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let s = ca.send(&csr, "ns", "sa", 8).await.unwrap_err();
    assert_eq!(s.code(), Code::Unavailable, "{s:?}");
    assert_eq!(ca.readyz().await, 503);
}

/// The same over twenty minutes, on the clock castellan reads: a server
/// started on a manual clock, moved forward by hand.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_minutes_of_a_parent_ca_on_an_injected_clock() {
    use castellan::clock::ManualClock;
    let files = tempfile::tempdir().unwrap();
    let (root, parent) = under_a_parent_ending_soon(files.path(), Duration::from_secs(20 * 60));
    let parent_end = Certificate::from_der(&parent.der)
        .unwrap()
        .tbs_certificate()
        .validity()
        .not_after
        .to_system_time();
    let tls = TestCa::serving_files(&root, &files.path().join("tls"));
    let written = crate::support::Files::write(Setup {
        root: Some(root),
        tls: Some(tls),
        signer: Some(format!(
            "[signer]\ntype = \"file\"\ndir = \"{}\"\n",
            files.path().join("ca").display()
        )),
        issuance: "min_ttl_secs = 120\ndefault_ttl_secs = 600\nmax_ttl_secs = 600".into(),
        ..Setup::default()
    });
    let config = castellan::config::Config::load(&written.config).unwrap();
    let (manual, clock) = ManualClock::starting_at(SystemTime::now());
    let running = castellan::server::start_with_clock(&config, clock)
        .await
        .unwrap();
    let addr = format!("https://localhost:{}", running.addr.port());
    let send = async || {
        let (_, csr) = csr::ztunnel(&id("ns", "sa"));
        let token = written.tokens.mint("ns", "sa", "istio-ca", 3600).unwrap();
        let req = castellan::cli::request::request_for(&csr, 600, &token, "Kubernetes").unwrap();
        castellan::cli::request::connect(&addr, None, written.root.pem.as_bytes())
            .await
            .unwrap()
            .create_certificate(req)
            .await
            .map(|r| r.into_inner().cert_chain)
    };
    let ready = async || {
        crate::support::http_get(&format!("http://{}/readyz", running.metrics_addr.unwrap()))
            .await
            .0
    };
    // At once: the full ten minutes.
    let first = send().await.unwrap();
    assert!(not_after(&first) < parent_end);
    // Fifteen minutes on: five are left, the leaf is cut to them.
    manual.advance(Duration::from_secs(15 * 60));
    assert_eq!(not_after(&send().await.unwrap()), parent_end);
    assert_eq!(ready().await, 200);
    // Nineteen minutes on: less than min_ttl left, refused and unready.
    manual.advance(Duration::from_secs(4 * 60));
    assert_eq!(send().await.unwrap_err().code(), Code::Unavailable);
    assert_eq!(ready().await, 503);
    running.kill();
}
