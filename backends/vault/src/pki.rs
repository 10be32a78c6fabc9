//! PKI mode: Vault holds the intermediate and issues. castellan sends the
//! CSR with the one URI SAN it decided on and builds the chain itself from
//! `certificate` and `ca_chain` (never `pem_bundle`, whose content varies).

use reqwest::Method;
use serde_json::{Value, json};

use crate::{Error, PkiConfig, Vault};

/// A PKI mount and role.
#[derive(Debug, Clone)]
pub struct Pki {
    mount: String,
    role: String,
    issuer: Option<String>,
}

/// What Vault issued.
#[derive(Debug)]
pub struct Signed {
    /// The leaf, PEM.
    pub certificate: String,
    /// The issuing CA first, maybe the root last; empty when Vault omits it.
    pub ca_chain: Vec<String>,
    /// Vault's warnings, e.g. a TTL cut to the role's max_ttl.
    pub warnings: Vec<String>,
}

// === impl Pki ===

impl Pki {
    pub fn new(config: &PkiConfig) -> Self {
        Self {
            mount: config.mount.trim_matches('/').to_owned(),
            role: config.role.clone(),
            issuer: config.issuer.clone(),
        }
    }

    /// Signs `csr` for exactly `uri_san`, valid `ttl_secs`.
    ///
    /// # Errors
    /// [`Error`] from the call, or [`Error::Invalid`] for an answer without
    /// a certificate.
    pub async fn sign(
        &self,
        vault: &Vault,
        csr: &str,
        uri_san: &str,
        ttl_secs: u64,
    ) -> Result<Signed, Error> {
        let path = match &self.issuer {
            Some(issuer) => format!("{}/issuer/{issuer}/sign/{}", self.mount, self.role),
            None => format!("{}/sign/{}", self.mount, self.role),
        };
        let body = json!({
            "csr": csr,
            "uri_sans": uri_san,
            "ttl": format!("{ttl_secs}s"),
            "format": "pem",
            "exclude_cn_from_sans": true,
        });
        let answer = vault.call(Method::POST, &path, Some(&body)).await?;
        signed(&answer, &path)
    }

    /// The issuing certificate and its chain, as Vault publishes them.
    ///
    /// # Errors
    /// [`Error`] from the call.
    pub async fn issuer_chain(&self, vault: &Vault) -> Result<Vec<String>, Error> {
        let issuer = self.issuer.as_deref().unwrap_or("default");
        let path = format!("{}/issuer/{issuer}/json", self.mount);
        let answer = vault.call(Method::GET, &path, None).await?;
        issuer_answer(&answer, &path)
    }
}

impl Pki {
    /// The issuer's CRL as Vault publishes it, DER.
    ///
    /// # Errors
    /// [`Error`] from the call, or [`Error::Invalid`] for an answer without
    /// a PEM CRL.
    pub async fn crl(&self, vault: &Vault) -> Result<Vec<u8>, Error> {
        let issuer = self.issuer.as_deref().unwrap_or("default");
        let path = format!("{}/issuer/{issuer}/crl", self.mount);
        let answer = vault.call(Method::GET, &path, None).await?;
        crl_answer(&answer, &path)
    }
}

/// What `<mount>/issuer/<ref>/crl` answered: `data.crl`, one PEM CRL.
pub(crate) fn crl_answer(answer: &Value, path: &str) -> Result<Vec<u8>, Error> {
    let pem = answer["data"]["crl"]
        .as_str()
        .ok_or_else(|| Error::Invalid(format!("{path}: no data.crl")))?;
    let (label, der) = der::pem::decode_vec(pem.as_bytes())
        .map_err(|e| Error::Invalid(format!("{path}: data.crl is not PEM: {e}")))?;
    if label != "X509 CRL" {
        return Err(Error::Invalid(format!(
            "{path}: data.crl is a {label}, not a CRL"
        )));
    }
    Ok(der)
}

/// What `<mount>/sign/<role>` answered.
pub(crate) fn signed(answer: &Value, path: &str) -> Result<Signed, Error> {
    let data = &answer["data"];
    let certificate = data["certificate"]
        .as_str()
        .ok_or_else(|| Error::Invalid(format!("{path}: no data.certificate")))?
        .to_owned();
    Ok(Signed {
        certificate,
        ca_chain: strings(&data["ca_chain"]),
        warnings: strings(&answer["warnings"]),
    })
}

/// What `<mount>/issuer/<ref>/json` answered: the certificate, then its chain.
pub(crate) fn issuer_answer(answer: &Value, path: &str) -> Result<Vec<String>, Error> {
    let data = &answer["data"];
    let mut chain = vec![
        data["certificate"]
            .as_str()
            .ok_or_else(|| Error::Invalid(format!("{path}: no data.certificate")))?
            .to_owned(),
    ];
    chain.extend(strings(&data["ca_chain"]));
    Ok(chain)
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}
