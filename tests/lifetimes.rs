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
