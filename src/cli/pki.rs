//! A throwaway PKI for the demo, the benchmark and tests: an offline root
//! whose key never touches disk, and an intermediate signed by it.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PKCS_RSA_SHA256,
};
use time::{Duration, OffsetDateTime};

use super::KeyType;

/// A root and an intermediate. The root's key is gone once this exists.
pub struct DemoPki {
    pub root_pem: String,
    pub intermediate_pem: String,
    /// PKCS#8 PEM of the intermediate's key.
    pub intermediate_key_pem: zeroize::Zeroizing<String>,
}

// === impl DemoPki ===

impl std::fmt::Debug for DemoPki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DemoPki")
            .field("root_pem", &self.root_pem)
            .field("intermediate_pem", &self.intermediate_pem)
            .field("intermediate_key_pem", &"[redacted]")
            .finish()
    }
}

impl DemoPki {
    /// # Errors
    /// When key generation or signing fails.
    pub fn generate(key_type: KeyType, name: &str) -> Result<Self, rcgen::Error> {
        let root_key = generate_key(key_type)?;
        let root_params = ca_params(&format!("{name} root"), None, 3650)?;
        let root_cert = root_params.self_signed(&root_key)?;
        let root = Issuer::new(root_params, root_key);

        let int_key = generate_key(key_type)?;
        let mut int_params = ca_params(&format!("{name} intermediate"), Some(0), 365)?;
        // RFC 5280 §4.2.1.1: strict verifiers (openssl -x509_strict) want it.
        int_params.use_authority_key_identifier_extension = true;
        let int_cert = int_params.signed_by(&int_key, &root)?;
        // `root`, holding the root key, is dropped here: the demo root is offline.
        Ok(Self {
            root_pem: root_cert.pem(),
            intermediate_pem: int_cert.pem(),
            intermediate_key_pem: zeroize::Zeroizing::new(int_key.serialize_pem()),
        })
    }
}

/// A fresh key of the given type.
///
/// # Errors
/// When the crypto library fails.
pub fn generate_key(key_type: KeyType) -> Result<KeyPair, rcgen::Error> {
    match key_type {
        KeyType::EcP256 => KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256),
        KeyType::Rsa2048 => KeyPair::generate_for(&PKCS_RSA_SHA256),
    }
}

fn ca_params(cn: &str, path_len: Option<u8>, days: i64) -> Result<CertificateParams, rcgen::Error> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "castellan demo");
    dn.push(DnType::CommonName, cn);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(match path_len {
        Some(n) => BasicConstraints::Constrained(n),
        None => BasicConstraints::Unconstrained,
    });
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::minutes(5);
    params.not_after = now + Duration::days(days);
    Ok(params)
}
