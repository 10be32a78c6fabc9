//! One certificate from the signing CA. Built here and signed by the back
//! end — or, in Vault PKI mode, issued by Vault from the CSR and then checked
//! as strictly as castellan's own: Vault roles cannot enforce the SPIFFE
//! profile, so nothing Vault returns is handed out unchecked.

use std::time::{Duration, SystemTime};

use const_oid::db::rfc5280;
use der::{Decode, Encode};
use rustls_pki_types::{CertificateDer, pem::PemObject};
use x509_cert::{
    Certificate,
    ext::pkix::{BasicConstraints, ExtendedKeyUsage, SubjectAltName, name::GeneralName},
};

use super::{Error, Signer, SigningCa, signer::vault_error};
use crate::{
    profile::{Subject, Template},
    verify,
};

/// A NotAfter this much shorter than asked for is reported as cut.
const CUT_TOLERANCE: Duration = Duration::from_secs(60);

/// What to certify.
#[derive(Clone, Copy, Debug)]
pub struct LeafRequest<'a> {
    pub subject: Subject<'a>,
    pub spki_der: &'a [u8],
    /// The requester's CSR, for signers that issue from it.
    pub csr_pem: Option<&'a str>,
    pub rsa: bool,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

/// A certificate, ready to hand out.
#[derive(Debug)]
pub struct Leaf {
    pub der: Vec<u8>,
    /// Lower-case hex.
    pub serial: String,
    pub not_after: SystemTime,
    /// What the back end said that an operator should know (Vault warnings,
    /// a lifetime cut below the request).
    pub warnings: Vec<String>,
}

// === impl SigningCa ===

impl SigningCa {
    /// Certifies `req` with this CA.
    ///
    /// # Errors
    /// Signer errors; [`Error::Unfit`] when Vault's certificate breaks the
    /// profile or a request cannot be served in this mode.
    pub async fn issue_leaf(&self, req: &LeafRequest<'_>) -> Result<Leaf, Error> {
        if let Signer::VaultPki { vault, pki, .. } = self.signer.as_ref() {
            return self.issue_by_vault(vault, pki, req).await;
        }
        let serial = self.serial()?;
        let template = Template {
            subject: req.subject,
            spki_der: req.spki_der,
            rsa: req.rsa,
            serial,
            not_before: req.not_before,
            not_after: req.not_after,
        };
        Ok(Leaf {
            der: self.certify(&template).await?,
            serial: serial.to_hex(),
            not_after: req.not_after,
            warnings: Vec::new(),
        })
    }

    async fn issue_by_vault(
        &self,
        vault: &castellan_vault::Vault,
        pki: &castellan_vault::Pki,
        req: &LeafRequest<'_>,
    ) -> Result<Leaf, Error> {
        let Subject::Workload(identity) = req.subject else {
            return Err(Error::Unfit(
                "Vault PKI mode issues workload certificates only; give castellan's listener \
                 server.tls.cert_file"
                    .into(),
            ));
        };
        let csr = req
            .csr_pem
            .ok_or_else(|| Error::Unfit("Vault PKI mode needs the CSR".into()))?;
        let ttl = req
            .not_after
            .duration_since(SystemTime::now())
            .unwrap_or_default()
            .as_secs()
            .max(1);
        let signed = pki
            .sign(vault, csr, &identity.to_string(), ttl)
            .await
            .map_err(vault_error)?;
        let der = CertificateDer::from_pem_slice(signed.certificate.as_bytes())
            .map_err(|e| Error::Unfit(format!("Vault's certificate is not PEM: {e}")))?;
        let cert = Certificate::from_der(&der)?;
        self.recheck(&der, &cert, &identity.to_string(), req.spki_der)?;

        let tbs = cert.tbs_certificate();
        let not_after = tbs.validity().not_after.to_system_time();
        let mut warnings = signed.warnings;
        if not_after + CUT_TOLERANCE < req.not_after {
            warnings.push(format!(
                "Vault cut the lifetime to {} (asked until {}); check the role's max_ttl",
                super::date(not_after),
                super::date(req.not_after)
            ));
        }
        let serial = tbs
            .serial_number()
            .as_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Ok(Leaf {
            der: der.to_vec(),
            serial,
            not_after,
            warnings,
        })
    }

    /// The SPIFFE profile, enforced on what Vault issued.
    fn recheck(
        &self,
        der: &CertificateDer<'_>,
        cert: &Certificate,
        identity: &str,
        spki: &[u8],
    ) -> Result<(), Error> {
        let refuse =
            |why: String| Err(Error::Unfit(format!("refusing Vault's certificate: {why}")));
        let tbs = cert.tbs_certificate();
        let names = tbs
            .get_extension::<SubjectAltName>()?
            .map(|(_, s)| s.0)
            .unwrap_or_default();
        match names.as_slice() {
            [GeneralName::UniformResourceIdentifier(u)] if u.as_str() == identity => {}
            other => {
                return refuse(format!(
                    "it names {other:?}, not exactly `{identity}` (check the role's \
                     allowed_uri_sans and use_csr_sans=false)"
                ));
            }
        }
        if tbs
            .get_extension::<BasicConstraints>()?
            .is_some_and(|(_, bc)| bc.ca)
        {
            return refuse("it is a CA certificate".into());
        }
        let eku = tbs
            .get_extension::<ExtendedKeyUsage>()?
            .map(|(_, e)| e.0)
            .unwrap_or_default();
        if !eku.contains(&rfc5280::ID_KP_SERVER_AUTH) || !eku.contains(&rfc5280::ID_KP_CLIENT_AUTH)
        {
            return refuse(
                "it lacks serverAuth and clientAuth (the role's server_flag/client_flag)".into(),
            );
        }
        if tbs.subject_public_key_info().to_der()? != spki {
            return refuse("its public key is not the CSR's".into());
        }
        verify::chain(der, self.chain(), self.roots(), verify::Usage::Client).or_else(|e| {
            refuse(format!(
                "it does not verify to the configured roots through the validated issuer ({e:?})"
            ))
        })
    }
}
