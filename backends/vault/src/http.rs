//! The HTTP side of talking to Vault: the client as configured (CA,
//! client certificate, a TLS name other than the address), Vault's error
//! bodies, and the jitter on retries.

use std::time::Duration;

use serde_json::Value;

use crate::{Config, Error, setting};

/// Vault's `{"errors": [...]}`, joined; never the request.
pub(crate) fn errors(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v.get("errors").cloned())
        .and_then(|e| e.as_array().cloned())
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join("; ")
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| body.chars().take(200).collect())
}

/// `d` ± 20%, so many clients do not retry in step.
pub(crate) fn jitter(d: Duration) -> Duration {
    let mut b = [0u8; 2];
    let _ = aws_lc_rs::rand::fill(&mut b);
    let f = 0.8 + 0.4 * f64::from(u16::from_le_bytes(b)) / f64::from(u16::MAX);
    d.mul_f64(f)
}

/// The HTTP client and the base URL. With `tls_server_name`, requests go to
/// the configured address but TLS checks that name: the URL carries the name
/// and the client resolves it to the address.
// Long: the client built from each TLS setting, each with its environment fallback and its message.
pub(crate) fn http_client(
    config: &Config,
    address: &str,
) -> Result<(reqwest::Client, String), Error> {
    let mut b = reqwest::Client::builder()
        .pool_idle_timeout(Duration::from_secs(90))
        .tcp_keepalive(Duration::from_secs(60))
        .connect_timeout(Duration::from_secs(3));
    if let Some(path) = setting(
        config.ca_file.as_ref().and_then(|p| p.to_str()),
        &["VAULT_CACERT", "BAO_CACERT"],
    ) {
        let pem =
            std::fs::read(&path).map_err(|e| Error::Config(format!("ca_file {path}: {e}")))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| Error::Config(format!("ca_file {path}: {e}")))?;
        b = b.tls_certs_only(certs);
    }
    let cert = setting(
        config.client_cert_file.as_ref().and_then(|p| p.to_str()),
        &["VAULT_CLIENT_CERT", "BAO_CLIENT_CERT"],
    );
    let key = setting(
        config.client_key_file.as_ref().and_then(|p| p.to_str()),
        &["VAULT_CLIENT_KEY", "BAO_CLIENT_KEY"],
    );
    if let (Some(cert), Some(key)) = (cert, key) {
        let mut pem = zeroize::Zeroizing::new(
            std::fs::read(&cert)
                .map_err(|e| Error::Config(format!("client_cert_file {cert}: {e}")))?,
        );
        let key_pem = zeroize::Zeroizing::new(
            std::fs::read(&key)
                .map_err(|e| Error::Config(format!("client_key_file {key}: {e}")))?,
        );
        pem.extend_from_slice(&key_pem);
        let identity = reqwest::Identity::from_pem(&pem)
            .map_err(|e| Error::Config(format!("client certificate: {e}")))?;
        b = b.identity(identity);
    }
    let mut url = reqwest::Url::parse(address)
        .map_err(|e| Error::Config(format!("address {address}: {e}")))?;
    if let Some(name) = setting(
        config.tls_server_name.as_deref(),
        &["VAULT_TLS_SERVER_NAME", "BAO_TLS_SERVER_NAME"],
    ) {
        let addrs = url
            .socket_addrs(|| Some(8200))
            .map_err(|e| Error::Config(format!("address {address}: {e}")))?;
        b = b.resolve_to_addrs(&name, &addrs);
        url.set_host(Some(&name))
            .map_err(|e| Error::Config(format!("tls_server_name {name}: {e}")))?;
    }
    let client = b
        .build()
        .map_err(|e| Error::Config(format!("HTTP client: {e}")))?;
    Ok((
        client,
        format!("{}/v1/", url.as_str().trim_end_matches('/')),
    ))
}
