//! `castellan check` and `castellan serve` agree, from the same code: what
//! check fails, serve refuses, with one exit-code scheme (1: a practice
//! fails; 2: the configuration or something it names cannot be used), and a
//! waived practice is reported by both. Plus the first ten minutes of a
//! user with the demo.

use std::process::{Command, Output};

use crate::support::{
    Files, Setup,
    pki::{self, Ca, KeyAlg},
};

const BIN: &str = env!("CARGO_BIN_EXE_castellan");

pub fn run(args: &[&str], config: &std::path::Path) -> Output {
    Command::new(BIN)
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap()
}

pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// check and serve on the same files: both must give `code`.
pub fn both(files: &Files, code: i32, needle: &str) -> (String, String) {
    let check = run(&["check"], &files.config);
    let serve = run(&["serve"], &files.config);
    assert_eq!(check.status.code(), Some(code), "check: {}", text(&check));
    assert_eq!(serve.status.code(), Some(code), "serve: {}", text(&serve));
    assert!(text(&check).contains(needle), "check: {}", text(&check));
    assert!(text(&serve).contains(needle), "serve: {}", text(&serve));
    (text(&check), text(&serve))
}

#[test]
fn days_long_certificates_are_refused_by_both_unless_waived() {
    let files = Files::write(Setup {
        issuance: "default_ttl_secs = 86400\nmax_ttl_secs = 604800".into(),
        ..Setup::default()
    });
    both(&files, 1, "SM-DR13");

    let waived =
        std::fs::read_to_string(&files.config).unwrap() + "\n[practices]\nwaive = [\"SM-DR13\"]\n";
    std::fs::write(&files.config, waived).unwrap();
    let check = run(&["check"], &files.config);
    assert!(check.status.success(), "{}", text(&check));
    assert!(text(&check).contains("WAIVED  SM-DR13"), "{}", text(&check));
    // serve starts, and says so loudly; stopped once it has.
    let mut serve = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&files.config)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(serve.stderr.take().unwrap());
    let mut seen = String::new();
    while !seen.contains("castellan serving") {
        let mut line = String::new();
        if std::io::BufRead::read_line(&mut stderr, &mut line).unwrap() == 0 {
            break;
        }
        seen.push_str(&line);
    }
    let _ = serve.kill();
    let _ = serve.wait();
    assert!(
        seen.contains("WAIVED") && seen.contains("castellan serving"),
        "{seen}"
    );
}

#[test]
fn a_missing_jwks_file_stops_both() {
    let files = Files::write(Setup::default());
    std::fs::remove_file(files.dir.path().join("jwks.json")).unwrap();
    both(&files, 2, "jwks.json");
}

#[test]
fn an_intermediate_with_the_roots_key_is_refused_by_both() {
    let root = Ca::root("Enterprise Root", KeyAlg::EcP256);
    let files = Files::write(Setup {
        root: Some(Ca {
            params: root.params.clone(),
            key: rcgen::KeyPair::from_pem(&root.key.serialize_pem()).unwrap(),
            pem: root.pem.clone(),
            der: root.der.clone(),
        }),
        ..Setup::default()
    });
    // An "intermediate" signed by the root with the root's own key.
    let mut params = pki::ca_params("Disguised Intermediate", Some(0));
    params.use_authority_key_identifier_extension = true;
    let same_key = rcgen::KeyPair::from_pem(&root.key.serialize_pem()).unwrap();
    let disguised = root.sign(params, same_key);
    pki::write_cacerts_key(
        &files.dir.path().join("ca"),
        &disguised,
        &root.key.serialize_pem(),
        &[&disguised, &root],
        &root.pem,
    );
    both(&files, 1, "same key as");
}

#[test]
fn a_listen_address_that_is_not_local_stops_both() {
    let files = Files::write(Setup::default());
    let config = std::fs::read_to_string(&files.config).unwrap().replace(
        "listen = \"127.0.0.1:0\"\nmetrics",
        "listen = \"192.0.2.1:15012\"\nmetrics",
    );
    std::fs::write(&files.config, config).unwrap();
    both(&files, 2, "192.0.2.1:15012");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_demo_reuses_its_material_and_writes_secrets_0600() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let d = |f: &str| dir.path().join(f).display().to_string();
    let demo = |log: &str| {
        let mut child = Command::new(BIN)
            .args([
                "demo",
                "--dir",
                &d(""),
                "--listen",
                "127.0.0.1:0",
                "--metrics-listen",
                "127.0.0.1:0",
            ])
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
        let mut seen = String::new();
        while !seen.contains("ask for a certificate") {
            let mut line = String::new();
            if std::io::BufRead::read_line(&mut stderr, &mut line).unwrap() == 0 {
                break;
            }
            seen.push_str(&line);
        }
        assert!(seen.contains(log), "{seen}");
        (child, seen)
    };
    let (mut first, hint) = demo("serving on 127.0.0.1:");
    // The hint names the real port, a runnable command and --out.
    let port: u16 = hint
        .split("serving on 127.0.0.1:")
        .nth(1)
        .unwrap()
        .split(',')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_ne!(port, 0);
    assert!(
        hint.contains(&format!("https://localhost:{port}")),
        "{hint}"
    );
    assert!(hint.contains(BIN) && hint.contains("--out"), "{hint}");
    assert!(
        first.try_wait().unwrap().is_none(),
        "the demo is running: {hint}"
    );
    let out = Command::new(BIN)
        .args([
            "request",
            "--addr",
            &format!("https://localhost:{port}"),
            "--root",
            &d("root-cert.pem"),
            "--token",
            &d("token"),
            "--out",
            &d("out"),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    for secret in [
        "out/key.pem",
        "token",
        "token-signing-key.pem",
        "ca/ca-key.pem",
    ] {
        let mode = std::fs::metadata(d(secret)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{secret}");
    }
    let _ = first.kill();
    let _ = first.wait();

    // Run again on the same folder: the saved certificate still verifies.
    let (mut second, _) = demo("reusing the root");
    let verify = Command::new("openssl")
        .args([
            "verify",
            "-x509_strict",
            "-CAfile",
            &d("root-cert.pem"),
            "-untrusted",
            &d("ca/ca-cert.pem"),
        ])
        .arg(d("out/cert-chain.pem"))
        .output()
        .unwrap();
    assert!(verify.status.success(), "{}", text(&verify));
    let _ = second.kill();
    let _ = second.wait();

    let help = Command::new(BIN).args(["demo", "--help"]).output().unwrap();
    assert!(
        text(&help).contains("[default: 127.0.0.1:15014]"),
        "metrics on loopback by default"
    );
}
