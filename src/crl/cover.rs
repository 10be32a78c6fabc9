//! Which CRLs cover a chain as Envoy checks it: for every CA above the
//! signing CA, up to and including the root, the newest current CRL that CA
//! signed — and none of them revoking the certificate below it.

use std::time::SystemTime;

use x509_cert::Certificate;

use super::{Crl, serial_of};
use crate::clock::date;

/// The CRLs chosen for a chain, one per CA above the signing CA, in path
/// order, with a line of evidence each.
#[derive(Debug)]
pub struct Covered<'a> {
    pub crls: Vec<&'a Crl>,
    pub evidence: Vec<String>,
}

/// Covers `path` — the signing certificate, each CA above it, the root —
/// from `crls` at `now`.
///
/// # Errors
/// One line per CA whose CRL is missing, not current, or revokes the
/// certificate below it.
pub fn cover<'a>(
    path: &[Certificate],
    crls: &'a [Crl],
    now: SystemTime,
) -> Result<Covered<'a>, Vec<String>> {
    let mut covered = Covered {
        crls: Vec::new(),
        evidence: Vec::new(),
    };
    let mut missing = Vec::new();
    for pair in path.windows(2) {
        let [below, ca] = pair else { continue };
        let subject = ca.tbs_certificate().subject().to_string();
        let issued: Vec<&Crl> = crls.iter().filter(|c| c.issued_by(ca)).collect();
        let newest =
            issued
                .iter()
                .copied()
                .filter(|c| c.current(now))
                .fold(None::<&Crl>, |best, c| match best {
                    Some(b) if !c.newer_than(b) => Some(b),
                    _ => Some(c),
                });
        let Some(crl) = newest else {
            missing.push(match issued.iter().filter_map(|c| c.next_update()).max() {
                Some(t) if t <= now => format!(
                    "the CRL of `{subject}` expired at {} (its nextUpdate): give a newer one",
                    date(t)
                ),
                _ if !issued.is_empty() => {
                    format!("the CRL of `{subject}` is not valid yet (check the clocks)")
                }
                _ => format!("no CRL signed by `{subject}`"),
            });
            continue;
        };
        if crl.lists(&serial_of(below)) {
            missing.push(format!(
                "`{}` is revoked by the CRL of `{subject}`",
                below.tbs_certificate().subject()
            ));
            continue;
        }
        covered.evidence.push(format!(
            "`{subject}` (next update {})",
            crl.next_update().map_or_else(|| "none".to_owned(), date)
        ));
        if !covered.crls.contains(&crl) {
            covered.crls.push(crl);
        }
    }
    if missing.is_empty() {
        Ok(covered)
    } else {
        Err(missing)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use der::Decode;
    use rcgen::{
        BasicConstraints, CertificateParams, CertificateRevocationListParams, IsCa, Issuer,
        KeyIdMethod, KeyPair, KeyUsagePurpose, RevokedCertParams, SerialNumber,
    };

    use super::*;

    struct Ca {
        params: CertificateParams,
        key: KeyPair,
        cert: Certificate,
    }

    fn ca(cn: &str, issuer: Option<&Ca>) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.serial_number = Some(SerialNumber::from(vec![0x11, cn.len() as u8]));
        let der = match issuer {
            Some(i) => params
                .signed_by(&key, &Issuer::from_params(&i.params, &i.key))
                .unwrap()
                .der()
                .to_vec(),
            None => params.self_signed(&key).unwrap().der().to_vec(),
        };
        Ca {
            params,
            key,
            cert: Certificate::from_der(&der).unwrap(),
        }
    }

    fn crl(by: &Ca, this: SystemTime, next: SystemTime, revoked: &[&Ca]) -> Crl {
        let params = CertificateRevocationListParams {
            this_update: this.into(),
            next_update: next.into(),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|r| RevokedCertParams {
                    serial_number: SerialNumber::from(serial_of(&r.cert)),
                    revocation_time: this.into(),
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let der = params
            .signed_by(&Issuer::from_params(&by.params, &by.key))
            .unwrap()
            .der()
            .to_vec();
        Crl::parse(&der, "test").unwrap()
    }

    #[test]
    fn every_ca_above_needs_a_current_crl_that_does_not_revoke_the_one_below() {
        let now = SystemTime::now();
        let day = Duration::from_secs(86_400);
        let root = ca("Root", None);
        let mid = ca("Mid", Some(&root));
        let signing = ca("Signing", Some(&mid));
        let path = [signing.cert.clone(), mid.cert.clone(), root.cert.clone()];
        let good = vec![
            crl(&mid, now - day, now + day, &[]),
            crl(&root, now - day, now + day, &[]),
        ];
        let covered = cover(&path, &good, now).unwrap();
        assert_eq!(covered.crls.len(), 2);

        let only_mid = vec![crl(&mid, now - day, now + day, &[])];
        let missing = cover(&path, &only_mid, now).unwrap_err();
        assert_eq!(missing, ["no CRL signed by `CN=Root`"]);

        let expired = vec![
            crl(&mid, now - 2 * day, now - day, &[]),
            crl(&root, now - day, now + day, &[]),
        ];
        let missing = cover(&path, &expired, now).unwrap_err();
        assert!(missing[0].contains("`CN=Mid` expired"), "{missing:?}");

        let revoking = vec![
            crl(&mid, now - day, now + day, &[&signing]),
            crl(&root, now - day, now + day, &[]),
        ];
        let missing = cover(&path, &revoking, now).unwrap_err();
        assert!(
            missing[0].contains("`CN=Signing` is revoked"),
            "{missing:?}"
        );

        // Signed by another key under the same name: not Mid's.
        let impostor = ca("Mid", None);
        let forged = vec![
            crl(&impostor, now - day, now + day, &[]),
            crl(&root, now - day, now + day, &[]),
        ];
        assert!(cover(&path, &forged, now).is_err());
    }

    #[test]
    fn the_newest_current_crl_of_an_issuer_is_chosen() {
        let now = SystemTime::now();
        let hour = Duration::from_secs(3_600);
        let root = ca("Root", None);
        let signing = ca("Signing", Some(&root));
        let path = [signing.cert, root.cert.clone()];
        let crls = vec![
            crl(&root, now - 3 * hour, now + hour, &[]),
            crl(&root, now - hour, now + 5 * hour, &[]),
            crl(&root, now - 2 * hour, now + 9 * hour, &[]),
        ];
        let covered = cover(&path, &crls, now).unwrap();
        assert_eq!(covered.crls, [&crls[1]]);
        // Across the nextUpdate of all but the last: that one is chosen.
        let later = now + 6 * hour;
        assert_eq!(cover(&path, &crls, later).unwrap().crls, [&crls[2]]);
    }
}
