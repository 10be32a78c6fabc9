//! The PKCS#11 signer against a real SoftHSM2 token: each key type end to
//! end, load across the session pool, and the faults an HSM has in life —
//! lost login, closed sessions, a token that goes away and comes back —
//! survived without a restart. Start-up mistakes are named.

use std::{sync::Arc, time::Duration};

use castellan::{config::Config, server};
use rustls_pki_types::{CertificateDer, UnixTime, pem::PemObject};
use tonic::Code;

use crate::{
    kubernetes::san,
    support::{
        Setup, TestCa, csr, eventually, hsm, http_get, id,
        pki::{Ca, KeyAlg},
    },
};

fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// A castellan signing with a fresh SoftHSM key of `key_type`.
async fn hsm_ca(key_type: &str, extra: &str) -> (TestCa, String, tempfile::TempDir) {
    hsm_ca_with(key_type, extra, "").await
}

/// As [`hsm_ca`], with `[server]` lines.
async fn hsm_ca_with(
    key_type: &str,
    extra: &str,
    server: &str,
) -> (TestCa, String, tempfile::TempDir) {
    let label = unique("ca");
    hsm::token_with_key(&label, key_type);
    let files = tempfile::tempdir().unwrap();
    let root = Ca::root("HSM Test Root", KeyAlg::EcP256);
    let signer = hsm::signer_files(files.path(), &label, &root, extra);
    let ca = TestCa::start_with(Setup {
        signer: Some(signer),
        root: Some(root),
        server: server.into(),
        ..Setup::default()
    })
    .await;
    (ca, label, files)
}

fn verify(chain: &[String], root: &Ca) {
    let leaf = CertificateDer::from_pem_slice(chain[0].as_bytes()).unwrap();
    let int = CertificateDer::from_pem_slice(chain[1].as_bytes()).unwrap();
    let root = CertificateDer::from(root.der.clone());
    let anchor = webpki::anchor_from_trusted_cert(&root).unwrap();
    webpki::EndEntityCert::try_from(&leaf)
        .unwrap()
        .verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &[anchor],
            &[int],
            UnixTime::now(),
            webpki::KeyUsage::client_auth(),
            None,
            None,
        )
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issues_with_p256_p384_and_rsa_keys_in_the_hsm() {
    castellan_testkit::require!(castellan_testkit::tools::Tool::SoftHsm);
    let _hsm = hsm::exclusive().await;
    for (key_type, extra) in [
        ("EC:prime256v1", ""),
        ("EC:secp384r1", ""),
        ("rsa:2048", ""),
        ("rsa:2048", "rsa_padding = \"pss\""),
    ] {
        let (ca, _, _files) = hsm_ca(key_type, extra).await;
        let (_, csr) = csr::ztunnel(&id("ns", "sa"));
        let chain = ca
            .send(&csr, "ns", "sa", 600)
            .await
            .unwrap_or_else(|s| panic!("{key_type} {extra}: {s:?}"));
        verify(&chain.cert_chain, &ca.root);
        ca.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_load_is_spread_over_the_session_pool() {
    castellan_testkit::require!(castellan_testkit::tools::Tool::SoftHsm);
    let _hsm = hsm::exclusive().await;
    let (ca, _, _files) = hsm_ca("EC:prime256v1", "pool_size = 3").await;
    let ca = Arc::new(ca);
    let mut tasks = Vec::new();
    for w in 0..12 {
        let ca = ca.clone();
        tasks.push(tokio::spawn(async move {
            let (_, csr) = csr::ztunnel(&id("load", &format!("w{w}")));
            let mut client = ca.client().await;
            let token = ca.token("load", &format!("w{w}"));
            for _ in 0..25 {
                let req =
                    castellan::cli::request::request_for(&csr, 600, &token, "Kubernetes").unwrap();
                // Answers from the pool's threads must each reach their own
                // caller, with a signature over that caller's certificate.
                let chain = client
                    .create_certificate(req)
                    .await
                    .unwrap()
                    .into_inner()
                    .cert_chain;
                verify(&chain, &ca.root);
                assert_eq!(san(&chain), [id("load", &format!("w{w}"))]);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let (_, m) = http_get(&format!("{}/metrics", ca.metrics_url())).await;
    assert!(
        m.contains("citadel_server_success_cert_issuance_count 300"),
        "{m}"
    );
    let Ok(ca) = Arc::try_unwrap(ca) else {
        panic!("every request has returned its handle")
    };
    ca.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_login_and_closed_sessions_are_repaired_in_place() {
    castellan_testkit::require!(castellan_testkit::tools::Tool::SoftHsm);
    let _hsm = hsm::exclusive().await;
    let (ca, label, _files) = hsm_ca("EC:prime256v1", "").await;
    let (_, csr) = csr::ztunnel(&id("ns", "sa"));
    ca.send(&csr, "ns", "sa", 600).await.unwrap();

    // Another client of the same module logs the application out.
    {
        let (ctx, slot) = hsm::slot(&label);
        let session = ctx.open_ro_session(slot).unwrap();
        session.logout().unwrap();
    }
    for _ in 0..3 {
        ca.send(&csr, "ns", "sa", 600)
            .await
            .expect("after a logout behind castellan's back");
    }

    // …and then closes every session, by finalizing and re-initialising the module.
    {
        use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
        let ctx = Pkcs11::new(hsm::module()).unwrap();
        ctx.clone().finalize().unwrap();
        ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
            .unwrap();
    }
    for _ in 0..3 {
        ca.send(&csr, "ns", "sa", 600)
            .await
            .expect("after every session was closed");
    }
    assert_eq!(
        http_get(&format!("{}/readyz", ca.metrics_url())).await.0,
        200
    );
    ca.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_that_disappears_is_unavailable_then_recovers_without_restart() {
    castellan_testkit::require!(castellan_testkit::tools::Tool::SoftHsm);
    let _hsm = hsm::exclusive().await;
    let (ca, _, _files) = hsm_ca("EC:prime256v1", "").await;
    let (_, csr) = csr::ztunnel(&id("ns", "sa"));
    ca.send(&csr, "ns", "sa", 600).await.unwrap();

    let away = hsm::TokensAway::take();
    let s = ca.send(&csr, "ns", "sa", 600).await.unwrap_err();
    assert_eq!(s.code(), Code::Unavailable, "{s:?}");
    let unready = eventually(Duration::from_secs(5), async || {
        http_get(&format!("{}/readyz", ca.metrics_url())).await.0 == 503
    })
    .await;
    assert!(unready, "/readyz reports the signer down");
    assert_eq!(
        ca.send(&csr, "ns", "sa", 600).await.unwrap_err().code(),
        Code::Unavailable
    );

    away.restore();
    let back = eventually(Duration::from_secs(10), async || {
        ca.send(&csr, "ns", "sa", 600).await.is_ok()
    })
    .await;
    assert!(back, "recovered without a restart");
    assert_eq!(
        http_get(&format!("{}/readyz", ca.metrics_url())).await.0,
        200
    );
    let (_, m) = http_get(&format!("{}/metrics", ca.metrics_url())).await;
    assert!(
        m.contains("citadel_server_csr_sign_err_count{error=\"signer_unavailable\"}"),
        "{m}"
    );
    ca.close().await;
}

async fn start_error(signer: String, root: Ca) -> String {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("jwks.json"), r#"{"keys":[]}"#).unwrap();
    drop(root);
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\n[server.tls]\ndns_names = [\"localhost\"]\n{signer}\n[[authn]]\ntype = \"jwt\"\nissuers = [\"x\"]\njwks_file = \"{}\"\n",
        dir.path().join("jwks.json").display()
    );
    let config = Config::parse(&text, &dir.path().join("c.toml")).unwrap();
    server::start(&config)
        .await
        .expect_err("must not start")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_mistakes_name_what_to_fix() {
    castellan_testkit::require!(castellan_testkit::tools::Tool::SoftHsm);
    let _hsm = hsm::exclusive().await;
    let label = unique("mistakes");
    hsm::token_with_key(&label, "EC:prime256v1");
    let files = tempfile::tempdir().unwrap();
    let root = Ca::root("Root", KeyAlg::EcP256);
    let good = hsm::signer_files(files.path(), &label, &root, "");

    std::fs::write(files.path().join("wrong-pin"), "0000\n").unwrap();
    let wrong_pin = good.replace(
        &files.path().join("pin").display().to_string(),
        &files.path().join("wrong-pin").display().to_string(),
    );
    let msg = start_error(wrong_pin, Ca::root("r", KeyAlg::EcP256)).await;
    assert!(msg.contains("PIN"), "{msg}");

    let msg = start_error(
        good.replace("key_label = \"ca-key\"", "key_label = \"missing\""),
        Ca::root("r", KeyAlg::EcP256),
    )
    .await;
    assert!(
        msg.contains("no private key") && msg.contains("missing"),
        "{msg}"
    );

    let msg = start_error(
        good.replace(
            &format!("token_label = \"{label}\""),
            "token_label = \"nope\"",
        ),
        Ca::root("r", KeyAlg::EcP256),
    )
    .await;
    assert!(
        msg.contains("no token labelled") && msg.contains(&label),
        "{msg}"
    );

    // A certificate for another key: the probe signature does not verify.
    let other =
        Ca::root("Other Root", KeyAlg::EcP256).intermediate("Other", KeyAlg::EcP256, |_| {});
    std::fs::write(files.path().join("other.pem"), &other.pem).unwrap();
    let msg = start_error(
        good.replace(
            &files.path().join("int.pem").display().to_string(),
            &files.path().join("other.pem").display().to_string(),
        ),
        root,
    )
    .await;
    assert!(msg.contains("does not belong"), "{msg}");
}

/// A start refused after login (the certificate is another key's, or
/// self-signed) exits with its error, every time: the signing threads are
/// joined before the process exits, so none is inside SoftHSM while the
/// library's destructors run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_start_exits_cleanly_every_time() {
    castellan_testkit::require!(castellan_testkit::tools::Tool::SoftHsm);
    let _hsm = hsm::exclusive().await;
    let label = unique("refused");
    hsm::token_with_key(&label, "EC:prime256v1");
    let files = tempfile::tempdir().unwrap();
    let root = Ca::root("Root", KeyAlg::EcP256);
    let good = hsm::signer_files(files.path(), &label, &root, "pool_size = 4");
    let cert = files.path().join("int.pem").display().to_string();

    let other = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let foreign = root.certify_public_key(
        "Another key",
        rcgen::PublicKeyData::subject_public_key_info(&other),
    );
    std::fs::write(files.path().join("foreign.pem"), foreign).unwrap();
    std::fs::write(files.path().join("self-signed.pem"), &root.pem).unwrap();
    std::fs::write(files.path().join("jwks.json"), r#"{"keys":[]}"#).unwrap();

    for (case, file, expected) in [
        (
            "another key's certificate",
            "foreign.pem",
            "does not belong",
        ),
        (
            "a self-signed certificate",
            "self-signed.pem",
            "self-signed",
        ),
    ] {
        let signer = good.replace(&cert, &files.path().join(file).display().to_string());
        let config = files.path().join(format!("{file}.toml"));
        std::fs::write(
            &config,
            format!(
                "[server]\nlisten = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\n[server.tls]\ndns_names = [\"localhost\"]\n{signer}\n[[authn]]\ntype = \"jwt\"\nissuers = [\"x\"]\njwks_file = \"{}\"\n",
                files.path().join("jwks.json").display()
            ),
        )
        .unwrap();
        let runs = tokio::task::spawn_blocking(move || {
            for run in 0..100 {
                let out = std::process::Command::new(env!("CARGO_BIN_EXE_castellan"))
                    .args(["serve", "--config"])
                    .arg(&config)
                    .output()
                    .unwrap();
                let stderr = String::from_utf8_lossy(&out.stderr);
                assert_eq!(
                    out.status.code(),
                    Some(1),
                    "{case}, run {run}: {:?}\n{stderr}",
                    out.status
                );
                assert!(stderr.contains(expected), "{case}, run {run}: {stderr}");
                assert!(
                    !stderr.contains("double free") && !stderr.contains("corrupt"),
                    "{case}, run {run}: {stderr}"
                );
            }
        });
        runs.await.unwrap();
    }
}

/// Dropping the signing threads joins them: afterwards nothing but the
/// owner holds the key, so it (and the module) can be closed safely.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_signing_threads_joins_them() {
    castellan_testkit::require!(castellan_testkit::tools::Tool::SoftHsm);
    let _hsm = hsm::exclusive().await;
    let label = unique("join");
    hsm::token_with_key(&label, "EC:prime256v1");
    let files = tempfile::tempdir().unwrap();
    let root = Ca::root("Root", KeyAlg::EcP256);
    let signer = hsm::signer_files(files.path(), &label, &root, "pool_size = 3");
    let text = format!(
        "{signer}\n[server.tls]\ndns_names = [\"localhost\"]\n[[authn]]\ntype = \"jwt\"\nissuers = [\"x\"]\njwks_file = \"/dev/null\"\n"
    );
    let config = Config::parse(&text, std::path::Path::new("join.toml")).unwrap();
    let castellan::config::Signer::Pkcs11(pkcs11) = &config.signer else {
        panic!("a PKCS#11 signer");
    };
    let key = Arc::new(castellan_pkcs11::Pkcs11Key::open(pkcs11).unwrap());
    let workers = castellan_pkcs11::Workers::start(Arc::clone(&key)).unwrap();
    workers.sign(b"tbs".to_vec()).await.unwrap();
    assert_eq!(Arc::strong_count(&key), 4, "one per signing thread");
    drop(workers);
    assert_eq!(
        Arc::strong_count(&key),
        1,
        "every signing thread has returned"
    );
}

/// 200 requests at once against one RSA-4096 session (the old queue held 64 and
/// answered the rest UNAVAILABLE): each waits its turn and all are signed.
/// With a burst longer than the deadline (3 s) allows, those the session
/// cannot reach in time are told the signer is busy (RESOURCE_EXHAUSTED) —
/// never that it is down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_session_pool_serves_every_request_its_deadline_allows() {
    castellan_testkit::require!(castellan_testkit::tools::Tool::SoftHsm);
    let _hsm = hsm::exclusive().await;
    // castellan's own deadline: 3 s per request.
    let (ca, _, _files) =
        hsm_ca_with("rsa:4096", "pool_size = 1", "request_timeout_secs = 3").await;
    let ca = Arc::new(ca);
    let burst = |n: usize| {
        let ca = Arc::clone(&ca);
        async move {
            let mut clients = Vec::new();
            for _ in 0..8 {
                clients.push(ca.client().await);
            }
            let (_, csr) = csr::ztunnel(&id("burst", "sa"));
            let token = ca.token("burst", "sa");
            let tasks: Vec<_> = (0..n)
                .map(|i| {
                    let mut client = clients[i % clients.len()].clone();
                    let req = castellan::cli::request::request_for(&csr, 600, &token, "Kubernetes")
                        .unwrap();
                    tokio::spawn(async move {
                        client
                            .create_certificate(req)
                            .await
                            .map(|_| ())
                            .map_err(|s| (s.code(), s.message().to_owned()))
                    })
                })
                .collect();
            let mut results = Vec::new();
            for t in tasks {
                results.push(t.await.unwrap());
            }
            results
        }
    };
    // Well inside the deadline even with the other tests on the same cores:
    // the busy answer comes a tenth of the deadline early.
    let all = burst(200).await;
    let failed: Vec<_> = all.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        failed.is_empty(),
        "{} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(3)]
    );

    // More signing than the deadline allows at once: what the session reaches
    // within the deadline is signed, the rest told it is busy.
    let short = burst(1000).await;
    let ok = short.iter().filter(|r| r.is_ok()).count();
    let busy = short
        .iter()
        .filter(|r| matches!(r, Err((Code::ResourceExhausted, m)) if m.contains("signer busy")))
        .count();
    let unavailable = short
        .iter()
        .filter(|r| matches!(r, Err((Code::Unavailable, _))))
        .count();
    let mut codes = std::collections::BTreeMap::new();
    for r in &short {
        *codes
            .entry(
                r.as_ref()
                    .err()
                    .map_or("Ok".to_owned(), |(c, m)| format!("{c:?}: {m}")),
            )
            .or_insert(0) += 1;
    }
    assert!(ok > 0, "some are signed within the deadline: {codes:?}");
    assert!(busy > 0, "the rest are told the signer is busy: {codes:?}");
    assert_eq!(unavailable, 0, "a busy HSM is not a down HSM");
    let (_, m) = http_get(&format!("{}/metrics", ca.metrics_url())).await;
    assert!(
        crate::support::metric_sum(
            &m,
            "citadel_server_csr_sign_err_count",
            &[("error", "signer_busy")]
        ) >= 1.0,
        "counted as busy"
    );
    // The queue shows it: one session's 64 places, requests that waited,
    // and those whose deadline passed in line.
    let series = |name: &str| {
        let prefix = format!("{name}{{queue=\"signer\"}} ");
        m.lines()
            .find_map(|l| l.strip_prefix(&prefix)?.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no {prefix}"))
    };
    assert_eq!(series("castellan_backend_queue_capacity"), 64.0);
    assert!(series("castellan_backend_queue_admitted_total") >= 200.0 + ok as f64);
    assert!(series("castellan_backend_queue_wait_seconds_total") > 0.0);
    // A busy answer is a request turned away in line, or one whose place
    // came but whose deadline passed before a session reached it: which of
    // the two depends on how fast the burst arrives, so only the bound holds.
    let turned_away = series("castellan_backend_queue_turned_away_total");
    assert!(
        turned_away <= busy as f64,
        "every request turned away in line was told the signer is busy: {turned_away} > {busy}"
    );
    let Ok(ca) = Arc::try_unwrap(ca) else {
        panic!("every request has returned its handle")
    };
    ca.close().await;
}
