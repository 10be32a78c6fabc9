//! Each practice's verdict from the evidence: `Ok(evidence)` when it
//! holds, `Err(what is wrong and what to do)` when it does not.

use aws_lc_rs::digest;
use der::Decode;
use rustls_pki_types::CertificateDer;
use x509_cert::{
    Certificate,
    ext::pkix::{BasicConstraints, KeyUsage, KeyUsages},
};

use super::{Proof, SM_DR13_MAX};
use crate::{
    ca::{Error, Rules, SigningCa, chain::is_self_issued},
    clock::date,
    verify,
};

/// SM-DR12: issued by another CA, with a key of its own.
pub(super) fn not_self_signed(
    ca: &SigningCa,
    cert: &Certificate,
    source: &str,
) -> Result<String, String> {
    let tbs = cert.tbs_certificate();
    let subject = tbs.subject().to_string();
    if is_self_issued(cert) {
        Err(format!(
            "{source} is self-signed (subject = issuer = `{subject}`); castellan signs only \
             with an intermediate issued by the enterprise root: issue one from the root and \
             configure it instead"
        ))
    } else if let Some(other) = shared_key(ca, cert) {
        Err(format!(
            "{source} has the same key as `{other}`, a certificate above it: a CA that shares \
             its key with the root is the root (self-signed in disguise); give the \
             intermediate a key of its own"
        ))
    } else {
        Ok(format!(
            "`{subject}` is issued by `{}`, with a key no certificate above it has",
            tbs.issuer()
        ))
    }
}

/// The key signs what the certificate's key verifies.
pub(super) fn key_matches(ca: &SigningCa, proof: &Proof, source: &str) -> Result<String, String> {
    match (&proof.probe_error, proof.key_matches) {
        (_, true) => Ok(format!(
            "a {} probe signature verified under the certificate's key",
            ca.algorithm().name()
        )),
        (Some(e), false) if !matches!(e, Error::KeyMismatch { .. }) => {
            Err(format!("no probe certificate could be issued: {e}"))
        }
        (_, false) => Err(format!(
            "the signing key does not belong to {source}: a probe signature does not verify \
             under the certificate's key; configure the key that was certified"
        )),
    }
}

/// SM-DR13: the lifetimes configured, against the ceiling.
pub(super) fn lifetime(rules: &Rules, waived: bool) -> Result<String, String> {
    let max_hours = rules.max_ttl.as_secs_f64() / 3600.0;
    let lifetime = format!(
        "default {:.1} h, maximum {max_hours:.1} h",
        rules.default_ttl.as_secs_f64() / 3600.0
    );
    match (rules.max_ttl <= SM_DR13_MAX, waived) {
        (true, _) => Ok(lifetime),
        (false, false) => Err(format!(
            "{lifetime}: lower issuance.max_ttl_secs to 86400 or less (or waive the \
             practice with practices.waive = [\"SM-DR13\"])"
        )),
        (false, true) => Err(format!(
            "{lifetime}: WAIVED by practices.waive in the configuration"
        )),
    }
}

/// The roots a probe certificate verifies to, each alone.
pub(super) fn active_roots(ca: &SigningCa, leaf: &CertificateDer<'_>) -> Vec<String> {
    ca.roots()
        .iter()
        .zip(ca.root_names())
        .filter(|(root, _)| {
            verify::chain(
                leaf,
                ca.chain(),
                std::slice::from_ref(*root),
                verify::Usage::Client,
                ca.clock.now(),
            )
            .is_ok()
        })
        .map(|(_, (fingerprint, _))| fingerprint.clone())
        .collect()
}

/// The subject of a certificate above the signing certificate (chain or
/// roots) that carries the signing certificate's own key, if one does.
pub(super) fn shared_key(ca: &SigningCa, cert: &Certificate) -> Option<String> {
    let key = cert.tbs_certificate().subject_public_key_info();
    ca.chain()
        .iter()
        .skip(1)
        .chain(ca.roots())
        .filter_map(|der| Certificate::from_der(der).ok())
        .find(|above| above.tbs_certificate().subject_public_key_info() == key)
        .map(|above| above.tbs_certificate().subject().to_string())
}

pub(super) fn ca_constraints(
    cert: &Certificate,
    source: &str,
) -> Result<Result<String, String>, Error> {
    let tbs = cert.tbs_certificate();
    let bc = tbs.get_extension::<BasicConstraints>()?.map(|(_, bc)| bc);
    let ku = tbs.get_extension::<KeyUsage>()?.map(|(_, ku)| ku);
    let can_sign = ku.is_some_and(|ku| ku.0.contains(KeyUsages::KeyCertSign));
    Ok(match bc {
        Some(bc) if bc.ca && can_sign => Ok(format!(
            "CA:true, pathLen {}, keyUsage keyCertSign",
            bc.path_len_constraint
                .map_or_else(|| "unlimited".to_owned(), |n| n.to_string())
        )),
        _ => Err(format!(
            "{source} is not a CA certificate: it needs basicConstraints CA:true and keyUsage \
             keyCertSign to issue certificates"
        )),
    })
}

/// The signing certificate's own validity, and the chain's: a leaf is
/// valid only while every certificate above it is, so the chain ends when
/// the first of them expires (an enterprise CA older than the intermediate
/// it certified, a minted intermediate signed past its issuer's end).
pub(super) fn validity(ca: &SigningCa, source: &str, rules: &Rules) -> Result<String, String> {
    let (from, own) = (ca.facts.not_before, ca.facts.not_after);
    let until = ca.limit.not_after;
    let now = rules.clock.now();
    let span = format!("valid {} to {}", date(from), date(own));
    let by = if until < own {
        format!(
            "; the chain ends earlier, at {}, when `{}` above it expires",
            date(until),
            ca.limit.subject
        )
    } else {
        String::new()
    };
    if now < from {
        return Err(format!(
            "{source} is not yet valid ({span}); check the clock"
        ));
    }
    let whose = if until < own { "'s chain" } else { "" };
    let Ok(left) = until.duration_since(now) else {
        return Err(format!(
            "{source}{whose} has expired ({span}{by}); renew what has expired"
        ));
    };
    if left < rules.max_ttl {
        return Err(format!(
            "{source}{whose} expires sooner than a workload certificate with the maximum TTL of \
             {} s issued now would ({span}{by}): renew it or lower issuance.max_ttl_secs",
            rules.max_ttl.as_secs()
        ));
    }
    Ok(format!(
        "{span}{by} ({} days left)",
        left.as_secs() / 86_400
    ))
}

pub(super) fn rooted(
    ca: &SigningCa,
    leaf: &CertificateDer<'_>,
    source: &str,
) -> Result<String, String> {
    match verify::chain(
        leaf,
        ca.chain(),
        ca.roots(),
        verify::Usage::Client,
        ca.clock.now(),
    ) {
        Ok(()) => {
            let mut path: Vec<String> = Vec::new();
            for der in ca.chain() {
                if let Ok(c) = Certificate::from_der(der) {
                    path.push(format!("`{}`", c.tbs_certificate().subject()));
                }
            }
            let roots: Vec<String> = ca
                .roots()
                .iter()
                .filter_map(|r| Certificate::from_der(r).ok().map(|c| (r, c)))
                .map(|(der, c)| {
                    let fp = digest::digest(&digest::SHA256, der);
                    let hex: String = fp.as_ref()[..8]
                        .iter()
                        .map(|b| format!("{b:02x}"))
                        .collect();
                    format!("`{}` (sha256 {hex}…)", c.tbs_certificate().subject())
                })
                .collect();
            Ok(format!(
                "probe certificate verified by webpki along {} → root {}",
                path.join(" → "),
                roots.join(", ")
            ))
        }
        Err(e) => Err(format!(
            "{source} does not chain to any configured root ({e:?}): put every intermediate in \
             the chain file and the enterprise root in the root file or ca.roots_file"
        )),
    }
}

pub(super) fn leaf_not_ca(leaf: &CertificateDer<'_>) -> Result<String, String> {
    let cert = Certificate::from_der(leaf).map_err(|e| format!("probe certificate: {e}"))?;
    let tbs = cert.tbs_certificate();
    let bc = tbs.get_extension::<BasicConstraints>().ok().flatten();
    let ku = tbs.get_extension::<KeyUsage>().ok().flatten();
    match (bc, ku) {
        (Some((true, bc)), Some((true, ku)))
            if !bc.ca && !ku.0.contains(KeyUsages::KeyCertSign) =>
        {
            Ok(
                "probe certificate: basicConstraints CA:false (critical), keyUsage without \
                keyCertSign (critical)"
                    .into(),
            )
        }
        _ => Err("the workload profile produced a certificate that could act as a CA".into()),
    }
}
