//! What reaches castellan's log, read from a real `castellan serve`
//! process: untrusted request values never do, and each request is one line
//! even when the API server fails underneath it.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use castellan::cli::request;
use tonic::Code;

use crate::support::{
    Files, Setup, csr, eventually, id,
    kube::{FakeKube, Mode},
};

/// A castellan process whose stderr is collected.
pub struct Process {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
    addr: std::net::SocketAddr,
    pub files: Files,
}

impl Process {
    pub async fn start(setup: Setup) -> Self {
        Self::spawn(setup, false).await
    }

    /// With `deaf`, the log is read only until castellan serves; then the
    /// read end of its stderr is closed.
    async fn spawn(setup: Setup, deaf: bool) -> Self {
        let files = Files::write(setup);
        let mut child = Command::new(env!("CARGO_BIN_EXE_castellan"))
            .args(["serve", "--config"])
            .arg(&files.config)
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let line = line.unwrap_or_default();
                let serving = line.contains("addr=");
                sink.lock().unwrap().push(line);
                if deaf && serving {
                    return;
                }
            }
        });
        let found = Arc::clone(&log);
        let mut addr = None;
        eventually(Duration::from_secs(20), async || {
            addr = found.lock().unwrap().iter().find_map(|l| {
                l.split("addr=")
                    .nth(1)?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            });
            addr.is_some()
        })
        .await;
        Self {
            child,
            log,
            addr: addr.expect("castellan started"),
            files,
        }
    }

    async fn send(
        &self,
        csr: &str,
        token: &str,
        cluster: &str,
        meta: Option<(&str, &str)>,
    ) -> Result<(), Code> {
        let mut req = request::request_for(csr, 600, token, cluster).unwrap();
        if let Some((k, v)) = meta {
            req.get_mut().metadata.as_mut().unwrap().fields.insert(
                k.into(),
                prost_types::Value {
                    kind: Some(prost_types::value::Kind::StringValue(v.to_owned())),
                },
            );
        }
        let mut client = request::connect(
            &format!("https://localhost:{}", self.addr.port()),
            None,
            self.files.root.pem.as_bytes(),
        )
        .await
        .unwrap();
        client
            .create_certificate(req)
            .await
            .map(|_| ())
            .map_err(|s| s.code())
    }

    /// The log so far, as it is now.
    pub fn lines(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// The operational listener's address, from the `castellan serving` line.
    pub fn metrics_url(&self) -> String {
        let line = self
            .lines()
            .into_iter()
            .find(|l| l.contains("castellan serving"))
            .unwrap();
        let addr = line
            .split("metrics=Some(")
            .nth(1)
            .and_then(|r| r.split(')').next())
            .unwrap()
            .to_owned();
        format!("http://{addr}")
    }

    /// The log so far, after it has settled.
    async fn log(&self) -> Vec<String> {
        tokio::time::sleep(Duration::from_millis(300)).await;
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_request_values_never_reach_the_log() {
    let p = Process::start(Setup::default()).await;
    let (_, csr) = csr::ztunnel(&id("ns", "sa"));
    let token = p.files.tokens.mint("ns", "sa", "istio-ca", 3600).unwrap();
    // A token pasted into the clusterid header, junk as the impersonated identity.
    let secret_cluster = "eyJhbGciOiJSUzI1NiJ9.c2VjcmV0LWluLXRoZS1oZWFkZXI.c2ln";
    let junk_identity = "eyJzZWNyZXQiOiJub3QtYW4taWRlbnRpdHkifQ";
    let _ = p.send(&csr, &token, secret_cluster, None).await;
    let _ = p
        .send(
            &csr,
            &token,
            "Kubernetes",
            Some(("ImpersonatedIdentity", junk_identity)),
        )
        .await;
    let log = p.log().await.join("\n");
    assert!(!log.contains(secret_cluster), "{log}");
    assert!(!log.contains("c2VjcmV0LWluLXRoZS1oZWFkZXI"), "{log}");
    assert!(!log.contains(junk_identity), "{log}");
    assert!(log.contains("<not a SPIFFE ID>"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_server_answering_503_is_one_line_per_request() {
    let kube = FakeKube::start().await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = kube.kubeconfig(dir.path(), "local");
    let p = Process::start(Setup {
        authn_sections: Some(format!(
            "[[authn]]\ntype = \"tokenreview\"\nkubeconfig = \"{}\"\ntimeout_secs = 2\n",
            kubeconfig.display()
        )),
        ..Setup::default()
    })
    .await;
    kube.set_mode(Mode::Unavailable);
    let (_, csr) = csr::ztunnel(&id("ns", "sa"));
    for n in 0..3 {
        let t = p
            .files
            .tokens
            .mint("ns", &format!("sa{n}"), "istio-ca", 3600)
            .unwrap();
        assert_eq!(
            p.send(&csr, &t, "Kubernetes", None).await,
            Err(Code::Unavailable)
        );
    }
    let log = p.log().await;
    let requests = log
        .iter()
        .filter(|l| l.contains("CreateCertificate"))
        .count();
    let errors = log.iter().filter(|l| l.contains("ERROR")).count();
    assert_eq!(requests, 3, "{log:#?}");
    assert_eq!(errors, 0, "no ERROR line per internal retry: {log:#?}");
    // An unknown cluster is named as such, not as a malformed token.
    let t = p.files.tokens.mint("ns", "sa", "istio-ca", 3600).unwrap();
    assert_eq!(
        p.send(&csr, &t, "elsewhere", None).await,
        Err(Code::Unauthenticated)
    );
    let log = p.log().await.join("\n");
    assert!(log.contains("names no configured cluster"), "{log}");
    assert!(!log.contains("not a JWT"), "{log}");
}

/// Lines are written by a thread of their own, yet none is lost at exit:
/// after SIGTERM every request's line and the last word (`stopped`, logged
/// just before the process ends) are there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_line_is_written_before_exit() {
    let mut p = Process::start(Setup::default()).await;
    let (_, csr) = csr::ztunnel(&id("ns", "sa"));
    let token = p.files.tokens.mint("ns", "sa", "istio-ca", 3600).unwrap();
    for _ in 0..20 {
        p.send(&csr, &token, "Kubernetes", None).await.unwrap();
    }
    let term = Command::new("kill")
        .args(["-TERM", &p.child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let status = p.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let log = Arc::clone(&p.log);
    let complete = eventually(Duration::from_secs(5), async || {
        log.lock()
            .unwrap()
            .last()
            .is_some_and(|l| l.ends_with("stopped"))
    })
    .await;
    let log = p.log.lock().unwrap().clone();
    assert!(complete, "the last line is `stopped`: {log:#?}");
    let issued = log
        .iter()
        .filter(|l| l.contains("CreateCertificate"))
        .count();
    assert_eq!(issued, 20, "{log:#?}");
    assert!(log.iter().any(|l| l.contains("shutting down")), "{log:#?}");
}

/// A log sink that went away (its reader closed the pipe) loses lines but
/// takes nothing down: castellan goes on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_log_pipe_does_not_stop_serving() {
    let mut p = Process::spawn(Setup::default(), true).await;
    let (_, csr) = csr::ztunnel(&id("ns", "sa"));
    let token = p.files.tokens.mint("ns", "sa", "istio-ca", 3600).unwrap();
    for _ in 0..200 {
        p.send(&csr, &token, "Kubernetes", None).await.unwrap();
    }
    assert!(
        p.child.try_wait().unwrap().is_none(),
        "castellan still runs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_several_issuers_each_line_names_its_issuer_and_never_a_forged_cert_signer() {
    let dir = tempfile::tempdir().unwrap();
    let root = crate::support::Ca::root("Payments Root", crate::support::KeyAlg::EcP256);
    let int = root.intermediate(
        "Payments Intermediate",
        crate::support::KeyAlg::EcP256,
        |_| {},
    );
    crate::support::pki::write_cacerts(&dir.path().join("pay"), &int, &[&int, &root], &root.pem);
    let p = Process::start(Setup {
        extra: format!(
            "[[issuers]]\nname = \"payments\"\nnamespaces = [\"payments\"]\n[issuers.signer]\ntype = \"file\"\ndir = \"{}\"\n",
            dir.path().join("pay").display()
        ),
        ..Setup::default()
    })
    .await;
    let (_, csr) = csr::istio_agent(&id("payments", "api"));
    let token = p
        .files
        .tokens
        .mint("payments", "api", "istio-ca", 3600)
        .unwrap();
    p.send(&csr, &token, "Kubernetes", None).await.unwrap();
    let forged = "eyJzZWNyZXQiOiJmb3JnZWQtc2lnbmVyIn0";
    assert_eq!(
        p.send(&csr, &token, "Kubernetes", Some(("CertSigner", forged)))
            .await,
        Err(Code::PermissionDenied)
    );
    let log = p.log().await.join("\n");
    assert!(!log.contains(forged), "{log}");
    assert!(
        log.lines()
            .any(|l| l.contains("outcome=\"issued\"") && l.contains("issuer=\"payments\"")),
        "{log}"
    );
    assert!(
        log.lines().any(|l| l.contains("PermissionDenied")
            && l.contains("issuer=\"-\"")
            && l.contains("accepts `payments`")),
        "{log}"
    );
}
