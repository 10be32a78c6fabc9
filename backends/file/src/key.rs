//! The private key of the signing CA: parsed once, used to sign TBS certificates.

use std::path::Path;

use aws_lc_rs::{
    encoding::AsDer,
    rand::SystemRandom,
    signature::{
        self, ECDSA_P256_SHA256_ASN1_SIGNING, ECDSA_P384_SHA384_ASN1_SIGNING, EcdsaKeyPair,
        KeyPair, RsaKeyPair,
    },
};
use castellan_signer::KeyAlgorithm;
use rustls_pki_types::{PrivateKeyDer, pem::PemObject};
use zeroize::Zeroizing;

use crate::Error;

/// A signing key read from a PEM file. Key bytes are held by aws-lc, which
/// wipes them when the key is dropped; the PEM text is wiped after parsing.
pub struct FileKey {
    inner: Inner,
    spki_der: Vec<u8>,
    rng: SystemRandom,
}

enum Inner {
    Ecdsa(EcdsaKeyPair, KeyAlgorithm),
    Rsa(RsaKeyPair),
}

// === impl FileKey ===

impl FileKey {
    /// Parses an unencrypted PKCS#8, SEC1 (`EC PRIVATE KEY`) or PKCS#1
    /// (`RSA PRIVATE KEY`) PEM key. `path` names the file in errors.
    ///
    /// # Errors
    /// [`Error::Key`] when the text holds no key, an encrypted key, or a key
    /// other than ECDSA P-256/P-384 or RSA 2048–8192.
    pub fn from_pem(pem: &[u8], path: &Path) -> Result<Self, Error> {
        if contains(pem, b"ENCRYPTED PRIVATE KEY") || contains(pem, b"Proc-Type: 4,ENCRYPTED") {
            return Err(Error::key(
                path,
                "the private key is encrypted; store it unencrypted on a tmpfs \
                 (a Kubernetes Secret volume) or use the Vault or PKCS#11 signer",
            ));
        }
        let der = Zeroizing::new(
            PrivateKeyDer::from_pem_slice(pem).map_err(|_| Error::NoPem {
                path: path.to_owned(),
                what: "private key (PRIVATE KEY, EC PRIVATE KEY or RSA PRIVATE KEY)",
            })?,
        );
        let inner = match &*der {
            PrivateKeyDer::Pkcs1(k) => {
                Inner::rsa(RsaKeyPair::from_der(k.secret_pkcs1_der()), path)?
            }
            PrivateKeyDer::Sec1(k) => Inner::ecdsa(k.secret_sec1_der(), path)?,
            PrivateKeyDer::Pkcs8(k) => {
                let bytes = k.secret_pkcs8_der();
                match Inner::ecdsa(bytes, path) {
                    Ok(inner) => inner,
                    Err(_) => Inner::rsa(RsaKeyPair::from_pkcs8(bytes), path)?,
                }
            }
            _ => return Err(Error::key(path, "unsupported private key format")),
        };
        let spki_der = inner
            .public_key_der()
            .map_err(|()| Error::key(path, "cannot encode the public key"))?;
        Ok(Self {
            inner,
            spki_der,
            rng: SystemRandom::new(),
        })
    }

    /// A new ECDSA key made in memory, never written anywhere (for an
    /// intermediate castellan has certified on the spot).
    ///
    /// # Errors
    /// [`Error::Key`] for an algorithm other than ECDSA P-256/P-384, or
    /// when the system RNG fails.
    pub fn generate(algorithm: KeyAlgorithm) -> Result<Self, Error> {
        let here = Path::new("a generated key");
        let alg = match algorithm {
            KeyAlgorithm::EcdsaP256Sha256 => &ECDSA_P256_SHA256_ASN1_SIGNING,
            KeyAlgorithm::EcdsaP384Sha384 => &ECDSA_P384_SHA384_ASN1_SIGNING,
            KeyAlgorithm::RsaPkcs1Sha256 | KeyAlgorithm::RsaPssSha256 => {
                return Err(Error::key(
                    here,
                    "only ECDSA P-256/P-384 keys are generated",
                ));
            }
        };
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng)
            .map_err(|_| Error::key(here, "the system RNG failed"))?;
        let inner = Inner::ecdsa(pkcs8.as_ref(), here)?;
        let spki_der = inner
            .public_key_der()
            .map_err(|()| Error::key(here, "cannot encode the public key"))?;
        Ok(Self {
            inner,
            spki_der,
            rng,
        })
    }

    /// The DER SubjectPublicKeyInfo of the key.
    pub fn public_key_der(&self) -> &[u8] {
        &self.spki_der
    }

    pub fn algorithm(&self) -> KeyAlgorithm {
        match &self.inner {
            Inner::Ecdsa(_, alg) => *alg,
            Inner::Rsa(_) => KeyAlgorithm::RsaPkcs1Sha256,
        }
    }

    /// Signs `message` (a DER TBSCertificate) as [`Self::algorithm`] says.
    /// This is CPU work of 20 µs (P-256) to a few ms (RSA-4096).
    ///
    /// # Errors
    /// [`Error::Sign`] if the crypto library refuses, which does not happen
    /// with a key that parsed.
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, Error> {
        match &self.inner {
            Inner::Ecdsa(key, _) => key
                .sign(&self.rng, message)
                .map(|sig| sig.as_ref().to_vec())
                .map_err(|_| Error::Sign("ECDSA signing failed")),
            Inner::Rsa(key) => {
                let mut sig = vec![0; key.public_modulus_len()];
                key.sign(&signature::RSA_PKCS1_SHA256, &self.rng, message, &mut sig)
                    .map_err(|_| Error::Sign("RSA signing failed"))?;
                Ok(sig)
            }
        }
    }
}

impl std::fmt::Debug for FileKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileKey")
            .field("algorithm", &self.algorithm())
            .field("private_key", &"[redacted]")
            .finish()
    }
}

// === impl Inner ===

impl Inner {
    fn ecdsa(der: &[u8], path: &Path) -> Result<Self, Error> {
        [
            (
                &ECDSA_P256_SHA256_ASN1_SIGNING,
                KeyAlgorithm::EcdsaP256Sha256,
            ),
            (
                &ECDSA_P384_SHA384_ASN1_SIGNING,
                KeyAlgorithm::EcdsaP384Sha384,
            ),
        ]
        .into_iter()
        .find_map(|(alg, name)| {
            EcdsaKeyPair::from_private_key_der(alg, der)
                .ok()
                .map(|k| Self::Ecdsa(k, name))
        })
        .ok_or_else(|| Error::key(path, "not an ECDSA P-256 or P-384 key"))
    }

    fn rsa(
        parsed: Result<RsaKeyPair, aws_lc_rs::error::KeyRejected>,
        path: &Path,
    ) -> Result<Self, Error> {
        let key = parsed.map_err(|e| {
            Error::key(
                path,
                format!("not an ECDSA P-256/P-384 or RSA 2048–8192 key ({e})"),
            )
        })?;
        let bits = key.public_modulus_len() * 8;
        if !(2048..=8192).contains(&bits) {
            return Err(Error::key(
                path,
                format!("RSA key of {bits} bits; use 2048 to 8192"),
            ));
        }
        Ok(Self::Rsa(key))
    }

    fn public_key_der(&self) -> Result<Vec<u8>, ()> {
        let der = match self {
            Self::Ecdsa(k, _) => k.public_key().as_der(),
            Self::Rsa(k) => k.public_key().as_der(),
        };
        der.map(|d| d.as_ref().to_vec()).map_err(|_| ())
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use aws_lc_rs::{
        encoding::AsDer,
        rand::SystemRandom,
        rsa::KeySize,
        signature::{
            ECDSA_P256_SHA256_ASN1, ECDSA_P384_SHA384_ASN1, RSA_PKCS1_2048_8192_SHA256,
            UnparsedPublicKey,
        },
    };

    use super::*;

    fn pem(label: &str, der: &[u8]) -> String {
        der::pem::encode_string(label, der::pem::LineEnding::LF, der).unwrap()
    }

    fn ec_pkcs8(alg: &'static signature::EcdsaSigningAlgorithm) -> String {
        let doc = EcdsaKeyPair::generate_pkcs8(alg, &SystemRandom::new()).unwrap();
        pem("PRIVATE KEY", doc.as_ref())
    }

    #[test]
    fn ecdsa_keys_sign_verifiably() {
        for (alg, verify, want) in [
            (
                &ECDSA_P256_SHA256_ASN1_SIGNING,
                &ECDSA_P256_SHA256_ASN1,
                KeyAlgorithm::EcdsaP256Sha256,
            ),
            (
                &ECDSA_P384_SHA384_ASN1_SIGNING,
                &ECDSA_P384_SHA384_ASN1,
                KeyAlgorithm::EcdsaP384Sha384,
            ),
        ] {
            let key = FileKey::from_pem(ec_pkcs8(alg).as_bytes(), Path::new("k.pem")).unwrap();
            assert_eq!(key.algorithm(), want);
            let sig = key.sign(b"tbs").unwrap();
            let spki = spki_key(key.public_key_der());
            UnparsedPublicKey::new(verify, spki)
                .verify(b"tbs", &sig)
                .unwrap();
        }
    }

    #[test]
    fn generated_keys_are_new_and_sign_verifiably() {
        for (alg, verify) in [
            (KeyAlgorithm::EcdsaP256Sha256, &ECDSA_P256_SHA256_ASN1),
            (KeyAlgorithm::EcdsaP384Sha384, &ECDSA_P384_SHA384_ASN1),
        ] {
            let (a, b) = (
                FileKey::generate(alg).unwrap(),
                FileKey::generate(alg).unwrap(),
            );
            assert_eq!(a.algorithm(), alg);
            assert_ne!(a.public_key_der(), b.public_key_der());
            let sig = a.sign(b"tbs").unwrap();
            UnparsedPublicKey::new(verify, spki_key(a.public_key_der()))
                .verify(b"tbs", &sig)
                .unwrap();
        }
        assert!(FileKey::generate(KeyAlgorithm::RsaPkcs1Sha256).is_err());
    }

    #[test]
    fn rsa_pkcs8_key_signs_pkcs1_sha256() {
        let pair = RsaKeyPair::generate(KeySize::Rsa2048).unwrap();
        let der = AsDer::<aws_lc_rs::encoding::Pkcs8V1Der<'_>>::as_der(&pair).unwrap();
        let key =
            FileKey::from_pem(pem("PRIVATE KEY", der.as_ref()).as_bytes(), Path::new("k")).unwrap();
        assert_eq!(key.algorithm(), KeyAlgorithm::RsaPkcs1Sha256);
        let sig = key.sign(b"tbs").unwrap();
        UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, spki_key(key.public_key_der()))
            .verify(b"tbs", &sig)
            .unwrap();
    }

    #[test]
    fn refusals_name_the_file() {
        let enc =
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n";
        let err = FileKey::from_pem(enc.as_bytes(), Path::new("/x/ca-key.pem"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("/x/ca-key.pem") && err.contains("encrypted"),
            "{err}"
        );
        let err = FileKey::from_pem(b"hello", Path::new("/x/ca-key.pem"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("no PEM private key"), "{err}");
        let junk = pem("PRIVATE KEY", &[0x30, 0x03, 0x02, 0x01, 0x00]);
        let err = FileKey::from_pem(junk.as_bytes(), Path::new("k"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("not an ECDSA"), "{err}");
    }

    #[test]
    fn debug_never_shows_the_key() {
        let text = ec_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING);
        let key = FileKey::from_pem(text.as_bytes(), Path::new("k")).unwrap();
        let debug = format!("{key:?}");
        assert!(debug.contains("redacted"), "{debug}");
        let body: String = text.lines().nth(1).unwrap().chars().take(16).collect();
        assert!(!debug.contains(&body));
    }

    /// The subjectPublicKey bits of a DER SubjectPublicKeyInfo.
    fn spki_key(spki: &[u8]) -> Vec<u8> {
        use der::{Decode, asn1::BitStringRef};
        #[derive(der::Sequence)]
        struct Spki<'a> {
            algorithm: der::asn1::AnyRef<'a>,
            key: BitStringRef<'a>,
        }
        Spki::from_der(spki).unwrap().key.raw_bytes().to_vec()
    }
}
