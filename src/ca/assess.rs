//! The practices a signing CA must meet, each with the evidence that it does:
//! what `castellan check` prints and what `castellan serve` enforces.

use std::time::{Duration, SystemTime};

use aws_lc_rs::digest;
use der::{Decode, Encode};
use rustls_pki_types::CertificateDer;
use spiffe::{SpiffeId, SpiffeIdError};
use x509_cert::{
    Certificate,
    ext::pkix::{BasicConstraints, KeyUsage, KeyUsages},
};

use super::LeafRequest;
use super::{Error, Rules, SigningCa, chain::is_self_issued};
use crate::clock::date;
use crate::config::Waivable;
use crate::{profile::Subject, verify};

/// The ceiling of NIST SP 800-204A SM-DR13 ("on the order of hours").
const SM_DR13_MAX: Duration = Duration::from_secs(24 * 3600);
/// The probe certificate lives just long enough to be verified.
const PROBE_TTL: Duration = Duration::from_secs(300);

/// Every practice's verdict.
#[derive(Clone, Debug, Default)]
pub struct Assessment {
    pub practices: Vec<Practice>,
}

/// One practice: whether it passed and the evidence either way.
#[derive(Clone, Debug)]
pub struct Practice {
    pub name: &'static str,
    /// Enforced practices stop `serve`; the others are reported only.
    pub enforced: bool,
    pub passed: bool,
    pub evidence: String,
}

// === impl Assessment ===

impl Assessment {
    /// The first enforced practice that failed, as a message for the operator.
    pub fn first_failure(&self) -> Option<&Practice> {
        self.practices.iter().find(|p| p.enforced && !p.passed)
    }

    pub fn all_passed(&self) -> bool {
        self.practices.iter().all(|p| p.passed)
    }

    fn record(&mut self, name: &'static str, enforced: bool, result: Result<String, String>) {
        let (passed, evidence) = match result {
            Ok(e) => (true, e),
            Err(e) => (false, e),
        };
        self.practices.push(Practice {
            name,
            enforced,
            passed,
            evidence,
        });
    }
}

/// Judges `ca` against `rules`: its verdicts, the roots its chain was
/// verified to end at, and the chain's end (which that root may set).
pub(super) async fn run(
    ca: &mut SigningCa,
    cert: &Certificate,
    source: &str,
    rules: &Rules,
) -> Result<(), Error> {
    // A signature the certificate's key verifies is the proof that holds for
    // every back end, including HSMs that publish no public key.
    let probe = match probe(ca, &rules.trust_domain, true).await {
        Ok(p) => Ok(p),
        Err(Error::Backend(e)) => return Err(Error::Backend(e)),
        Err(e) => Err(e),
    };
    let tbs = cert.tbs_certificate();
    let signed_by_cert_key = probe
        .as_ref()
        .is_ok_and(|p| verify::signed_by(p, tbs.subject_public_key_info()));
    let cert_key = tbs.subject_public_key_info().to_der()?;
    let published = match &ca.backend {
        castellan_signer::Backend::Signs(s) => s.public_key_der(),
        castellan_signer::Backend::Issues(_) => None,
    };
    let key_matches = signed_by_cert_key && published.is_none_or(|k| k == cert_key);
    let probe_failure = probe.as_ref().err().map(ToString::to_string);
    let leaf = probe.as_ref().ok().filter(|_| key_matches);
    ca.active_roots = leaf.map_or_else(Vec::new, |leaf| active_roots(ca, leaf));
    let root = ca
        .active_roots
        .first()
        .and_then(|f| ca.root_names.iter().position(|(fp, _)| fp == f))
        .and_then(|i| ca.roots.get(i));
    ca.limit = super::chain::limit_with_root(&ca.limit, root)?;
    let mut a = Assessment::default();
    let subject = tbs.subject().to_string();

    let shared = shared_key(ca, cert);
    a.record(
        "SM-DR12 signing certificate is not self-signed",
        true,
        if is_self_issued(cert) {
            Err(format!(
                "{source} is self-signed (subject = issuer = `{subject}`); castellan signs only \
                 with an intermediate issued by the enterprise root: issue one from the root and \
                 configure it instead"
            ))
        } else if let Some(other) = shared {
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
        },
    );

    a.record(
        "signing certificate is a CA (intermediate)",
        true,
        ca_constraints(cert, source)?,
    );

    a.record(
        "private key matches the signing certificate",
        true,
        match (&probe, key_matches) {
            (_, true) => Ok(format!(
                "a {} probe signature verified under the certificate's key",
                ca.algorithm().name()
            )),
            (Err(e), false) if !matches!(e, Error::KeyMismatch { .. }) => {
                Err(format!("no probe certificate could be issued: {e}"))
            }
            (_, false) => Err(format!(
                "the signing key does not belong to {source}: a probe signature does not verify \
                 under the certificate's key; configure the key that was certified"
            )),
        },
    );

    a.record(
        "signing certificate validity",
        true,
        validity(ca, source, rules),
    );

    a.record(
        "rooted in the configured enterprise root(s)",
        true,
        match leaf {
            Some(leaf) => rooted(ca, leaf, source),
            None => Err(probe_failure
                .clone()
                .unwrap_or_else(|| "not verified: the key does not match the certificate".into())),
        },
    );

    let max_hours = rules.max_ttl.as_secs_f64() / 3600.0;
    let lifetime = format!(
        "default {:.1} h, maximum {max_hours:.1} h",
        rules.default_ttl.as_secs_f64() / 3600.0
    );
    let waived = rules.waived.contains(&Waivable::SmDr13);
    a.record(
        "SM-DR13 workload certificates live hours, not days",
        !waived,
        match (rules.max_ttl <= SM_DR13_MAX, waived) {
            (true, _) => Ok(lifetime),
            (false, false) => Err(format!(
                "{lifetime}: lower issuance.max_ttl_secs to 86400 or less (or waive the \
                 practice with practices.waive = [\"SM-DR13\"])"
            )),
            (false, true) => Err(format!(
                "{lifetime}: WAIVED by practices.waive in the configuration"
            )),
        },
    );

    a.record(
        "SM-DR15 workload certificates are never CAs",
        true,
        match leaf {
            Some(leaf) => leaf_not_ca(leaf),
            None => Err(probe_failure
                .unwrap_or_else(|| "not verified: no probe certificate could be issued".into())),
        },
    );

    if let Some(crl) = &rules.crl {
        a.record(
            "the signing CA can sign CRLs",
            true,
            crl_sign(ca, cert, source)?,
        );
        let set = match name_clash(ca, cert, rules) {
            Some(clash) => Err(clash),
            None => crl_set(ca, crl, rules.clock.now()).await,
        };
        a.record(CRL_SET_PRACTICE, true, set);
    }
    if let Some(trust) = &rules.trust {
        let now = rules.clock.now();
        let (switch, retire) = crate::trust::judge(trust, ca.root_names(), &ca.active_roots, now);
        a.record(crate::trust::ROTATION_PRACTICE, !trust.force, switch);
        a.record(crate::trust::RETIREMENT_PRACTICE, !trust.force, retire);
        let soak = crate::trust::soak_floor(trust);
        a.record(crate::trust::SOAK_PRACTICE, !trust.force, soak);
    }
    ca.assessment = a;
    Ok(())
}

/// The practice the CRL set is reported as.
pub const CRL_SET_PRACTICE: &str = "a current CRL for every CA of the chain";

/// Envoy checks a CRL for every CA of a chain and rejects the chain when
/// one is missing or expired: castellan publishes a CRL only if it has a
/// current one from every CA above the signing CA, up to the root (the
/// signing CA's own it signs, or, for Vault PKI, reads from Vault).
async fn crl_set(
    ca: &SigningCa,
    rules: &super::CrlRules,
    now: SystemTime,
) -> Result<String, String> {
    if ca.active_roots.is_empty() {
        return Err("not judged: the signing chain was not verified to any root".into());
    }
    let mut crls = crate::crl::Crl::read_files(&rules.upstream_files, "trust.crl.upstream_files")
        .map_err(|e| e.to_string())?;
    crls.extend(ca.upstream_crls.iter().cloned());
    let mut own = String::new();
    if !ca.signs_own_crl() {
        match ca.backend_crl().await {
            Ok(Some(der)) => match crate::crl::Crl::parse(&der, &ca.cert_source) {
                Ok(c) if c.current(now) => own = "its own from the back end, ".into(),
                Ok(_) => {
                    return Err(format!(
                        "the back end's CRL for {} has expired",
                        ca.cert_source
                    ));
                }
                Err(e) => return Err(e.to_string()),
            },
            Ok(None) => return Err(format!("the back end keeps no CRL for {}", ca.cert_source)),
            Err(e) => return Err(format!("the back end's CRL: {e}")),
        }
    }
    let path = ca.path();
    match crate::crl::cover(&path, &crls, now) {
        Ok(covered) => Ok(format!(
            "{own}and from each CA above it: {}",
            if covered.evidence.is_empty() {
                "none (the root signed it)".to_owned()
            } else {
                covered.evidence.join(", ")
            }
        )),
        Err(missing) => Err(format!(
            "{}: clients that check CRLs (Envoy checks one for every CA of a chain) would \
             reject every certificate under it. Give each CA's current CRL in \
             trust.crl.upstream_files (PEM or DER; the root's CRL too), or remove [trust.crl] \
             (docs/revoke.md)",
            missing.join("; ")
        )),
    }
}

/// Another generation whose leaves may still live, under the same subject
/// with another key: ztunnel takes the first CRL of an issuer *name*, so
/// one of the two generations' leaves would fail (`InvalidCrlSignatureForPublicKey`).
fn name_clash(ca: &SigningCa, cert: &Certificate, rules: &Rules) -> Option<String> {
    use rustls_pki_types::pem::PemObject;
    let trust = rules.trust.as_ref()?;
    let state = trust.state.load();
    let now = crate::clock::unix(rules.clock.now());
    let tbs = cert.tbs_certificate();
    state.generations.values().find_map(|g| {
        if g.keep_until() < now {
            return None;
        }
        let der = CertificateDer::from_pem_slice(g.certificate.as_bytes()).ok()?;
        let other = Certificate::from_der(&der).ok()?;
        let o = other.tbs_certificate();
        (o.subject() == tbs.subject()
            && o.subject_public_key_info() != tbs.subject_public_key_info())
        .then(|| {
            format!(
                "{} has the subject `{}` of an earlier signing CA with another key, whose leaves \
                 live until {}: ztunnel checks the first CRL of an issuer name only and would \
                 fail the leaves of one of them; issue the new intermediate with a subject of \
                 its own",
                ca.cert_source,
                tbs.subject(),
                date(crate::clock::at(g.keep_until()))
            )
        })
    })
}

/// With CRLs on, castellan signs one with the signing CA's key: its
/// certificate must allow that (keyUsage cRLSign), or every client rejects
/// the CRL ("key usage does not include CRL signing") and, under Envoy's
/// rule, every chain with it. An issuing back end signs its own.
fn crl_sign(
    ca: &SigningCa,
    cert: &Certificate,
    source: &str,
) -> Result<Result<String, String>, Error> {
    if let castellan_signer::Backend::Issues(_) = &ca.backend {
        return Ok(Ok(
            "the issuing back end signs its own CRL; castellan checks and republishes it".into(),
        ));
    }
    let ku = cert
        .tbs_certificate()
        .get_extension::<KeyUsage>()?
        .map(|(_, ku)| ku);
    Ok(if ku.is_some_and(|ku| ku.0.contains(KeyUsages::CRLSign)) {
        Ok("keyUsage cRLSign: CRLs castellan signs verify".into())
    } else {
        Err(format!(
            "{source} lacks keyUsage cRLSign, and [trust.crl] is on: every CRL castellan signed \
             would be rejected (\"key usage does not include CRL signing\"), and with it every \
             chain under Envoy's rule. Issue the intermediate with keyUsage keyCertSign, \
             cRLSign, or remove [trust.crl]"
        ))
    })
}

/// The roots a probe certificate verifies to, each alone.
fn active_roots(ca: &SigningCa, leaf: &CertificateDer<'_>) -> Vec<String> {
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
fn shared_key(ca: &SigningCa, cert: &Certificate) -> Option<String> {
    let key = cert.tbs_certificate().subject_public_key_info();
    ca.chain()
        .iter()
        .skip(1)
        .chain(ca.roots())
        .filter_map(|der| Certificate::from_der(der).ok())
        .find(|above| above.tbs_certificate().subject_public_key_info() == key)
        .map(|above| above.tbs_certificate().subject().to_string())
}

fn ca_constraints(cert: &Certificate, source: &str) -> Result<Result<String, String>, Error> {
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
fn validity(ca: &SigningCa, source: &str, rules: &Rules) -> Result<String, String> {
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

/// Issues a throwaway workload certificate for a fresh key, exactly as a real
/// request would be, so the whole issuing path is proven: before serving,
/// and in the background while serving.
pub(super) async fn probe(
    ca: &SigningCa,
    trust_domain: &spiffe::TrustDomain,
    always_verify: bool,
) -> Result<CertificateDer<'static>, Error> {
    let unfit = |e: ProbeError| Error::Probe(e);
    let id = SpiffeId::from_segments(
        trust_domain.clone(),
        &["ns", "castellan-system", "sa", "castellan-probe"],
    )
    .map_err(|e| unfit(ProbeError::Identity(e)))?;
    // A real key and CSR, so back ends that issue from CSRs (Vault PKI) are
    // proven the same way as those that sign what castellan builds.
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| unfit(ProbeError::Rcgen(e)))?;
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.subject_alt_names = vec![rcgen::SanType::URI(
        id.to_string()
            .try_into()
            .map_err(|e| unfit(ProbeError::Rcgen(e)))?,
    )];
    let csr = params
        .serialize_request(&key)
        .and_then(|r| r.pem())
        .map_err(|e| unfit(ProbeError::Rcgen(e)))?;
    let now = ca.clock.now();
    let leaf = ca
        .issue_checked(
            &LeafRequest {
                subject: Subject::Workload(&id),
                spki_der: &rcgen::PublicKeyData::subject_public_key_info(&key),
                csr_pem: Some(&csr),
                rsa: false,
                not_before: now.max(ca.facts.not_before),
                not_after: now
                    .checked_add(PROBE_TTL)
                    .unwrap_or(ca.limit.not_after)
                    .min(ca.limit.not_after),
            },
            always_verify,
        )
        .await?;
    Ok(CertificateDer::from(leaf.der))
}

fn rooted(ca: &SigningCa, leaf: &CertificateDer<'_>, source: &str) -> Result<String, String> {
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

fn leaf_not_ca(leaf: &CertificateDer<'_>) -> Result<String, String> {
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

/// Why a probe certificate could not even be asked for.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("probe identity: {0}")]
    Identity(SpiffeIdError),
    #[error("probe key or CSR: {0}")]
    Rcgen(rcgen::Error),
}
