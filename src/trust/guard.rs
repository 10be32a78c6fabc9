//! The two guards, judged from the record, the root bundle in use and the
//! roots the signing chain ends at — the same for `castellan check`, start
//! and every reload — and the per-root status `check` prints.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{TrustRules, TrustState};
use crate::ca::date;

/// The verdicts of the switch guard (roots as fingerprint and subject) and the retirement guard: `Ok` with the
/// evidence, or `Err` with what to do.
pub fn judge(
    rules: &TrustRules,
    bundle: &[(String, String)],
    active: &[String],
    now: SystemTime,
) -> (Result<String, String>, Result<String, String>) {
    let state = rules.state.load();
    let now = secs(now);
    (
        switch(&state, rules, bundle, active, now),
        retire(&state, rules, bundle, now),
    )
}

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
    if !state.has_issued() && !rules.external.is_empty() {
        let others: Vec<String> = rules
            .external
            .iter()
            .map(|e| format!("`{}`", e.subject))
            .collect();
        return Ok(format!(
            "{} is the first root castellan signs under, joining a mesh signed under {} \
             (trust.external): workloads trust it through that CA's bundle (docs/migrate.md)",
            subject(first),
            others.join(", ")
        ));
    }
    if !state.has_issued() {
        return Ok(format!(
            "{} is the first root castellan signs under ({}): nothing to soak",
            subject(first),
            rules.store
        ));
    }
    if let Some(f) = active
        .iter()
        .find(|f| state.roots.get(*f).is_some_and(|r| r.last_issued.is_some()))
    {
        return Ok(format!("signing continues under {}", subject(f)));
    }
    let soak = rules.soak.as_secs();
    let served = state.roots.get(first).and_then(|r| r.first_served);
    match served {
        Some(t) if now >= t.saturating_add(soak) => Ok(format!(
            "switching to {}: served to workloads since {}, more than trust.soak_secs ({soak} s)",
            subject(first),
            date(at(t))
        )),
        Some(t) => Err(format!(
            "the signing chain ends at {}, served to workloads only since {}: workloads that have \
             not renewed since would not trust certificates under it. Keep the previous signing \
             material until {} (trust.soak_secs = {soak}), or set trust.force = true",
            subject(first),
            date(at(t)),
            date(at(t.saturating_add(soak)))
        )),
        None => Err(format!(
            "the signing chain ends at {}, which castellan has never served to workloads: add \
             it to ca.roots_file beside the current root first, serve that for trust.soak_secs \
             ({soak} s), then switch (or set trust.force = true)",
            subject(first)
        )),
    }
}

fn retire(
    state: &TrustState,
    rules: &TrustRules,
    bundle: &[(String, String)],
    now: u64,
) -> Result<String, String> {
    let mut needed = Vec::new();
    let mut removable = Vec::new();
    for (f, r) in &state.roots {
        let Some(last) = r.last_issued else { continue };
        if bundle.iter().any(|(fp, _)| fp == f) {
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
    for e in &rules.external {
        if bundle.iter().any(|(fp, _)| *fp == e.fingerprint) {
            continue;
        }
        match e.signs_until.map(|t| keep_until(rules, t)) {
            None => needed.push(format!(
                "`{}` ({}), another CA's root it still signs under (trust.external has no \
                 signs_until)",
                e.subject,
                short(&e.fingerprint)
            )),
            Some(until) if until > now => needed.push(format!(
                "`{}` ({}) until {}",
                e.subject,
                short(&e.fingerprint),
                date(at(until))
            )),
            Some(_) => removable.push(format!("`{}`", e.subject)),
        }
    }
    if needed.is_empty() {
        Ok(if removable.is_empty() {
            "every root castellan signed under is in the root bundle".into()
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

/// One line per root in the bundle or the record: its role, when it was
/// served and signed under, and what is safe to do with it next.
pub fn status(
    rules: &TrustRules,
    bundle: &[(String, String)],
    active: &[String],
    now: SystemTime,
) -> Vec<String> {
    let state = rules.state.load();
    let now = secs(now);
    let soak = rules.soak.as_secs();
    let mut lines = Vec::new();
    for (f, subject) in bundle {
        let r = state.roots.get(f);
        let served = r.and_then(|r| r.first_served);
        let issued = r.and_then(|r| r.last_issued);
        let served_text = served.map_or_else(
            || "not yet served".into(),
            |t| format!("served since {}", date(at(t))),
        );
        let external = rules.external.iter().find(|e| e.fingerprint == *f);
        let line = if let Some(e) = external {
            let next = match e.signs_until.map(|t| (t, keep_until(rules, t))) {
                None => "another CA still signs under it: keep it; set trust.external signs_until \
                         when that CA stops"
                    .to_owned(),
                Some((t, until)) if until > now => format!(
                    "signed under by another CA until {}: keep it until {}",
                    date(at(t)),
                    date(at(until))
                ),
                Some(_) => "its leaves have expired: safe to remove from ca.roots_file".into(),
            };
            format!("external  `{subject}` ({}): {next}", short(f))
        } else if active.contains(f) {
            format!(
                "active    `{subject}` ({}): signing under it; {served_text}",
                short(f)
            )
        } else if let Some(last) = issued {
            let until = keep_until(rules, last);
            let next = if until > now {
                format!(
                    "keep it until {}, when its last leaf has expired",
                    date(at(until))
                )
            } else {
                "its leaves have expired: safe to remove from ca.roots_file".into()
            };
            format!(
                "outgoing  `{subject}` ({}): last signed under {}; {next}",
                short(f),
                date(at(last))
            )
        } else {
            let next = match served {
                Some(t) if now >= t.saturating_add(soak) => {
                    "soaked: safe to switch the signing material to it".into()
                }
                Some(t) => format!("switch to it after {}", date(at(t.saturating_add(soak)))),
                None => "switch to it one soak after castellan first serves it".into(),
            };
            format!(
                "incoming  `{subject}` ({}): {served_text}; {next}",
                short(f)
            )
        };
        lines.push(line);
    }
    for e in &rules.external {
        if !bundle.iter().any(|(fp, _)| *fp == e.fingerprint) {
            let gone = e.signs_until.is_some_and(|t| keep_until(rules, t) <= now);
            let what = if gone {
                "retired"
            } else {
                "its leaves still live: put it back"
            };
            lines.push(format!(
                "removed   `{}` ({}): {what}",
                e.subject,
                short(&e.fingerprint)
            ));
        }
    }
    for (f, r) in &state.roots {
        if bundle.iter().any(|(fp, _)| fp == f) {
            continue;
        }
        if let Some(last) = r.last_issued {
            let until = keep_until(rules, last);
            let what = if until > now {
                format!(
                    "leaves under it live until {}: put it back",
                    date(at(until))
                )
            } else {
                "retired".into()
            };
            lines.push(format!("removed   `{}` ({}): {what}", r.subject, short(f)));
        }
    }
    lines
}

fn short(fingerprint: &str) -> String {
    format!("sha256 {}…", fingerprint.get(..16).unwrap_or(fingerprint))
}

fn secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Until when a root must stay in the bundle after the last leaf was
/// signed under it (`last_signed`, Unix seconds): that leaf's whole life,
/// and one second more — the record is in whole seconds (rounded down), and
/// a leaf is valid through its notAfter second (RFC 5280). The guard and
/// `castellan check`'s status both ask this one rule.
fn keep_until(rules: &TrustRules, last_signed: u64) -> u64 {
    last_signed
        .saturating_add(rules.leaf_life.as_secs())
        .saturating_add(1)
}

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH
        .checked_add(Duration::from_secs(secs))
        .unwrap_or(UNIX_EPOCH)
}
