//! The file sidecars and ztunnel read (`istio-ca-crl`, `/ca-crl.pem`): for
//! every generation whose leaves may live — the CAs this replica holds and
//! the ones the record remembers (other replicas', and those before a
//! restart) — its own current CRL, and a current CRL from every CA above it
//! up to the root. Each CRL is checked against the certificate of the CA
//! that signed it, whatever the record or a file says; one per issuer, the
//! newest; castellan's own first, the current generation's at the top.

use std::time::SystemTime;

use x509_cert::Certificate;

use crate::{
    ca::Held,
    clock::unix,
    crl::{Crl, cover},
    trust::{Generation, TrustState},
};

/// What to publish, and what keeps it from being whole.
#[derive(Debug, Default)]
pub(super) struct Set {
    /// PEM `X509 CRL` blocks, nothing else.
    pub(super) pem: String,
    /// Whether the current signing CA's chain is wholly covered: without
    /// that the set is not published.
    pub(super) complete: bool,
    /// One line per generation that lacks a CRL.
    pub(super) problems: Vec<String>,
    /// The earliest nextUpdate of the CRLs in it.
    pub(super) next_update: Option<SystemTime>,
    /// Generations covered.
    pub(super) generations: usize,
}

/// One generation to cover.
pub(super) struct Wanted<'a> {
    pub(super) fingerprint: String,
    pub(super) subject: String,
    /// Its certificate, the CAs above it and its root (when known).
    pub(super) path: Vec<Certificate>,
    /// Its own newest CRL: this replica's, or the record's.
    pub(super) own: Option<&'a str>,
    pub(super) current: bool,
}

/// The generations to cover: what this replica holds, then what the record
/// remembers alive at `now`, each once.
pub(super) fn wanted<'a>(
    held: &'a [(String, Held)],
    state: &'a TrustState,
    fresh: impl Fn(&str) -> Option<&'a str>,
    roots: &[(String, Vec<u8>)],
    now: u64,
) -> Vec<Wanted<'a>> {
    let own = |f: &str| fresh(f).or_else(|| state.crls.get(f).map(|c| c.pem.as_str()));
    let mut wanted: Vec<Wanted<'a>> = held
        .iter()
        .map(|(f, h)| Wanted {
            fingerprint: f.clone(),
            subject: h.ca.facts().subject.to_string(),
            path: h.ca.path(),
            own: own(f),
            current: h.retired_at.is_none(),
        })
        .collect();
    let mut remembered: Vec<(&String, &Generation)> = state
        .generations
        .iter()
        .filter(|(f, g)| g.keep_until() >= now && !held.iter().any(|(h, _)| h == *f))
        .collect();
    remembered.sort_by_key(|(_, g)| std::cmp::Reverse(g.last_issued));
    for (f, g) in remembered {
        wanted.push(Wanted {
            fingerprint: f.clone(),
            subject: g.subject.clone(),
            path: path_of(g, roots),
            own: own(f),
            current: false,
        });
    }
    wanted
}

/// A remembered generation's certificates, parsed, and its root if the
/// bundle still has it (a root gone from the bundle means its leaves are
/// no longer trusted at all).
fn path_of(g: &Generation, roots: &[(String, Vec<u8>)]) -> Vec<Certificate> {
    use der::Decode;
    use rustls_pki_types::{CertificateDer, pem::PemObject};
    let mut path: Vec<Certificate> = std::iter::once(&g.certificate)
        .chain(&g.chain)
        .filter_map(|pem| CertificateDer::from_pem_slice(pem.as_bytes()).ok())
        .filter_map(|der| Certificate::from_der(&der).ok())
        .collect();
    if let Some((_, der)) = roots.iter().find(|(f, _)| g.root.as_ref() == Some(f))
        && let Ok(root) = Certificate::from_der(der)
    {
        path.push(root);
    }
    path
}

/// Assembles the set at `now` from the generations wanted and the CRLs of
/// the CAs above them.
// Long: one pass over the generations wanted; each one's CRL and its issuers' are chosen together.
pub(super) fn assemble(wanted: &[Wanted<'_>], upstream: &[Crl], now: SystemTime) -> Set {
    let mut set = Set {
        complete: true,
        ..Set::default()
    };
    let mut own: Vec<Crl> = Vec::new();
    let mut above: Vec<&Crl> = Vec::new();
    for w in wanted {
        let mut problems = Vec::new();
        let mine = match (w.own, w.path.first()) {
            (Some(pem), Some(cert)) => match Crl::parse_all(pem.as_bytes(), "a generation's CRL") {
                Ok(crls) => crls
                    .into_iter()
                    .find(|c| c.issued_by(cert) && c.current(now)),
                Err(_) => None,
            },
            _ => None,
        };
        if mine.is_none() {
            problems.push(format!(
                "no current CRL of its own{}",
                if w.current {
                    ""
                } else {
                    " (its key is no longer held by a running replica, and the last CRL it \
                     signed has expired)"
                }
            ));
        }
        let covered = cover(&w.path, upstream, now);
        match &covered {
            Ok(c) => {
                for crl in &c.crls {
                    if !above.contains(crl) {
                        above.push(crl);
                    }
                }
            }
            Err(missing) => problems.extend(missing.iter().cloned()),
        }
        if problems.is_empty() {
            set.generations += 1;
        } else {
            if w.current {
                set.complete = false;
            }
            set.problems.push(format!(
                "{}`{}`: {}",
                if w.current {
                    "the signing CA "
                } else {
                    "generation "
                },
                w.subject,
                problems.join("; ")
            ));
        }
        if let Some(c) = mine
            && !own.iter().any(|o| o.der() == c.der())
        {
            own.push(c);
        }
    }
    let clash = name_clashes(wanted);
    set.problems.extend(clash);
    let all: Vec<&Crl> = own.iter().chain(above.iter().copied()).collect();
    set.next_update = all.iter().filter_map(|c| c.next_update()).min();
    set.pem = all.iter().map(|c| c.pem()).collect();
    set
}

/// Generations alive under one subject with different keys: ztunnel takes
/// the first CRL of that issuer name and fails the other's leaves.
fn name_clashes(wanted: &[Wanted<'_>]) -> Vec<String> {
    let mut lines = Vec::new();
    for (i, a) in wanted.iter().enumerate() {
        for b in wanted.iter().skip(i + 1) {
            let (Some(ca), Some(cb)) = (a.path.first(), b.path.first()) else {
                continue;
            };
            let (ta, tb) = (ca.tbs_certificate(), cb.tbs_certificate());
            if ta.subject() == tb.subject()
                && ta.subject_public_key_info() != tb.subject_public_key_info()
            {
                lines.push(format!(
                    "generations {} and {} share the subject `{}` with different keys: ztunnel \
                     checks the first CRL of that name only and fails the other's leaves; give \
                     each intermediate a subject of its own",
                    short(&a.fingerprint),
                    short(&b.fingerprint),
                    a.subject
                ));
            }
        }
    }
    lines
}

fn short(fingerprint: &str) -> String {
    format!("sha256 {}…", fingerprint.get(..16).unwrap_or(fingerprint))
}

/// When a generation remembered only by the record keeps its CRL in the set.
pub(super) fn keep_until(g: Option<&Generation>, held: &Held, leaf_life: u64, now: u64) -> u64 {
    let bound = match held.retired_at {
        Some(t) => unix(t).saturating_add(leaf_life),
        None => now.saturating_add(leaf_life),
    }
    .min(unix(held.ca.not_after()))
    .saturating_add(1);
    g.map_or(bound, |g| {
        g.keep_until().max(bound).min(unix(held.ca.not_after()) + 1)
    })
}
