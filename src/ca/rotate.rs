//! Intermediates a back end mints on request (Vault mint mode) are replaced
//! by castellan itself: at half of the serving one's life a new one is
//! minted, judged like any signing CA (a probe certificate included) and
//! swapped in atomically, so requests in flight finish on the old one. A
//! failure leaves the old one serving and is retried with back-off; it
//! keeps serving until `issuance.min_ttl_secs` before its end, when
//! readiness fails (see [`SigningCa::why_unhealthy`]).

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use super::{CaHandle, Error, SigningCa};
use crate::profile::IssuerFacts;

/// Retries start here and double up to [`retry_cap`].
const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(60);
/// A refusal waiting will not fix (an answer outside the profile, a cut
/// lifetime, a foreign or expiring issuer) is tried again slowly — from
/// five minutes, doubling to an hour — but always at least twice more
/// before the serving intermediate stops issuing.
const REFUSED_FIRST: Duration = Duration::from_secs(300);
const REFUSED_MAX: Duration = Duration::from_secs(3600);

/// How an attempt to replace the intermediate ended, for metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Rotated,
    /// The back end could not be reached (Vault sealed, down).
    Unavailable,
    /// The back end said no, or what it returned was refused.
    Refused,
}

impl Outcome {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Rotated => "rotated",
            Self::Unavailable => "unavailable",
            Self::Refused => "refused",
        }
    }

    fn of(e: &Error) -> Self {
        match e {
            Error::Backend(
                castellan_signer::Error::Unavailable(_) | castellan_signer::Error::Busy(_),
            ) => Self::Unavailable,
            Error::Backend(
                castellan_signer::Error::Config(_) | castellan_signer::Error::Failed(_),
            )
            | Error::Parse { .. }
            | Error::NoRoots
            | Error::UnsupportedKey { .. }
            | Error::Practice(_)
            | Error::Profile(_)
            | Error::Probe(_)
            | Error::KeyMismatch { .. }
            | Error::Refused(_)
            | Error::Unhealthy(_)
            | Error::WorkloadOnly => Self::Refused,
        }
    }
}

/// When a CA with `facts` is due for replacement: half its life, so that a
/// lifetime of at least twice the longest leaf leaves every leaf issued
/// before the swap its full lifetime.
pub fn due(facts: &IssuerFacts) -> SystemTime {
    let life = facts
        .not_after
        .duration_since(facts.not_before)
        .unwrap_or_default();
    facts.not_before + life / 2
}

/// The longest wait between retries: a minute, or a twentieth of the
/// lifetime when that is shorter, so that a short-lived intermediate gets
/// several attempts in the half life it has left.
fn retry_cap(facts: &IssuerFacts) -> Duration {
    let life = facts
        .not_after
        .duration_since(facts.not_before)
        .unwrap_or_default();
    (life / 20).clamp(FIRST_RETRY, MAX_RETRY)
}

/// Replaces the CA whenever it is due, for as long as the process runs.
/// `on_attempt` sees every attempt's outcome and the CA serving after it.
pub fn spawn_rotator(
    handle: Arc<CaHandle>,
    on_attempt: impl Fn(Outcome, &SigningCa) + Send + Sync + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let current = handle.current();
            let facts = current.facts().clone();
            let wait = due(&facts)
                .duration_since(current.clock().now())
                .unwrap_or_default();
            drop(current);
            tokio::time::sleep(wait).await;
            let mut backoff = Backoff::new(retry_cap(&facts));
            loop {
                let result = handle.replace().await;
                let ca = handle.current();
                let outcome = match result {
                    Ok(()) => Outcome::Rotated,
                    Err(e) => {
                        let outcome = Outcome::of(&e);
                        let wait = backoff.next(outcome, ca.clock().now(), ca.usable_until());
                        tracing::error!(
                            source = %handle.describe(),
                            error = %e,
                            retry_in_secs = wait.as_secs(),
                            "new intermediate not minted; the current one keeps serving"
                        );
                        outcome
                    }
                };
                on_attempt(outcome, &ca);
                if outcome == Outcome::Rotated {
                    tracing::info!(
                        source = %handle.describe(),
                        subject = %ca.facts().subject,
                        expires = %crate::clock::date(ca.facts().not_after),
                        next_rotation = %crate::clock::date(due(ca.facts())),
                        "new intermediate minted and in use"
                    );
                    break;
                }
                tokio::time::sleep(backoff.last).await;
            }
        }
    })
}

/// How long to wait before the next attempt.
#[derive(Debug)]
struct Backoff {
    cap: Duration,
    unavailable: Duration,
    refused: Duration,
    /// The wait chosen last.
    last: Duration,
}

impl Backoff {
    fn new(cap: Duration) -> Self {
        Self {
            cap,
            unavailable: FIRST_RETRY,
            refused: REFUSED_FIRST,
            last: FIRST_RETRY,
        }
    }

    /// After an attempt that ended in `outcome` at `now`, with the serving
    /// intermediate usable until `usable_until`: back end down, quickly
    /// (up to the cap); refused, slowly, yet twice more before it is too late.
    fn next(&mut self, outcome: Outcome, now: SystemTime, usable_until: SystemTime) -> Duration {
        self.last = match outcome {
            Outcome::Refused => {
                let left = usable_until.duration_since(now).unwrap_or_default();
                let wait = self.refused.min(REFUSED_MAX).min(left / 3);
                self.refused = self.refused.saturating_mul(2);
                wait.max(FIRST_RETRY)
            }
            Outcome::Unavailable | Outcome::Rotated => {
                let wait = self.unavailable.min(self.cap);
                self.unavailable = self.unavailable.saturating_mul(2);
                wait
            }
        };
        self.last
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(life: u64) -> IssuerFacts {
        let not_before = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        IssuerFacts {
            subject: x509_cert::name::Name::default(),
            key_id: Vec::new(),
            not_before,
            not_after: not_before + Duration::from_secs(life),
            signature_algorithm: crate::ca::KeyAlgorithm::EcdsaP256Sha256.identifier(),
        }
    }

    #[test]
    fn refusals_are_retried_slowly_yet_before_it_is_too_late() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let days = |d: u64| now + Duration::from_secs(d * 86_400);
        let mut b = Backoff::new(MAX_RETRY);
        // A day of life left: five minutes, doubling to an hour.
        let waits: Vec<u64> = (0..6)
            .map(|_| b.next(Outcome::Refused, now, days(1)).as_secs())
            .collect();
        assert_eq!(waits, [300, 600, 1_200, 2_400, 3_600, 3_600]);
        // Fifteen minutes left: a third of it, so two more tries fit.
        let mut b = Backoff::new(MAX_RETRY);
        let left = now + Duration::from_secs(900);
        assert_eq!(b.next(Outcome::Refused, now, left).as_secs(), 300);
        assert_eq!(b.next(Outcome::Refused, now, left).as_secs(), 300);
        // Vault down: quickly, up to the cap.
        let mut b = Backoff::new(Duration::from_secs(20));
        let waits: Vec<u64> = (0..7)
            .map(|_| b.next(Outcome::Unavailable, now, days(1)).as_secs())
            .collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 20, 20]);
    }

    #[test]
    fn due_at_half_life_and_retries_fit_in_it() {
        let f = facts(86_400);
        assert_eq!(due(&f), f.not_before + Duration::from_secs(43_200));
        assert_eq!(retry_cap(&f), MAX_RETRY);
        assert_eq!(retry_cap(&facts(20)), FIRST_RETRY);
        assert_eq!(retry_cap(&facts(400)), Duration::from_secs(20));
        let backwards = IssuerFacts {
            not_after: f.not_before - Duration::from_secs(1),
            ..f
        };
        assert_eq!(due(&backwards), backwards.not_before);
    }
}
