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

/// The certificates of a PEM bundle as a set of DER encodings: two bundles
/// holding the same certificates in another order, or with other text
/// between them, compare equal. Blocks that do not parse are left out.
pub fn certificate_set(pem: &str) -> std::collections::BTreeSet<Vec<u8>> {
    use rustls_pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .filter_map(Result::ok)
        .map(|c| c.to_vec())
        .collect()
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
