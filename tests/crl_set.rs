//! The published CRL file as the real clients judge it. Envoy (sidecars)
//! needs a current CRL for every CA of a chain, the root's included:
//! `openssl verify -crl_check_all` stands in for it. ztunnel takes the
//! first CRL whose issuer name matches, allows an issuer with none, and
//! ignores expiry: rustls-webpki with that exact policy stands in for it.
//! Across a rotation of the intermediate and a restart, no valid leaf of
//! any generation is rejected and no revoked one accepted; an incomplete
//! set is never published.

use std::{path::Path, process::Command, time::Duration};

use castellan::{config::Config, server};

use crate::support::{
    Files, Setup, TestCa, csr, eventually, http_get, id,
    pki::{self, KeyAlg},
    verify,
};

fn crl_section(aux: &Path, upstream: &str) -> String {
    format!(
        "[trust]\nstate_file = \"{}\"\nrecord_interval_secs = 1\n[trust.crl]\n\
         validity_secs = 600\n{upstream}",
        aux.join("state.json").display()
    )
}

const ROOT_CRL: &str = "upstream_files = [\"@DIR@/root-crl.pem\"]\n";

async fn published(metrics: &str) -> Option<String> {
    let (code, body) = http_get(&format!("http://{metrics}/ca-crl.pem")).await;
    (code == 200).then_some(body)
}

async fn issue(ca: &TestCa, sa: &str) -> Vec<String> {
    let (_, csr) = csr::ztunnel(&id("apps", sa));
    ca.send(&csr, "apps", sa, 3600).await.unwrap().cert_chain
}

fn revoke(config: &Path, serial: &str) {
    let out = Command::new(env!("CARGO_BIN_EXE_castellan"))
        .args(["revoke", "--config"])
        .arg(config)
        .args(["--serial", serial])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn blocks(pem: &str) -> usize {
    pem.matches("-----BEGIN X509 CRL-----").count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_generation_verifies_under_envoys_and_ztunnels_rules_across_rotation_and_restart() {
    let aux = tempfile::tempdir().unwrap();
    let ca = TestCa::start_with(Setup {
        extra: crl_section(aux.path(), ROOT_CRL),
        ..Setup::default()
    })
    .await;
    let metrics = ca.running.metrics_addr.unwrap().to_string();
    let root = ca.root.pem.clone();
    let root_der = ca.root.der.clone();
    assert!(
        eventually(Duration::from_secs(10), async || published(&metrics)
            .await
            .is_some())
        .await
    );
    let file = published(&metrics).await.unwrap();
    assert!(file.starts_with("-----BEGIN X509 CRL-----\n"), "{file}");
    assert_eq!(blocks(&file), 2, "the intermediate's and the root's");

    // Generation one: two leaves, both good under both clients' rules.
    let (a1, a2) = (issue(&ca, "a1").await, issue(&ca, "a2").await);
    for leaf in [&a1, &a2] {
        verify::envoy(leaf, &root, &file).unwrap();
        verify::ztunnel(leaf, &root_der, &file).unwrap();
    }

    // The intermediate is rotated under the same root (its own subject).
    let i2 = ca
        .root
        .intermediate("Test Intermediate Two", KeyAlg::EcP256, |_| {});
    pki::write_cacerts(&ca.ca_dir(), &i2, &[&i2, &ca.root], &root);
    assert!(
        eventually(Duration::from_secs(10), async || {
            crate::support::issuer_of(&issue(&ca, "probe").await).contains("Two")
        })
        .await
    );
    let b = issue(&ca, "b").await;

    // A leaf of the old generation revoked after the rotation.
    let config = ca.dir.path().join("castellan.toml");
    revoke(&config, &crate::support::serial_of(&a1));
    assert!(
        eventually(Duration::from_secs(15), async || {
            published(&metrics)
                .await
                .is_some_and(|f| blocks(&f) == 3 && verify::envoy(&a1, &root, &f).is_err())
        })
        .await,
        "both generations' CRLs and the root's, the old one listing a1"
    );
    let file = published(&metrics).await.unwrap();
    let why = verify::envoy(&a1, &root, &file).unwrap_err();
    assert!(why.contains("revoked"), "{why}");
    assert!(
        verify::ztunnel(&a1, &root_der, &file).is_err(),
        "ztunnel too"
    );
    for leaf in [&a2, &b] {
        verify::envoy(leaf, &root, &file).unwrap();
        verify::ztunnel(leaf, &root_der, &file).unwrap();
    }

    // Restarted on the new material only: the old generation's key is gone
    // from this replica, its CRL is not — the record kept it.
    let TestCa { running, dir, .. } = ca;
    running.kill();
    let restarted = server::start(&Config::load(&dir.path().join("castellan.toml")).unwrap())
        .await
        .unwrap();
    let metrics = restarted.metrics_addr.unwrap().to_string();
    assert!(
        eventually(Duration::from_secs(10), async || published(&metrics)
            .await
            .is_some_and(|f| blocks(&f) == 3))
        .await,
        "{:?}",
        published(&metrics).await
    );
    let file = published(&metrics).await.unwrap();
    assert!(
        verify::envoy(&a1, &root, &file)
            .unwrap_err()
            .contains("revoked")
    );
    for leaf in [&a2, &b] {
        verify::envoy(leaf, &root, &file).unwrap();
        verify::ztunnel(leaf, &root_der, &file).unwrap();
    }
    // check says what clients will see of each generation.
    let out = Command::new(env!("CARGO_BIN_EXE_castellan"))
        .args(["check", "--config"])
        .arg(dir.path().join("castellan.toml"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.contains("GENERATIONS")
            && text.contains("signing   `CN=Test Intermediate Two`")
            && text.contains("replaced  `CN=Test Intermediate`")
            && text.contains("a revocation reaches its CRL only while"),
        "{text}"
    );
    restarted.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incomplete_set_is_refused_by_check_and_serve_and_never_published() {
    let aux = tempfile::tempdir().unwrap();
    let files = Files::write(Setup {
        extra: crl_section(aux.path(), ""),
        ..Setup::default()
    });
    let config = Config::load(&files.config).unwrap();
    crate::support::init_trust(&config).await;
    let out = Command::new(env!("CARGO_BIN_EXE_castellan"))
        .args(["check", "--config"])
        .arg(&files.config)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains(&format!("FAIL  {}", castellan::ca::CRL_SET_PRACTICE))
            && text.contains("no CRL signed by `CN=Test Root`")
            && text.contains("trust.crl.upstream_files"),
        "{text}"
    );
    let e = server::start(&config)
        .await
        .expect_err("serve refuses it too");
    assert!(
        e.to_string().contains("no CRL signed by `CN=Test Root`"),
        "{e}"
    );

    // Served with the root's CRL; then that CRL expires and is not renewed.
    let aux = tempfile::tempdir().unwrap();
    let ca = TestCa::start_with(Setup {
        extra: crl_section(aux.path(), ROOT_CRL),
        ..Setup::default()
    })
    .await;
    let metrics = ca.running.metrics_addr.unwrap().to_string();
    assert!(
        eventually(Duration::from_secs(10), async || published(&metrics)
            .await
            .is_some())
        .await
    );
    let whole = published(&metrics).await.unwrap();
    let now = time::OffsetDateTime::now_utc();
    std::fs::write(
        ca.dir.path().join("root-crl.pem"),
        ca.root.crl_at(
            now - time::Duration::days(2),
            now - time::Duration::days(1),
            &[],
        ),
    )
    .unwrap();
    let leaf = issue(&ca, "x").await;
    revoke(
        &ca.dir.path().join("castellan.toml"),
        &crate::support::serial_of(&leaf),
    );
    assert!(
        eventually(Duration::from_secs(10), async || {
            ca.metric("castellan_crl_missing").await >= 1.0
        })
        .await
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        published(&metrics).await.unwrap(),
        whole,
        "the last whole set stays"
    );

    // A current root CRL again: the set, with the revocation, goes out.
    std::fs::write(
        ca.dir.path().join("root-crl.pem"),
        ca.root.crl(time::Duration::days(7), &[]),
    )
    .unwrap();
    let root = ca.root.pem.clone();
    assert!(
        eventually(Duration::from_secs(10), async || {
            published(&metrics).await.is_some_and(|f| {
                verify::envoy(&leaf, &root, &f).is_err_and(|e| e.contains("revoked"))
            })
        })
        .await
    );
    assert_eq!(ca.metric("castellan_crl_missing").await, 0.0);
}
