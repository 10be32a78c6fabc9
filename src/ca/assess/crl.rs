//! The CRL practices: the signing CA can sign CRLs, and a current CRL
//! exists for every CA of every chain clients may still see.

use std::time::SystemTime;

use der::Decode;
use rustls_pki_types::CertificateDer;

use x509_cert::{
    Certificate,
    ext::pkix::{KeyUsage, KeyUsages},
};

use super::Assessment;
use crate::{
    ca::{CrlRules, Error, Rules, SigningCa},
    clock::date,
};

/// The CRL practices' verdicts (with `[trust.crl]`).
pub(super) async fn record(
    a: &mut Assessment,
    ca: &SigningCa,
    cert: &Certificate,
    source: &str,
    rules: &Rules,
) -> Result<(), Error> {
    let Some(crl) = &rules.crl else {
        return Ok(());
    };
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
    Ok(())
}

/// The practice the CRL set is reported as.
pub const CRL_SET_PRACTICE: &str = "a current CRL for every CA of the chain";

/// Envoy checks a CRL for every CA of a chain and rejects the chain when
/// one is missing or expired: castellan publishes a CRL only if it has a
/// current one from every CA above the signing CA, up to the root (the
/// signing CA's own it signs, or, for Vault PKI, reads from Vault).
async fn crl_set(ca: &SigningCa, rules: &CrlRules, now: SystemTime) -> Result<String, String> {
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
