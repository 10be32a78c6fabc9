//! Signing material castellan must refuse at start, with a message naming the
//! file and the fix; and the layouts and key formats it must accept.

use std::path::Path;

use castellan::{config::Config, server};
use rcgen::{IsCa, KeyUsagePurpose};
use time::{Duration, OffsetDateTime};

use crate::support::{
    ISSUER, KeyAlg,
    pki::{self, Ca},
};

fn config(dir: &Path, extra: &str) -> String {
    let jwks = dir.join("jwks.json");
    std::fs::write(&jwks, r#"{"keys":[]}"#).unwrap();
    format!(
        r#"[server]
listen = "127.0.0.1:0"
metrics_listen = "127.0.0.1:0"
[server.tls]
dns_names = ["localhost"]
{extra}
[signer]
type = "file"
dir = "{ca}"
[[authn]]
type = "jwt"
issuers = ["{ISSUER}"]
jwks_file = "{jwks}"
"#,
        ca = dir.join("ca").display(),
        jwks = jwks.display(),
    )
}

async fn start(dir: &Path, extra: &str) -> Result<server::Running, String> {
    let path = dir.join("castellan.toml");
    std::fs::write(&path, config(dir, extra)).unwrap();
    let config = Config::load(&path).map_err(|e| e.to_string())?;
    server::start(&config).await.map_err(|e| e.to_string())
}

async fn refused(dir: &Path, extra: &str, needles: &[&str]) {
    let msg = start(dir, extra).await.expect_err("must refuse to start");
    for n in needles {
        assert!(msg.contains(n), "`{msg}` lacks `{n}`");
    }
}

#[tokio::test]
async fn self_signed_signing_certificate_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let root = Ca::root("Lonely Root", KeyAlg::EcP256);
    pki::write_cacerts(&dir.path().join("ca"), &root, &[&root], &root.pem);
    refused(
        dir.path(),
        "",
        &["self-signed", "ca-cert.pem", "SM-DR12", "intermediate"],
    )
    .await;
}

#[tokio::test]
async fn signing_certificate_that_is_not_a_ca_is_refused() {
    for (case, tweak) in [
        (
            "CA:false",
            Box::new(|p: &mut rcgen::CertificateParams| p.is_ca = IsCa::ExplicitNoCa)
                as Box<dyn Fn(&mut _)>,
        ),
        (
            "no keyCertSign",
            Box::new(|p: &mut rcgen::CertificateParams| {
                p.key_usages = vec![KeyUsagePurpose::DigitalSignature]
            }),
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let root = Ca::root("Root", KeyAlg::EcP256);
        let int = root.intermediate("Not A CA", KeyAlg::EcP256, |p| tweak(p));
        pki::write_cacerts(&dir.path().join("ca"), &int, &[&int, &root], &root.pem);
        let msg = start(dir.path(), "").await.expect_err(case);
        assert!(
            msg.contains("not a CA certificate") && msg.contains("ca-cert.pem"),
            "{case}: {msg}"
        );
    }
}

#[tokio::test]
async fn key_that_does_not_match_the_certificate_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let root = Ca::root("Root", KeyAlg::EcP256);
    let int = root.intermediate("Int", KeyAlg::EcP256, |_| {});
    let other = pki::key(KeyAlg::EcP256);
    pki::write_cacerts_key(
        &dir.path().join("ca"),
        &int,
        &other.serialize_pem(),
        &[&int, &root],
        &root.pem,
    );
    refused(dir.path(), "", &["does not belong", "ca-cert.pem"]).await;
}

#[tokio::test]
async fn chain_that_does_not_reach_the_roots_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let root = Ca::root("Root", KeyAlg::EcP256);
    let int = root.intermediate("Int", KeyAlg::EcP256, |_| {});
    let stranger = Ca::root("Stranger Root", KeyAlg::EcP256);
    pki::write_cacerts(&dir.path().join("ca"), &int, &[&int], &stranger.pem);
    refused(dir.path(), "", &["does not chain", "UnknownIssuer"]).await;
}

#[tokio::test]
async fn missing_middle_intermediate_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let root = Ca::root("Root", KeyAlg::EcP256);
    let mid = root.intermediate("Mid", KeyAlg::EcP256, |p| {
        p.is_ca = IsCa::Ca(rcgen::BasicConstraints::Constrained(1));
    });
    let int = mid.intermediate("Int", KeyAlg::EcP256, |_| {});
    pki::write_cacerts(&dir.path().join("ca"), &int, &[&int, &root], &root.pem);
    refused(dir.path(), "", &["does not chain"]).await;
}

#[tokio::test]
async fn configured_enterprise_roots_override_the_signers_root_file() {
    let dir = tempfile::tempdir().unwrap();
    let root = Ca::root("Root", KeyAlg::EcP256);
    let int = root.intermediate("Int", KeyAlg::EcP256, |_| {});
    pki::write_cacerts(&dir.path().join("ca"), &int, &[&int, &root], &root.pem);
    let enterprise = Ca::root("Enterprise Root", KeyAlg::EcP256);
    std::fs::write(dir.path().join("enterprise.pem"), &enterprise.pem).unwrap();
    let extra = format!(
        "[ca]\nroots_file = \"{}\"",
        dir.path().join("enterprise.pem").display()
    );
    refused(dir.path(), &extra, &["does not chain"]).await;
}

#[tokio::test]
async fn expired_or_soon_expiring_intermediates_are_refused() {
    let now = OffsetDateTime::now_utc();
    for (case, not_after, needle) in [
        ("expired", now - Duration::hours(1), "expired"),
        (
            "shorter than max TTL",
            now + Duration::hours(2),
            "expires sooner",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let root = Ca::root("Root", KeyAlg::EcP256);
        let int = root.intermediate("Int", KeyAlg::EcP256, |p| {
            p.not_before = now - Duration::days(2);
            p.not_after = not_after;
        });
        pki::write_cacerts(&dir.path().join("ca"), &int, &[&int, &root], &root.pem);
        let msg = start(dir.path(), "").await.expect_err(case);
        assert!(
            msg.contains(needle) && msg.contains("ca-cert.pem"),
            "{case}: {msg}"
        );
    }
}

#[tokio::test]
async fn no_root_anywhere_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let root = Ca::root("Root", KeyAlg::EcP256);
    let int = root.intermediate("Int", KeyAlg::EcP256, |_| {});
    let ca = dir.path().join("ca");
    std::fs::create_dir_all(&ca).unwrap();
    std::fs::write(ca.join("ca-cert.pem"), &int.pem).unwrap();
    std::fs::write(ca.join("ca-key.pem"), int.key.serialize_pem()).unwrap();
    refused(dir.path(), "", &["no root certificates", "ca.roots_file"]).await;
}

#[tokio::test]
async fn unknown_layout_and_missing_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("ca")).unwrap();
    refused(dir.path(), "", &["ca-cert.pem", "tls.crt"]).await;
}

#[tokio::test]
async fn encrypted_key_is_refused_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let root = Ca::root("Root", KeyAlg::EcP256);
    let int = root.intermediate("Int", KeyAlg::EcP256, |_| {});
    let encrypted = openssl(
        &[
            "pkcs8",
            "-topk8",
            "-v2",
            "aes256",
            "-passout",
            "pass:secret",
        ],
        &int.key.serialize_pem(),
    );
    assert!(encrypted.contains("ENCRYPTED PRIVATE KEY"));
    pki::write_cacerts_key(
        &dir.path().join("ca"),
        &int,
        &encrypted,
        &[&int, &root],
        &root.pem,
    );
    refused(dir.path(), "", &["encrypted", "ca-key.pem"]).await;
}

#[tokio::test]
async fn sec1_and_pkcs1_keys_are_accepted() {
    for alg in [KeyAlg::EcP256, KeyAlg::EcP384, KeyAlg::Rsa2048] {
        let dir = tempfile::tempdir().unwrap();
        let root = Ca::root("Root", KeyAlg::EcP256);
        let int = root.intermediate("Int", alg, |_| {});
        let traditional = openssl(&["pkey", "-traditional"], &int.key.serialize_pem());
        let label = if alg == KeyAlg::Rsa2048 {
            "RSA PRIVATE KEY"
        } else {
            "EC PRIVATE KEY"
        };
        assert!(traditional.contains(label), "{traditional}");
        pki::write_cacerts_key(
            &dir.path().join("ca"),
            &int,
            &traditional,
            &[&int, &root],
            &root.pem,
        );
        let running = start(dir.path(), "")
            .await
            .unwrap_or_else(|e| panic!("{alg:?}: {e}"));
        running.shutdown();
    }
}

#[tokio::test]
async fn kubernetes_tls_layout_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let root = Ca::root("Root", KeyAlg::EcP256);
    let int = root.intermediate("Int", KeyAlg::EcP256, |_| {});
    let ca = dir.path().join("ca");
    std::fs::create_dir_all(&ca).unwrap();
    std::fs::write(ca.join("tls.crt"), &int.pem).unwrap();
    std::fs::write(ca.join("tls.key"), int.key.serialize_pem()).unwrap();
    std::fs::write(ca.join("ca.crt"), &root.pem).unwrap();
    let running = start(dir.path(), "").await.unwrap();
    assert_eq!(running.ca.current().chain().len(), 1);
    running.shutdown();
}

#[tokio::test]
async fn chain_files_in_any_order_are_put_in_path_order() {
    let dir = tempfile::tempdir().unwrap();
    let root = Ca::root("Root", KeyAlg::EcP256);
    let mid = root.intermediate("Mid", KeyAlg::EcP256, |p| {
        p.is_ca = IsCa::Ca(rcgen::BasicConstraints::Constrained(1));
    });
    let int = mid.intermediate("Int", KeyAlg::EcP256, |_| {});
    let unrelated =
        Ca::root("Unrelated", KeyAlg::EcP256).intermediate("Stray", KeyAlg::EcP256, |_| {});
    pki::write_cacerts(
        &dir.path().join("ca"),
        &int,
        &[&root, &unrelated, &mid, &int],
        &root.pem,
    );
    let running = start(dir.path(), "").await.unwrap();
    let chain = running.ca.current().chain().to_vec();
    assert_eq!(
        chain,
        vec![int.der.clone().into(), mid.der.clone().into()],
        "signing cert, then mid; stray and root left out"
    );
    running.shutdown();
}

pub fn openssl(args: &[&str], stdin: &str) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new("openssl")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("openssl is installed by scripts/test.sh");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}
