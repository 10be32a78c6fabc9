//! `castellan demo`: a complete local CA from nothing. An offline root (its
//! key discarded once the intermediate is signed), an intermediate in the
//! Istio `cacerts` layout, a token issuer standing in for the Kubernetes API
//! server, and a real castellan serving with them.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::ExitCode,
};

use super::{KeyType, pki::DemoPki, token::TokenIssuer};
use crate::config::Config;

/// The `iss` of demo tokens.
pub const DEMO_ISSUER: &str = "https://castellan.demo";
const TOKEN_TTL_SECS: u64 = 7 * 24 * 3600;

/// How the demo runs.
#[derive(Debug)]
pub(super) struct Options {
    pub(super) listen: SocketAddr,
    pub(super) metrics_listen: Option<SocketAddr>,
    pub(super) key_type: KeyType,
    pub(super) kubeconfig: Option<PathBuf>,
}

pub(super) async fn run(dir: &Path, options: &Options) -> ExitCode {
    let config_path = match prepare(dir, options) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("castellan demo: {e}");
            return ExitCode::FAILURE;
        }
    };
    let config = match Config::load(&config_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("castellan demo: {e}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!(
        "castellan demo: material in {dir}\n  try: castellan request --addr https://{listen} --root {dir}/root-cert.pem --token {dir}/token",
        dir = dir.display(),
        listen = options.listen,
    );
    match crate::server::run(&config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("castellan demo: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Writes the demo's files and returns the config path.
fn prepare(dir: &Path, options: &Options) -> Result<PathBuf, String> {
    let ca_dir = dir.join("ca");
    std::fs::create_dir_all(&ca_dir).map_err(|e| format!("{}: {e}", ca_dir.display()))?;
    let pki = DemoPki::generate(options.key_type, "castellan demo").map_err(|e| e.to_string())?;
    let (tokens, token_key) = TokenIssuer::generate(DEMO_ISSUER).map_err(|e| e.to_string())?;
    let token = tokens
        .mint(
            "default",
            "default",
            crate::config::DEFAULT_AUDIENCE,
            TOKEN_TTL_SECS,
        )
        .map_err(|e| e.to_string())?;

    let chain = format!("{}{}", pki.intermediate_pem, pki.root_pem);
    let files: [(PathBuf, &str, bool); 9] = [
        (ca_dir.join("ca-cert.pem"), &pki.intermediate_pem, false),
        (ca_dir.join("ca-key.pem"), &pki.intermediate_key_pem, true),
        (ca_dir.join("cert-chain.pem"), &chain, false),
        (ca_dir.join("root-cert.pem"), &pki.root_pem, false),
        (dir.join("root-cert.pem"), &pki.root_pem, false),
        (dir.join("token"), &token, true),
        (dir.join("token-signing-key.pem"), &token_key, true),
        (dir.join("jwks.json"), tokens.jwks(), false),
        (
            dir.join("castellan.toml"),
            &config_text(&ca_dir, &dir.join("jwks.json"), options),
            false,
        ),
    ];
    for (path, contents, secret) in files {
        write(&path, contents, secret)?;
    }
    Ok(dir.join("castellan.toml"))
}

fn config_text(ca_dir: &Path, jwks: &Path, options: &Options) -> String {
    let listen = options.listen;
    let metrics = options
        .metrics_listen
        .map_or_else(String::new, |m| format!("metrics_listen = \"{m}\"\n"));
    // The demo issuer first: it recognises only its own tokens, and every
    // other token goes on to the cluster.
    let tokenreview = options.kubeconfig.as_ref().map_or_else(String::new, |k| {
        format!(
            "\n[[authn]]\ntype = \"tokenreview\"\nkubeconfig = \"{}\"\n",
            k.display()
        )
    });
    format!(
        r#"# Written by `castellan demo`. A local CA: the root is offline (its key was
# discarded), the intermediate lives in ./ca, tokens come from ./jwks.json.
trust_domain = "cluster.local"

[server]
listen = "{listen}"
{metrics}
[server.tls]
dns_names = ["localhost"]
ip_addresses = ["127.0.0.1", "::1"]

[issuance]
default_ttl_secs = 86400
max_ttl_secs = 86400

[signer]
type = "file"
dir = "{ca}"

[[authn]]
type = "jwt"
issuers = ["{DEMO_ISSUER}"]
audiences = ["istio-ca"]
jwks_file = "{jwks}"
{tokenreview}"#,
        ca = ca_dir.display(),
        jwks = jwks.display(),
    )
}

fn write(path: &Path, contents: &str, secret: bool) -> Result<(), String> {
    std::fs::write(path, contents).map_err(|e| format!("{}: {e}", path.display()))?;
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}
