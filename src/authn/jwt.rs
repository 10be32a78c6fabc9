//! Kubernetes projected service-account tokens (or any OIDC issuer's JWTs)
//! checked locally against the issuer's JWKS.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::clock::Clock;

use jsonwebtoken::{Validation, dangerous::insecure_decode_claims, decode, decode_header};
use serde::Deserialize;
use spiffe::TrustDomain;

use super::{
    Error, SetupError,
    jwks::{ALLOWED_ALGORITHMS, Jwks},
};
use crate::{
    config,
    identity::{Caller, PodRef, ServiceAccount},
};

const NAME: &str = "jwt";

/// Verifies JWTs from configured issuers.
#[derive(Debug)]
pub struct JwtAuthenticator {
    issuers: Vec<String>,
    /// `clusterid` values served; empty: any.
    cluster_ids: Vec<String>,
    audiences: Vec<String>,
    skew: Duration,
    jwks: Jwks,
    trust_domain: TrustDomain,
    /// `exp`, `nbf` and `iat` are judged on castellan's clock.
    clock: Clock,
}

/// The claims castellan reads. `sub` is required; the `kubernetes.io`
/// claim, when present, must agree with it.
#[derive(Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    nbf: Option<u64>,
    iat: Option<i64>,
    #[serde(rename = "kubernetes.io")]
    kubernetes: Option<KubernetesClaim>,
}

#[derive(Deserialize)]
struct KubernetesClaim {
    namespace: String,
    serviceaccount: Option<ObjectRef>,
    pod: Option<ObjectRef>,
}

#[derive(Deserialize)]
struct ObjectRef {
    name: String,
    uid: String,
}

#[derive(Deserialize)]
struct Issuer {
    iss: Option<String>,
}

// === impl JwtAuthenticator ===

impl JwtAuthenticator {
    /// # Errors
    /// [`SetupError`] when the JWKS file cannot be read or the CA bundle is bad.
    pub async fn new(
        config: &config::Jwt,
        trust_domain: TrustDomain,
        clock: Clock,
    ) -> Result<Self, SetupError> {
        let refresh = Duration::from_secs(config.jwks_refresh_secs);
        let jwks = match (&config.jwks_file, &config.jwks_url) {
            (Some(path), _) => Jwks::from_file(path.clone(), refresh)
                .await
                .map_err(|source| SetupError::JwksFile {
                    path: path.clone(),
                    source,
                })?,
            (None, Some(url)) => Jwks::from_url(http_client(config)?, url.clone(), refresh).await,
            (None, None) => return Err(SetupError::NoJwks),
        };
        Ok(Self {
            issuers: config.issuers.clone(),
            cluster_ids: config.cluster_ids.clone(),
            audiences: config.audiences.clone(),
            skew: Duration::from_secs(config.clock_skew_secs),
            jwks,
            trust_domain,
            clock,
        })
    }

    /// Whether `cluster` is named in this section's `cluster_ids`.
    pub fn lists(&self, cluster: &str) -> bool {
        self.cluster_ids.iter().any(|id| id == cluster)
    }

    /// Whether requests from `cluster` may be authenticated here.
    pub fn serves(&self, cluster: Option<&str>) -> bool {
        self.cluster_ids.is_empty()
            || cluster.is_some_and(|c| self.cluster_ids.iter().any(|id| id == c))
    }

    /// Whether the token claims one of this authenticator's issuers. Read
    /// before the signature is checked, only to route the token.
    pub fn recognises(&self, token: &str) -> bool {
        insecure_decode_claims::<Issuer>(token)
            .ok()
            .and_then(|c| c.iss)
            .is_some_and(|iss| self.issuers.contains(&iss))
    }

    /// Verifies signature, issuer, audience and times, then maps the
    /// service account to its SPIFFE ID.
    ///
    /// # Errors
    /// [`Error::Rejected`] with the reason, [`Error::Unavailable`] when the
    /// JWKS cannot be had.
    pub async fn authenticate(&self, token: &str) -> Result<(Caller, Option<SystemTime>), Error> {
        let reject = |reason: String| Error::Rejected {
            authenticator: NAME,
            reason,
        };
        let header = decode_header(token).map_err(|e| reject(format!("malformed token: {e}")))?;
        if !ALLOWED_ALGORITHMS.contains(&header.alg) {
            return Err(reject(format!("algorithm {:?} is not allowed", header.alg)));
        }
        let keys = self
            .jwks
            .key(header.kid.as_deref())
            .await
            .map_err(|e| match e {
                super::jwks::Error::Unavailable(reason) => Error::Unavailable {
                    authenticator: NAME,
                    reason,
                },
                other => reject(other.to_string()),
            })?;

        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&self.issuers);
        validation.set_audience(&self.audiences);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        // Times are judged below on castellan's clock, not the library's.
        validation.validate_exp = false;
        validation.validate_nbf = false;

        let mut last = None;
        for key in keys {
            match decode::<Claims>(token, &key, &validation) {
                Ok(data) => {
                    // `exp` is the token's: an absurd one means "no expiry
                    // known", and the cache's own bound applies.
                    let expires = UNIX_EPOCH.checked_add(Duration::from_secs(data.claims.exp));
                    return self
                        .caller(data.claims)
                        .map(|c| (c, expires))
                        .map_err(reject);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(reject(last.map_or_else(
            || "no key".into(),
            |e| format!("invalid token: {e}"),
        )))
    }

    fn caller(&self, claims: Claims) -> Result<Caller, String> {
        caller(claims, self.skew, &self.trust_domain, self.clock.unix())
    }
}

/// The caller the verified claims name.
/// The caller the verified claims name, at `now` (Unix seconds), with
/// `skew` allowed on each time.
fn caller(
    claims: Claims,
    skew: Duration,
    trust_domain: &TrustDomain,
    now: u64,
) -> Result<Caller, String> {
    {
        let skew_secs = skew.as_secs();
        if claims.exp.saturating_add(skew_secs) < now {
            return Err(format!("invalid token: expired (exp {})", claims.exp));
        }
        if let Some(nbf) = claims.nbf
            && nbf > now.saturating_add(skew_secs)
        {
            return Err(format!("invalid token: not valid yet (nbf {nbf})"));
        }
        if let Some(iat) = claims.iat
            && iat > 0
            && iat.unsigned_abs() > now.saturating_add(skew.as_secs())
        {
            return Err(format!("token issued in the future (iat {iat})"));
        }
        let sa = ServiceAccount::from_username(&claims.sub).map_err(|e| e.to_string())?;
        let mut pod = None;
        if let Some(k) = claims.kubernetes {
            let sa_name = k.serviceaccount.as_ref().map(|s| s.name.as_str());
            if k.namespace != sa.namespace || sa_name.is_some_and(|n| n != sa.name) {
                return Err(format!(
                    "the kubernetes.io claim ({}/{}) disagrees with sub `{}`",
                    k.namespace,
                    sa_name.unwrap_or("?"),
                    claims.sub
                ));
            }
            pod = k.pod.map(|p| PodRef {
                name: p.name,
                uid: p.uid,
            });
        }
        Ok(Caller {
            identity: sa.spiffe_id(trust_domain).map_err(|e| e.to_string())?,
            service_account: sa,
            pod,
            cluster_id: None,
            authenticator: NAME,
        })
    }
}

/// Everything castellan itself does with an untrusted token before and
/// after the signature check (routing by issuer, the log description, the
/// header, mapping claims to a caller), for the fuzzer.
#[cfg(feature = "testing")]
pub fn fuzz(input: &[u8]) {
    if let Ok(token) = std::str::from_utf8(input) {
        let _ = describe_unrecognised(token);
        let _ = decode_header(token);
        let _ = insecure_decode_claims::<Issuer>(token);
    }
    if let (Ok(claims), Ok(td)) = (
        serde_json::from_slice::<Claims>(input),
        TrustDomain::new("cluster.local"),
    ) {
        let _ = caller(claims, Duration::from_secs(60), &td, 1_800_000_000);
    }
}

fn http_client(config: &config::Jwt) -> Result<reqwest::Client, SetupError> {
    let mut builder = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .connect_timeout(Duration::from_secs(3));
    if let Some(path) = &config.jwks_ca_file {
        let pem = std::fs::read(path).map_err(|source| SetupError::JwksCaRead {
            path: path.clone(),
            source,
        })?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|source| {
            SetupError::JwksCaPem {
                path: path.clone(),
                source,
            }
        })?;
        builder = builder.tls_certs_only(certs);
    }
    builder.build().map_err(SetupError::HttpClient)
}

/// A log-safe description of a token no authenticator took: its issuer, if
/// it has one, never the token itself.
pub(super) fn describe_unrecognised(token: &str) -> String {
    match insecure_decode_claims::<Issuer>(token) {
        Ok(Issuer { iss: Some(iss) }) => {
            let iss: String = iss.chars().take(128).collect();
            format!("issuer `{iss}` is not configured")
        }
        Ok(Issuer { iss: None }) => "token has no issuer".into(),
        Err(_) => "not a JWT".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: u64, nbf: Option<u64>, iat: Option<i64>) -> Claims {
        Claims {
            sub: "system:serviceaccount:apps:web".into(),
            exp,
            nbf,
            iat,
            kubernetes: None,
        }
    }

    #[test]
    fn token_times_are_judged_on_castellans_clock_with_the_skew() {
        let td = TrustDomain::new("cluster.local").unwrap();
        let skew = Duration::from_secs(60);
        let now = 1_800_000_000;
        assert!(caller(claims(now + 10, None, Some(now as i64)), skew, &td, now).is_ok());
        assert!(
            caller(claims(now - 30, None, None), skew, &td, now).is_ok(),
            "within the skew"
        );
        let e = caller(claims(now - 61, None, None), skew, &td, now).unwrap_err();
        assert!(e.contains("expired"), "{e}");
        let e = caller(claims(now + 3600, Some(now + 120), None), skew, &td, now).unwrap_err();
        assert!(e.contains("not valid yet"), "{e}");
        let e = caller(
            claims(now + 3600, None, Some(now as i64 + 3600)),
            skew,
            &td,
            now,
        )
        .unwrap_err();
        assert!(e.contains("future"), "{e}");
        // Three weeks on, the same token is long expired.
        let later = now + 21 * 86_400;
        assert!(caller(claims(now + 3600, None, None), skew, &td, later).is_err());
    }
}
