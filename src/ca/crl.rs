//! A certificate revocation list signed by the signing CA, RFC 5280 §5:
//! issuer = the CA's subject, its key identifier, a CRL number, this and
//! next update, a reason per entry — and verified under the CA's
//! certificate before anyone sees it (an invalid CRL is never handed out).

use std::time::SystemTime;

use const_oid::db::rfc5280;
use der::{Decode, Encode, asn1::OctetString};
use x509_cert::{
    Version,
    certificate::Rfc5280,
    crl::{RevokedCert, TbsCertList},
    ext::pkix::{AuthorityKeyIdentifier, CrlNumber, CrlReason},
    serial_number::SerialNumber,
    time::Time,
};

use super::{Error, SigningCa};
use crate::{profile, trust::Reason};

/// One revoked leaf.
#[derive(Clone, Debug)]
pub struct CrlEntry {
    /// Big-endian serial number.
    pub serial: Vec<u8>,
    pub revoked_at: SystemTime,
    pub reason: Reason,
}

impl SigningCa {
    /// Signs a CRL listing `entries`, numbered `number`, valid from
    /// `this_update` to `next_update`; DER. Only a CA castellan signs with
    /// can (Vault PKI publishes its own).
    ///
    /// # Errors
    /// [`Error::WorkloadOnly`] for an issuing back end; back-end errors;
    /// [`Error::KeyMismatch`] when the signature does not verify under the
    /// signing certificate.
    pub async fn sign_crl(
        &self,
        entries: &[CrlEntry],
        number: u64,
        this_update: SystemTime,
        next_update: SystemTime,
    ) -> Result<Vec<u8>, Error> {
        let castellan_signer::Backend::Signs(signer) = &self.backend else {
            return Err(Error::WorkloadOnly);
        };
        let tbs = tbs(self, entries, number, this_update, next_update)?;
        let signature = signer.sign(&tbs).await?;
        let mismatch = || Error::KeyMismatch {
            cert_source: self.cert_source.clone(),
            what: "a CRL signature from the back end",
        };
        // Always verified, whatever the key binding: a CRL is rare and must
        // never be wrong. A signature that does not verify is a changed key.
        self.proof
            .check(&tbs, &signature, true, &self.cert_source)
            .map_err(|_| mismatch())?;
        let der = profile::assemble(&tbs, &self.facts.signature_algorithm, &signature.value)?;
        // And the encoded CRL, read back as a client would.
        let signing = self.chain.first().ok_or_else(mismatch)?;
        let cert = x509_cert::Certificate::from_der(signing)?;
        if !crate::verify::crl_signed_by(&der, cert.tbs_certificate().subject_public_key_info()) {
            return Err(mismatch());
        }
        Ok(der)
    }
}

impl SigningCa {
    /// The issuing back end's own CRL (Vault PKI's for its issuer), DER,
    /// checked as castellan's own would be: issued by the signing
    /// certificate's subject and signed by its key. `None` when the back end
    /// keeps none, or castellan signs CRLs itself.
    ///
    /// # Errors
    /// Back-end errors; [`Error::KeyMismatch`] for a CRL the signing
    /// certificate did not sign.
    pub async fn backend_crl(&self) -> Result<Option<Vec<u8>>, Error> {
        let castellan_signer::Backend::Issues(issuer) = &self.backend else {
            return Ok(None);
        };
        let Some(der) = issuer.crl().await? else {
            return Ok(None);
        };
        let mismatch = || Error::KeyMismatch {
            cert_source: self.cert_source.clone(),
            what: "the back end's CRL",
        };
        let list = x509_cert::crl::CertificateList::<Rfc5280>::from_der(&der)?;
        let signing = self.chain.first().ok_or_else(mismatch)?;
        let cert = x509_cert::Certificate::from_der(signing)?;
        if list.tbs_cert_list.issuer != self.facts.subject
            || !crate::verify::crl_signed_by(&der, cert.tbs_certificate().subject_public_key_info())
        {
            return Err(mismatch());
        }
        Ok(Some(der))
    }
}

fn tbs(
    ca: &SigningCa,
    entries: &[CrlEntry],
    number: u64,
    this_update: SystemTime,
    next_update: SystemTime,
) -> Result<Vec<u8>, Error> {
    let mut revoked: Vec<RevokedCert<Rfc5280>> = Vec::with_capacity(entries.len());
    for e in entries {
        // RFC 5280 §5.3.1: reasonCode is omitted for `unspecified`.
        let reason = match e.reason {
            Reason::Unspecified => None,
            Reason::KeyCompromise => Some(CrlReason::KeyCompromise),
            Reason::AffiliationChanged => Some(CrlReason::AffiliationChanged),
            Reason::Superseded => Some(CrlReason::Superseded),
            Reason::CessationOfOperation => Some(CrlReason::CessationOfOperation),
        };
        let crl_entry_extensions = match reason {
            Some(r) => Some(vec![profile::extension(
                rfc5280::ID_CE_CRL_REASONS,
                false,
                &r,
            )?]),
            None => None,
        };
        revoked.push(RevokedCert {
            serial_number: SerialNumber::new(&e.serial).map_err(profile::Error::from)?,
            revocation_date: Time::try_from(e.revoked_at).map_err(profile::Error::from)?,
            crl_entry_extensions,
        });
    }
    let authority = AuthorityKeyIdentifier {
        key_identifier: Some(
            OctetString::new(ca.facts.key_id.clone()).map_err(profile::Error::from)?,
        ),
        authority_cert_issuer: None,
        authority_cert_serial_number: None,
    };
    let list = TbsCertList::<Rfc5280> {
        version: Version::V2,
        signature: ca.facts.signature_algorithm.clone(),
        issuer: ca.facts.subject.clone(),
        this_update: Time::try_from(this_update).map_err(profile::Error::from)?,
        next_update: Some(Time::try_from(next_update).map_err(profile::Error::from)?),
        revoked_certificates: (!revoked.is_empty()).then_some(revoked),
        crl_extensions: Some(vec![
            profile::extension(rfc5280::ID_CE_AUTHORITY_KEY_IDENTIFIER, false, &authority)?,
            profile::extension(
                rfc5280::ID_CE_CRL_NUMBER,
                false,
                &CrlNumber::try_from(number).map_err(profile::Error::from)?,
            )?,
        ]),
    };
    Ok(list.to_der().map_err(profile::Error::from)?)
}
