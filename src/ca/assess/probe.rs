//! The probe: a throwaway workload certificate issued exactly as a real
//! request's would be, proving the whole issuing path.

use std::time::Duration;

use rustls_pki_types::CertificateDer;
use spiffe::{SpiffeId, SpiffeIdError};

use crate::{
    ca::{Error, LeafRequest, SigningCa},
    profile::Subject,
};

/// The probe certificate lives just long enough to be verified.
const PROBE_TTL: Duration = Duration::from_secs(300);

/// Issues a throwaway workload certificate for a fresh key, exactly as a real
/// request would be, so the whole issuing path is proven: before serving,
/// and in the background while serving.
pub(crate) async fn probe(
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

/// Why a probe certificate could not even be asked for.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("probe identity: {0}")]
    Identity(SpiffeIdError),
    #[error("probe key or CSR: {0}")]
    Rcgen(rcgen::Error),
}
