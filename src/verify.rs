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

/// Verifies `leaf` through `intermediates` to one of `roots`, at `at` (the
/// caller's clock: castellan's rules run on an injected one).
///
/// # Errors
/// webpki's verdict, e.g. `UnknownIssuer`, `CertExpired`, `BadSignature`.
pub fn chain(
    leaf: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    roots: &[CertificateDer<'_>],
    usage: Usage,
    at: std::time::SystemTime,
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
        UnixTime::since_unix_epoch(at.duration_since(std::time::UNIX_EPOCH).unwrap_or_default()),
        usage,
        None,
        None,
    )
    .map(|_| ())
}

/// Whether `cert` carries a signature by `issuer_spki`'s key, whatever the
/// validity dates (for proving a key pair, not for trusting a certificate).
/// The algorithm is the one the certificate names, with the issuer key's curve.
pub fn signed_by(cert: &[u8], issuer_spki: &spki::SubjectPublicKeyInfoOwned) -> bool {
    use aws_lc_rs::signature::UnparsedPublicKey;
    use der::{Decode, Encode};
    let Ok(cert) = x509_cert::Certificate::from_der(cert) else {
        return false;
    };
    let (Ok(tbs), Some(sig)) = (cert.tbs_certificate().to_der(), cert.signature().as_bytes())
    else {
        return false;
    };
    let Some(alg) = verification(cert.signature_algorithm().oid, issuer_spki) else {
        return false;
    };
    UnparsedPublicKey::new(alg, issuer_spki.subject_public_key.raw_bytes())
        .verify(&tbs, sig)
        .is_ok()
}

/// Whether the DER CRL `crl` carries a signature by `issuer_spki`'s key.
pub fn crl_signed_by(crl: &[u8], issuer_spki: &spki::SubjectPublicKeyInfoOwned) -> bool {
    use aws_lc_rs::signature::UnparsedPublicKey;
    use der::{Decode, Encode};
    let Ok(crl) = x509_cert::crl::CertificateList::<x509_cert::certificate::Rfc5280>::from_der(crl)
    else {
        return false;
    };
    let (Ok(tbs), Some(sig)) = (crl.tbs_cert_list.to_der(), crl.signature.as_bytes()) else {
        return false;
    };
    let Some(alg) = verification(crl.signature_algorithm.oid, issuer_spki) else {
        return false;
    };
    UnparsedPublicKey::new(alg, issuer_spki.subject_public_key.raw_bytes())
        .verify(&tbs, sig)
        .is_ok()
}

/// The verification algorithm for a signature named `oid` by the key `spki`.
fn verification(
    oid: const_oid::ObjectIdentifier,
    spki: &spki::SubjectPublicKeyInfoOwned,
) -> Option<&'static dyn aws_lc_rs::signature::VerificationAlgorithm> {
    use aws_lc_rs::signature as s;
    use const_oid::db::rfc5912 as o;
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.decode_as::<const_oid::ObjectIdentifier>().ok());
    let ec = spki.algorithm.oid == o::ID_EC_PUBLIC_KEY;
    let rsa = spki.algorithm.oid == o::RSA_ENCRYPTION;
    let p256 = ec && curve == Some(o::SECP_256_R_1);
    let p384 = ec && curve == Some(o::SECP_384_R_1);
    Some(match oid {
        o::ECDSA_WITH_SHA_256 if p256 => &s::ECDSA_P256_SHA256_ASN1,
        o::ECDSA_WITH_SHA_256 if p384 => &s::ECDSA_P384_SHA256_ASN1,
        o::ECDSA_WITH_SHA_384 if p256 => &s::ECDSA_P256_SHA384_ASN1,
        o::ECDSA_WITH_SHA_384 if p384 => &s::ECDSA_P384_SHA384_ASN1,
        o::SHA_256_WITH_RSA_ENCRYPTION if rsa => &s::RSA_PKCS1_2048_8192_SHA256,
        o::SHA_384_WITH_RSA_ENCRYPTION if rsa => &s::RSA_PKCS1_2048_8192_SHA384,
        o::SHA_512_WITH_RSA_ENCRYPTION if rsa => &s::RSA_PKCS1_2048_8192_SHA512,
        // castellan's own PSS certificates use SHA-256 (RFC 4055 parameters).
        o::ID_RSASSA_PSS if rsa => &s::RSA_PSS_2048_8192_SHA256,
        _ => return None,
    })
}
