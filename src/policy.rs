//! What may be issued to whom: the CSR's names against the caller's identity,
//! and the requested lifetime against the configured bounds.

use std::time::Duration;

use spiffe::SpiffeId;

use crate::{
    config::{Issuance, OverMaxTtl},
    csr::{KeyKind, VerifiedCsr},
};

/// A request that passed policy: the only input the issuer accepts, so an
/// unchecked CSR cannot be signed.
#[derive(Clone, Debug)]
pub struct Approved {
    spki_der: Vec<u8>,
    csr_pem: String,
    key: KeyKind,
    identity: SpiffeId,
    ttl: Duration,
    /// Set when the request asked for a lifetime outside the bounds and got
    /// the nearest bound.
    clamped_from: Option<Duration>,
}

/// Lifetime rules, from [`Issuance`].
#[derive(Clone, Copy, Debug)]
pub struct TtlRules {
    pub default: Duration,
    pub min: Duration,
    pub max: Duration,
    pub over_max: OverMaxTtl,
}

/// Why a well-formed request is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("CSR asks for identity `{requested}`, but the caller may only be issued `{allowed}`")]
    IdentityMismatch { requested: String, allowed: String },
    #[error("requested validity {0}s is negative")]
    NegativeTtl(i64),
    #[error("requested validity {requested}s exceeds the maximum of {max}s")]
    TtlTooLong { requested: u64, max: u64 },
}

// === impl Approved ===

impl Approved {
    pub fn spki_der(&self) -> &[u8] {
        &self.spki_der
    }

    /// The CSR as received, for signers that issue from it.
    pub fn csr_pem(&self) -> &str {
        &self.csr_pem
    }

    pub fn key(&self) -> KeyKind {
        self.key
    }

    pub fn identity(&self) -> &SpiffeId {
        &self.identity
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    pub fn clamped_from(&self) -> Option<Duration> {
        self.clamped_from
    }
}

// === impl TtlRules ===

impl From<&Issuance> for TtlRules {
    fn from(i: &Issuance) -> Self {
        Self {
            default: Duration::from_secs(i.default_ttl_secs),
            min: Duration::from_secs(i.min_ttl_secs),
            max: Duration::from_secs(i.max_ttl_secs),
            over_max: i.over_max_ttl,
        }
    }
}

impl TtlRules {
    /// 0 means "no preference"; negative is an error; below the minimum is
    /// raised to it; above the maximum is clamped or refused as configured.
    /// Returns the TTL and, when it differs, what was asked for.
    fn decide(&self, requested_secs: i64) -> Result<(Duration, Option<Duration>), Error> {
        let requested = match u64::try_from(requested_secs) {
            Ok(0) => return Ok((self.default, None)),
            Ok(secs) => Duration::from_secs(secs),
            Err(_) => return Err(Error::NegativeTtl(requested_secs)),
        };
        if requested < self.min {
            return Ok((self.min, Some(requested)));
        }
        if requested <= self.max {
            return Ok((requested, None));
        }
        match self.over_max {
            OverMaxTtl::Clamp => Ok((self.max, Some(requested))),
            OverMaxTtl::Reject => Err(Error::TtlTooLong {
                requested: requested.as_secs(),
                max: self.max.as_secs(),
            }),
        }
    }
}

/// Decides whether `csr` may be issued for `identity` — the caller's own,
/// or the one node authorization granted it — for `requested_ttl_secs`.
///
/// # Errors
/// [`Error`] saying which rule refused.
pub fn check(
    csr: VerifiedCsr,
    identity: &SpiffeId,
    requested_ttl_secs: i64,
    rules: &TtlRules,
) -> Result<Approved, Error> {
    let identity = identity.clone();
    if let Some(requested) = &csr.uri
        && requested.as_str() != identity.to_string()
    {
        return Err(Error::IdentityMismatch {
            requested: requested.clone(),
            allowed: identity.to_string(),
        });
    }
    let (ttl, clamped_from) = rules.decide(requested_ttl_secs)?;
    Ok(Approved {
        spki_der: csr.spki_der,
        csr_pem: csr.pem,
        key: csr.key,
        identity,
        ttl,
        clamped_from,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller() -> SpiffeId {
        SpiffeId::new("spiffe://cluster.local/ns/ns/sa/sa").unwrap()
    }

    fn csr(uri: Option<&str>) -> VerifiedCsr {
        VerifiedCsr {
            spki_der: vec![1, 2, 3],
            pem: String::new(),
            key: KeyKind::EcdsaP256,
            uri: uri.map(str::to_owned),
        }
    }

    fn rules(over_max: OverMaxTtl) -> TtlRules {
        TtlRules {
            default: Duration::from_secs(3600),
            min: Duration::from_secs(600),
            max: Duration::from_secs(7200),
            over_max,
        }
    }

    #[test]
    fn identity_must_match_when_named() {
        let r = rules(OverMaxTtl::Clamp);
        let ok = check(
            csr(Some("spiffe://cluster.local/ns/ns/sa/sa")),
            &caller(),
            0,
            &r,
        );
        assert_eq!(
            ok.unwrap().identity().to_string(),
            "spiffe://cluster.local/ns/ns/sa/sa"
        );
        let none = check(csr(None), &caller(), 0, &r).unwrap();
        assert_eq!(
            none.identity().to_string(),
            "spiffe://cluster.local/ns/ns/sa/sa"
        );
        let other = check(
            csr(Some("spiffe://cluster.local/ns/ns/sa/admin")),
            &caller(),
            0,
            &r,
        );
        assert!(matches!(other, Err(Error::IdentityMismatch { .. })));
        let td = check(
            csr(Some("spiffe://evil.example/ns/ns/sa/sa")),
            &caller(),
            0,
            &r,
        );
        assert!(matches!(td, Err(Error::IdentityMismatch { .. })));
    }

    #[test]
    fn ttl_rules() {
        let clamp = rules(OverMaxTtl::Clamp);
        let c = caller();
        let ttl = |r: &TtlRules, s| {
            check(csr(None), &c, s, r).map(|a| (a.ttl().as_secs(), a.clamped_from()))
        };
        assert_eq!(ttl(&clamp, 0).unwrap(), (3600, None));
        assert_eq!(
            ttl(&clamp, 1).unwrap(),
            (600, Some(Duration::from_secs(1))),
            "raised to the minimum"
        );
        assert_eq!(ttl(&clamp, 600).unwrap(), (600, None));
        assert_eq!(ttl(&clamp, 7200).unwrap(), (7200, None));
        assert_eq!(
            ttl(&clamp, 9000).unwrap(),
            (7200, Some(Duration::from_secs(9000)))
        );
        assert_eq!(ttl(&clamp, -1), Err(Error::NegativeTtl(-1)));
        let reject = rules(OverMaxTtl::Reject);
        assert_eq!(
            ttl(&reject, 9000),
            Err(Error::TtlTooLong {
                requested: 9000,
                max: 7200
            })
        );
        assert_eq!(ttl(&reject, i64::MIN), Err(Error::NegativeTtl(i64::MIN)));
        assert_eq!(
            ttl(&reject, i64::MAX).map(|_| ()),
            Err(Error::TtlTooLong {
                requested: i64::MAX as u64,
                max: 7200
            })
        );
    }
}
