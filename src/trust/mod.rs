//! Root rotation with guards: castellan records when it first served each
//! root and when it last signed under it, refuses to sign under a root
//! workloads have not had a full renewal cycle to learn, and refuses to drop
//! a root while leaves under it still live.

mod external;
mod generation;
mod guard;
mod health;
mod revocations;
mod roots;
mod state;
mod status;
mod store;
#[cfg(test)]
mod timeline;

use std::{path::PathBuf, sync::Arc, time::Duration};

use arc_swap::ArcSwap;
use der::Decode;

pub use guard::{judge, soak_floor};
pub use health::RecordHealth;
pub use revocations::{ISSUED_CAPACITY, Revocations};
pub use state::{
    Denied, ExternalRecord, Generation, Reason, Revoked, RootRecord, SignedCrl, TrustState,
    fingerprint,
};
pub use status::{generations, status};
pub use store::Store;

use crate::{clock::Clock, config::Config};

/// The practice the switch guard is reported as (`castellan check`, and a
/// reload refused only by it is judged again as time passes).
pub const ROTATION_PRACTICE: &str =
    "root rotation: signing only under a root workloads have had time to trust";
/// The practice the retirement guard is reported as.
pub const RETIREMENT_PRACTICE: &str = "root retirement: no root dropped while leaves under it live";
/// The practice the soak's floor is reported as.
pub const SOAK_PRACTICE: &str = "root soak: at least one renewal cycle";

/// Why the record cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "{what} does not exist: castellan never starts from an empty record by itself (that \
         would forget every revocation and reset both rotation guards). On a first install \
         run `castellan trust init --config <castellan.toml>` once; otherwise restore the \
         record from a backup"
    )]
    Missing { what: String },
    #[error("{what}: {}: {source}", path.display())]
    Io {
        what: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} is not castellan's trust record ({problem}); restore it from a backup")]
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
    /// How long a root must have been served without a break before
    /// castellan signs under it.
    pub soak: Duration,
    /// How long a leaf castellan made may live: its longest lifetime
    /// (workload, serving, istiod's) and the record's lag.
    pub leaf_life: Duration,
    /// Half of the longest workload lifetime: one renewal cycle, the least
    /// a soak may be without `force`.
    pub renewal_cycle: Duration,
    /// The guards are reported, not enforced.
    pub force: bool,
    /// How often a replica reads the record and adds to it.
    pub interval: Duration,
    /// How far the record may fall behind: castellan stops issuing once it
    /// could not write it for this long (`trust.max_unrecorded_secs`).
    pub lag: Duration,
    /// Where the record is, for messages.
    pub store: String,
    /// Other CAs' roots (`trust.external`) as configured now.
    pub external: Vec<External>,
    /// Bumped whenever the record read changes (the CRL follows it).
    pub changed: Arc<tokio::sync::watch::Sender<u64>>,
    /// Whether this replica's writes of the record succeed.
    pub health: Arc<RecordHealth>,
    pub clock: Clock,
}

/// Another CA's root as configured: its fingerprint and subject, when that
/// CA stops signing (`None`: it still does), and its leaves' longest life.
#[derive(Clone, Debug)]
pub struct External {
    pub fingerprint: String,
    pub subject: String,
    pub signs_until: Option<u64>,
    pub leaf_life: Duration,
}

/// The store and the guards' rules from `[trust]`, with the record read
/// once; `None` without a `[trust]` section.
///
/// # Errors
/// When the record does not exist, cannot be read, or is not a record.
pub async fn open(config: &Config, clock: Clock) -> Result<Option<(Store, TrustRules)>, Error> {
    let Some(trust) = &config.trust else {
        return Ok(None);
    };
    let Some(store) = store(config).await? else {
        return Ok(None);
    };
    let state = store.load().await?;
    let leaf_life = config.longest_leaf_secs();
    let external = external_roots(&trust.external)?;
    let interval = Duration::from_secs(trust.record_interval_secs);
    let lag = Duration::from_secs(trust.max_unrecorded_secs());
    let rules = TrustRules {
        state: Arc::new(ArcSwap::from_pointee(state)),
        soak: Duration::from_secs(trust.soak_secs.unwrap_or(config.issuance.max_ttl_secs)),
        // The record of the last issuance may lag by this much.
        leaf_life: Duration::from_secs(leaf_life) + lag,
        renewal_cycle: Duration::from_secs(config.issuance.max_ttl_secs / 2),
        interval,
        lag,
        force: trust.force,
        store: store.describe(),
        external,
        changed: Arc::new(tokio::sync::watch::Sender::new(0)),
        health: Arc::new(RecordHealth::new(clock.unix())),
        clock,
    };
    Ok(Some((store, rules)))
}

/// As [`open`], and the record proven writable (nothing is changed):
/// what `serve` and `castellan check` both require.
///
/// # Errors
/// As [`open`], or why the record cannot be written.
pub async fn open_writable(
    config: &Config,
    clock: Clock,
) -> Result<Option<(Store, TrustRules)>, Error> {
    let opened = open(config, clock).await?;
    if let Some((store, _)) = &opened {
        store.check_writable().await?;
    }
    Ok(opened)
}

/// The configured store, not yet read.
///
/// # Errors
/// When the Kubernetes client cannot be made.
pub async fn store(config: &Config) -> Result<Option<Store>, Error> {
    let Some(trust) = &config.trust else {
        return Ok(None);
    };
    Ok(
        match (
            &trust.state_file,
            &trust.state_configmap,
            &config.kubernetes,
        ) {
            (Some(path), _, _) => Some(Store::file(path.clone())),
            (None, Some(name), Some(k)) => {
                let kube =
                    crate::kube::config(k.kubeconfig.as_deref(), k.context.as_deref()).await?;
                let client =
                    crate::kube::request_client(&kube, Duration::from_secs(k.timeout_secs))?;
                let namespace = k.own_namespace();
                Some(Store::configmap(
                    kube::Api::namespaced(client, &namespace),
                    name.clone(),
                ))
            }
            // Config::load refuses these.
            (None, None, _) | (None, Some(_), None) => None,
        },
    )
}

fn external_roots(sections: &[crate::config::ExternalRoots]) -> Result<Vec<External>, Error> {
    let mut external = Vec::new();
    for e in sections {
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
                leaf_life: Duration::from_secs(e.max_leaf_ttl_secs),
            });
        }
    }
    Ok(external)
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

/// Big-endian bytes of a hex serial (an odd length gets a leading zero);
/// `None` for what is not hex.
pub fn serial_bytes(hex: &str) -> Option<Vec<u8>> {
    let padded = if hex.len() % 2 == 1 {
        format!("0{hex}")
    } else {
        hex.to_owned()
    };
    (0..padded.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(padded.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn hex_serials_become_bytes() {
        assert_eq!(super::serial_bytes("abc"), Some(vec![0x0a, 0xbc]));
        assert_eq!(super::serial_bytes("00ff"), Some(vec![0x00, 0xff]));
        assert_eq!(super::serial_bytes("zz"), None);
        assert_eq!(super::normalize_serial("00:0A:bc"), "abc");
    }
}
