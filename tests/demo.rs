//! The binary end to end: `castellan demo` serves, `castellan request` gets a
//! certificate from it like istio-agent would, `castellan check` reports.

use std::{
    io::BufRead,
    path::Path,
    process::{Child, Command, Output, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

const BIN: &str = env!("CARGO_BIN_EXE_castellan");

fn castellan(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

struct Demo {
    child: Child,
    stopped: bool,
    port: u16,
    metrics: u16,
    log: Arc<Mutex<Vec<String>>>,
}

impl Demo {
    /// The demo on ports the kernel picks; its hint says which.
    async fn start(dir: &Path, extra: &[&str]) -> Self {
        let mut child = Command::new(BIN)
            .args(["demo", "--dir"])
            .arg(dir)
            .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
            .args(extra)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (sink, stderr) = (Arc::clone(&log), child.stderr.take().unwrap());
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                sink.lock().unwrap().push(line.unwrap_or_default());
            }
        });
        let mut ports = None;
        let found = crate::support::eventually(Duration::from_secs(20), async || {
            ports = log.lock().unwrap().iter().find_map(|l| {
                let rest = l.split("serving on 127.0.0.1:").nth(1)?;
                let (port, rest) = rest.split_once(',')?;
                let metrics = rest
                    .split("metrics on 127.0.0.1:")
                    .nth(1)?
                    .split(';')
                    .next()?;
                Some((port.parse().ok()?, metrics.parse().ok()?))
            });
            ports.is_some()
        })
        .await;
        assert!(found, "no hint with the ports: {:?}", log.lock().unwrap());
        let (port, metrics) = ports.unwrap();
        Self {
            child,
            stopped: false,
            port,
            metrics,
            log,
        }
    }

    /// `castellan serve` on a config; its first log line says the address.
    async fn serve(config: &Path) -> Self {
        let mut child = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(config)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (sink, stderr) = (Arc::clone(&log), child.stderr.take().unwrap());
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                sink.lock().unwrap().push(line.unwrap_or_default());
            }
        });
        let mut port = None;
        crate::support::eventually(Duration::from_secs(20), async || {
            port = log.lock().unwrap().iter().find_map(|l| {
                let rest = l
                    .split("addr=127.0.0.1:")
                    .nth(1)
                    .or_else(|| l.split("\"addr\":\"127.0.0.1:").nth(1))?;
                rest.split(|c: char| !c.is_ascii_digit())
                    .next()?
                    .parse()
                    .ok()
            });
            port.is_some()
        })
        .await;
        Self {
            child,
            stopped: false,
            port: port.expect("serve started"),
            metrics: 0,
            log,
        }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// SIGTERM, then the exit status and everything it logged.
    fn stop(mut self) -> (bool, String) {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        let status = self.child.wait().unwrap();
        self.stopped = true;
        std::thread::sleep(Duration::from_millis(100));
        (status.success(), self.log())
    }
}

impl Drop for Demo {
    /// A failed test must not leave a castellan running.
    fn drop(&mut self) {
        if !self.stopped {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn demo_serves_and_request_gets_a_verified_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let demo = Demo::start(dir.path(), &[]).await;
    let d = |f: &str| dir.path().join(f).display().to_string();

    for key_type in ["ec-p256", "rsa-2048"] {
        let out_dir = d(&format!("out-{key_type}"));
        let out = castellan(&[
            "request",
            "--addr",
            &format!("https://localhost:{}", demo.port),
            "--root",
            &d("root-cert.pem"),
            "--token",
            &d("token"),
            "--key-type",
            key_type,
            "--ttl",
            "3600",
            "--out",
            &out_dir,
        ]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{key_type}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains("spiffe://cluster.local/ns/default/sa/default"),
            "{stdout}"
        );

        // The files istio-agent would hand Envoy verify with openssl, too.
        let chain = std::fs::read_to_string(format!("{out_dir}/cert-chain.pem")).unwrap();
        let blocks: Vec<&str> = chain
            .split_inclusive("-----END CERTIFICATE-----\n")
            .collect();
        assert_eq!(blocks.len(), 3);
        std::fs::write(format!("{out_dir}/leaf.pem"), blocks[0]).unwrap();
        std::fs::write(format!("{out_dir}/int.pem"), blocks[1]).unwrap();
        let verify = Command::new("openssl")
            .args([
                "verify",
                "-x509_strict",
                "-CAfile",
                &d("root-cert.pem"),
                "-untrusted",
                &format!("{out_dir}/int.pem"),
                &format!("{out_dir}/leaf.pem"),
            ])
            .output()
            .unwrap();
        assert!(
            verify.status.success(),
            "{}",
            String::from_utf8_lossy(&verify.stdout)
        );
        assert!(
            std::fs::read_to_string(format!("{out_dir}/key.pem"))
                .unwrap()
                .contains("PRIVATE KEY")
        );
    }

    // A token for another identity, minted from the command line.
    let minted = castellan(&[
        "token",
        "--dir",
        &d(""),
        "--namespace",
        "payments",
        "--service-account",
        "api",
    ]);
    assert!(minted.status.success(), "{minted:?}");
    std::fs::write(d("token2"), &minted.stdout).unwrap();
    let out = castellan(&[
        "request",
        "--addr",
        &format!("https://127.0.0.1:{}", demo.port),
        "--root",
        &d("root-cert.pem"),
        "--token",
        &d("token2"),
    ]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("spiffe://cluster.local/ns/payments/sa/api")
    );

    // Through a port-forward the address is loopback and the name is the
    // Service's: --server-name is what the serving certificate must carry.
    let named = |name: &str| {
        castellan(&[
            "request",
            "--addr",
            &format!("https://127.0.0.1:{}", demo.port),
            "--server-name",
            name,
            "--root",
            &d("root-cert.pem"),
            "--token",
            &d("token2"),
        ])
    };
    let right = named("localhost");
    assert!(right.status.success(), "{right:?}");
    let wrong = named("castellan.istio-system.svc");
    assert!(
        !wrong.status.success(),
        "a name the certificate lacks is refused"
    );
    assert!(
        String::from_utf8_lossy(&wrong.stderr).contains("connecting to"),
        "{wrong:?}"
    );

    let check = castellan(&["check", "--config", &d("castellan.toml")]);
    let report = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "{report}");
    assert_eq!(report.matches("PASS").count(), 8, "{report}");

    let metrics = reqwest::get(format!("http://127.0.0.1:{}/metrics", demo.metrics))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        // Two key types, the other identity, and the --server-name request.
        metrics.contains("citadel_server_success_cert_issuance_count 4"),
        "{metrics}"
    );

    let token = std::fs::read_to_string(d("token")).unwrap();
    let (clean_exit, logs) = demo.stop();
    assert!(clean_exit, "SIGTERM is a clean shutdown: {logs}");
    assert!(
        logs.contains("outcome=\"issued\""),
        "one line per request: {logs}"
    );
    assert!(
        !logs.contains(token.trim()),
        "the token never reaches the logs"
    );
    let sig = token.trim().rsplit('.').next().unwrap();
    assert!(!logs.contains(sig));

    // The root's key was discarded: the only keys on disk are the
    // intermediate's and the token issuer's.
    let mut keys = 0;
    for path in [d("ca/ca-key.pem"), d("token-signing-key.pem")] {
        assert!(
            std::fs::read_to_string(path)
                .unwrap()
                .contains("PRIVATE KEY")
        );
        keys += 1;
    }
    for entry in walk(dir.path()) {
        let text = std::fs::read_to_string(&entry).unwrap_or_default();
        if text.contains("PRIVATE KEY")
            && !entry.ends_with("ca-key.pem")
            && !entry.ends_with("token-signing-key.pem")
            && !entry.ends_with("key.pem")
        {
            panic!("unexpected key file {}", entry.display());
        }
    }
    assert_eq!(keys, 2);
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn check_fails_on_a_practice_and_serve_refuses_self_signed() {
    let dir = tempfile::tempdir().unwrap();
    let root = crate::support::pki::Ca::root("Self", crate::support::KeyAlg::EcP256);
    crate::support::pki::write_cacerts(&dir.path().join("ca"), &root, &[&root], &root.pem);
    std::fs::write(dir.path().join("jwks.json"), r#"{"keys":[]}"#).unwrap();
    let config = dir.path().join("castellan.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\n[server.tls]\ndns_names = [\"localhost\"]\n[issuance]\nmax_ttl_secs = 172800\n[signer]\ntype = \"file\"\ndir = \"{}\"\n[[authn]]\ntype = \"jwt\"\nissuers = [\"x\"]\njwks_file = \"{}\"\n",
            dir.path().join("ca").display(),
            dir.path().join("jwks.json").display()
        ),
    )
    .unwrap();
    let config = config.display().to_string();
    let check = castellan(&["check", "--config", &config]);
    let report = String::from_utf8_lossy(&check.stdout);
    assert_eq!(check.status.code(), Some(1), "{report}");
    assert!(
        report.contains("FAIL  SM-DR12 signing certificate is not self-signed"),
        "{report}"
    );
    assert!(report.contains("FAIL  SM-DR13"), "{report}");
    assert!(report.contains("48.0 h"), "{report}");

    let serve = castellan(&["serve", "--config", &config]);
    assert!(!serve.status.success());
    assert!(String::from_utf8_lossy(&serve.stderr).contains("self-signed"));
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_logs_one_json_line_per_request() {
    let dir = tempfile::tempdir().unwrap();
    let demo = Demo::start(dir.path(), &[]).await;
    let _ = demo.stop();
    let config_path = dir.path().join("castellan.toml");
    let config = std::fs::read_to_string(&config_path).unwrap();
    std::fs::write(
        &config_path,
        format!("{config}\n[log]\nformat = \"json\"\n"),
    )
    .unwrap();
    let served = Demo::serve(&config_path).await;
    let d = |f: &str| dir.path().join(f).display().to_string();
    let addr = format!("https://localhost:{}", served.port);
    let ok = crate::support::eventually(Duration::from_secs(10), async || {
        castellan(&[
            "request",
            "--addr",
            &addr,
            "--root",
            &d("root-cert.pem"),
            "--token",
            &d("token"),
        ])
        .status
        .success()
    })
    .await;
    assert!(ok);
    let (_, logs) = served.stop();
    let issued: Vec<serde_json::Value> = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["fields"]["outcome"] == "issued")
        .collect();
    assert_eq!(issued.len(), 1, "{logs}");
    let f = &issued[0]["fields"];
    assert_eq!(f["caller"], "spiffe://cluster.local/ns/default/sa/default");
    assert!(
        f["serial"].as_str().unwrap().len() == 32
            && f["not_after"].is_string()
            && f["latency_ms"].is_number()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn demo_also_accepts_a_clusters_tokens_with_a_kubeconfig() {
    let kube = crate::support::kube::FakeKube::start().await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = kube.kubeconfig(dir.path(), "demo-cluster");
    let demo = Demo::start(
        &dir.path().join("demo"),
        &["--kubeconfig", &kubeconfig.display().to_string()],
    )
    .await;
    let d = |f: &str| dir.path().join("demo").join(f).display().to_string();

    // A token the cluster issued (the demo's JWKS does not know its issuer).
    let (cluster_issuer, _) =
        castellan::cli::token::TokenIssuer::generate("https://kubernetes.default.svc").unwrap();
    let token = cluster_issuer
        .mint("payments", "ledger", "istio-ca", 600)
        .unwrap();
    kube.add_token(&token, "payments", "ledger", None);
    std::fs::write(d("cluster-token"), &token).unwrap();
    let addr = format!("https://localhost:{}", demo.port);
    let out = castellan(&[
        "request",
        "--addr",
        &addr,
        "--root",
        &d("root-cert.pem"),
        "--token",
        &d("cluster-token"),
    ]);
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("spiffe://cluster.local/ns/payments/sa/ledger"),
        "{out:?}"
    );
    assert_eq!(kube.reviews(), 1);
    // The demo's own token still works, without a TokenReview.
    let out = castellan(&[
        "request",
        "--addr",
        &addr,
        "--root",
        &d("root-cert.pem"),
        "--token",
        &d("token"),
    ]);
    assert!(out.status.success());
    assert_eq!(kube.reviews(), 1);
    let _ = demo.stop();
}
