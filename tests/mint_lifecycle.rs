//! Mint mode over time, against a real OpenBao: every minted generation's
//! leaves keep verifying under Envoy's and ztunnel's CRL rules across
//! rotations (each generation its own subject and CRL, the Vault issuer's
//! CRL and the root's beside them), a leaf revoked under an older
//! generation stays revoked, and an intermediate that would outlive the
//! enterprise CA that certified it is refused while the current one keeps
//! serving.

use std::{path::Path, time::Duration};

use serde_json::json;

use crate::support::{
    Setup, TestCa,
    bao::Bao,
    csr, eventually, http_get, issuer_of,
    pki::{Ca, KeyAlg},
    verify,
};

async fn mint_castellan(
    bao: &Bao,
    root: Ca,
    dir: &Path,
    ttl: u64,
    max_ttl: u64,
    extra: &str,
) -> TestCa {
    let token = bao.token_file(dir, "1h").await;
    let roots = dir.join("roots.pem");
    std::fs::write(&roots, &root.pem).unwrap();
    let tls = TestCa::serving_files(&root, &dir.join("tls"));
    TestCa::start_with(Setup {
        tls: Some(tls),
        ca: format!(
            "reload_interval_secs = 1\nroots_file = \"{}\"\n",
            roots.display()
        ),
        signer: Some(format!(
            "[signer]\ntype = \"vault\"\naddress = \"{}\"\ntimeout_secs = 3\n[signer.auth]\n\
             method = \"token\"\ntoken_file = \"{}\"\n[signer.mint]\nmount = \"pki_ent\"\n\
             ttl_secs = {ttl}\n",
            bao.addr(),
            token.display()
        )),
        root: Some(root),
        issuance: format!(
            "max_ttl_secs = {max_ttl}\ndefault_ttl_secs = {max_ttl}\nmin_ttl_secs = 1\n"
        ),
        extra: extra.into(),
        ..Setup::default()
    })
    .await
}

async fn issue(ca: &TestCa, sa: &str) -> Vec<String> {
    let (_, csr) = csr::ztunnel(&crate::support::id("apps", sa));
    ca.send(&csr, "apps", sa, 3600).await.unwrap().cert_chain
}

async fn published(ca: &TestCa) -> Option<String> {
    let (code, body) = http_get(&format!("{}/ca-crl.pem", ca.metrics_url())).await;
    (code == 200).then_some(body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minted_generations_keep_their_crls_across_rotations_under_both_clients_rules() {
    let root = Ca::root("Enterprise Root", KeyAlg::EcP256);
    castellan_testkit::require!(castellan_testkit::tools::Tool::OpenBao);
    let bao = Bao::start().await;
    bao.policy().await;
    bao.enterprise_issuer(&root).await;
    let dir = tempfile::tempdir().unwrap();
    let trust = format!(
        "[trust]\nstate_file = \"{}\"\nrecord_interval_secs = 1\nmax_unrecorded_secs = 2\n\
         soak_secs = 10\n[trust.crl]\nvalidity_secs = 600\nupstream_files = [\"@DIR@/root-crl.pem\"]\n",
        dir.path().join("state.json").display()
    );
    // Intermediates of 40 s, leaves of 20 s: a rotation every 20 s or so.
    let ca = mint_castellan(&bao, root, dir.path(), 40, 20, &trust).await;
    let (root_pem, root_der) = (ca.root.pem.clone(), ca.root.der.clone());
    assert!(
        eventually(Duration::from_secs(10), async || published(&ca)
            .await
            .is_some())
        .await
    );
    let file = published(&ca).await.unwrap();
    assert_eq!(
        file.matches("BEGIN X509 CRL").count(),
        3,
        "castellan's intermediate's, the Vault issuer's and the root's: {file}"
    );

    // A leaf of the first generation, issued just before its rotation so it
    // outlives it by most of its life.
    let due = ca.metric("castellan_ca_next_rotation_timestamp").await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    tokio::time::sleep(Duration::from_secs_f64((due - now - 4.0).max(0.0))).await;
    let a = issue(&ca, "a").await;
    verify::envoy(&a, &root_pem, &published(&ca).await.unwrap()).unwrap();
    assert!(
        eventually(Duration::from_secs(15), async || {
            issuer_of(&issue(&ca, "probe").await) != issuer_of(&a)
        })
        .await,
        "rotated"
    );
    let b = issue(&ca, "b").await;
    assert!(
        issuer_of(&a).starts_with("CN=castellan cluster.local ")
            && issuer_of(&b).starts_with("CN=castellan cluster.local "),
        "{} / {}",
        issuer_of(&a),
        issuer_of(&b)
    );

    // The first generation's leaf revoked after its intermediate was replaced.
    let config = ca.dir.path().join("castellan.toml");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_castellan"))
        .args(["revoke", "--config"])
        .arg(&config)
        .args(["--serial", &crate::support::serial_of(&a)])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        eventually(Duration::from_secs(8), async || {
            published(&ca).await.is_some_and(|f| {
                verify::envoy(&a, &root_pem, &f).is_err_and(|e| e.contains("revoked"))
            })
        })
        .await,
        "{:?}",
        published(&ca)
            .await
            .map(|f| verify::envoy(&a, &root_pem, &f))
    );
    let file = published(&ca).await.unwrap();
    assert!(
        verify::ztunnel(&a, &root_der, &file).is_err(),
        "ztunnel too"
    );
    verify::envoy(&b, &root_pem, &file).unwrap();
    verify::ztunnel(&b, &root_der, &file).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_intermediate_that_would_outlive_its_issuer_is_refused_and_the_current_one_serves() {
    let root = Ca::root("Enterprise Root", KeyAlg::EcP256);
    castellan_testkit::require!(castellan_testkit::tools::Tool::OpenBao);
    let bao = Bao::start().await;
    bao.policy().await;
    // The enterprise issuing CA ends in 45 s, and Vault is told to sign past
    // its own end.
    let ends = time::OffsetDateTime::now_utc() + time::Duration::seconds(45);
    bao.enterprise_issuer_until(&root, ends).await;
    bao.post(
        "pki_ent/issuer/default",
        json!({"leaf_not_after_behavior": "permit"}),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let ca = mint_castellan(&bao, root, dir.path(), 20, 10, "").await;
    assert!(
        eventually(Duration::from_secs(45), async || {
            ca.metric_with("castellan_ca_rotations_count", &[("result", "refused")])
                .await
                >= 1.0
        })
        .await,
        "a mint past the issuer's end is refused"
    );
    // The one serving still issues, and nothing served outlives its chain.
    let chain = issue(&ca, "c").await;
    verify::assert_good(&chain, &ca.root.der, "the current intermediate's leaf");
    let not_after = |pem: &str| {
        use der::Decode;
        use rustls_pki_types::{CertificateDer, pem::PemObject};
        let der = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        x509_cert::Certificate::from_der(&der)
            .unwrap()
            .tbs_certificate()
            .validity()
            .not_after
            .to_system_time()
    };
    assert!(
        not_after(&chain[1]) <= not_after(&chain[2]),
        "within its issuer"
    );
    let out = crate::one_truth::run(&["check"], &ca.dir.path().join("castellan.toml"));
    let text = crate::one_truth::text(&out);
    assert_ne!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("outlives its issuer"), "{text}");
}

/// The policy docs/signers/vault.md tells operators to paste, as written there.
fn documented_policy() -> String {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/signers/vault.md"
    ))
    .unwrap();
    let start = doc
        .find("vault policy write castellan - <<'POLICY'\n")
        .expect("docs/signers/vault.md's policy");
    let body = &doc[start..];
    let body = &body[body.find('\n').unwrap() + 1..];
    body[..body.find("\nPOLICY").unwrap()].to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_policy_suffices_for_a_token_without_the_default_policy() {
    let root = Ca::root("Enterprise Root", KeyAlg::EcP256);
    castellan_testkit::require!(castellan_testkit::tools::Tool::OpenBao);
    let bao = Bao::start().await;
    bao.enterprise_issuer(&root).await;
    bao.post(
        "sys/policies/acl/castellan",
        json!({"policy": documented_policy()}),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    // A token castellan must renew within the test, with no default policy
    // (so no implicit lookup-self or renew-self).
    let answer = bao
        .post(
            "auth/token/create",
            json!({"policies": ["castellan"], "no_default_policy": true, "ttl": "6s",
                   "explicit_max_ttl": "1h", "renewable": true, "no_parent": true}),
        )
        .await;
    assert_eq!(
        crate::support::strings(&answer["auth"]["policies"]),
        ["castellan"],
        "{answer}"
    );
    let token = dir.path().join("vault-token");
    std::fs::write(&token, answer["auth"]["client_token"].as_str().unwrap()).unwrap();
    let roots = dir.path().join("roots.pem");
    std::fs::write(&roots, &root.pem).unwrap();
    let tls = TestCa::serving_files(&root, &dir.path().join("tls"));
    let ca = TestCa::start_with(Setup {
        tls: Some(tls),
        ca: format!("roots_file = \"{}\"\n", roots.display()),
        signer: Some(format!(
            "[signer]\ntype = \"vault\"\naddress = \"{}\"\ntimeout_secs = 3\n[signer.auth]\n\
             method = \"token\"\ntoken_file = \"{}\"\n[signer.mint]\nmount = \"pki_ent\"\n\
             ttl_secs = 3600\n",
            bao.addr(),
            token.display()
        )),
        root: Some(root),
        issuance: "max_ttl_secs = 1800\ndefault_ttl_secs = 1800\n".into(),
        extra: format!(
            "[trust]\nstate_file = \"{}\"\nrecord_interval_secs = 1\n[trust.crl]\n\
             upstream_files = [\"@DIR@/root-crl.pem\"]\n",
            dir.path().join("state.json").display()
        ),
        ..Setup::default()
    })
    .await;
    verify::assert_good(
        &issue(&ca, "a").await,
        &ca.root.der,
        "minted with the policy",
    );
    assert!(
        eventually(Duration::from_secs(10), async || published(&ca)
            .await
            .is_some_and(|f| f.matches("BEGIN X509 CRL").count() == 3))
        .await,
        "the Vault issuer's CRL read with the policy"
    );
    // Past the token's first TTL: renewed (renew-self), still signing.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let renewed = bao
        .post(
            "auth/token/lookup",
            json!({"token": std::fs::read_to_string(&token).unwrap()}),
        )
        .await;
    assert!(
        renewed["data"]["ttl"].as_u64().is_some_and(|t| t > 0),
        "{renewed}"
    );
    assert!(ca.readyz().await == 200);
}
