//! The guards, judged from the record, the root bundle in use and the roots
//! the signing chain ends at — the same for `castellan check`, start and
//! every reload: signing moves only to a root workloads have been served
//! without a break for a soak; no root leaves the bundle while leaves under
//! it live (castellan's own, or another CA's it was told of, even after that
//! CA's section is gone); a soak shorter than a renewal cycle is a waiver.

use std::time::SystemTime;

use super::{TrustRules, TrustState};
use crate::clock::{at, date, unix};

/// The verdicts of the switch guard (roots as fingerprint and subject) and
/// the retirement guard: `Ok` with the evidence, or `Err` with what to do.
pub fn judge(
    rules: &TrustRules,
    bundle: &[(String, String)],
    active: &[String],
    now: SystemTime,
) -> (Result<String, String>, Result<String, String>) {
    let state = rules.state.load();
    let now = unix(now);
    (
        switch(&state, rules, bundle, active, now),
        retire(&state, rules, bundle, now),
    )
}

/// A soak shorter than one renewal cycle (half the longest workload
/// lifetime) lets signing move to a root that workloads which renewed once
/// since it was added have not all received.
///
/// # Errors
/// The evidence, when the soak is shorter.
pub fn soak_floor(rules: &TrustRules) -> Result<String, String> {
    let (soak, cycle) = (rules.soak.as_secs(), rules.renewal_cycle.as_secs());
    if soak >= cycle {
        return Ok(format!(
            "trust.soak_secs = {soak} s, at least one renewal cycle (half of \
             issuance.max_ttl_secs: {cycle} s)"
        ));
    }
    let fix = if rules.force {
        "WAIVED by trust.force".to_owned()
    } else {
        format!("raise it to at least {cycle}, or set trust.force = true to waive this")
    };
    Err(format!(
        "trust.soak_secs = {soak} s is shorter than one renewal cycle (half of \
         issuance.max_ttl_secs: {cycle} s): workloads that have not renewed since a new root \
         was added would not trust certificates under it; {fix}"
    ))
}

// Long: the switch guard's rule with its evidence: each case explains itself to the operator.
fn switch(
    state: &TrustState,
    rules: &TrustRules,
    bundle: &[(String, String)],
    active: &[String],
    now: u64,
) -> Result<String, String> {
    let subject = |f: &String| {
        bundle
            .iter()
            .find(|(fp, _)| fp == f)
            .map_or_else(|| short(f), |(_, s)| format!("`{s}`"))
    };
    let Some(first) = active.first() else {
        return Err("not judged: the signing chain was not verified to any root".into());
    };
    if !state.has_issued() {
        let others: Vec<String> = externals(state, rules)
            .into_iter()
            .map(|e| format!("`{}`", e.subject))
            .collect();
        return Ok(if others.is_empty() {
            format!(
                "{} is the first root castellan signs under ({}): nothing to soak",
                subject(first),
                rules.store
            )
        } else {
            format!(
                "{} is the first root castellan signs under, joining a mesh signed under {} \
                 (trust.external): workloads trust it through that CA's bundle (docs/migrate.md)",
                subject(first),
                others.join(", ")
            )
        });
    }
    if let Some(f) = active
        .iter()
        .find(|f| state.roots.get(*f).is_some_and(|r| r.signed_in_stretch()))
    {
        return Ok(format!("signing continues under {}", subject(f)));
    }
    let soak = rules.soak.as_secs();
    let record = state.roots.get(first);
    let soaked_at = record.and_then(|r| r.soaked_at(soak));
    match record.and_then(super::RootRecord::stretch).zip(soaked_at) {
        Some((t, at_)) if now >= at_ => Ok(format!(
            "switching to {}: served to workloads without a break since {}, more than \
             trust.soak_secs ({soak} s)",
            subject(first),
            date(at(t))
        )),
        Some((t, at_)) => Err(format!(
            "the signing chain ends at {}, served to workloads without a break only since {}: \
             workloads that have not renewed since would not trust certificates under it. Keep \
             the previous signing material until {} (trust.soak_secs = {soak}), or set \
             trust.force = true",
            subject(first),
            date(at(t)),
            date(at(at_))
        )),
        None => match record.and_then(|r| r.withdrawn) {
            Some(w) => Err(format!(
                "the signing chain ends at {}, which left the root bundle at {}: workloads that \
                 renewed since then no longer trust it. Put it back in ca.roots_file beside the \
                 current root, serve that for trust.soak_secs ({soak} s), then switch (or set \
                 trust.force = true)",
                subject(first),
                date(at(w))
            )),
            None => Err(format!(
                "the signing chain ends at {}, which castellan has never served to workloads: \
                 add it to ca.roots_file beside the current root first, serve that for \
                 trust.soak_secs ({soak} s), then switch (or set trust.force = true)",
                subject(first)
            )),
        },
    }
}

// Long: the retirement guard's rule with its evidence: each case explains itself to the operator.
fn retire(
    state: &TrustState,
    rules: &TrustRules,
    bundle: &[(String, String)],
    now: u64,
) -> Result<String, String> {
    let in_bundle = |f: &str| bundle.iter().any(|(fp, _)| fp == f);
    let mut needed = Vec::new();
    let mut removable = Vec::new();
    for (f, r) in &state.roots {
        let Some(last) = r.last_issued else { continue };
        if in_bundle(f) {
            continue;
        }
        let until = keep_until(rules, last);
        if until > now {
            needed.push(format!(
                "`{}` ({}) until {}",
                r.subject,
                short(f),
                date(at(until))
            ));
        } else {
            removable.push(format!("`{}`", r.subject));
        }
    }
    for e in externals(state, rules) {
        if in_bundle(&e.fingerprint) {
            continue;
        }
        match e.keep_until {
            None => needed.push(format!(
                "`{}` ({}), another CA's root it still signs under ({})",
                e.subject,
                short(&e.fingerprint),
                e.source
            )),
            Some(until) if until > now => needed.push(format!(
                "`{}` ({}), another CA's root, until {} ({})",
                e.subject,
                short(&e.fingerprint),
                date(at(until)),
                e.source
            )),
            Some(_) => removable.push(format!("`{}`", e.subject)),
        }
    }
    if needed.is_empty() {
        Ok(if removable.is_empty() {
            "every root castellan or another CA signed under is in the root bundle".into()
        } else {
            format!(
                "roots removed after their last leaf expired: {}",
                removable.join(", ")
            )
        })
    } else {
        Err(format!(
            "ca.roots_file no longer holds {}, but leaves signed under it still live: put it \
             back until then (or set trust.force = true)",
            needed.join(", ")
        ))
    }
}

/// Another CA's root as the guards see it: as configured now, or as the
/// record remembers it once its section is gone.
pub(super) struct OtherCa {
    pub(super) fingerprint: String,
    pub(super) subject: String,
    /// `None`: that CA still signs.
    pub(super) keep_until: Option<u64>,
    /// Where this comes from, for messages.
    pub(super) source: &'static str,
}

pub(super) fn externals(state: &TrustState, rules: &TrustRules) -> Vec<OtherCa> {
    let mut all: Vec<OtherCa> = rules
        .external
        .iter()
        .map(|e| OtherCa {
            fingerprint: e.fingerprint.clone(),
            subject: e.subject.clone(),
            keep_until: e
                .signs_until
                .map(|t| t.saturating_add(e.leaf_life.as_secs()).saturating_add(1)),
            source: "trust.external",
        })
        .collect();
    for (f, e) in &state.external {
        if !all.iter().any(|o| o.fingerprint == *f) {
            all.push(OtherCa {
                fingerprint: f.clone(),
                subject: e.subject.clone(),
                keep_until: e.keep_until(),
                source: "its [[trust.external]] section is gone; the record remembers it",
            });
        }
    }
    all
}

pub(super) fn short(fingerprint: &str) -> String {
    format!("sha256 {}…", fingerprint.get(..16).unwrap_or(fingerprint))
}

/// Until when a root must stay in the bundle after the last leaf was
/// signed under it (`last_signed`, Unix seconds): that leaf's whole life,
/// and one second more — the record is in whole seconds (rounded down), and
/// a leaf is valid through its notAfter second (RFC 5280). The guard and
/// `castellan check`'s status both ask this one rule.
pub(super) fn keep_until(rules: &TrustRules, last_signed: u64) -> u64 {
    last_signed
        .saturating_add(rules.leaf_life.as_secs())
        .saturating_add(1)
}
