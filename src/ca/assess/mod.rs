//! The practices a signing CA must meet, each with the evidence that it does:
//! what `castellan check` prints and what `castellan serve` enforces.

mod crl;
mod probe;
mod verdicts;

use std::time::Duration;

use der::Encode;
use x509_cert::Certificate;

pub use crl::CRL_SET_PRACTICE;
pub use probe::ProbeError;
pub(crate) use probe::probe;

use super::{Error, Rules, SigningCa};
use crate::{config::Waivable, verify};

/// The ceiling of NIST SP 800-204A SM-DR13 ("on the order of hours").
const SM_DR13_MAX: Duration = Duration::from_secs(24 * 3600);

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

/// What the probe proved about the signing key, before any verdict.
struct Proof {
    /// The probe certificate, when the key matches the certificate.
    leaf: Option<rustls_pki_types::CertificateDer<'static>>,
    key_matches: bool,
    /// Why no probe certificate could be issued, if none was.
    probe_error: Option<Error>,
}

/// Judges `ca` against `rules`: its verdicts, the roots its chain was
/// verified to end at, and the chain's end (which that root may set).
// Long: the list of practices, one record each, in the order `castellan check` prints them.
pub(super) async fn run(
    ca: &mut SigningCa,
    cert: &Certificate,
    source: &str,
    rules: &Rules,
) -> Result<(), Error> {
    let proof = prove(ca, cert, rules).await?;
    let leaf = proof.leaf.as_ref();
    ca.active_roots = leaf.map_or_else(Vec::new, |leaf| verdicts::active_roots(ca, leaf));
    let root = ca
        .active_roots
        .first()
        .and_then(|f| ca.root_names.iter().position(|(fp, _)| fp == f))
        .and_then(|i| ca.roots.get(i));
    ca.limit = super::chain::limit_with_root(&ca.limit, root)?;
    let mut a = Assessment::default();
    a.record(
        "SM-DR12 signing certificate is not self-signed",
        true,
        verdicts::not_self_signed(ca, cert, source),
    );
    a.record(
        "signing certificate is a CA (intermediate)",
        true,
        verdicts::ca_constraints(cert, source)?,
    );
    a.record(
        "private key matches the signing certificate",
        true,
        verdicts::key_matches(ca, &proof, source),
    );
    a.record(
        "signing certificate validity",
        true,
        verdicts::validity(ca, source, rules),
    );
    let unproven = |fallback: &str| {
        Err(proof
            .probe_error
            .as_ref()
            .map_or_else(|| fallback.into(), ToString::to_string))
    };
    a.record(
        "rooted in the configured enterprise root(s)",
        true,
        leaf.map_or_else(
            || unproven("not verified: the key does not match the certificate"),
            |leaf| verdicts::rooted(ca, leaf, source),
        ),
    );
    let waived = rules.waived.contains(&Waivable::SmDr13);
    a.record(
        "SM-DR13 workload certificates live hours, not days",
        !waived,
        verdicts::lifetime(rules, waived),
    );
    a.record(
        "SM-DR15 workload certificates are never CAs",
        true,
        leaf.map_or_else(
            || unproven("not verified: no probe certificate could be issued"),
            verdicts::leaf_not_ca,
        ),
    );
    crl::record(&mut a, ca, cert, source, rules).await?;
    record_guards(&mut a, ca, rules);
    ca.assessment = a;
    Ok(())
}

/// Issues a probe certificate and checks its signature under the
/// certificate's key: the proof that holds for every back end, including
/// HSMs that publish no public key. A back end that cannot be reached
/// stops the assessment; any other failure is evidence.
async fn prove(ca: &SigningCa, cert: &Certificate, rules: &Rules) -> Result<Proof, Error> {
    let probe = match probe(ca, &rules.trust_domain, true).await {
        Ok(p) => Ok(p),
        Err(Error::Backend(e)) => return Err(Error::Backend(e)),
        Err(e) => Err(e),
    };
    let spki = cert.tbs_certificate().subject_public_key_info();
    let signed_by_cert_key = probe.as_ref().is_ok_and(|p| verify::signed_by(p, spki));
    let cert_key = spki.to_der()?;
    let published = match &ca.backend {
        castellan_signer::Backend::Signs(s) => s.public_key_der(),
        castellan_signer::Backend::Issues(_) => None,
    };
    let key_matches = signed_by_cert_key && published.is_none_or(|k| k == cert_key);
    Ok(match probe {
        Ok(leaf) => Proof {
            leaf: key_matches.then_some(leaf),
            key_matches,
            probe_error: None,
        },
        Err(e) => Proof {
            leaf: None,
            key_matches,
            probe_error: Some(e),
        },
    })
}

/// The root rotation guards' verdicts (with `[trust]`).
fn record_guards(a: &mut Assessment, ca: &SigningCa, rules: &Rules) {
    let Some(trust) = &rules.trust else {
        return;
    };
    let now = rules.clock.now();
    let (switch, retire) = crate::trust::judge(trust, ca.root_names(), &ca.active_roots, now);
    a.record(crate::trust::ROTATION_PRACTICE, !trust.force, switch);
    a.record(crate::trust::RETIREMENT_PRACTICE, !trust.force, retire);
    let soak = crate::trust::soak_floor(trust);
    a.record(crate::trust::SOAK_PRACTICE, !trust.force, soak);
}
