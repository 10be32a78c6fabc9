//! The Vault signer against a real OpenBao (`bao server -dev`): PKI and
//! Transit modes end to end with every login method, a clamping role, a role
//! whose certificates break the profile, TLS and the standard environment.
//! Vault misbehaving is in `vault_faults.rs`.

use rustls_pki_types::{CertificateDer, UnixTime, pem::PemObject};
use serde_json::json;
use tonic::Code;

use crate::support::{
    KeyAlg, Setup, TestCa,
    bao::Bao,
    csr, http_get, id,
    pki::{Ca, KeyAlg as Alg},
};

pub fn verify(chain: &[String], root: &Ca) {
    let leaf = CertificateDer::from_pem_slice(chain[0].as_bytes()).unwrap();
    let ints: Vec<_> = chain[1..chain.len() - 1]
        .iter()
        .map(|p| CertificateDer::from_pem_slice(p.as_bytes()).unwrap())
        .collect();
    let root = CertificateDer::from(root.der.clone());
    let anchor = webpki::anchor_from_trusted_cert(&root).unwrap();
    webpki::EndEntityCert::try_from(&leaf)
        .unwrap()
        .verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &[anchor],
            &ints,
            UnixTime::now(),
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )
        .unwrap();
}

/// Serving certificate files issued by `root` (PKI mode needs them: the
/// Vault role only issues SPIFFE certificates).
fn serving_files(root: &Ca, dir: &std::path::Path) -> String {
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    params
        .subject_alt_names
        .push(rcgen::SanType::IpAddress("127.0.0.1".parse().unwrap()));
    params.is_ca = rcgen::IsCa::ExplicitNoCa;
    let leaf = root.sign(params, crate::support::pki::key(KeyAlg::EcP256));
    std::fs::write(dir.join("serving.pem"), &leaf.pem).unwrap();
    std::fs::write(dir.join("serving-key.pem"), leaf.key.serialize_pem()).unwrap();
    std::fs::write(dir.join("roots.pem"), &root.pem).unwrap();
    format!(
        "cert_file = \"{}\"\nkey_file = \"{}\"\n",
        dir.join("serving.pem").display(),
        dir.join("serving-key.pem").display()
    )
}

/// castellan in PKI mode against `bao`, logging in with `auth` (TOML).
pub async fn pki_ca(bao: &Bao, root: Ca, dir: &std::path::Path, auth: &str) -> TestCa {
    let tls = serving_files(&root, dir);
    TestCa::start_with(Setup {
        tls: Some(tls),
        ca: format!("reload_interval_secs = 1\nroots_file = \"{}\"\n", dir.join("roots.pem").display()),
        signer: Some(format!(
            "[signer]\ntype = \"vault\"\naddress = \"{}\"\ntimeout_secs = 3\n[signer.auth]\n{auth}\n[signer.pki]\nmount = \"pki_int\"\nrole = \"spiffe\"\n",
            bao.addr()
        )),
        root: Some(root),
        ..Setup::default()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pki_mode_issues_for_the_decided_identity_with_approle() {
    castellan_testkit::require!(castellan_testkit::tools::Tool::OpenBao);
    let bao = Bao::start().await;
    let dir = tempfile::tempdir().unwrap();
    let root = Ca::root("Offline Root", Alg::EcP256);
    bao.policy().await;
    bao.pki(&root, json!({})).await;
    let (role_id, secret_id) = bao.approle(dir.path(), "1h", "24h").await;
    let auth = format!(
        "method = \"approle\"\nrole_id_file = \"{}\"\nsecret_id_file = \"{}\"",
        role_id.display(),
        secret_id.display()
    );
    let ca = pki_ca(&bao, root, dir.path(), &auth).await;

    for (name, (_, csr)) in [
        ("P-256", csr::ztunnel(&id("shop", "cart"))),
        ("RSA", csr::istio_agent(&id("shop", "cart"))),
    ] {
        let resp = ca
            .send(&csr, "shop", "cart", 3600)
            .await
            .unwrap_or_else(|s| panic!("{name}: {s:?}"));
        assert_eq!(
            resp.cert_chain.len(),
            3,
            "{name}: leaf, OpenBao's intermediate, the offline root"
        );
        verify(&resp.cert_chain, &ca.root);
        let leaf = CertificateDer::from_pem_slice(resp.cert_chain[0].as_bytes()).unwrap();
        let text = openssl_text(&leaf);
        assert!(
            text.contains("URI:spiffe://cluster.local/ns/shop/sa/cart"),
            "{text}"
        );
        assert!(!text.contains("DNS:"), "{text}");
    }
    // castellan still decides the identity: a CSR for someone else never reaches Vault.
    let (_, other) = csr::ztunnel(&id("shop", "admin"));
    assert_eq!(
        ca.send(&other, "shop", "cart", 600)
            .await
            .unwrap_err()
            .code(),
        Code::PermissionDenied
    );
}

fn openssl_text(der: &[u8]) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new("openssl")
        .args(["x509", "-inform", "DER", "-noout", "-text"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(der).unwrap();
    String::from_utf8(child.wait_with_output().unwrap().stdout).unwrap()
}

/// castellan in Transit mode with a key of `kind`.
pub async fn transit_ca(
    bao: &Bao,
    kind: &str,
    auth: &str,
    dir: &std::path::Path,
    extra: &str,
) -> TestCa {
    let root = Ca::root("Offline Root", Alg::EcP256);
    let cert = bao.transit(&root, kind, dir).await;
    TestCa::start_with(Setup {
        signer: Some(format!(
            "[signer]\ntype = \"vault\"\naddress = \"{}\"\ntimeout_secs = 3\n[signer.auth]\n{auth}\n[signer.transit]\nkey = \"castellan\"\ncert_file = \"{}\"\nroot_file = \"{}\"\n{extra}\n",
            bao.addr(),
            cert.display(),
            dir.join("root.pem").display()
        )),
        root: Some(root),
        ..Setup::default()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transit_mode_signs_what_castellan_builds() {
    for (kind, extra) in [
        ("ecdsa-p256", ""),
        ("rsa-2048", ""),
        ("rsa-2048", "rsa_padding = \"pss\""),
    ] {
        castellan_testkit::require!(castellan_testkit::tools::Tool::OpenBao);
        let bao = Bao::start().await;
        bao.policy().await;
        let dir = tempfile::tempdir().unwrap();
        let token = bao.token_file(dir.path(), "1h").await;
        let auth = format!("method = \"token\"\ntoken_file = \"{}\"", token.display());
        let ca = transit_ca(&bao, kind, &auth, dir.path(), extra).await;
        for (_, csr) in [
            csr::ztunnel(&id("ns", "sa")),
            csr::istio_agent(&id("ns", "sa")),
        ] {
            let resp = ca
                .send(&csr, "ns", "sa", 600)
                .await
                .unwrap_or_else(|s| panic!("{kind} {extra}: {s:?}"));
            verify(&resp.cert_chain, &ca.root);
        }
        ca.running.shutdown();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_login_through_tokenreview() {
    let kube = crate::support::kube::FakeKube::start().await;
    castellan_testkit::require!(castellan_testkit::tools::Tool::OpenBao);
    let bao = Bao::start().await;
    bao.policy().await;
    let dir = tempfile::tempdir().unwrap();
    // OpenBao's kubernetes auth asks the (fake) API server about castellan's token.
    let _ = bao
        .try_api(
            reqwest::Method::POST,
            "sys/auth/kubernetes",
            Some(json!({"type": "kubernetes"})),
        )
        .await;
    let kubeconfig = std::fs::read_to_string(kube.kubeconfig(dir.path(), "k")).unwrap();
    let ca_b64 = kubeconfig
        .lines()
        .find_map(|l| l.trim().strip_prefix("certificate-authority-data: "))
        .unwrap();
    use base64::Engine;
    let ca_pem = String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(ca_b64)
            .unwrap(),
    )
    .unwrap();
    bao.post(
        "auth/kubernetes/config",
        json!({
            "kubernetes_host": format!("https://127.0.0.1:{}", kube.addr.port()),
            "kubernetes_ca_cert": ca_pem,
            "token_reviewer_jwt": crate::support::kube::CASTELLAN_TOKEN,
            "disable_local_ca_jwt": true,
            "issuer": "https://kubernetes.default.svc",
        }),
    )
    .await;
    bao.post(
        "auth/kubernetes/role/castellan",
        json!({"bound_service_account_names": ["castellan"], "bound_service_account_namespaces": ["istio-system"], "token_policies": ["castellan"], "token_ttl": "1h", "audience": "vault"}),
    )
    .await;
    let (issuer, _) =
        castellan::cli::token::TokenIssuer::generate("https://kubernetes.default.svc").unwrap();
    let jwt = issuer
        .mint("istio-system", "castellan", "vault", 3600)
        .unwrap();
    kube.add_token_info(
        &jwt,
        crate::support::kube::TokenInfo {
            username: "system:serviceaccount:istio-system:castellan".into(),
            groups: vec!["system:serviceaccounts".into()],
            audiences: vec!["vault".into()],
            pod: None,
        },
    );
    std::fs::write(dir.path().join("sa-token"), &jwt).unwrap();
    let auth = format!(
        "method = \"kubernetes\"\nrole = \"castellan\"\njwt_file = \"{}\"",
        dir.path().join("sa-token").display()
    );
    let ca = transit_ca(&bao, "ecdsa-p256", &auth, dir.path(), "").await;
    let (_, csr) = csr::ztunnel(&id("ns", "sa"));
    let resp = ca.send(&csr, "ns", "sa", 600).await.unwrap();
    verify(&resp.cert_chain, &ca.root);
    assert!(
        kube.reviews() >= 1,
        "OpenBao checked castellan's token with TokenReview"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clamping_role_is_reported_and_a_role_breaking_the_profile_is_refused() {
    castellan_testkit::require!(castellan_testkit::tools::Tool::OpenBao);
    let bao = Bao::start().await;
    bao.policy().await;
    let dir = tempfile::tempdir().unwrap();
    let root = Ca::root("Offline Root", Alg::EcP256);
    bao.pki(&root, json!({"max_ttl": "2h"})).await;
    let token = bao.token_file(dir.path(), "1h").await;
    let ca = pki_ca(
        &bao,
        root,
        dir.path(),
        &format!("method = \"token\"\ntoken_file = \"{}\"", token.display()),
    )
    .await;
    let (_, csr) = csr::ztunnel(&id("ns", "sa"));
    // castellan allows 24 h; the role clamps to 2 h and only says so in a warning.
    ca.send(&csr, "ns", "sa", 86400).await.unwrap();
    let (_, m) = http_get(&format!("{}/metrics", ca.metrics_url())).await;
    // One certificate with a warning, one cut lifetime: each counted once.
    assert!(
        m.contains("castellan_signer_warnings_count 1\n")
            && m.contains("castellan_lifetime_cut_count 1\n"),
        "Vault's warning and the cut lifetime: {m}"
    );

    // The role is changed to issue certificates without serverAuth: refused.
    bao.patch("pki_int/roles/spiffe", json!({"server_flag": false}))
        .await;
    let s = ca.send(&csr, "ns", "sa", 600).await.unwrap_err();
    assert_eq!(s.code(), Code::Internal, "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_server_name_and_namespace_and_the_standard_environment() {
    castellan_testkit::require!(castellan_testkit::tools::Tool::OpenBao);
    let mut bao = Bao::start_tls().await;
    bao.post("sys/namespaces/team", json!({})).await;
    bao.namespace = Some("team".into());
    bao.policy().await;
    let dir = tempfile::tempdir().unwrap();
    let root = Ca::root("Offline Root", Alg::EcP256);
    bao.pki(&root, json!({})).await;
    let token = bao.token_file(dir.path(), "1h").await;
    let vault_ca = bao.tls_dir.as_ref().unwrap().join("vault-ca.pem");
    let tls = serving_files(&root, dir.path());

    // Everything in the configuration.
    let signer = format!(
        "[signer]\ntype = \"vault\"\naddress = \"{}\"\nca_file = \"{}\"\ntls_server_name = \"localhost\"\nnamespace = \"team\"\n[signer.auth]\nmethod = \"token\"\ntoken_file = \"{}\"\n[signer.pki]\nmount = \"pki_int\"\nrole = \"spiffe\"\n",
        bao.addr(),
        vault_ca.display(),
        token.display()
    );
    let ca = TestCa::start_with(Setup {
        tls: Some(tls.clone()),
        ca: format!(
            "roots_file = \"{}\"\n",
            dir.path().join("roots.pem").display()
        ),
        signer: Some(signer),
        root: Some(root),
        ..Setup::default()
    })
    .await;
    let (_, csr) = csr::ztunnel(&id("ns", "sa"));
    let resp = ca.send(&csr, "ns", "sa", 600).await.unwrap();
    verify(&resp.cert_chain, &ca.root);

    // The same from VAULT_ADDR, VAULT_CACERT and VAULT_NAMESPACE, through `castellan check`.
    std::fs::write(dir.path().join("jwks.json"), r#"{"keys":[]}"#).unwrap();
    let config = dir.path().join("env.toml");
    std::fs::write(
        &config,
        format!(
            "[server.tls]\n{tls}\n[ca]\nroots_file = \"{}\"\n[signer]\ntype = \"vault\"\n[signer.auth]\nmethod = \"token\"\ntoken_file = \"{}\"\n[signer.pki]\nmount = \"pki_int\"\nrole = \"spiffe\"\n[[authn]]\ntype = \"jwt\"\nissuers = [\"x\"]\njwks_file = \"{}\"\n",
            dir.path().join("roots.pem").display(),
            token.display(),
            dir.path().join("jwks.json").display()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_castellan"))
        .args(["check", "--config"])
        .arg(&config)
        .env("VAULT_ADDR", format!("https://localhost:{}", bao.port))
        .env("VAULT_CACERT", &vault_ca)
        .env("VAULT_NAMESPACE", "team")
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        report.contains("PASS  rooted in the configured enterprise root(s)"),
        "{report}"
    );
    assert!(report.contains("PASS  SM-DR12"), "{report}");
}
