//! The configuration file: one TOML document, unknown keys refused, every
//! default a named constant, every error naming the key and the fix.

mod authn;
mod defaults;
mod issuers;
mod kubernetes;
mod server;
mod tagged;
mod trust;
mod validate;

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Deserializer};
use spiffe::TrustDomain;

pub use authn::{Authn, AuthnCache, ClientCert, Impersonation, Jwt, TokenReview};
pub use issuers::{Binding, IssuerSection, MAIN_ISSUER, Unit};
pub use kubernetes::{IstiodCert, IstiodKeyType, Kubernetes, LeaderElection, TrustBundle};
pub use server::{Server, ServerTls};
pub use trust::{Crl, ExternalRoots, Trust};

pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";
pub const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 15012));
pub const DEFAULT_METRICS_LISTEN: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 15014));
pub const DEFAULT_MAX_IN_FLIGHT: usize = 1024;
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
pub const DEFAULT_MAX_STREAMS_PER_CONNECTION: u32 = 128;
pub const DEFAULT_REQUEST_TIMEOUT_SECS: u64 = 10;
/// More serving threads than this gain nothing on any machine castellan runs on.
pub const MAX_WORKERS: usize = 1024;
pub const DEFAULT_SHUTDOWN_GRACE_SECS: u64 = 25;
pub const DEFAULT_TTL_SECS: u64 = 24 * 3600;
pub const DEFAULT_MAX_TTL_SECS: u64 = 24 * 3600;
pub const DEFAULT_MIN_TTL_SECS: u64 = 600;
/// Durations above this (a year) are refused: no lifetime, cache age or
/// timeout castellan uses needs more, and bounded values keep time
/// arithmetic exact.
pub const MAX_DURATION_SECS: u64 = 365 * 24 * 3600;
pub const DEFAULT_NOT_BEFORE_SKEW_SECS: u64 = 120;
pub const DEFAULT_SERVING_TTL_SECS: u64 = 24 * 3600;
pub const DEFAULT_RELOAD_INTERVAL_SECS: u64 = 5;
pub const DEFAULT_AUDIENCE: &str = "istio-ca";
pub const DEFAULT_JWT_SKEW_SECS: u64 = 60;
pub const DEFAULT_JWKS_REFRESH_SECS: u64 = 300;
pub const DEFAULT_AUTHN_CACHE_CAPACITY: usize = 100_000;
pub const DEFAULT_AUTHN_CACHE_MAX_AGE_SECS: u64 = 300;
pub const DEFAULT_AUTHN_CACHE_NEGATIVE_SECS: u64 = 10;
pub const DEFAULT_CLUSTER_ID: &str = "Kubernetes";
pub const DEFAULT_API_TIMEOUT_SECS: u64 = 5;
pub const DEFAULT_MAX_STALENESS_SECS: u64 = 30;
pub const DEFAULT_LEASE_NAME: &str = "castellan";
pub const DEFAULT_LEASE_DURATION_SECS: u64 = 15;
pub const DEFAULT_RENEW_DEADLINE_SECS: u64 = 10;
pub const DEFAULT_RETRY_PERIOD_SECS: u64 = 2;
pub const DEFAULT_TRUST_BUNDLE_NAME: &str = "istio-ca-root-cert";
pub const DEFAULT_PUBLISH_CONCURRENCY: usize = 8;
pub const DEFAULT_ISTIOD_NAMESPACE: &str = "istio-system";
pub const DEFAULT_ISTIOD_SECRET: &str = "istiod-tls";
pub const DEFAULT_ISTIOD_SERVICE_ACCOUNT: &str = "istiod";
pub const DEFAULT_ISTIOD_TTL_SECS: u64 = 6 * 3600;
pub const DEFAULT_CRL_VALIDITY_SECS: u64 = 24 * 3600;
pub const DEFAULT_RECORD_INTERVAL_SECS: u64 = 60;
pub const DEFAULT_MAX_UNRECORDED_SECS: u64 = 600;
/// Istio's name for the CRL ConfigMap (`PILOT_CRL_CONFIGMAP`'s default).
pub const DEFAULT_CRL_CONFIGMAP: &str = "istio-ca-crl";

/// The whole configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The SPIFFE trust domain of issued identities.
    #[serde(
        default = "defaults::default_trust_domain",
        deserialize_with = "defaults::trust_domain"
    )]
    pub trust_domain: TrustDomain,
    #[serde(default)]
    pub server: Server,
    #[serde(default)]
    pub issuance: Issuance,
    #[serde(default)]
    pub ca: Ca,
    pub signer: Signer,
    /// Authenticators, tried in order; the first that recognises a credential decides.
    #[serde(default)]
    pub authn: Vec<Authn>,
    #[serde(default)]
    pub authn_cache: AuthnCache,
    #[serde(default)]
    pub impersonation: Impersonation,
    #[serde(default)]
    pub log: Log,
    #[serde(default)]
    pub practices: Practices,
    /// The cluster castellan runs in, for what it writes there (trust
    /// bundle, istiod's certificate). Unset: castellan writes nothing.
    pub kubernetes: Option<Kubernetes>,
    /// Root rotation guards and where their record is kept. Unset: no
    /// guard (castellan signs under whatever root the material names).
    pub trust: Option<Trust>,
    /// Which namespaces the main issuer (the sections above) signs for.
    /// Unset: every namespace no `[[issuers]]` entry is bound to.
    pub binding: Option<Binding>,
    /// More issuers, each bound to its own namespaces.
    #[serde(default)]
    pub issuers: Vec<IssuerSection>,
    /// Set on an `[[issuers]]` entry's own configuration: it signs
    /// workload certificates only (never castellan's or istiod's).
    #[serde(skip)]
    pub workloads_only: bool,
}

/// Practices the operator deliberately does not follow.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Practices {
    /// E.g. `["SM-DR13"]` to allow workload certificates of days. Logged
    /// loudly at every start and shown by `castellan check`.
    pub waive: Vec<Waivable>,
}

// === impl Server ===

/// Lifetimes of workload certificates.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Issuance {
    /// Used when the request asks for 0 (no preference).
    pub default_ttl_secs: u64,
    /// Shorter requests are raised to this: clients renew at about half the
    /// lifetime less the backdating, so a few seconds would make them renew
    /// in a loop.
    pub min_ttl_secs: u64,
    pub max_ttl_secs: u64,
    /// What a request above `max_ttl_secs` gets.
    pub over_max_ttl: OverMaxTtl,
    /// NotBefore is backdated this much for clock skew between peers.
    pub not_before_skew_secs: u64,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OverMaxTtl {
    /// Issue with the maximum lifetime (Istio clients renew by the real NotAfter).
    Clamp,
    /// Refuse with INVALID_ARGUMENT, as istiod does.
    Reject,
}

/// The enterprise trust anchors and how the signing material is watched.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Ca {
    /// Root certificate(s) the signing chain must end at, and that clients
    /// receive as the last element. Unset: the signer's own root file.
    pub roots_file: Option<PathBuf>,
    /// How often the signing material is checked for changes; 0 disables.
    pub reload_interval_secs: u64,
}

/// Where the signing key lives (read by `tagged.rs`, by its `type`).
#[derive(Clone, Debug)]
pub enum Signer {
    File(castellan_file::Config),
    Pkcs11(castellan_pkcs11::Config),
    /// Boxed: by far the largest section.
    Vault(Box<VaultSigner>),
}

/// `[signer] type = "vault"`: Vault's own section, and, for Mint mode,
/// where each minted intermediate's key is made (`[signer.mint.pkcs11]`,
/// else in memory) — the key maker is another back end, so castellan
/// reads its section and hands Vault only the maker.
#[derive(Clone, Debug)]
pub struct VaultSigner {
    pub vault: castellan_vault::Config,
    pub mint_keys: Option<castellan_pkcs11::KeyStore>,
}

impl Signer {
    /// What the configured back end does: what every check asks of it,
    /// instead of which back end it is.
    pub fn capabilities(&self) -> castellan_signer::Capabilities {
        match self {
            Self::File(c) => c.capabilities(),
            Self::Pkcs11(c) => c.capabilities(),
            Self::Vault(c) => c.vault.capabilities(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Log {
    pub format: LogFormat,
}

#[derive(Clone, Copy, Debug, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {path}: {}", human(&source.to_string()))]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("`{key}` {problem}")]
    Invalid { key: &'static str, problem: String },
    #[error(transparent)]
    FileSigner(#[from] castellan_file::ConfigError),
    #[error("signer.pkcs11: {0}")]
    Pkcs11Signer(#[from] castellan_pkcs11::ConfigError),
    #[error(transparent)]
    VaultSigner(#[from] castellan_vault::ConfigError),
    #[error("signer.mint.pkcs11: {0}")]
    MintKeys(castellan_pkcs11::ConfigError),
    /// A rule one `[[issuers]]` entry breaks.
    #[error("[[issuers]] name = \"{name}\": {source}")]
    Issuer { name: String, source: Box<Self> },
    /// A rule the file breaks, with the file named.
    #[error("config {path}: {source}")]
    Rule { path: PathBuf, source: Box<Self> },
}

// === impl Config ===

impl Config {
    /// Reads and validates a configuration file.
    ///
    /// # Errors
    /// [`Error`] naming the file, the key and what to change.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses configuration text; `path` only names it in errors.
    ///
    /// # Errors
    /// As [`Config::load`].
    pub fn parse(text: &str, path: &Path) -> Result<Self, Error> {
        let mut config: Self = toml::from_str(text).map_err(|e| Error::Parse {
            path: path.to_owned(),
            source: Box::new(e),
        })?;
        let base = path.parent().unwrap_or_else(|| Path::new("."));
        config.resolve_paths(base);
        config.validate().map_err(|e| Error::Rule {
            path: path.to_owned(),
            source: Box::new(e),
        })?;
        Ok(config)
    }

    /// Relative paths in the file are relative to the file's folder.
    fn resolve_paths(&mut self, base: &Path) {
        use castellan_signer::resolve_opt;
        resolve_opt(base, &mut self.server.tls.cert_file);
        resolve_opt(base, &mut self.server.tls.key_file);
        resolve_unit(base, &mut self.signer, &mut self.ca, self.trust.as_mut());
        for i in &mut self.issuers {
            resolve_unit(base, &mut i.signer, &mut i.ca, i.trust.as_mut());
        }
        for a in &mut self.authn {
            match a {
                Authn::Jwt(j) => {
                    resolve_opt(base, &mut j.jwks_file);
                    resolve_opt(base, &mut j.jwks_ca_file);
                }
                Authn::TokenReview(t) => resolve_opt(base, &mut t.kubeconfig),
                Authn::ClientCert(_) => {}
            }
        }
        if let Some(k) = &mut self.kubernetes {
            resolve_opt(base, &mut k.kubeconfig);
        }
    }

    /// The longest life of any certificate castellan issues: a workload's
    /// maximum, and its own serving certificate's and istiod's when it
    /// issues those.
    pub fn longest_leaf_secs(&self) -> u64 {
        let mut longest = self.issuance.max_ttl_secs;
        if self.server.tls.cert_file.is_none() && !self.workloads_only {
            longest = longest.max(self.server.tls.ttl_secs);
        }
        if let Some(istiod) = self
            .kubernetes
            .as_ref()
            .and_then(|k| k.istiod_cert.as_ref())
        {
            longest = longest.max(istiod.ttl_secs);
        }
        longest
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.server.request_timeout_secs)
    }
}

/// An issuer's own paths, relative to the file's folder.
fn resolve_unit(base: &Path, signer: &mut Signer, ca: &mut Ca, trust: Option<&mut Trust>) {
    use castellan_signer::resolve_opt;
    resolve_opt(base, &mut ca.roots_file);
    match signer {
        Signer::File(c) => c.resolve_paths(base),
        Signer::Pkcs11(c) => c.resolve_paths(base),
        Signer::Vault(c) => {
            c.vault.resolve_paths(base);
            if let Some(keys) = &mut c.mint_keys {
                keys.resolve_paths(base);
            }
        }
    }
    if let Some(t) = trust {
        resolve_opt(base, &mut t.state_file);
        for e in &mut t.external {
            castellan_signer::resolve(base, &mut e.roots_file);
        }
        if let Some(crl) = &mut t.crl {
            for f in &mut crl.upstream_files {
                castellan_signer::resolve(base, f);
            }
        }
    }
}

/// serde's vocabulary in words an operator uses.
pub(crate) fn human(message: &str) -> String {
    [
        ("expected u64", "expected a whole number (0 or more)"),
        ("expected usize", "expected a whole number (0 or more)"),
        ("expected u32", "expected a whole number (0 or more)"),
        ("expected u16", "expected a whole number (0 to 65535)"),
        ("expected u8", "expected a whole number (0 to 255)"),
        ("expected i64", "expected a whole number"),
        ("expected a boolean", "expected true or false"),
        (
            "expected a sequence",
            "expected a list, e.g. [\"a\", \"b\"]",
        ),
        ("invalid type: ", ""),
        ("invalid value: ", ""),
    ]
    .iter()
    .fold(message.to_owned(), |m, (from, to)| m.replace(from, to))
    .lines()
    // toml's own note of the key, said already.
    .filter(|l| !l.starts_with("in `"))
    .collect::<Vec<_>>()
    .join("\n")
}

/// The practices an operator may waive. The others (no self-signed CA,
/// rooted in the enterprise roots, leaves never CAs) cannot be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
pub enum Waivable {
    /// Workload certificates live hours, not days.
    #[serde(rename = "SM-DR13")]
    SmDr13,
}
