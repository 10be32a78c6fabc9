//! Path validation of issued certificates with webpki, the verifier rustls
//! clients (ztunnel, agentgateway) use: if it passes here, it passes there.

use rustls_pki_types::{CertificateDer, UnixTime};
use webpki::{ALL_VERIFICATION_ALGS, EndEntityCert, KeyUsage};

/// Which way the certificate will be used.
#[derive(Clone, Copy, Debug)]
pub enum Usage {
    Client,
    Server,
}

/// Verifies `leaf` through `intermediates` to one of `roots`, now.
///
/// # Errors
/// webpki's verdict, e.g. `UnknownIssuer`, `CertExpired`, `BadSignature`.
pub fn chain(
    leaf: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    roots: &[CertificateDer<'_>],
    usage: Usage,
) -> Result<(), webpki::Error> {
    let anchors = roots
        .iter()
        .map(|r| webpki::anchor_from_trusted_cert(r).map(|a| a.to_owned()))
        .collect::<Result<Vec<_>, _>>()?;
    let ee = EndEntityCert::try_from(leaf)?;
    let usage = match usage {
        Usage::Client => KeyUsage::client_auth(),
        Usage::Server => KeyUsage::server_auth(),
    };
    ee.verify_for_usage(
        ALL_VERIFICATION_ALGS,
        &anchors,
        intermediates,
        UnixTime::now(),
        usage,
        None,
        None,
    )
    .map(|_| ())
}

/// Whether `cert` carries a signature by `issuer_spki`'s key, whatever the
/// validity dates (for proving a key pair, not for trusting a certificate).
pub fn signed_by(
    cert: &[u8],
    issuer_spki: &spki::SubjectPublicKeyInfoOwned,
    algorithm: crate::ca::Algorithm,
) -> bool {
    use aws_lc_rs::signature::{self, UnparsedPublicKey, VerificationAlgorithm};
    use der::{Decode, Encode};
    let Ok(cert) = x509_cert::Certificate::from_der(cert) else {
        return false;
    };
    let (Ok(tbs), Some(sig)) = (cert.tbs_certificate().to_der(), cert.signature().as_bytes())
    else {
        return false;
    };
    let alg: &'static dyn VerificationAlgorithm = match algorithm {
        crate::ca::Algorithm::EcdsaP256Sha256 => &signature::ECDSA_P256_SHA256_ASN1,
        crate::ca::Algorithm::EcdsaP384Sha384 => &signature::ECDSA_P384_SHA384_ASN1,
        crate::ca::Algorithm::RsaPkcs1Sha256 => &signature::RSA_PKCS1_2048_8192_SHA256,
        crate::ca::Algorithm::RsaPssSha256 => &signature::RSA_PSS_2048_8192_SHA256,
    };
    UnparsedPublicKey::new(alg, issuer_spki.subject_public_key.raw_bytes())
        .verify(&tbs, sig)
        .is_ok()
}
