//! Root rotation with guards: castellan records when it first served each
//! root and when it last signed under it, refuses to sign under a root
//! workloads have not had a full renewal cycle to learn, and refuses to drop
//! a root while leaves under it still live.

mod crl;
mod guard;
mod recorder;
mod revocations;
mod state;
mod store;

use std::{path::PathBuf, sync::Arc, time::Duration};

use arc_swap::ArcSwap;
use der::Decode;

pub use crl::spawn_crl;
pub use guard::{judge, status};
pub use recorder::spawn_recorder;
pub use revocations::{ISSUED_CAPACITY, Revocations};
pub use state::{Denied, Reason, Revoked, RootRecord, TrustState, fingerprint};
pub use store::Store;

use crate::config::Config;

/// The practice the switch guard is reported as (`castellan check`, and a
/// reload refused only by it is judged again as time passes).
pub const ROTATION_PRACTICE: &str =
    "root rotation: signing only under a root workloads have had time to trust";
/// The practice the retirement guard is reported as.
pub const RETIREMENT_PRACTICE: &str = "root retirement: no root dropped while leaves under it live";

/// Why the record cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} is not castellan's trust record ({problem}); restore it or remove it")]
    Corrupt { what: String, problem: String },
    #[error("trust.state_configmap {name}: {detail}")]
    Kube { name: String, detail: String },
    #[error("trust.state_configmap: {0}")]
    Client(#[from] crate::kube::Error),
    #[error("trust.external roots_file {}: {problem}", path.display())]
    External { path: PathBuf, problem: String },
}

/// What the guards judge signing material against.
#[derive(Clone, Debug)]
pub struct TrustRules {
    /// The record as last read (every replica's, merged).
    pub state: Arc<ArcSwap<TrustState>>,
    /// How long a root must have been served before castellan signs under it.
    pub soak: Duration,
    /// How long a leaf castellan made may live: its longest lifetime (workload,
    /// serving, istiod's) and the record's lag.
    pub leaf_life: Duration,
    /// The guards are reported, not enforced.
    pub force: bool,
    /// How often a replica reads the record and adds to it; also how far
    /// the record of the last issuance may lag.
    pub interval: Duration,
    /// Where the record is, for messages.
    pub store: String,
    /// Other CAs' roots (`trust.external`).
    pub external: Vec<External>,
    /// Bumped whenever the record read changes (the CRL follows it).
    pub changed: Arc<tokio::sync::watch::Sender<u64>>,
}

/// Another CA's root: its fingerprint and subject, and when that CA stops
/// signing (`None`: it still does).
#[derive(Clone, Debug)]
pub struct External {
    pub fingerprint: String,
    pub subject: String,
    pub signs_until: Option<u64>,
}

/// The store and the guards' rules from `[trust]`, with the record read
/// once; `None` without a `[trust]` section.
///
/// # Errors
/// When the record cannot be read.
pub async fn open(config: &Config) -> Result<Option<(Store, TrustRules)>, Error> {
    let Some(trust) = &config.trust else {
        return Ok(None);
    };
    let store = match (
        &trust.state_file,
        &trust.state_configmap,
        &config.kubernetes,
    ) {
        (Some(path), _, _) => Store::File(path.clone()),
        (None, Some(name), Some(k)) => {
            let kube = crate::kube::config(k.kubeconfig.as_deref(), k.context.as_deref()).await?;
            let client = crate::kube::request_client(&kube, Duration::from_secs(k.timeout_secs))?;
            let namespace = crate::mesh::own_namespace(k);
            Store::ConfigMap {
                api: Box::new(kube::Api::namespaced(client, &namespace)),
                name: name.clone(),
            }
        }
        // Config::load refuses these.
        (None, None, _) | (None, Some(_), None) => return Ok(None),
    };
    let state = store.load().await?;
    let mut leaf_life = config.issuance.max_ttl_secs;
    if config.server.tls.cert_file.is_none() {
        leaf_life = leaf_life.max(config.server.tls.ttl_secs);
    }
    if let Some(istiod) = config
        .kubernetes
        .as_ref()
        .and_then(|k| k.istiod_cert.as_ref())
    {
        leaf_life = leaf_life.max(istiod.ttl_secs);
    }
    let mut external = Vec::new();
    for e in &trust.external {
        let problem = |problem: String| Error::External {
            path: e.roots_file.clone(),
            problem,
        };
        let signs_until = e.signs_until_unix().map_err(problem)?;
        let roots =
            castellan_signer::read_certs(&e.roots_file).map_err(|err| problem(err.to_string()))?;
        for root in roots {
            let subject = x509_cert::Certificate::from_der(&root)
                .map_err(|err| problem(err.to_string()))?
                .tbs_certificate()
                .subject()
                .to_string();
            external.push(External {
                fingerprint: fingerprint(&root),
                subject,
                signs_until,
            });
        }
    }
    let interval = Duration::from_secs(trust.record_interval_secs);
    let rules = TrustRules {
        state: Arc::new(ArcSwap::from_pointee(state)),
        soak: Duration::from_secs(trust.soak_secs.unwrap_or(config.issuance.max_ttl_secs)),
        // The record of the last issuance may lag by up to two rounds.
        leaf_life: Duration::from_secs(leaf_life) + 2 * interval,
        interval,
        force: trust.force,
        store: store.describe(),
        external,
        changed: Arc::new(tokio::sync::watch::Sender::new(0)),
    };
    Ok(Some((store, rules)))
}

/// A serial number as the record keys it: lowercase hex without colons or
/// leading zeros.
pub fn normalize_serial(serial: &str) -> String {
    let hex: String = serial
        .chars()
        .filter(|c| *c != ':')
        .map(|c| c.to_ascii_lowercase())
        .collect();
    let trimmed = hex.trim_start_matches('0');
    if trimmed.is_empty() {
        "0".to_owned()
    } else {
        trimmed.to_owned()
    }
}
