//! `castellan demo`: a complete local CA from nothing. An offline root (its
//! key discarded once the intermediate is signed), an intermediate in the
//! Istio `cacerts` layout, a token issuer standing in for the Kubernetes API
//! server, and a real castellan serving with them. Run again on the same
//! folder, it reuses the material, so certificates saved earlier still
//! verify.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::ExitCode,
};

use super::{KeyType, pki::DemoPki, token::TokenIssuer};
use crate::config::Config;

/// Writes to stderr, ignoring a closed stderr: the demo keeps serving when
/// whoever started it stops reading (`eprintln!` would panic).
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// The `iss` of demo tokens.
pub(super) const DEMO_ISSUER: &str = "https://castellan.demo";
const TOKEN_TTL_SECS: u64 = 7 * 24 * 3600;

/// How the demo runs.
#[derive(Debug)]
pub(super) struct Options {
    pub(super) listen: SocketAddr,
    pub(super) metrics_listen: SocketAddr,
    pub(super) key_type: KeyType,
    pub(super) kubeconfig: Option<PathBuf>,
}

/// Why the demo could not prepare its folder.
#[derive(Debug, thiserror::Error)]
pub(super) enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("generating the demo PKI: {0}")]
    Pki(#[from] rcgen::Error),
    #[error("demo tokens: {0}")]
    Token(#[from] super::token::Error),
}

pub(super) async fn run(dir: &Path, options: &Options) -> ExitCode {
    let (config_path, reused) = match prepare(dir, options) {
        Ok(p) => p,
        Err(e) => {
            say!("castellan demo: {e}");
            return ExitCode::from(super::EXIT_UNUSABLE);
        }
    };
    if reused {
        say!(
            "castellan demo: reusing the root, intermediate and token key in {} (certificates \
             saved earlier still verify; remove the folder for a fresh PKI)",
            dir.display()
        );
    }
    let config = match Config::load(&config_path) {
        Ok(c) => c,
        Err(e) => {
            say!("castellan demo: {e}");
            return ExitCode::from(super::EXIT_UNUSABLE);
        }
    };
    let running = match crate::server::start(&config).await {
        Ok(r) => r,
        Err(e) => {
            say!("castellan demo: {e}");
            return ExitCode::from(super::EXIT_UNUSABLE);
        }
    };
    // The command as it can be typed here, whether or not it is on PATH.
    let me = std::env::current_exe()
        .map_or_else(|_| "castellan".to_owned(), |p| p.display().to_string());
    let d = dir.display();
    say!(
        "castellan demo: serving on {addr}, metrics on {metrics}; material in {d}\n  \
         ask for a certificate:  {me} request --addr https://localhost:{port} --root {d}/root-cert.pem --token {d}/token --out {d}/out\n  \
         check the CA:           {me} check --config {d}/castellan.toml\n  \
         another identity:       {me} token --dir {d} --namespace payments --service-account api > {d}/token2",
        addr = running.addr,
        metrics = running
            .metrics_addr
            .map_or_else(|| "-".to_owned(), |a| a.to_string()),
        port = running.addr.port(),
    );
    match crate::server::run_until_terminated(running, &config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            say!("castellan demo: {e}");
            ExitCode::from(super::EXIT_PRACTICE)
        }
    }
}

/// Writes (or reuses) the demo's files; returns the config path and
/// whether earlier material was reused.
fn prepare(dir: &Path, options: &Options) -> Result<(PathBuf, bool), Error> {
    let ca_dir = dir.join("ca");
    std::fs::create_dir_all(&ca_dir).map_err(|source| Error::Io {
        path: ca_dir.clone(),
        source,
    })?;
    let key_path = dir.join("token-signing-key.pem");
    let reused = ca_dir.join("ca-cert.pem").exists()
        && ca_dir.join("ca-key.pem").exists()
        && dir.join("root-cert.pem").exists()
        && key_path.exists();
    let tokens = if reused {
        let key = read(&key_path)?;
        TokenIssuer::from_pkcs8_pem(DEMO_ISSUER, key.as_bytes())?
    } else {
        let pki = DemoPki::generate(options.key_type, "castellan demo")?;
        let (tokens, token_key) = TokenIssuer::generate(DEMO_ISSUER)?;
        let chain = format!("{}{}", pki.intermediate_pem, pki.root_pem);
        write(&ca_dir.join("ca-cert.pem"), &pki.intermediate_pem, false)?;
        write(&ca_dir.join("ca-key.pem"), &pki.intermediate_key_pem, true)?;
        write(&ca_dir.join("cert-chain.pem"), &chain, false)?;
        write(&ca_dir.join("root-cert.pem"), &pki.root_pem, false)?;
        write(&dir.join("root-cert.pem"), &pki.root_pem, false)?;
        write(&key_path, &token_key, true)?;
        tokens
    };
    // A fresh token each run, from the same key: old ones stay valid.
    let token = tokens.mint(
        "default",
        "default",
        crate::config::DEFAULT_AUDIENCE,
        TOKEN_TTL_SECS,
    )?;
    write(&dir.join("token"), &token, true)?;
    write(&dir.join("jwks.json"), tokens.jwks(), false)?;
    let kubeconfig = match &options.kubeconfig {
        Some(k) => Some(std::path::absolute(k).map_err(|source| Error::Io {
            path: k.clone(),
            source,
        })?),
        None => None,
    };
    let config = dir.join("castellan.toml");
    write(&config, &config_text(options, kubeconfig.as_deref()), false)?;
    Ok((config, reused))
}

/// Mints a demo token for `namespace/service_account` with the demo's key.
///
/// # Errors
/// When the demo folder has no token key (run `castellan demo` first).
pub(super) fn mint(
    dir: &Path,
    namespace: &str,
    service_account: &str,
    ttl_secs: u64,
) -> Result<String, Error> {
    let key = read(&dir.join("token-signing-key.pem"))?;
    let tokens = TokenIssuer::from_pkcs8_pem(DEMO_ISSUER, key.as_bytes())?;
    Ok(tokens.mint(
        namespace,
        service_account,
        crate::config::DEFAULT_AUDIENCE,
        ttl_secs,
    )?)
}

/// The demo's configuration; paths are relative to its folder.
fn config_text(options: &Options, kubeconfig: Option<&Path>) -> String {
    let listen = options.listen;
    let metrics = options.metrics_listen;
    // The demo issuer first: it recognises only its own tokens, and every
    // other token goes on to the cluster.
    let tokenreview = kubeconfig.map_or_else(String::new, |k| {
        format!(
            "\n[[authn]]\ntype = \"tokenreview\"\nkubeconfig = \"{}\"\n",
            k.display()
        )
    });
    format!(
        r#"# Written by `castellan demo`. A local CA: the root is offline (its key was
# discarded), the intermediate lives in ./ca, tokens come from ./jwks.json.
# Paths are relative to this file's folder.
trust_domain = "cluster.local"

[server]
listen = "{listen}"
metrics_listen = "{metrics}"

[server.tls]
dns_names = ["localhost"]
ip_addresses = ["127.0.0.1", "::1"]

[issuance]
default_ttl_secs = 86400
max_ttl_secs = 86400

[signer]
type = "file"
dir = "ca"

[[authn]]
type = "jwt"
issuers = ["{DEMO_ISSUER}"]
audiences = ["istio-ca"]
jwks_file = "jwks.json"
{tokenreview}"#
    )
}

fn read(path: &Path) -> Result<zeroize::Zeroizing<String>, Error> {
    std::fs::read_to_string(path)
        .map(zeroize::Zeroizing::new)
        .map_err(|source| Error::Io {
            path: path.to_owned(),
            source,
        })
}

/// Writes `contents`; secrets are created with mode 0600 (never readable
/// by others, not even for an instant).
pub(super) fn write(path: &Path, contents: &str, secret: bool) -> Result<(), Error> {
    let io = |source| Error::Io {
        path: path.to_owned(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        options.mode(0o600);
        // An existing file keeps its mode on open: set it first.
        if path.exists() {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
        }
    }
    let mut file = options.open(path).map_err(io)?;
    std::io::Write::write_all(&mut file, contents.as_bytes()).map_err(io)
}
