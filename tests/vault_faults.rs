//! The Vault signer when Vault misbehaves under castellan: tokens that run
//! out under load, a sealed server, a restarted (emptied) server.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use serde_json::json;
use tonic::Code;

use crate::{
    support::{
        TestCa,
        bao::Bao,
        csr, eventually, http_get, id,
        pki::{Ca, KeyAlg as Alg},
    },
    vault::{pki_ca, verify},
};

/// Requests in a loop until told to stop; counts successes and failures.
fn load(
    ca: Arc<TestCa>,
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let (_, csr) = csr::ztunnel(&id("ns", "sa"));
        while !stop.load(Ordering::SeqCst) {
            match ca.send(&csr, "ns", "sa", 600).await {
                Ok(_) => ok.fetch_add(1, Ordering::SeqCst),
                Err(s) => {
                    eprintln!("failed: {s:?}");
                    failed.fetch_add(1, Ordering::SeqCst)
                }
            };
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_tokens_are_renewed_then_replaced_by_a_new_login_without_a_failed_request() {
    castellan_testkit::require!(castellan_testkit::tools::Tool::OpenBao);
    let bao = Bao::start().await;
    bao.policy().await;
    let dir = tempfile::tempdir().unwrap();
    let root = Ca::root("Offline Root", Alg::EcP256);
    bao.pki(&root, json!({})).await;
    // Tokens live 3 s, and at most 8 s: renewals, then re-logins.
    let (role_id, secret_id) = bao.approle(dir.path(), "3s", "8s").await;
    let auth = format!(
        "method = \"approle\"\nrole_id_file = \"{}\"\nsecret_id_file = \"{}\"",
        role_id.display(),
        secret_id.display()
    );
    let ca = Arc::new(pki_ca(&bao, root, dir.path(), &auth).await);
    let (stop, ok, failed) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let task = load(ca.clone(), stop.clone(), ok.clone(), failed.clone());
    // Every token that ever existed during the run (expired ones vanish from the list).
    let mut seen = std::collections::HashSet::new();
    for _ in 0..28 {
        let list = bao
            .api(
                reqwest::Method::from_bytes(b"LIST").unwrap(),
                "auth/token/accessors",
                None,
            )
            .await;
        for a in list["data"]["keys"].as_array().unwrap() {
            seen.insert(a.as_str().unwrap().to_owned());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    stop.store(true, Ordering::SeqCst);
    task.await.unwrap();
    assert_eq!(
        failed.load(Ordering::SeqCst),
        0,
        "no request failed while tokens came and went"
    );
    assert!(ok.load(Ordering::SeqCst) > 100);
    // The root token plus at least two castellan logins (8 s max TTL in 14 s).
    assert!(
        seen.len() >= 3,
        "castellan logged in again at max TTL: {} tokens seen",
        seen.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sealed_vault_is_unavailable_and_unsealing_recovers() {
    castellan_testkit::require!(castellan_testkit::tools::Tool::OpenBao);
    let bao = Bao::start().await;
    bao.policy().await;
    let dir = tempfile::tempdir().unwrap();
    let root = Ca::root("Offline Root", Alg::EcP256);
    bao.pki(&root, json!({})).await;
    let token = bao.token_file(dir.path(), "1h").await;
    let ca = pki_ca(
        &bao,
        root,
        dir.path(),
        &format!("method = \"token\"\ntoken_file = \"{}\"", token.display()),
    )
    .await;
    let (_, csr) = csr::ztunnel(&id("ns", "sa"));
    ca.send(&csr, "ns", "sa", 600).await.unwrap();

    bao.seal().await;
    let s = ca.send(&csr, "ns", "sa", 600).await.unwrap_err();
    assert_eq!(s.code(), Code::Unavailable, "{s:?}");
    let unready = eventually(Duration::from_secs(5), async || {
        http_get(&format!("{}/readyz", ca.metrics_url())).await.0 == 503
    })
    .await;
    assert!(unready, "/readyz follows Vault");

    bao.unseal().await;
    let back = eventually(Duration::from_secs(10), async || {
        ca.send(&csr, "ns", "sa", 600).await.is_ok()
    })
    .await;
    assert!(back, "recovers by itself once unsealed");
    let ready = eventually(Duration::from_secs(5), async || {
        http_get(&format!("{}/readyz", ca.metrics_url())).await.0 == 200
    })
    .await;
    assert!(ready);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_vault_is_picked_up_once_set_up_again() {
    castellan_testkit::require!(castellan_testkit::tools::Tool::OpenBao);
    let mut bao = Bao::start().await;
    bao.policy().await;
    let dir = tempfile::tempdir().unwrap();
    let root = Ca::root("Offline Root", Alg::EcP256);
    let root_again = Ca {
        params: root.params.clone(),
        key: rcgen::KeyPair::from_pem(&root.key.serialize_pem()).unwrap(),
        pem: root.pem.clone(),
        der: root.der.clone(),
    };
    bao.pki(&root, json!({})).await;
    let token = bao.token_file(dir.path(), "1h").await;
    let ca = pki_ca(
        &bao,
        root,
        dir.path(),
        &format!("method = \"token\"\ntoken_file = \"{}\"", token.display()),
    )
    .await;
    let (_, csr) = csr::ztunnel(&id("ns", "sa"));
    ca.send(&csr, "ns", "sa", 600).await.unwrap();

    bao.kill();
    assert_eq!(
        ca.send(&csr, "ns", "sa", 600).await.unwrap_err().code(),
        Code::Unavailable
    );

    // Dev mode loses everything: the fixture runs again (a new intermediate
    // from the same offline root, a new token in the same file).
    bao.restart().await;
    bao.policy().await;
    bao.pki(&root_again, json!({})).await;
    bao.token_file(dir.path(), "1h").await;
    let back = eventually(Duration::from_secs(15), async || {
        ca.send(&csr, "ns", "sa", 600).await.is_ok()
    })
    .await;
    assert!(back, "recovers without a restart of castellan");
    let resp = ca.send(&csr, "ns", "sa", 600).await.unwrap();
    verify(&resp.cert_chain, &ca.root);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limiting_vault_is_busy_not_down() {
    castellan_testkit::require!(castellan_testkit::tools::Tool::OpenBao);
    let bao = Bao::start().await;
    bao.policy().await;
    let dir = tempfile::tempdir().unwrap();
    let token = bao.token_file(dir.path(), "1h").await;
    let root = Ca::root("Offline Root", Alg::EcP256);
    let cert = bao.transit(&root, "ecdsa-p256", dir.path()).await;
    let ca = Arc::new(
        TestCa::start_with(crate::support::Setup {
            signer: Some(format!(
                "[signer]\ntype = \"vault\"\naddress = \"{}\"\ntimeout_secs = 3\nmax_concurrent = 2\n\
                 [signer.auth]\nmethod = \"token\"\ntoken_file = \"{}\"\n\
                 [signer.transit]\nkey = \"castellan\"\ncert_file = \"{}\"\nroot_file = \"{}\"\n",
                bao.addr(),
                token.display(),
                cert.display(),
                dir.path().join("root.pem").display()
            )),
            server: "request_timeout_secs = 2".into(),
            root: Some(root),
            ..crate::support::Setup::default()
        })
        .await,
    );
    // Vault's own rate limit: 4 signatures a second, then 429.
    bao.post(
        "sys/quotas/rate-limit/transit",
        json!({"path": "transit/", "rate": 4, "interval": "1s"}),
    )
    .await;
    let mut tasks = Vec::new();
    for i in 0..30 {
        let ca = ca.clone();
        tasks.push(tokio::spawn(async move {
            let sa = format!("w{i}");
            let (_, csr) = csr::ztunnel(&id("ns", &sa));
            ca.send(&csr, "ns", &sa, 600).await
        }));
    }
    let (mut issued, mut busy) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => issued += 1,
            Err(s) if s.code() == Code::ResourceExhausted => {
                assert!(s.message().starts_with("signer busy"), "{s:?}");
                busy += 1;
            }
            Err(s) if s.code() == Code::DeadlineExceeded => {}
            Err(s) => panic!("a rate-limiting Vault answered as {s:?}"),
        }
    }
    assert!(issued >= 2, "{issued} issued");
    assert!(busy >= 5, "{busy} busy");
    // Busy is not down: castellan stays ready, and serves once Vault does.
    assert_eq!(ca.readyz().await, 200);
    bao.api(
        reqwest::Method::DELETE,
        "sys/quotas/rate-limit/transit",
        None,
    )
    .await;
    let (_, csr) = csr::ztunnel(&id("ns", "sa"));
    ca.send(&csr, "ns", "sa", 600).await.unwrap();
    let (_, text) = http_get(&format!("{}/metrics", ca.metrics_url())).await;
    assert!(
        text.contains("castellan_backend_queue_capacity{queue=\"signer\"} 2\n"),
        "{text}"
    );
    assert!(
        text.contains("castellan_backend_queue_in_use{queue=\"signer\"} 0\n"),
        "{text}"
    );
}
