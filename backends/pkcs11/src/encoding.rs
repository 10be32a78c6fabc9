//! Turning what PKCS#11 returns into what X.509 needs: public keys as
//! SubjectPublicKeyInfo, raw ECDSA `r‖s` as DER, RSA DigestInfo.

use der::{
    Decode, Encode,
    asn1::{BitString, Null, ObjectIdentifier, OctetString, UintRef},
};
use spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};

const ID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
pub(crate) const SECP256R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
pub(crate) const SECP384R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");

/// `DigestInfo` for SHA-256 without the digest (RFC 8017 §9.2 note 1).
pub(crate) const SHA256_DIGEST_INFO: [u8; 19] = [
    0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05,
    0x00, 0x04, 0x20,
];

/// The SPKI of an EC key from `CKA_EC_PARAMS` (a DER OID) and `CKA_EC_POINT`
/// (a DER OCTET STRING around the uncompressed point, or the bare point).
pub(crate) fn ec_spki(params: &[u8], point: &[u8]) -> Result<Vec<u8>, der::Error> {
    let curve: ObjectIdentifier = ObjectIdentifier::from_der(params)?;
    let point = match OctetString::from_der(point) {
        Ok(os) => os.as_bytes().to_vec(),
        Err(_) => point.to_vec(),
    };
    SubjectPublicKeyInfoOwned {
        algorithm: AlgorithmIdentifierOwned {
            oid: ID_EC_PUBLIC_KEY,
            parameters: Some(curve.into()),
        },
        subject_public_key: BitString::from_bytes(&point)?,
    }
    .to_der()
}

/// The SPKI of an RSA key from `CKA_MODULUS` and `CKA_PUBLIC_EXPONENT`.
pub(crate) fn rsa_spki(modulus: &[u8], exponent: &[u8]) -> Result<Vec<u8>, der::Error> {
    #[derive(der::Sequence)]
    struct RsaPublicKey<'a> {
        modulus: UintRef<'a>,
        exponent: UintRef<'a>,
    }
    let key = RsaPublicKey {
        modulus: UintRef::new(modulus)?,
        exponent: UintRef::new(exponent)?,
    }
    .to_der()?;
    SubjectPublicKeyInfoOwned {
        algorithm: AlgorithmIdentifierOwned {
            oid: RSA_ENCRYPTION,
            parameters: Some(Null.into()),
        },
        subject_public_key: BitString::from_bytes(&key)?,
    }
    .to_der()
}

/// A raw `r‖s` ECDSA signature as a DER `Ecdsa-Sig-Value`.
pub(crate) fn ecdsa_der(raw: &[u8]) -> Result<Vec<u8>, der::Error> {
    #[derive(der::Sequence)]
    struct EcdsaSig<'a> {
        r: UintRef<'a>,
        s: UintRef<'a>,
    }
    if raw.is_empty() || !raw.len().is_multiple_of(2) {
        return Err(der::ErrorKind::Length {
            tag: der::Tag::Sequence,
        }
        .into());
    }
    let (r, s) = raw.split_at(raw.len() / 2);
    EcdsaSig {
        r: UintRef::new(r)?,
        s: UintRef::new(s)?,
    }
    .to_der()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_signatures_become_der_integers() {
        let mut raw = vec![0u8; 64];
        raw[0] = 0x80; // high bit: DER needs a leading zero
        raw[32] = 0x01;
        let der = ecdsa_der(&raw).unwrap();
        assert_eq!(&der[..4], &[0x30, 0x45, 0x02, 0x21]);
        assert_eq!(der[4], 0x00);
        assert!(ecdsa_der(&[1, 2, 3]).is_err());
    }
}
