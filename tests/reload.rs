//! Hot reload of the signing material under load: a valid new set is swapped
//! in with no failed request; an invalid one is refused and the old one serves.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use der::Decode;
use rustls_pki_types::CertificateDer;
use x509_cert::Certificate;

use crate::support::{KeyAlg, TestCa, csr, eventually, http_get, id, issuer_of, pki};

/// The issuer of the certificate castellan presents on a new connection.
async fn serving_issuer(ca: &TestCa) -> String {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(ca.root.der.clone()))
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(ca.running.addr)
        .await
        .unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    Certificate::from_der(&leaf)
        .unwrap()
        .tbs_certificate()
        .issuer()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_intermediate_is_swapped_in_under_load_without_a_failed_request() {
    let ca = Arc::new(TestCa::start().await);
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut workers = Vec::new();
    for w in 0..4 {
        let (ca, stop, ok, failed) = (ca.clone(), stop.clone(), ok.clone(), failed.clone());
        workers.push(tokio::spawn(async move {
            let (_, csr) = csr::ztunnel(&id("ns", &format!("sa{w}")));
            let mut client = ca.client().await;
            let token = ca.token("ns", &format!("sa{w}"));
            let mut issuers = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let req =
                    castellan::cli::request::request_for(&csr, 600, &token, "Kubernetes").unwrap();
                match client.create_certificate(req).await {
                    Ok(r) => {
                        ok.fetch_add(1, Ordering::SeqCst);
                        issuers.push(issuer_of(&r.into_inner().cert_chain));
                    }
                    Err(e) => {
                        eprintln!("failed during reload: {e:?}");
                        failed.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
            issuers
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    let next = ca
        .root
        .intermediate("Next Intermediate", KeyAlg::EcP256, |_| {});
    pki::write_cacerts(&ca.ca_dir(), &next, &[&next, &ca.root], &ca.root.pem);
    let swapped = eventually(Duration::from_secs(5), async || {
        ca.running.ca.current().facts().subject.to_string() == "CN=Next Intermediate"
    })
    .await;
    assert!(swapped, "the new intermediate is picked up");

    // castellan's own serving certificate is reissued by the new intermediate.
    let reissued = eventually(Duration::from_secs(5), async || {
        serving_issuer(&ca).await == "CN=Next Intermediate"
    })
    .await;
    assert!(reissued, "the serving certificate follows the signing CA");
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);

    assert_eq!(failed.load(Ordering::SeqCst), 0, "no request failed");
    assert!(ok.load(Ordering::SeqCst) > 20);
    for w in workers {
        let seen = w.await.unwrap();
        assert_eq!(seen.first().unwrap(), "CN=Test Intermediate");
        // Once a worker saw the new issuer it never saw the old one again.
        let first_new = seen
            .iter()
            .position(|s| s == "CN=Next Intermediate")
            .unwrap();
        assert!(
            seen[first_new..]
                .iter()
                .all(|s| s == "CN=Next Intermediate")
        );
    }
}

#[tokio::test]
async fn invalid_new_material_is_refused_and_the_old_ca_keeps_serving() {
    let ca = TestCa::start().await;
    let (_, csr) = csr::ztunnel(&id("ns", "sa"));
    // A self-signed replacement: must be refused.
    let rogue = pki::Ca::root("Rogue", KeyAlg::EcP256);
    pki::write_cacerts(&ca.ca_dir(), &rogue, &[&rogue], &rogue.pem);
    let refused = eventually(Duration::from_secs(5), async || {
        let (_, m) = http_get(&format!("{}/metrics", ca.metrics_url())).await;
        m.contains("castellan_signer_reload_refused_count 1")
    })
    .await;
    assert!(refused, "the reload was refused");
    // Judged, logged and counted once per distinct content, not at every
    // re-check (reload_interval_secs = 1).
    let count = || async {
        let (_, m) = http_get(&format!("{}/metrics", ca.metrics_url())).await;
        m.lines()
            .find_map(|l| l.strip_prefix("castellan_signer_reload_refused_count "))
            .unwrap()
            .to_owned()
    };
    let settled = count().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        count().await,
        settled,
        "the same refused files were counted again"
    );
    let resp = ca.send(&csr, "ns", "sa", 600).await.unwrap();
    assert_eq!(issuer_of(&resp.cert_chain), "CN=Test Intermediate");
    assert_eq!(
        http_get(&format!("{}/readyz", ca.metrics_url())).await.0,
        200
    );

    // Fixing the files recovers without a restart.
    let fixed = ca
        .root
        .intermediate("Fixed Intermediate", KeyAlg::EcP256, |_| {});
    pki::write_cacerts(&ca.ca_dir(), &fixed, &[&fixed, &ca.root], &ca.root.pem);
    let recovered = eventually(Duration::from_secs(5), async || {
        let r = ca.send(&csr, "ns", "sa", 600).await.unwrap();
        issuer_of(&r.cert_chain) == "CN=Fixed Intermediate"
    })
    .await;
    assert!(recovered);
}
