//! The rules several issuers must meet together: names, bindings that
//! decide each namespace once, `trusts` without a loop, no key or record
//! shared — each refusal naming the keys.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
};

use super::{MAIN_ISSUER, Unit};
use crate::config::{Error, Signer};

pub(super) fn issuer_rule(key: &'static str, problem: String) -> Result<(), Error> {
    Err(Error::Invalid { key, problem })
}

/// Names are distinct, not `default`, and usable as a metric label.
pub(super) fn names(units: &[Unit]) -> Result<BTreeSet<&str>, Error> {
    let mut seen = BTreeSet::new();
    for u in units {
        let fine = !u.name.is_empty()
            && u.name.len() <= 63
            && u.name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !fine {
            issuer_rule(
                "issuers.name",
                format!(
                    "\"{}\" is not a name: use 1 to 63 lower-case letters, digits or '-'",
                    u.name.escape_default()
                ),
            )?;
        }
        if !seen.insert(u.name.as_str()) {
            issuer_rule(
                "issuers.name",
                format!(
                    "\"{}\" names two issuers (\"{MAIN_ISSUER}\" is the top-level [signer]): \
                     give each its own name",
                    u.name
                ),
            )?;
        }
    }
    Ok(seen)
}

/// Every namespace is decided by one issuer, and every issuer is reachable.
// Long: one pass over the bindings, each rule refusing with its key where it is found.
pub(super) fn bindings(units: &[Unit], watches_namespaces: bool) -> Result<(), Error> {
    let mut owner: BTreeMap<&str, &str> = BTreeMap::new();
    let mut selectors: BTreeMap<&BTreeMap<String, String>, &str> = BTreeMap::new();
    for u in units {
        let Some(b) = &u.binding else { continue };
        if !b.namespace_labels.is_empty() {
            if !watches_namespaces {
                issuer_rule(
                    "issuers.namespace_labels",
                    format!(
                        "issuer \"{}\": binding by label needs a [kubernetes] section, the \
                         cluster whose namespaces castellan watches",
                        u.name
                    ),
                )?;
            }
            if let Some(other) = selectors.insert(&b.namespace_labels, &u.name) {
                issuer_rule(
                    "issuers.namespace_labels",
                    format!(
                        "issuers \"{other}\" and \"{}\" select the same labels: a namespace \
                         carrying them would be bound to both",
                        u.name
                    ),
                )?;
            }
        }
        if b.namespaces.is_empty() && b.namespace_labels.is_empty() {
            issuer_rule(
                if u.name == MAIN_ISSUER {
                    "binding.namespaces"
                } else {
                    "issuers.namespaces"
                },
                format!(
                    "is empty for issuer \"{}\": no workload could reach it; bind it to the \
                     namespaces it signs for (or remove it)",
                    u.name
                ),
            )?;
        }
        for ns in &b.namespaces {
            if ns.is_empty() || ns.len() > 63 {
                issuer_rule(
                    "issuers.namespaces",
                    format!("issuer \"{}\": \"{ns}\" is not a namespace name", u.name),
                )?;
            }
            if let Some(other) = owner.insert(ns, &u.name) {
                issuer_rule(
                    "issuers.namespaces",
                    format!(
                        "namespace \"{ns}\" is bound to both \"{other}\" and \"{}\": a namespace's \
                         workloads are signed by one issuer (use `trusts` for a namespace that \
                         must trust both)",
                        u.name
                    ),
                )?;
            }
        }
        for s in &b.cert_signers {
            if s.is_empty() || s.split('/').count() > 2 || s.ends_with('/') {
                issuer_rule(
                    "issuers.cert_signers",
                    format!(
                        "issuer \"{}\": \"{s}\" is neither a bare name nor `<domain>/<name>`",
                        u.name
                    ),
                )?;
            }
        }
    }
    Ok(())
}

/// `trusts` names issuers, never the issuer itself, and never closes a loop.
pub(super) fn trusts(units: &[Unit], names: &BTreeSet<&str>) -> Result<(), Error> {
    let edges: BTreeMap<&str, Vec<&str>> = units
        .iter()
        .map(|u| {
            let t = u.binding.as_ref().map(|b| &b.trusts[..]).unwrap_or(&[]);
            (u.name.as_str(), t.iter().map(String::as_str).collect())
        })
        .collect();
    for (from, to) in &edges {
        for t in to {
            if !names.contains(t) {
                issuer_rule(
                    "issuers.trusts",
                    format!("issuer \"{from}\" trusts \"{t}\", which is not an issuer"),
                )?;
            }
        }
    }
    for start in edges.keys() {
        // Depth-first from each issuer: coming back to it is a loop.
        let mut stack: Vec<Vec<&str>> = vec![vec![start]];
        while let Some(path) = stack.pop() {
            let Some(last) = path.last() else { continue };
            for next in edges.get(last).into_iter().flatten() {
                if next == start {
                    let mut shown = path.clone();
                    shown.push(next);
                    issuer_rule(
                        "issuers.trusts",
                        format!(
                            "loop {}: trust is not passed on, so a loop means nothing but a \
                             mistake; list every issuer an issuer's workloads need in its own \
                             `trusts`, without coming back to it",
                            shown.join(" → ")
                        ),
                    )?;
                }
                if !path.contains(next) {
                    let mut longer = path.clone();
                    longer.push(next);
                    stack.push(longer);
                }
            }
        }
    }
    Ok(())
}

/// Two issuers signing with one key would be one CA under two names: a
/// tenant's revocations and rotation would not be its own.
pub(super) fn shared_keys(units: &[Unit]) -> Result<(), Error> {
    let mut seen: BTreeMap<String, &str> = BTreeMap::new();
    for u in units {
        for key in key_places(&u.config.signer) {
            if let Some(other) = seen.insert(key.clone(), &u.name) {
                issuer_rule(
                    "issuers.signer",
                    format!(
                        "issuers \"{other}\" and \"{}\" share the signing key {key}: give each \
                         issuer its own key",
                        u.name
                    ),
                )?;
            }
        }
    }
    Ok(())
}

/// Each issuer keeps its own record; every issuer signs a CRL when the
/// main one does (a namespace's CRL file must cover every chain its
/// workloads accept, or Envoy refuses them all).
pub(super) fn shared_records(units: &[Unit]) -> Result<(), Error> {
    let mut seen: BTreeMap<String, &str> = BTreeMap::new();
    let main_crl = units
        .first()
        .is_some_and(|u| u.config.trust.as_ref().is_some_and(|t| t.crl.is_some()));
    for u in units {
        let crl = u.config.trust.as_ref().is_some_and(|t| t.crl.is_some());
        if crl != main_crl {
            issuer_rule(
                "issuers.trust.crl",
                format!(
                    "is {} for issuer \"{}\" but {} for the main issuer: every issuer signs a \
                     CRL or none does (Envoy needs a CRL for every CA of every chain a workload \
                     accepts)",
                    if crl { "set" } else { "unset" },
                    u.name,
                    if main_crl { "set" } else { "unset" }
                ),
            )?;
        }
        let Some(t) = &u.config.trust else { continue };
        let places = [
            t.state_file
                .as_deref()
                .map(|p| format!("trust.state_file {}", path(p))),
            t.state_configmap
                .as_ref()
                .map(|c| format!("trust.state_configmap \"{c}\"")),
        ];
        for place in places.into_iter().flatten() {
            if let Some(other) = seen.insert(place.clone(), &u.name) {
                issuer_rule(
                    "issuers.trust",
                    format!(
                        "issuers \"{other}\" and \"{}\" share {place}: each issuer keeps its own \
                         record and CRL; name another",
                        u.name
                    ),
                )?;
            }
        }
    }
    Ok(())
}

/// A bundle name of its own is a ConfigMap name the trust-bundle writers
/// publish under.
pub(super) fn bundle_names(
    units: &[Unit],
    kubernetes: Option<&crate::config::Kubernetes>,
) -> Result<(), Error> {
    for u in units {
        let Some(name) = &u.bundle_name else { continue };
        if kubernetes.and_then(|k| k.trust_bundle.as_ref()).is_none() {
            issuer_rule(
                "issuers.bundle_name",
                format!(
                    "issuer \"{}\": a bundle name of its own needs [kubernetes.trust_bundle], \
                     the writers that publish it",
                    u.name
                ),
            )?;
        }
        let valid = !name.is_empty()
            && name.len() <= 253
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
            && !name.starts_with(['-', '.'])
            && !name.ends_with(['-', '.']);
        if !valid {
            issuer_rule(
                "issuers.bundle_name",
                format!(
                    "issuer \"{}\": \"{}\" is not a ConfigMap name (lower-case letters, \
                     digits, '-' and '.')",
                    u.name,
                    name.escape_default()
                ),
            )?;
        }
    }
    Ok(())
}

/// Where a signer's key is, as comparable text (a minted intermediate's
/// key is new each time: nothing to share).
fn key_places(signer: &Signer) -> Vec<String> {
    match signer {
        Signer::File(c) => c
            .key_file
            .as_deref()
            .or(c.dir.as_deref())
            .map(|p| format!("file {}", path(p)))
            .into_iter()
            .collect(),
        Signer::Pkcs11(c) => vec![format!(
            "PKCS#11 module {} token {} key {}",
            path(&c.module),
            c.token_label
                .as_deref()
                .or(c.token_serial.as_deref())
                .unwrap_or("-"),
            c.key_label
                .as_deref()
                .or(c.key_id.as_deref())
                .unwrap_or("-")
        )],
        Signer::Vault(c) => {
            let v = &c.vault;
            let at = format!(
                "Vault {} namespace {}",
                v.address.as_deref().unwrap_or("$VAULT_ADDR"),
                v.namespace.as_deref().unwrap_or("-")
            );
            let pki = v.pki.as_ref().map(|p| {
                format!(
                    "{at} PKI mount {} issuer {}",
                    p.mount,
                    p.issuer.as_deref().unwrap_or("default")
                )
            });
            let transit = v
                .transit
                .as_ref()
                .map(|t| format!("{at} Transit mount {} key {}", t.mount, t.key));
            pki.into_iter().chain(transit).collect()
        }
    }
}

fn path(p: &std::path::Path) -> String {
    std::fs::canonicalize(p)
        .unwrap_or_else(|_| PathBuf::from(p))
        .display()
        .to_string()
}
