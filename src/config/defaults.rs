//! The values of everything left unset, from the named constants.

use spiffe::TrustDomain;

use super::*;

impl Default for Server {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN,
            metrics_listen: Some(DEFAULT_METRICS_LISTEN),
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_streams_per_connection: DEFAULT_MAX_STREAMS_PER_CONNECTION,
            workers: None,
            request_timeout_secs: DEFAULT_REQUEST_TIMEOUT_SECS,
            shutdown_grace_secs: DEFAULT_SHUTDOWN_GRACE_SECS,
            tls: ServerTls::default(),
        }
    }
}

impl Default for ServerTls {
    fn default() -> Self {
        Self {
            cert_file: None,
            key_file: None,
            dns_names: Vec::new(),
            ip_addresses: Vec::new(),
            ttl_secs: DEFAULT_SERVING_TTL_SECS,
        }
    }
}

impl Default for Issuance {
    fn default() -> Self {
        Self {
            default_ttl_secs: DEFAULT_TTL_SECS,
            min_ttl_secs: DEFAULT_MIN_TTL_SECS,
            max_ttl_secs: DEFAULT_MAX_TTL_SECS,
            over_max_ttl: OverMaxTtl::Clamp,
            not_before_skew_secs: DEFAULT_NOT_BEFORE_SKEW_SECS,
        }
    }
}

impl Default for AuthnCache {
    fn default() -> Self {
        Self {
            capacity: DEFAULT_AUTHN_CACHE_CAPACITY,
            max_age_secs: DEFAULT_AUTHN_CACHE_MAX_AGE_SECS,
            negative_max_age_secs: DEFAULT_AUTHN_CACHE_NEGATIVE_SECS,
        }
    }
}

impl Default for Ca {
    fn default() -> Self {
        Self {
            roots_file: None,
            reload_interval_secs: DEFAULT_RELOAD_INTERVAL_SECS,
        }
    }
}

#[expect(clippy::expect_used, reason = "a constant known to be valid")]
pub(super) fn default_trust_domain() -> TrustDomain {
    TrustDomain::new(DEFAULT_TRUST_DOMAIN).expect("DEFAULT_TRUST_DOMAIN is a valid trust domain")
}

pub(super) fn trust_domain<'de, D: Deserializer<'de>>(d: D) -> Result<TrustDomain, D::Error> {
    let s = String::deserialize(d)?;
    TrustDomain::new(&s).map_err(|e| serde::de::Error::custom(format!("trust domain `{s}`: {e}")))
}

pub(super) fn default_audiences() -> Vec<String> {
    vec![DEFAULT_AUDIENCE.to_owned()]
}

pub(super) fn default_cluster_id() -> String {
    DEFAULT_CLUSTER_ID.to_owned()
}

pub(super) fn default_api_timeout() -> u64 {
    DEFAULT_API_TIMEOUT_SECS
}

/// Modest: a storm's TokenReviews become a steady stream the API server's
/// priority and fairness admits, yet 32 at ~2 ms each clear 2,000 new
/// tokens well inside a request's deadline.
const DEFAULT_TOKENREVIEW_CONCURRENCY: usize = 32;

/// The API server's own default in-flight limit for mutating requests is
/// 200; more than this from one client is a flood, not a bound.
pub(super) const MAX_TOKENREVIEW_CONCURRENCY: usize = 512;

pub(super) fn default_tokenreview_concurrency() -> usize {
    DEFAULT_TOKENREVIEW_CONCURRENCY
}

pub(super) fn default_jwks_refresh() -> u64 {
    DEFAULT_JWKS_REFRESH_SECS
}

pub(super) fn default_jwt_skew() -> u64 {
    DEFAULT_JWT_SKEW_SECS
}

impl Default for Impersonation {
    fn default() -> Self {
        Self {
            trusted_node_accounts: Vec::new(),
            max_staleness_secs: DEFAULT_MAX_STALENESS_SECS,
        }
    }
}

/// `IP:port`, with a message that says so for a host name.
pub(super) fn socket_addr<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let s = String::deserialize(d)?;
    s.parse().map_err(|_| {
        serde::de::Error::custom(format!(
            "`{s}` is not an IP address and port: castellan binds an address, e.g. \
             \"0.0.0.0:15012\" (every interface), \"127.0.0.1:15012\" or \"[::]:15012\"; \
             host names are not resolved"
        ))
    })
}

pub(super) fn optional_socket_addr<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<SocketAddr>, D::Error> {
    socket_addr(d).map(Some)
}

impl Default for LeaderElection {
    fn default() -> Self {
        Self {
            lease_name: DEFAULT_LEASE_NAME.to_owned(),
            lease_duration_secs: DEFAULT_LEASE_DURATION_SECS,
            renew_deadline_secs: DEFAULT_RENEW_DEADLINE_SECS,
            retry_period_secs: DEFAULT_RETRY_PERIOD_SECS,
        }
    }
}

impl Default for TrustBundle {
    fn default() -> Self {
        Self {
            configmap_name: DEFAULT_TRUST_BUNDLE_NAME.to_owned(),
            namespace_selector: String::new(),
            cluster_trust_bundle: false,
            concurrency: DEFAULT_PUBLISH_CONCURRENCY,
        }
    }
}

impl Default for IstiodCert {
    fn default() -> Self {
        Self {
            namespace: DEFAULT_ISTIOD_NAMESPACE.to_owned(),
            secret_name: DEFAULT_ISTIOD_SECRET.to_owned(),
            service_account: DEFAULT_ISTIOD_SERVICE_ACCOUNT.to_owned(),
            revisions: Vec::new(),
            dns_names: Vec::new(),
            ttl_secs: DEFAULT_ISTIOD_TTL_SECS,
            key_type: IstiodKeyType::EcP256,
        }
    }
}

pub(super) fn default_record_interval() -> u64 {
    DEFAULT_RECORD_INTERVAL_SECS
}
