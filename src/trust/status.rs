//! What `castellan check` shows of the record: one line per root, per
//! generation, with what is safe to do next.

use std::time::SystemTime;

use super::{
    TrustRules, TrustState,
    guard::{OtherCa, externals, keep_until, short},
};
use crate::clock::{at, date, unix};

/// One line per root in the bundle or the record, and per generation: its
/// role, when it was served and signed under, and what is safe to do next.
pub fn status(
    rules: &TrustRules,
    bundle: &[(String, String)],
    active: &[String],
    now: SystemTime,
) -> Vec<String> {
    let state = rules.state.load();
    let now = unix(now);
    let others = externals(&state, rules);
    let mut lines = Vec::new();
    for (f, subject) in bundle {
        lines.push(bundle_line(&state, rules, &others, f, subject, active, now));
    }
    for e in &others {
        if !bundle.iter().any(|(fp, _)| *fp == e.fingerprint) {
            let gone = e.keep_until.is_some_and(|t| t <= now);
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
        if bundle.iter().any(|(fp, _)| fp == f) || others.iter().any(|e| e.fingerprint == *f) {
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

// Long: one root's status line, assembled from everything the record says about it.
fn bundle_line(
    state: &TrustState,
    rules: &TrustRules,
    others: &[OtherCa],
    f: &String,
    subject: &str,
    active: &[String],
    now: u64,
) -> String {
    let soak = rules.soak.as_secs();
    let r = state.roots.get(f);
    let stretch = r.and_then(super::RootRecord::stretch);
    let served_text = stretch.map_or_else(
        || "not yet served".into(),
        |t| format!("served without a break since {}", date(at(t))),
    );
    if let Some(e) = others.iter().find(|e| e.fingerprint == *f) {
        let next = match e.keep_until {
            None => "another CA still signs under it: keep it; set trust.external signs_until \
                     when that CA stops"
                .to_owned(),
            Some(until) if until > now => format!(
                "another CA's leaves under it live until {}: keep it until then",
                date(at(until))
            ),
            Some(_) => "its leaves have expired: safe to remove from ca.roots_file".into(),
        };
        return format!("external  `{subject}` ({}): {next}", short(f));
    }
    if active.contains(f) {
        return format!(
            "active    `{subject}` ({}): signing under it; {served_text}",
            short(f)
        );
    }
    if let Some(last) = r.and_then(|r| r.last_issued) {
        let until = keep_until(rules, last);
        let next = if until > now {
            format!(
                "keep it until {}, when its last leaf has expired",
                date(at(until))
            )
        } else {
            "its leaves have expired: safe to remove from ca.roots_file".into()
        };
        return format!(
            "outgoing  `{subject}` ({}): last signed under {}; {next}",
            short(f),
            date(at(last))
        );
    }
    let next = match r.and_then(|r| r.soaked_at(soak)) {
        Some(t) if now >= t => "soaked: safe to switch the signing material to it".into(),
        Some(t) => format!("switch to it after {}", date(at(t))),
        None => "switch to it one soak after castellan first serves it".into(),
    };
    format!(
        "incoming  `{subject}` ({}): {served_text}; {next}",
        short(f)
    )
}

/// One line per generation the record remembers alive at `now`: whether
/// castellan signs under it, until when its leaves live, and what its CRL
/// is — what clients will see of revocations of its leaves.
pub fn generations(rules: &TrustRules, signing: &str, now: SystemTime) -> Vec<String> {
    let state = rules.state.load();
    let now = unix(now);
    let mut alive: Vec<(&String, &super::Generation)> = state
        .generations
        .iter()
        .filter(|(_, g)| g.keep_until() >= now)
        .collect();
    alive.sort_by_key(|(_, g)| std::cmp::Reverse(g.last_issued));
    alive
        .into_iter()
        .map(|(f, g)| {
            let crl = state.crls.get(f).map_or_else(
                || "no CRL recorded".to_owned(),
                |c| format!("its last CRL's next update {}", date(at(c.next_update))),
            );
            if f == signing {
                format!("signing   `{}` ({}): {crl}", g.subject, short(f))
            } else {
                format!(
                    "replaced  `{}` ({}): last signed under {}, leaves live until {}; {crl} — \
                     a revocation reaches its CRL only while a replica that held it since \
                     runs (docs/revoke.md)",
                    g.subject,
                    short(f),
                    date(at(g.last_issued)),
                    date(at(g.keep_until()))
                )
            }
        })
        .collect()
}
