//! `[trust]`: the record of the roots castellan serves and signs under, the
//! guards that read it, other CAs' roots kept during a migration, and the
//! CRL castellan signs.

use std::path::PathBuf;

use serde::Deserialize;

use super::{DEFAULT_CRL_CONFIGMAP, DEFAULT_CRL_VALIDITY_SECS, defaults};

/// The record of when each root was first served and last signed under,
/// and the guards that read it.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Trust {
    /// A JSON file castellan keeps (one replica, or a shared volume).
    pub state_file: Option<PathBuf>,
    /// A ConfigMap in castellan's namespace ([kubernetes] client), shared by
    /// every replica.
    pub state_configmap: Option<String>,
    /// How long a root must have been served before castellan signs under
    /// it. Unset: `issuance.max_ttl_secs`, one full renewal cycle.
    pub soak_secs: Option<u64>,
    /// Sign under a root not soaked yet, and drop a root whose leaves still
    /// live: the guards are reported, not enforced (logged at every start).
    #[serde(default)]
    pub force: bool,
    /// Roots of another CA whose leaves workloads still hold (istiod's,
    /// during a migration): kept in the bundle until they have expired.
    #[serde(default)]
    pub external: Vec<ExternalRoots>,
    /// A CRL of the revocations in the record, signed by the signing CA.
    pub crl: Option<Crl>,
    /// How often each replica reads the record and adds to it: how long a
    /// revocation takes to reach every replica.
    #[serde(default = "defaults::default_record_interval")]
    pub record_interval_secs: u64,
    /// How long castellan keeps issuing while the record cannot be written,
    /// which is also how far the record may lag (every leaf lifetime the
    /// guards reckon with is this much longer). Unset: ten minutes, or two
    /// record intervals if longer.
    pub max_unrecorded_secs: Option<u64>,
}

impl Trust {
    /// `max_unrecorded_secs`, or its default.
    pub fn max_unrecorded_secs(&self) -> u64 {
        self.max_unrecorded_secs.unwrap_or_else(|| {
            super::DEFAULT_MAX_UNRECORDED_SECS.max(self.record_interval_secs.saturating_mul(2))
        })
    }
}

/// The CRL castellan signs and publishes.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Crl {
    /// nextUpdate − thisUpdate; castellan signs a new one at half of it,
    /// and at once when the revocations or the signing CA change.
    pub validity_secs: u64,
    /// Published beside the trust bundle ([kubernetes.trust_bundle]),
    /// key `ca-crl.pem`, where Istio's sidecars mount it.
    pub configmap_name: String,
    /// CRLs of the CAs above castellan's signing CA, PEM or DER (the
    /// enterprise root's, covering the intermediate, and any CA between),
    /// re-read every record interval. Envoy needs a current CRL from every
    /// CA of a chain: castellan publishes nothing until these complete the set.
    pub upstream_files: Vec<PathBuf>,
}

impl Default for Crl {
    fn default() -> Self {
        Self {
            validity_secs: DEFAULT_CRL_VALIDITY_SECS,
            configmap_name: DEFAULT_CRL_CONFIGMAP.to_owned(),
            upstream_files: Vec::new(),
        }
    }
}

/// Another CA's roots, retired by the same guard as castellan's own.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExternalRoots {
    /// Its root certificate(s), PEM.
    pub roots_file: PathBuf,
    /// When that CA stopped (or stops) signing, a TOML date-time with its
    /// offset (`2026-12-03T10:00:00Z`). Unset: it still signs.
    pub signs_until: Option<toml::value::Datetime>,
    /// The longest lifetime of a leaf that CA issues (istiod's default
    /// `DEFAULT_WORKLOAD_CERT_TTL` is 86400, its maximum 90 days): its root
    /// is kept that long after `signs_until`.
    pub max_leaf_ttl_secs: u64,
}

impl ExternalRoots {
    /// `signs_until` in seconds since the Unix epoch.
    ///
    /// # Errors
    /// When it is not a full date, time and offset.
    pub fn signs_until_unix(&self) -> Result<Option<u64>, String> {
        let Some(t) = &self.signs_until else {
            return Ok(None);
        };
        let full = "a date, a time and an offset, e.g. 2026-12-03T10:00:00Z";
        let (Some(d), Some(tm), Some(offset)) = (t.date, t.time, t.offset) else {
            return Err(format!("{t} is not {full}"));
        };
        let minutes = match offset {
            toml::value::Offset::Z => 0,
            toml::value::Offset::Custom { minutes } => i32::from(minutes),
        };
        let month = time::Month::try_from(d.month).map_err(|e| format!("{t}: {e}"))?;
        let date = time::Date::from_calendar_date(i32::from(d.year), month, d.day)
            .map_err(|e| format!("{t}: {e}"))?;
        let clock = time::Time::from_hms(tm.hour, tm.minute, tm.second.unwrap_or(0))
            .map_err(|e| format!("{t}: {e}"))?;
        let local = time::PrimitiveDateTime::new(date, clock)
            .assume_utc()
            .unix_timestamp();
        let utc = local - i64::from(minutes) * 60;
        u64::try_from(utc)
            .map(Some)
            .map_err(|_| format!("{t} is before 1970"))
    }
}
