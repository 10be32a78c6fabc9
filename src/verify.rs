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
