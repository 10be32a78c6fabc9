//! Revocation: `castellan revoke` by serial and by identity, kept in the
//! trust record; a CRL signed by the signing CA through every back end that
//! holds a key (file, PKCS#11, Transit), checked by openssl (signature,
//! issuer, AKI, number, next update, `verify -crl_check_all`: Envoy's rule),
//! re-signed before it expires, and published as `istio-ca-crl` beside the
//! trust bundle; revoke's refusals and what it says it changed.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use serde_json::Value;
use tonic::Code;

use castellan::{config::Config, server};

use crate::support::{
    Setup, TestCa, csr, eventually, hsm, http_get, id,
    kube::{FakeKube, Kind},
    pki::{Ca, KeyAlg},
    serial_of,
};

/// `[trust]` with its record in `aux` and `[trust.crl]`, the root's CRL
/// (written by the test setup) as the upstream CRL.
fn trust_section(aux: &Path, crl_validity: u64) -> String {
    format!(
        "[trust]\nstate_file = \"{}\"\nrecord_interval_secs = 1\n[trust.crl]\n\
         validity_secs = {crl_validity}\nupstream_files = [\"@DIR@/root-crl.pem\"]\n",
        aux.join("state.json").display()
    )
}

async fn crl(ca: &TestCa) -> Option<String> {
    let (code, body) = http_get(&format!("{}/ca-crl.pem", ca.metrics_url())).await;
    (code == 200).then_some(body)
}

/// `openssl crl` on `pem`: its text, and whether its signature verifies
/// under `issuer_pem`.
fn openssl_crl(pem: &str, issuer_pem: &str, flags: &[&str]) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("crl.pem"), pem).unwrap();
    std::fs::write(dir.path().join("issuer.pem"), issuer_pem).unwrap();
    let out = Command::new("openssl")
        .args(["crl", "-noout", "-in"])
        .arg(dir.path().join("crl.pem"))
        .arg("-CAfile")
        .arg(dir.path().join("issuer.pem"))
        .args(flags)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success() && text.contains("verify OK"), text)
}

fn crl_number(pem: &str, issuer_pem: &str) -> u64 {
    let (_, text) = openssl_crl(pem, issuer_pem, &["-crlnumber"]);
    let hex = text
        .lines()
        .find_map(|l| l.strip_prefix("crlNumber=0x"))
        .unwrap_or_else(|| panic!("no CRL number: {text}"));
    u64::from_str_radix(hex.trim(), 16).unwrap()
}

/// Envoy's verdict on `chain`'s leaf under `root` with the CRL file `crl`
/// (`openssl verify -crl_check_all`): whether it passes, and what openssl said.
fn verify_with_crl(chain: &[String], root: &str, crl: &str) -> (bool, String) {
    match crate::support::verify::envoy(chain, root, crl) {
        Ok(()) => (true, String::new()),
        Err(why) => (false, why),
    }
}

fn revoke(config: &Path, args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_castellan"))
        .arg("revoke")
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

fn config_path(ca: &TestCa) -> PathBuf {
    ca.dir.path().join("castellan.toml")
}

async fn issue(ca: &TestCa, sa: &str) -> Result<Vec<String>, Code> {
    let (_, csr) = csr::ztunnel(&id("apps", sa));
    ca.send(&csr, "apps", sa, 3600)
        .await
        .map(|r| r.cert_chain)
        .map_err(|s| s.code())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_serial_and_identity_are_in_the_crl_and_refused() {
    let aux = tempfile::tempdir().unwrap();
    let ca = TestCa::start_with(Setup {
        extra: trust_section(aux.path(), 20),
        ..Setup::default()
    })
    .await;
    let issuer = ca.intermediate.pem.clone();

    // An empty CRL from the start: valid, signed, numbered, with an AKI.
    assert!(eventually(Duration::from_secs(5), async || crl(&ca).await.is_some()).await);
    let empty = crl(&ca).await.unwrap();
    let (ok, text) = openssl_crl(&empty, &issuer, &["-text"]);
    assert!(ok, "{text}");
    assert!(
        text.contains("Issuer: CN = Test Intermediate")
            || text.contains("Issuer: CN=Test Intermediate"),
        "{text}"
    );
    assert!(text.contains("X509v3 Authority Key Identifier"), "{text}");
    assert!(text.contains("X509v3 CRL Number"), "{text}");
    assert!(text.contains("Next Update"), "{text}");
    assert!(text.contains("No Revoked Certificates"), "{text}");
    let first_number = crl_number(&empty, &issuer);

    let a = issue(&ca, "a").await.unwrap();
    let b = issue(&ca, "b").await.unwrap();
    let root = ca.root.pem.clone();
    assert!(verify_with_crl(&a, &root, &empty).0, "nothing revoked yet");

    // By serial, with a reason.
    let (code, out) = revoke(
        &config_path(&ca),
        &["--serial", &serial_of(&a), "--reason", "keyCompromise"],
    );
    assert_eq!(code, 0, "{out}");
    let serial_upper = serial_of(&a).to_uppercase();
    assert!(
        eventually(Duration::from_secs(10), async || {
            crl(&ca).await.is_some_and(|c| {
                openssl_crl(&c, &issuer, &["-text"])
                    .1
                    .contains(&serial_upper)
            })
        })
        .await,
        "the revoked serial reaches the CRL"
    );
    let listed = crl(&ca).await.unwrap();
    let (ok, text) = openssl_crl(&listed, &issuer, &["-text"]);
    assert!(ok && text.contains("Key Compromise"), "{text}");
    assert!(crl_number(&listed, &issuer) > first_number);
    let (revoked, why) = verify_with_crl(&a, &root, &listed);
    assert!(!revoked && why.contains("revoked"), "{why}");
    assert!(
        verify_with_crl(&b, &root, &listed).0,
        "the other leaf still verifies"
    );

    // By identity: new requests refused, its earlier leaf revoked too.
    let (code, out) = revoke(
        &config_path(&ca),
        &["--identity", &id("apps", "b"), "--reason", "superseded"],
    );
    assert_eq!(code, 0, "{out}");
    assert!(
        eventually(Duration::from_secs(10), async || {
            issue(&ca, "b").await == Err(Code::PermissionDenied)
        })
        .await,
        "the identity is refused"
    );
    assert!(ca.metric("castellan_revoked_refusals_count").await >= 1.0);
    assert!(issue(&ca, "a").await.is_ok(), "other identities are not");
    assert!(
        eventually(Duration::from_secs(10), async || {
            crl(&ca)
                .await
                .is_some_and(|c| !verify_with_crl(&b, &root, &c).0)
        })
        .await,
        "the identity's earlier leaf is revoked"
    );

    // Lifted: issued again.
    let (code, out) = revoke(
        &config_path(&ca),
        &["--identity", &id("apps", "b"), "--lift"],
    );
    assert_eq!(code, 0, "{out}");
    assert!(
        eventually(Duration::from_secs(10), async || issue(&ca, "b")
            .await
            .is_ok())
        .await,
        "lifted"
    );

    // Re-signed before it expires (validity 20 s: at 10 s), nothing changed.
    let before = crl(&ca).await.unwrap();
    let n = crl_number(&before, &issuer);
    assert!(
        eventually(Duration::from_secs(15), async || {
            crl(&ca).await.is_some_and(|c| crl_number(&c, &issuer) > n)
        })
        .await,
        "re-signed at half its validity"
    );
    let (ok, text) = openssl_crl(&crl(&ca).await.unwrap(), &issuer, &["-text"]);
    assert!(ok && text.contains(&serial_upper), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_refuses_what_it_cannot_do_with_a_clear_message() {
    let aux = tempfile::tempdir().unwrap();
    let ca = TestCa::start_with(Setup {
        extra: trust_section(aux.path(), 600),
        ..Setup::default()
    })
    .await;
    for (args, says) in [
        (vec!["--serial", "xyz"], "up to 20 bytes of hex"),
        (
            vec!["--identity", "spiffe://other.td/ns/a/sa/b"],
            "trust domain",
        ),
        (vec!["--identity", "not a spiffe id"], "not a SPIFFE ID"),
        // A mistyped serial (castellan's serials end in check digits).
        (
            vec!["--serial", "4f1e2d3c4b5a69788796a5b4c3d2e1f0"],
            "not a serial castellan issued",
        ),
        (vec!["--serial", "01", "--lift"], "a revocation is final"),
    ] {
        let (code, out) = revoke(&config_path(&ca), &args);
        assert_eq!(code, 2, "{args:?}: {out}");
        assert!(out.contains(says), "{args:?}: {out}");
    }
    let state = || std::fs::read_to_string(aux.path().join("state.json")).unwrap();
    assert!(!state().contains("4f1e2d3c"), "nothing refused was written");

    // Forced, a serial without check digits is revoked, and said so; the
    // same again changes nothing, and says that too.
    let (code, out) = revoke(&config_path(&ca), &["--serial", "0a:0b", "--force"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("revoked serial a0b") && out.contains("forced"),
        "{out}"
    );
    let (code, out) = revoke(&config_path(&ca), &["--serial", "0a0b", "--force"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("already revoked") && out.contains("nothing changed"),
        "{out}"
    );
    let (code, out) = revoke(
        &config_path(&ca),
        &["--identity", &id("apps", "x"), "--lift"],
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("not refused; nothing changed"), "{out}");

    let plain = TestCa::start().await;
    let (code, out) = revoke(&config_path(&plain), &["--serial", "01"]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("no [trust] section"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_revokes_at_once_beside_a_serving_castellan_lose_nothing() {
    let aux = tempfile::tempdir().unwrap();
    let ca = TestCa::start_with(Setup {
        extra: trust_section(aux.path(), 600),
        ..Setup::default()
    })
    .await;
    let mut serials = Vec::new();
    for i in 0..50 {
        serials.push(serial_of(&issue(&ca, &format!("sa{i}")).await.unwrap()));
    }
    // Every revoke a process of its own, all started before any is waited
    // for, while the serving castellan merges into the record every second.
    let config = config_path(&ca);
    let children: Vec<_> = serials
        .iter()
        .map(|serial| {
            Command::new(env!("CARGO_BIN_EXE_castellan"))
                .args(["revoke", "--config"])
                .arg(&config)
                .args(["--serial", serial])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect::<Vec<_>>();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let issuer = ca.intermediate.pem.clone();
    let TestCa { running, dir, .. } = ca;
    running.kill();

    // Restarted on the same files: every one of the fifty is in its CRL.
    let restarted = server::start(&Config::load(&dir.path().join("castellan.toml")).unwrap())
        .await
        .unwrap();
    let url = format!("http://{}/ca-crl.pem", restarted.metrics_addr.unwrap());
    let mut text = String::new();
    assert!(
        eventually(Duration::from_secs(10), async || {
            let (code, body) = http_get(&url).await;
            text = openssl_crl(&body, &issuer, &["-text"]).1;
            code == 200
        })
        .await
    );
    let missing: Vec<&String> = serials
        .iter()
        .filter(|s| !text.contains(&s.to_uppercase()))
        .collect();
    assert!(missing.is_empty(), "lost: {missing:?}\n{text}");
    restarted.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_crl_is_signed_through_an_hsm_and_vault_transit() {
    // PKCS#11 (SoftHSM).
    {
        castellan_testkit::require!(castellan_testkit::tools::Tool::SoftHsm);
        let _hsm = hsm::exclusive().await;
        let label = format!("crl-{}", std::process::id());
        hsm::token_with_key(&label, "EC:prime256v1");
        hsm::rescan();
        let files = tempfile::tempdir().unwrap();
        let root = Ca::root("HSM CRL Root", KeyAlg::EcP256);
        let signer = hsm::signer_files(files.path(), &label, &root, "");
        let ca = TestCa::start_with(Setup {
            signer: Some(signer),
            root: Some(root),
            extra: trust_section(files.path(), 600),
            ..Setup::default()
        })
        .await;
        assert!(eventually(Duration::from_secs(10), async || crl(&ca).await.is_some()).await);
        let issuer = std::fs::read_to_string(files.path().join("int.pem")).unwrap();
        let (ok, text) = openssl_crl(&crl(&ca).await.unwrap(), &issuer, &["-text"]);
        assert!(ok, "HSM: {text}");
        the_set_judges_a_good_and_a_revoked_leaf(&ca, "HSM").await;
        ca.close().await;
    }
    // Vault Transit (OpenBao).
    castellan_testkit::require!(castellan_testkit::tools::Tool::OpenBao);
    let bao = crate::support::bao::Bao::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert) = transit_ca(&bao, dir.path(), 3).await;
    assert!(eventually(Duration::from_secs(10), async || crl(&ca).await.is_some()).await);
    let issuer = std::fs::read_to_string(&cert).unwrap();
    let (ok, text) = openssl_crl(&crl(&ca).await.unwrap(), &issuer, &["-text"]);
    assert!(ok, "Transit: {text}");
    the_set_judges_a_good_and_a_revoked_leaf(&ca, "Transit").await;
}

/// Under Envoy's rule (`openssl verify -crl_check_all`) and ztunnel's
/// (rustls-webpki, its policy), with the published set: a good leaf passes,
/// a revoked one does not.
async fn the_set_judges_a_good_and_a_revoked_leaf(ca: &TestCa, what: &str) {
    let (good, bad) = (
        issue(ca, "good").await.unwrap(),
        issue(ca, "bad").await.unwrap(),
    );
    let (code, out) = revoke(&config_path(ca), &["--serial", &serial_of(&bad)]);
    assert_eq!(code, 0, "{what}: {out}");
    let (root, root_der) = (ca.root.pem.clone(), ca.root.der.clone());
    assert!(
        eventually(Duration::from_secs(10), async || {
            crl(ca)
                .await
                .is_some_and(|c| crate::support::verify::envoy(&bad, &root, &c).is_err())
        })
        .await,
        "{what}: the revoked leaf fails"
    );
    let set = crl(ca).await.unwrap();
    crate::support::verify::envoy(&good, &root, &set).unwrap_or_else(|e| panic!("{what}: {e}"));
    crate::support::verify::ztunnel(&good, &root_der, &set)
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        crate::support::verify::ztunnel(&bad, &root_der, &set).is_err(),
        "{what}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_crl_is_published_beside_the_trust_bundle() {
    let kube = FakeKube::start().await;
    kube.create_namespace("istio-system", &[]);
    kube.create_namespace("apps", &[]);
    let aux = tempfile::tempdir().unwrap();
    let kubeconfig = kube.kubeconfig(aux.path(), "castellan-0");
    let ca = TestCa::start_with(Setup {
        extra: format!(
            "[kubernetes]\nkubeconfig = \"{}\"\nnamespace = \"istio-system\"\n\
             [kubernetes.trust_bundle]\n\
             [trust]\nstate_configmap = \"castellan-trust\"\nrecord_interval_secs = 1\n\
             [trust.crl]\nvalidity_secs = 600\nupstream_files = [\"@DIR@/root-crl.pem\"]\n",
            kubeconfig.display()
        ),
        ..Setup::default()
    })
    .await;
    let published = |ns: &str| -> Option<String> {
        kube.object(Kind::ConfigMap, ns, "istio-ca-crl")
            .and_then(|cm| cm["data"]["ca-crl.pem"].as_str().map(str::to_owned))
    };
    assert!(
        eventually(Duration::from_secs(10), async || {
            published("apps").is_some() && published("istio-system").is_some()
        })
        .await,
        "istio-ca-crl in every namespace"
    );
    let cm: Value = kube
        .object(Kind::ConfigMap, "apps", "istio-ca-crl")
        .unwrap();
    assert_eq!(cm["metadata"]["labels"]["istio.io/config"], "true");

    let a = issue(&ca, "a").await.unwrap();
    let (code, out) = revoke(&config_path(&ca), &["--serial", &serial_of(&a)]);
    assert_eq!(code, 0, "{out}");
    let root = ca.root.pem.clone();
    assert!(
        eventually(Duration::from_secs(10), async || {
            ["apps", "istio-system"]
                .iter()
                .all(|ns| published(ns).is_some_and(|c| !verify_with_crl(&a, &root, &c).0))
        })
        .await,
        "the new CRL replaces the old one everywhere"
    );
    // Edited by someone else: repaired to the signed one.
    let mut cm = kube
        .object(Kind::ConfigMap, "apps", "istio-ca-crl")
        .unwrap();
    cm["data"]["ca-crl.pem"] = Value::String(String::new());
    kube.put_object(Kind::ConfigMap, "apps", cm);
    assert!(
        eventually(Duration::from_secs(10), async || {
            published("apps").is_some_and(|c| !c.is_empty())
        })
        .await,
        "repaired"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_vault_pki_castellan_publishes_vaults_crl_once_checked() {
    castellan_testkit::require!(castellan_testkit::tools::Tool::OpenBao);
    let bao = crate::support::bao::Bao::start().await;
    bao.policy().await;
    let dir = tempfile::tempdir().unwrap();
    let root = Ca::root("Vault CRL Root", KeyAlg::EcP256);
    bao.pki(&root, serde_json::json!({"no_store": false})).await;
    let token = bao.token_file(dir.path(), "1h").await;
    let tls = TestCa::serving_files(&root, &dir.path().join("tls"));
    std::fs::write(dir.path().join("roots.pem"), &root.pem).unwrap();
    let ca = TestCa::start_with(Setup {
        tls: Some(tls),
        ca: format!(
            "reload_interval_secs = 1\nroots_file = \"{}\"\n",
            dir.path().join("roots.pem").display()
        ),
        signer: Some(format!(
            "[signer]\ntype = \"vault\"\naddress = \"{}\"\ntimeout_secs = 3\n[signer.auth]\n\
             method = \"token\"\ntoken_file = \"{}\"\n[signer.pki]\nmount = \"pki_int\"\nrole = \"spiffe\"\n",
            bao.addr(),
            token.display()
        )),
        root: Some(root),
        extra: trust_section(dir.path(), 600),
        ..Setup::default()
    })
    .await;
    let issuer = bao
        .api(reqwest::Method::GET, "pki_int/issuer/default/json", None)
        .await["data"]["certificate"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(eventually(Duration::from_secs(10), async || crl(&ca).await.is_some()).await);
    let (ok, text) = openssl_crl(&crl(&ca).await.unwrap(), &issuer, &["-text"]);
    assert!(ok, "Vault's CRL, verified: {text}");

    // castellan cannot put a serial into Vault's CRL, and says where to.
    let leaf = issue(&ca, "a").await.unwrap();
    let serial = serial_of(&leaf);
    let (code, out) = revoke(&config_path(&ca), &["--serial", &serial]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("revoke the leaf in Vault"), "{out}");

    // Revoked in Vault: castellan publishes Vault's new CRL.
    let colon: Vec<String> = serial
        .as_bytes()
        .chunks(2)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect();
    bao.post(
        "pki_int/revoke",
        serde_json::json!({"serial_number": colon.join(":")}),
    )
    .await;
    let root_pem = ca.root.pem.clone();
    assert!(
        eventually(Duration::from_secs(10), async || {
            crl(&ca)
                .await
                .is_some_and(|c| !verify_with_crl(&leaf, &root_pem, &c).0)
        })
        .await,
        "the leaf Vault revoked fails openssl's CRL check with castellan's CRL"
    );
    // Another leaf passes Envoy's rule and ztunnel's with the same set:
    // Vault's CRL for its issuer and the root's.
    let good = issue(&ca, "b").await.unwrap();
    let set = crl(&ca).await.unwrap();
    assert_eq!(set.matches("BEGIN X509 CRL").count(), 2, "{set}");
    crate::support::verify::envoy(&good, &root_pem, &set).unwrap();
    crate::support::verify::ztunnel(&good, &ca.root.der, &set).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crl_that_cannot_be_signed_leaves_the_last_good_one_in_place() {
    castellan_testkit::require!(castellan_testkit::tools::Tool::OpenBao);
    let bao = crate::support::bao::Bao::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert) = transit_ca(&bao, dir.path(), 2).await;
    let issuer = std::fs::read_to_string(&cert).unwrap();
    assert!(eventually(Duration::from_secs(10), async || crl(&ca).await.is_some()).await);
    let good = crl(&ca).await.unwrap();
    let leaf = issue(&ca, "a").await.unwrap();

    // Vault sealed: the revocation cannot be signed; the last CRL stays,
    // valid, instead of an empty or unsigned one.
    bao.seal().await;
    let (code, out) = revoke(&config_path(&ca), &["--serial", &serial_of(&leaf)]);
    assert_eq!(code, 0, "{out}");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let during = crl(&ca).await.expect("a CRL is still served");
    assert_eq!(during, good, "the last good CRL, unchanged");
    assert!(openssl_crl(&during, &issuer, &[]).0);

    // Unsealed: the revocation reaches the CRL.
    bao.unseal().await;
    let root_pem = ca.root.pem.clone();
    assert!(
        eventually(Duration::from_secs(30), async || {
            crl(&ca).await.is_some_and(|c| {
                openssl_crl(&c, &issuer, &[]).0 && !verify_with_crl(&leaf, &root_pem, &c).0
            })
        })
        .await,
        "signed once Vault is back"
    );
}

/// castellan signing through an OpenBao Transit key certified by a root of
/// its own, with `[trust.crl]`, Vault calls timing out after `timeout_secs`.
/// Returns the CA and the intermediate's certificate file.
async fn transit_ca(
    bao: &crate::support::bao::Bao,
    dir: &Path,
    timeout_secs: u64,
) -> (TestCa, PathBuf) {
    bao.policy().await;
    let token = bao.token_file(dir, "1h").await;
    let root = Ca::root("Transit CRL Root", KeyAlg::EcP256);
    let cert = bao.transit(&root, "ecdsa-p256", dir).await;
    let ca = TestCa::start_with(Setup {
        signer: Some(format!(
            "[signer]\ntype = \"vault\"\naddress = \"{}\"\ntimeout_secs = {timeout_secs}\n\
             [signer.auth]\nmethod = \"token\"\ntoken_file = \"{}\"\n[signer.transit]\n\
             key = \"castellan\"\ncert_file = \"{}\"\nroot_file = \"{}\"\n",
            bao.addr(),
            token.display(),
            cert.display(),
            dir.join("root.pem").display()
        )),
        root: Some(root),
        extra: trust_section(dir, 600),
        ..Setup::default()
    })
    .await;
    (ca, cert)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signing_ca_without_crl_sign_is_refused_when_crls_are_on() {
    let aux = tempfile::tempdir().unwrap();
    let files = crate::support::Files::write(Setup {
        extra: trust_section(aux.path(), 600),
        ..Setup::default()
    });
    let config = Config::load(&files.config).unwrap();
    crate::support::init_trust(&config).await;
    let no_crl_sign = files.root.intermediate("No CRL Sign", KeyAlg::EcP256, |p| {
        p.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
    });
    crate::support::pki::write_cacerts(
        &files.dir.path().join("ca"),
        &no_crl_sign,
        &[&no_crl_sign, &files.root],
        &files.root.pem,
    );
    let check = Command::new(env!("CARGO_BIN_EXE_castellan"))
        .args(["check", "--config"])
        .arg(&files.config)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&check.stdout).into_owned();
    assert_eq!(check.status.code(), Some(1), "{out}");
    assert!(
        out.contains("FAIL  the signing CA can sign CRLs") && out.contains("cRLSign"),
        "{out}"
    );
    let e = server::start(&config)
        .await
        .expect_err("serve refuses what check fails")
        .to_string();
    assert!(e.contains("cRLSign") && e.contains("ca-cert.pem"), "{e}");
}
