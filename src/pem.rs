//! PEM text in the exact shape Istio clients parse: one certificate per block,
//! each block ending in a newline.

use rustls_pki_types::CertificateDer;

/// Encodes one DER certificate as PEM, 64 columns, with a trailing newline.
///
/// # Errors
/// Only for input too large to encode, which no certificate is.
pub fn certificate(der: &[u8]) -> der::Result<String> {
    Ok(der::pem::encode_string(
        "CERTIFICATE",
        der::pem::LineEnding::LF,
        der,
    )?)
}

/// Encodes one DER CRL as PEM (`X509 CRL`), with a trailing newline.
///
/// # Errors
/// Only for input too large to encode.
pub fn crl(der: &[u8]) -> der::Result<String> {
    Ok(der::pem::encode_string(
        "X509 CRL",
        der::pem::LineEnding::LF,
        der,
    )?)
}

/// Encodes several certificates back to back into one PEM bundle.
///
/// # Errors
/// As [`certificate`].
pub fn bundle(certs: &[CertificateDer<'_>]) -> der::Result<String> {
    certs.iter().map(|c| certificate(c)).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn ends_with_newline() {
        let pem = super::certificate(&[0x30, 0x03, 0x02, 0x01, 0x01]).unwrap();
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----\n"));
        assert!(pem.ends_with("-----END CERTIFICATE-----\n"));
    }
}
