//! CSRs as real clients make them, and every malformed kind castellan must refuse.

use const_oid::db::rfc5912;
use der::{
    Encode,
    asn1::{BitString, Null, Uint},
};
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SanType};
use spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};
use x509_cert::{
    name::Name,
    request::{CertReq, CertReqInfo, Version},
};

use super::pki::{KeyAlg, key};

/// ztunnel's CSR: P-256, zero RDNs, one critical URI SAN.
pub fn ztunnel(identity: &str) -> (KeyPair, String) {
    build(KeyAlg::EcP256, |p| {
        p.subject_alt_names = vec![SanType::URI(identity.try_into().unwrap())];
    })
}

/// istio-agent's default CSR: RSA-2048, subject `O=`, one URI SAN.
pub fn istio_agent(identity: &str) -> (KeyPair, String) {
    build(KeyAlg::Rsa2048, |p| {
        p.distinguished_name.push(DnType::OrganizationName, "");
        p.subject_alt_names = vec![SanType::URI(identity.try_into().unwrap())];
    })
}

/// A CSR with an empty subject and whatever `tweak` sets.
pub fn build(alg: KeyAlg, tweak: impl FnOnce(&mut CertificateParams)) -> (KeyPair, String) {
    let key = key(alg);
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    tweak(&mut p);
    let pem = p.serialize_request(&key).unwrap().pem().unwrap();
    (key, pem)
}

/// A CSR with another algorithm rcgen supports (Ed25519, P-521).
pub fn with_alg(alg: &'static rcgen::SignatureAlgorithm, identity: &str) -> String {
    let key = KeyPair::generate_for(alg).unwrap();
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    p.subject_alt_names = vec![SanType::URI(identity.try_into().unwrap())];
    p.serialize_request(&key).unwrap().pem().unwrap()
}

/// A CSR for an RSA key of `bits` bits and exponent `e`, signed with
/// garbage: castellan must refuse the key before looking at the signature.
pub fn rsa_raw(bits: usize, e: u32) -> String {
    #[derive(der::Sequence)]
    struct RsaPublicKey {
        n: Uint,
        e: Uint,
    }
    let mut n = vec![0xff; bits / 8];
    n[bits / 8 - 1] = 0x01;
    let key = RsaPublicKey {
        n: Uint::new(&n).unwrap(),
        e: Uint::new(&e.to_be_bytes()).unwrap(),
    }
    .to_der()
    .unwrap();
    let info = CertReqInfo {
        version: Version::V1,
        subject: Name::default(),
        public_key: SubjectPublicKeyInfoOwned {
            algorithm: AlgorithmIdentifierOwned {
                oid: rfc5912::RSA_ENCRYPTION,
                parameters: Some(Null.into()),
            },
            subject_public_key: BitString::from_bytes(&key).unwrap(),
        },
        attributes: Default::default(),
    };
    let req = CertReq {
        info,
        algorithm: AlgorithmIdentifierOwned {
            oid: rfc5912::SHA_256_WITH_RSA_ENCRYPTION,
            parameters: Some(Null.into()),
        },
        signature: BitString::from_bytes(&vec![0x42; bits / 8]).unwrap(),
    };
    der::pem::encode_string(
        "CERTIFICATE REQUEST",
        der::pem::LineEnding::LF,
        &req.to_der().unwrap(),
    )
    .unwrap()
}

/// `pem` with one byte of its signature flipped.
pub fn tampered(pem: &str) -> String {
    let (label, mut der) = der::pem::decode_vec(pem.as_bytes()).unwrap();
    let last = der.len() - 1;
    der[last] ^= 0x01;
    der::pem::encode_string(label, der::pem::LineEnding::LF, &der).unwrap()
}
