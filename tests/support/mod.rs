//! What every test needs: a PKI, a token issuer, a running castellan, a client.

#![allow(dead_code)]

pub mod csr;
pub mod deploy;
pub mod h2c;
pub mod verify;

use std::{path::PathBuf, time::Duration};

use castellan::{
    cli::{request, token::TokenIssuer},
    config::Config,
    proto::{
        IstioCertificateResponse, istio_certificate_service_client::IstioCertificateServiceClient,
    },
    server::{self, Running},
};
use tempfile::TempDir;
use tonic::transport::Channel;

// The benches include this file too and use only part of it.
#[allow(unused_imports)]
pub use castellan_testkit::{bao, hsm, kube, pki, strings};
pub use pki::{Ca, KeyAlg};

pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
pub const TD: &str = "cluster.local";

/// A running castellan with its PKI and a token issuer its JWT authenticator trusts.
pub struct TestCa {
    pub running: Running,
    pub dir: TempDir,
    pub root: Ca,
    pub intermediate: Ca,
    pub tokens: TokenIssuer,
    /// PKCS#8 PEM of the token issuer's key, to forge odd tokens with.
    pub token_key: String,
}

/// How to set one up.
pub struct Setup {
    pub ca_alg: KeyAlg,
    /// Extra TOML appended to `[issuance]`.
    pub issuance: String,
    /// Extra TOML appended to `[server]`.
    pub server: String,
    /// Extra TOML for `[ca]`.
    pub ca: String,
    /// Replaces the JWT authenticator's JWKS source line (default: the file).
    pub jwks: Option<String>,
    /// Adds a second, unrelated root to the root bundle (root rotation).
    pub extra_root: bool,
    /// Extra TOML for the `[[authn]]` section.
    pub authn: String,
    /// Replaces the whole JWT `[[authn]]` section.
    pub authn_sections: Option<String>,
    /// Appended to the configuration (more tables).
    pub extra: String,
    /// Replaces the file `[signer]` section.
    pub signer: Option<String>,
    /// The root to use (the one an HSM intermediate chains to).
    pub root: Option<Ca>,
    /// Replaces the body of `[server.tls]`.
    pub tls: Option<String>,
    /// How long the intermediate is valid from now (default: the test CA's).
    pub intermediate_life: Option<Duration>,
    /// Create the `[trust]` record before starting, as `castellan trust
    /// init` does on a first install (default: yes).
    pub init_trust: bool,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            ca_alg: KeyAlg::EcP256,
            issuance: String::new(),
            server: String::new(),
            ca: "reload_interval_secs = 1\n".into(),
            jwks: None,
            extra_root: false,
            authn: String::new(),
            authn_sections: None,
            extra: String::new(),
            signer: None,
            root: None,
            tls: None,
            intermediate_life: None,
            init_trust: true,
        }
    }
}

impl TestCa {
    pub async fn start() -> Self {
        Self::start_with(Setup::default()).await
    }

    pub async fn start_with(setup: Setup) -> Self {
        let init = setup.init_trust;
        let files = Files::write(setup);
        let config = Config::load(&files.config).unwrap();
        if init {
            init_trust(&config).await;
        }
        let running = server::start(&config).await.unwrap();
        Self {
            running,
            dir: files.dir,
            root: files.root,
            intermediate: files.intermediate,
            tokens: files.tokens,
            token_key: files.token_key,
        }
    }

    pub fn addr(&self) -> String {
        format!("https://localhost:{}", self.running.addr.port())
    }

    /// Stops castellan and returns once it is gone, its HSM sessions
    /// included. A test holding `hsm::exclusive()` ends with it: the next
    /// one's token set-up resets the module in this process (C_Finalize),
    /// which must not happen under a castellan still signing.
    pub async fn close(self) {
        self.running.close().await;
    }

    pub async fn client(&self) -> IstioCertificateServiceClient<Channel> {
        request::connect(&self.addr(), None, self.root.pem.as_bytes())
            .await
            .unwrap()
    }

    pub fn token(&self, ns: &str, sa: &str) -> String {
        self.tokens.mint(ns, sa, "istio-ca", 3600).unwrap()
    }

    /// A client presenting `chain` (PEM, leaf first) and `key` as its TLS
    /// client certificate, as a VM renewing does.
    pub async fn client_with_certificate(
        &self,
        chain: &str,
        key: &str,
    ) -> IstioCertificateServiceClient<Channel> {
        let tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&self.root.pem))
            .domain_name("localhost")
            .identity(tonic::transport::Identity::from_pem(chain, key));
        let channel = tonic::transport::Endpoint::from_shared(self.addr())
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
            .unwrap();
        IstioCertificateServiceClient::new(channel)
    }

    /// Sends `csr` as `ns/sa` with istio-agent's headers.
    pub async fn send(
        &self,
        csr: &str,
        ns: &str,
        sa: &str,
        ttl: i64,
    ) -> Result<IstioCertificateResponse, tonic::Status> {
        self.send_token(csr, &self.token(ns, sa), ttl).await
    }

    pub async fn send_token(
        &self,
        csr: &str,
        token: &str,
        ttl: i64,
    ) -> Result<IstioCertificateResponse, tonic::Status> {
        let req = request::request_for(csr, ttl, token, "Kubernetes").unwrap();
        self.client()
            .await
            .create_certificate(req)
            .await
            .map(tonic::Response::into_inner)
    }

    pub fn ca_dir(&self) -> PathBuf {
        self.dir.path().join("ca")
    }

    pub fn metrics_url(&self) -> String {
        format!("http://{}", self.running.metrics_addr.unwrap())
    }

    /// A metric's value from `/metrics` (0 when absent).
    pub async fn metric(&self, name: &str) -> f64 {
        let (_, text) = http_get(&format!("{}/metrics", self.metrics_url())).await;
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    }

    /// The sum of a labelled metric's series that carry every `labels` pair.
    pub async fn metric_with(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let (_, text) = http_get(&format!("{}/metrics", self.metrics_url())).await;
        metric_sum(&text, name, labels)
    }

    /// The self-minted intermediate was replaced at least `times` times and
    /// no rotation was unavailable or refused.
    pub async fn assert_rotated_cleanly(&self, times: f64) {
        let rotated = self
            .metric_with("castellan_ca_rotations_count", &[("result", "rotated")])
            .await;
        assert!(rotated >= times, "rotated {rotated}");
        for result in ["unavailable", "refused"] {
            assert_eq!(
                self.metric_with("castellan_ca_rotations_count", &[("result", result)])
                    .await,
                0.0,
                "{result}"
            );
        }
    }

    /// `/readyz`'s status code.
    pub async fn readyz(&self) -> u16 {
        http_get(&format!("{}/readyz", self.metrics_url())).await.0
    }

    /// `[server.tls]` lines for a serving certificate from files, issued by
    /// this CA's root (for tests that must not depend on the intermediate).
    pub fn serving_files(root: &Ca, dir: &std::path::Path) -> String {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params
            .subject_alt_names
            .push(rcgen::SanType::IpAddress("127.0.0.1".parse().unwrap()));
        params.is_ca = rcgen::IsCa::ExplicitNoCa;
        let leaf = root.sign(params, pki::key(KeyAlg::EcP256));
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("serving.pem"), &leaf.pem).unwrap();
        std::fs::write(dir.join("serving-key.pem"), leaf.key.serialize_pem()).unwrap();
        format!(
            "cert_file = \"{}\"\nkey_file = \"{}\"\n",
            dir.join("serving.pem").display(),
            dir.join("serving-key.pem").display()
        )
    }
}

/// Everything a castellan needs on disk, written but not started (for
/// tests that run the binary).
pub struct Files {
    pub dir: TempDir,
    pub config: PathBuf,
    pub root: Ca,
    pub intermediate: Ca,
    pub tokens: TokenIssuer,
    pub token_key: String,
}

impl Files {
    pub fn write(setup: Setup) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut setup = setup;
        let root = setup
            .root
            .take()
            .unwrap_or_else(|| Ca::root("Test Root", setup.ca_alg));
        let life = setup.intermediate_life;
        let intermediate = root.intermediate("Test Intermediate", setup.ca_alg, |p| {
            if let Some(life) = life {
                p.not_after = time::OffsetDateTime::now_utc() + life;
            }
        });
        let mut roots = root.pem.clone();
        if setup.extra_root {
            roots.push_str(&Ca::root("Next Root", KeyAlg::EcP384).pem);
        }
        pki::write_cacerts(
            &dir.path().join("ca"),
            &intermediate,
            &[&intermediate, &root],
            &roots,
        );
        let (tokens, token_key) = TokenIssuer::generate(ISSUER).unwrap();
        std::fs::write(dir.path().join("jwks.json"), tokens.jwks()).unwrap();
        // The root's CRL, for `[trust.crl] upstream_files = ["@DIR@/root-crl.pem"]`.
        std::fs::write(
            dir.path().join("root-crl.pem"),
            root.crl(time::Duration::days(7), &[]),
        )
        .unwrap();
        setup.extra = setup
            .extra
            .replace("@DIR@", &dir.path().display().to_string());
        let config = config_text(dir.path().to_path_buf(), &setup);
        std::fs::write(dir.path().join("castellan.toml"), &config).unwrap();
        Self {
            config: dir.path().join("castellan.toml"),
            dir,
            root,
            intermediate,
            tokens,
            token_key: token_key.to_string(),
        }
    }
}

/// Creates the configured trust record unless it exists, as `castellan
/// trust init` does (the same code).
pub async fn init_trust(config: &Config) {
    for unit in config.units() {
        if let Some(store) = castellan::trust::store(&unit.config).await.unwrap() {
            store
                .init(castellan::clock::Clock::system().unix())
                .await
                .unwrap();
        }
    }
}

pub fn id(ns: &str, sa: &str) -> String {
    format!("spiffe://{TD}/ns/{ns}/sa/{sa}")
}

fn config_text(dir: PathBuf, s: &Setup) -> String {
    let d = dir.display();
    let jwks = s
        .jwks
        .clone()
        .unwrap_or_else(|| format!("jwks_file = \"{d}/jwks.json\""));
    format!(
        r#"trust_domain = "{TD}"
[server]
listen = "127.0.0.1:0"
metrics_listen = "127.0.0.1:0"
{server}
[server.tls]
{tls}
[issuance]
{issuance}
[ca]
{ca}
{signer}
{authn_sections}
{extra}
"#,
        signer = s
            .signer
            .clone()
            .unwrap_or_else(|| format!("[signer]\ntype = \"file\"\ndir = \"{d}/ca\"")),
        authn_sections = s.authn_sections.clone().unwrap_or_else(|| format!(
            "[[authn]]\ntype = \"jwt\"\nissuers = [\"{ISSUER}\"]\n{jwks}\n{}",
            s.authn
        )),
        extra = s.extra,
        server = s.server,
        tls = s.tls.clone().unwrap_or_else(|| {
            "dns_names = [\"localhost\"]\nip_addresses = [\"127.0.0.1\"]".into()
        }),
        issuance = s.issuance,
        ca = s.ca,
    )
}

/// Waits until `f` holds, up to `limit`.
pub async fn eventually(limit: Duration, mut f: impl AsyncFnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// Fetches a URL from the operational listener.
pub async fn http_get(url: &str) -> (u16, String) {
    let resp = reqwest::get(url).await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

/// The sum of the series of `name` in a Prometheus exposition that carry
/// every `labels` pair.
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A PEM bundle as the set of its certificates (order aside).
pub fn pki_certs(pem: &str) -> std::collections::BTreeSet<Vec<u8>> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .filter_map(Result::ok)
        .map(|c| c.to_vec())
        .collect()
}

/// The serial number of `chain`'s leaf, lowercase hex as castellan logs it.
pub fn serial_of(chain: &[String]) -> String {
    use der::Decode;
    use rustls_pki_types::pem::PemObject;
    let leaf = rustls_pki_types::CertificateDer::from_pem_slice(chain[0].as_bytes()).unwrap();
    castellan::profile::hex(
        x509_cert::Certificate::from_der(&leaf)
            .unwrap()
            .tbs_certificate()
            .serial_number()
            .as_bytes(),
    )
}

/// The issuer name of `chain`'s leaf.
pub fn issuer_of(chain: &[String]) -> String {
    use der::Decode;
    use rustls_pki_types::pem::PemObject;
    let leaf = rustls_pki_types::CertificateDer::from_pem_slice(chain[0].as_bytes()).unwrap();
    x509_cert::Certificate::from_der(&leaf)
        .unwrap()
        .tbs_certificate()
        .issuer()
        .to_string()
}
