//! Test PKI made with rcgen at test time: roots, intermediates with any flaw
//! a test needs, written in the layouts castellan reads.

use std::path::Path;

use der::Decode;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384, PKCS_RSA_SHA256,
};
use time::{Duration, OffsetDateTime};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyAlg {
    EcP256,
    EcP384,
    Rsa2048,
}

/// A CA certificate and its key.
pub struct Ca {
    pub params: CertificateParams,
    pub key: KeyPair,
    pub pem: String,
    pub der: Vec<u8>,
}

pub fn key(alg: KeyAlg) -> KeyPair {
    match alg {
        KeyAlg::EcP256 => KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256),
        KeyAlg::EcP384 => KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384),
        KeyAlg::Rsa2048 => KeyPair::generate_for(&PKCS_RSA_SHA256),
    }
    .unwrap()
}

pub fn ca_params(cn: &str, path_len: Option<u8>) -> CertificateParams {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(path_len.map_or(
        BasicConstraints::Unconstrained,
        BasicConstraints::Constrained,
    ));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let now = OffsetDateTime::now_utc();
    p.not_before = now - Duration::hours(1);
    p.not_after = now + Duration::days(365);
    p
}

impl Ca {
    /// The same CA again (rcgen keys are not `Clone`), for a second
    /// castellan under it.
    pub fn duplicate(&self) -> Self {
        Self {
            params: self.params.clone(),
            key: KeyPair::from_pem(&self.key.serialize_pem()).unwrap(),
            pem: self.pem.clone(),
            der: self.der.clone(),
        }
    }

    pub fn root(cn: &str, alg: KeyAlg) -> Self {
        let key = key(alg);
        let params = ca_params(cn, None);
        let cert = params.self_signed(&key).unwrap();
        Self {
            pem: cert.pem(),
            der: cert.der().to_vec(),
            params,
            key,
        }
    }

    /// A certificate signed by `self`; `tweak` may change anything.
    pub fn intermediate(
        &self,
        cn: &str,
        alg: KeyAlg,
        tweak: impl FnOnce(&mut CertificateParams),
    ) -> Self {
        let key = key(alg);
        let mut params = ca_params(cn, Some(0));
        params.use_authority_key_identifier_extension = true;
        tweak(&mut params);
        self.sign(params, key)
    }

    pub fn sign(&self, params: CertificateParams, key: KeyPair) -> Self {
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer).unwrap();
        Self {
            pem: cert.pem(),
            der: cert.der().to_vec(),
            params,
            key,
        }
    }
}

impl Ca {
    /// A CRL signed by this CA, PEM: valid from an hour ago for `life`,
    /// listing `revoked` (DER serial numbers).
    pub fn crl(&self, life: Duration, revoked: &[Vec<u8>]) -> String {
        let now = OffsetDateTime::now_utc();
        self.crl_at(now - Duration::hours(1), now + life, revoked)
    }

    /// A CRL signed by this CA with the given this and next update, PEM.
    pub fn crl_at(
        &self,
        this_update: OffsetDateTime,
        next_update: OffsetDateTime,
        revoked: &[Vec<u8>],
    ) -> String {
        let params = rcgen::CertificateRevocationListParams {
            this_update,
            next_update,
            crl_number: rcgen::SerialNumber::from(
                u64::try_from(OffsetDateTime::now_utc().unix_timestamp_nanos() / 1000).unwrap(),
            ),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|serial| rcgen::RevokedCertParams {
                    serial_number: rcgen::SerialNumber::from(serial.clone()),
                    revocation_time: this_update,
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        params
            .signed_by(&Issuer::from_params(&self.params, &self.key))
            .unwrap()
            .pem()
            .unwrap()
    }

    /// The certificate's serial number, DER content bytes.
    pub fn serial(&self) -> Vec<u8> {
        x509_cert::Certificate::from_der(&self.der)
            .unwrap()
            .tbs_certificate()
            .serial_number()
            .as_bytes()
            .to_vec()
    }

    /// An intermediate CA certificate (PEM) for a key held elsewhere,
    /// given by its DER SubjectPublicKeyInfo.
    pub fn certify_public_key(&self, cn: &str, spki: Vec<u8>) -> String {
        self.certify_ca_key(cn, spki, 0)
    }

    /// A CA certificate for a key held elsewhere, allowing `path_len` CAs
    /// below it (1: an issuing CA certifying castellan's intermediates).
    pub fn certify_ca_key(&self, cn: &str, spki: Vec<u8>, path_len: u8) -> String {
        let mut params = ca_params(cn, Some(path_len));
        params.use_authority_key_identifier_extension = true;
        let issuer = Issuer::from_params(&self.params, &self.key);
        params
            .signed_by(&ForeignKey::new(spki), &issuer)
            .unwrap()
            .pem()
    }
}

/// Writes Istio's `cacerts` layout: the signing cert and key, the chain
/// (certificates given), and the root bundle.
pub fn write_cacerts(dir: &Path, signing: &Ca, chain: &[&Ca], roots_pem: &str) {
    std::fs::create_dir_all(dir).unwrap();
    write_cacerts_key(dir, signing, &signing.key.serialize_pem(), chain, roots_pem);
}

/// As [`write_cacerts`], with the key PEM given (other formats, other keys).
pub fn write_cacerts_key(dir: &Path, signing: &Ca, key_pem: &str, chain: &[&Ca], roots_pem: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let chain: String = chain.iter().map(|c| c.pem.as_str()).collect();
    // Write to temporary names and rename, as Kubernetes swaps Secret files.
    for (name, contents) in [
        ("ca-cert.pem", signing.pem.as_str()),
        ("ca-key.pem", key_pem),
        ("cert-chain.pem", chain.as_str()),
        ("root-cert.pem", roots_pem),
    ] {
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, contents).unwrap();
        std::fs::rename(&tmp, dir.join(name)).unwrap();
    }
}

/// A public key held elsewhere (an HSM, Vault), as rcgen needs it to certify it.
struct ForeignKey {
    spki: Vec<u8>,
    bits: Vec<u8>,
    alg: &'static rcgen::SignatureAlgorithm,
}

impl ForeignKey {
    fn new(spki: Vec<u8>) -> Self {
        let parsed = spki::SubjectPublicKeyInfoOwned::from_der(&spki).unwrap();
        let bits = parsed.subject_public_key.raw_bytes().to_vec();
        let alg = match parsed
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.decode_as::<der::asn1::ObjectIdentifier>().ok())
        {
            Some(c) if c == der::asn1::ObjectIdentifier::new_unwrap("1.3.132.0.34") => {
                &PKCS_ECDSA_P384_SHA384
            }
            Some(_) => &PKCS_ECDSA_P256_SHA256,
            None => &PKCS_RSA_SHA256,
        };
        Self { spki, bits, alg }
    }
}

impl rcgen::PublicKeyData for ForeignKey {
    fn subject_public_key_info(&self) -> Vec<u8> {
        self.spki.clone()
    }

    fn der_bytes(&self) -> &[u8] {
        &self.bits
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        self.alg
    }
}
