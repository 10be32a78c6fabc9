//! Mint mode: castellan makes a fresh intermediate key in memory, has Vault
//! certify it (`sign-intermediate`) and signs every leaf itself, so Vault
//! sees one call per intermediate instead of one per workload certificate
//! (SPIRE's UpstreamAuthority pattern). What Vault returns is checked here
//! against the profile castellan asked for, before castellan judges it as
//! any signing CA.

use std::time::{Duration, SystemTime};

use std::sync::Arc;

use castellan_signer::{
    KeyAlgorithm, KeyMaker, KeySigner,
    mint::{MintProfile, backdate, generation_name},
};
use der::{Decode, Encode, asn1::BitString};
use reqwest::Method;
use rustls_pki_types::{CertificateDer, pem::PemObject};
use serde_json::{Value, json};
use x509_cert::{
    request::{CertReq, CertReqInfo, Version},
    spki::SubjectPublicKeyInfoOwned,
};

use crate::{Error, MintConfig, Vault};

/// Vault may cut the lifetime asked for (the mount's `max_lease_ttl`, the
/// issuer's own expiry); without a [`MintConfig::min_life_secs`], less
/// than this share of it is refused.
const MIN_SHARE_OF_TTL: f64 = 0.9;

/// A mount (and optionally an issuer in it) that certifies castellan's
/// intermediates, and the profile they must carry.
#[derive(Debug, Clone)]
pub struct Mint {
    path: String,
    mount: String,
    /// The issuer reference (`default` unless pinned).
    issuer: String,
    key: KeyAlgorithm,
    common_name: String,
    /// What every intermediate must be (castellan-signer's, the same for
    /// every certifier).
    profile: MintProfile,
    /// Where each intermediate's key is made (in memory, in an HSM).
    keys: Arc<dyn KeyMaker>,
}

/// A fresh key and the certificate Vault made for it, checked.
#[derive(Debug)]
pub struct Minted {
    pub key: Arc<dyn KeySigner>,
    pub cert: CertificateDer<'static>,
    /// The certificates above it that Vault returned, without the new one.
    pub chain: Vec<CertificateDer<'static>>,
}

// === impl Mint ===

impl Mint {
    pub fn new(config: &MintConfig, trust_domain: &str, keys: Arc<dyn KeyMaker>) -> Self {
        let mount = config.mount.trim_matches('/');
        let path = match &config.issuer {
            Some(issuer) => format!("{mount}/issuer/{issuer}/sign-intermediate"),
            None => format!("{mount}/root/sign-intermediate"),
        };
        let ttl = Duration::from_secs(config.ttl_secs);
        let min_life = config
            .min_life_secs
            .map_or_else(|| ttl.mul_f64(MIN_SHARE_OF_TTL), Duration::from_secs);
        Self {
            path,
            mount: mount.to_owned(),
            issuer: config
                .issuer
                .clone()
                .unwrap_or_else(|| "default".to_owned()),
            key: config.key_type.algorithm(),
            common_name: config
                .common_name
                .clone()
                .unwrap_or_else(|| format!("castellan {trust_domain}")),
            profile: MintProfile::new(
                trust_domain,
                ttl,
                min_life,
                "Vault cut it (the mount's max_lease_ttl or the issuer's own expiry)",
                "tune the mount or lower signer.mint.ttl_secs",
                "Vault signed past its own expiry: leaf_not_after_behavior = permit",
            ),
            keys,
        }
    }

    /// Where the intermediates are signed, for messages.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The CRL of the issuer that certifies castellan's intermediates
    /// (`<mount>/issuer/<issuer>/crl`, the default issuer unless pinned),
    /// DER. castellan checks it like any CA's CRL before publishing it.
    ///
    /// # Errors
    /// [`Error::Unavailable`] when Vault cannot be reached, [`Error::Invalid`]
    /// for an answer that holds no CRL.
    pub async fn issuer_crl(&self, vault: &Vault) -> Result<Vec<u8>, Error> {
        let path = format!("{}/issuer/{}/crl", self.mount, self.issuer);
        let answer = vault.call(Method::GET, &path, None).await?;
        crate::pki::crl_answer(&answer, &path)
    }

    /// Generates a key, has Vault certify it, and checks the certificate.
    ///
    /// # Errors
    /// [`Error::Unavailable`] when Vault cannot be reached, [`Error::Refused`]
    /// when it says no, [`Error::Invalid`] for a certificate outside the
    /// profile asked for.
    pub async fn mint(&self, vault: &Vault) -> Result<Minted, Error> {
        let key = self.generate().await?;
        let spki = key
            .public_key_der()
            .ok_or_else(|| Error::Invalid("the generated key has no public key".into()))?;
        let csr = self.csr(key.as_ref(), &spki).await?;
        let body = json!({
            "csr": csr,
            "common_name": generation_name(&self.common_name, SystemTime::now())
                .map_err(Error::Invalid)?,
            "uri_sans": self.profile.spiffe_id(),
            "ttl": format!("{}s", self.profile.ttl().as_secs()),
            "max_path_length": 0,
            "use_csr_values": false,
            // Vault backdates by 30 s unless told; with a lifetime of
            // seconds (tests) that would move the half-life point.
            "not_before_duration": format!("{}s", backdate(self.profile.ttl()).as_secs()),
            "exclude_cn_from_sans": true,
            "format": "pem",
        });
        let answer = vault.call(Method::POST, &self.path, Some(&body)).await?;
        let (cert, chain) = minted_answer(&answer, &self.path)?;
        self.profile
            .judge(&cert, &spki, &chain, SystemTime::now())
            .map_err(|problem| {
                Error::Invalid(format!(
                    "{}: refusing the intermediate Vault signed: {problem}",
                    self.path
                ))
            })?;
        Ok(Minted { key, cert, chain })
    }

    /// A new key from the key maker. A key of ours older than an
    /// intermediate's life (and an hour) can no longer be in any replica's
    /// use.
    async fn generate(&self) -> Result<Arc<dyn KeySigner>, Error> {
        let stale = self.profile.ttl().saturating_add(Duration::from_secs(3600));
        self.keys.make(self.key, stale).await.map_err(|e| {
            let place = self.keys.describe();
            match e {
                castellan_signer::Error::Config(m) => {
                    Error::Config(format!("generating the key {place}: {m}"))
                }
                castellan_signer::Error::Unavailable(m)
                | castellan_signer::Error::Failed(m)
                | castellan_signer::Error::Busy(m) => {
                    Error::Unavailable(format!("generating the key {place}: {m}"))
                }
            }
        })
    }

    /// A PKCS#10 request for `key`. Its subject is empty: Vault takes the
    /// names from the call (`use_csr_values = false`), never from the CSR.
    async fn csr(&self, key: &dyn KeySigner, spki: &[u8]) -> Result<String, Error> {
        let invalid = |e: der::Error| Error::Invalid(format!("building the CSR: {e}"));
        let info = CertReqInfo {
            version: Version::V1,
            subject: x509_cert::name::Name::default(),
            public_key: SubjectPublicKeyInfoOwned::from_der(spki).map_err(invalid)?,
            attributes: Default::default(),
        };
        let signature = key
            .sign(&info.to_der().map_err(invalid)?)
            .await
            .map_err(|e| Error::Invalid(format!("signing the CSR: {e}")))?
            .value;
        let req = CertReq {
            info,
            algorithm: self.key.identifier(),
            signature: BitString::from_bytes(&signature).map_err(invalid)?,
        };
        let der = req.to_der().map_err(invalid)?;
        der::pem::encode_string("CERTIFICATE REQUEST", der::pem::LineEnding::LF, &der)
            .map_err(|e| Error::Invalid(format!("building the CSR: {e}")))
    }
}

/// What `sign-intermediate` answered: the new certificate, and the
/// certificates above it from `ca_chain` and `issuing_ca` (Vault ≥ 1.11
/// lists the new certificate in `ca_chain` too; it is left out).
pub(crate) fn minted_answer(
    answer: &Value,
    path: &str,
) -> Result<(CertificateDer<'static>, Vec<CertificateDer<'static>>), Error> {
    let data = &answer["data"];
    let pem = data["certificate"]
        .as_str()
        .ok_or_else(|| Error::Invalid(format!("{path}: no data.certificate")))?;
    let cert = CertificateDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| Error::Invalid(format!("{path}: data.certificate is not PEM: {e}")))?;
    let mut chain: Vec<CertificateDer<'static>> = Vec::new();
    let above = data["ca_chain"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(std::iter::once(&data["issuing_ca"]));
    for text in above.filter_map(Value::as_str) {
        for der in CertificateDer::pem_slice_iter(text.as_bytes()) {
            let der = der.map_err(|e| Error::Invalid(format!("{path}: ca_chain: {e}")))?;
            if der != cert && !chain.contains(&der) {
                chain.push(der);
            }
        }
    }
    Ok((cert, chain))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// P-256 keys in memory, made here: the vault crate knows no other
    /// back end, so its tests bring their own key maker.
    #[derive(Debug)]
    struct TestKeys;

    #[derive(Debug)]
    struct TestKey(aws_lc_rs::signature::EcdsaKeyPair);

    #[castellan_signer::async_trait]
    impl KeySigner for TestKey {
        fn algorithm(&self) -> KeyAlgorithm {
            KeyAlgorithm::EcdsaP256Sha256
        }

        async fn sign(
            &self,
            tbs: &[u8],
        ) -> Result<castellan_signer::Signature, castellan_signer::Error> {
            let rng = aws_lc_rs::rand::SystemRandom::new();
            let value = self
                .0
                .sign(&rng, tbs)
                .map_err(|_| castellan_signer::Error::failed("signing"))?;
            Ok(castellan_signer::Signature {
                value: value.as_ref().to_vec(),
                key: castellan_signer::KeyBinding::Resolved(1),
            })
        }

        fn healthy(&self) -> bool {
            true
        }

        async fn probe(&self) {}

        fn public_key_der(&self) -> Option<Vec<u8>> {
            use aws_lc_rs::{encoding::AsDer, signature::KeyPair};
            Some(self.0.public_key().as_der().ok()?.as_ref().to_vec())
        }
    }

    #[castellan_signer::async_trait]
    impl KeyMaker for TestKeys {
        async fn make(
            &self,
            _: KeyAlgorithm,
            _: Duration,
        ) -> Result<Arc<dyn KeySigner>, castellan_signer::Error> {
            let alg = &aws_lc_rs::signature::ECDSA_P256_SHA256_ASN1_SIGNING;
            let key = aws_lc_rs::signature::EcdsaKeyPair::generate(alg)
                .map_err(|_| castellan_signer::Error::failed("generating"))?;
            Ok(Arc::new(TestKey(key)))
        }

        fn describe(&self) -> String {
            "in the test".into()
        }
    }

    fn mint(ttl: u64) -> Mint {
        Mint::new(
            &MintConfig {
                mount: "/pki/".into(),
                issuer: None,
                ttl_secs: ttl,
                key_type: crate::MintKey::EcP256,
                common_name: None,
                min_life_secs: None,
            },
            "cluster.local",
            Arc::new(TestKeys),
        )
    }

    #[test]
    fn the_path_follows_the_issuer() {
        assert_eq!(mint(60).path(), "pki/root/sign-intermediate");
        let pinned = Mint::new(
            &MintConfig {
                mount: "pki".into(),
                issuer: Some("ent".into()),
                ttl_secs: 60,
                key_type: crate::MintKey::EcP384,
                common_name: Some("x".into()),
                min_life_secs: None,
            },
            "td",
            Arc::new(TestKeys),
        );
        assert_eq!(pinned.path(), "pki/issuer/ent/sign-intermediate");
    }

    #[tokio::test]
    async fn the_csr_is_signed_by_the_generated_key() {
        let m = mint(60);
        let key = m.generate().await.unwrap();
        let spki = key.public_key_der().unwrap();
        let pem = m.csr(key.as_ref(), &spki).await.unwrap();
        let (label, der) = der::pem::decode_vec(pem.as_bytes()).unwrap();
        assert_eq!(label, "CERTIFICATE REQUEST");
        let req = CertReq::from_der(&der).unwrap();
        assert_eq!(req.info.public_key.to_der().unwrap(), spki);
        let verify = aws_lc_rs::signature::UnparsedPublicKey::new(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_ASN1,
            req.info.public_key.subject_public_key.raw_bytes(),
        );
        verify
            .verify(&req.info.to_der().unwrap(), req.signature.raw_bytes())
            .unwrap();
    }

    type Tweak = dyn FnOnce(&mut rcgen::CertificateParams);

    /// An intermediate for `key` as Vault would sign it, changed by `tweak`.
    fn intermediate(
        key: &rcgen::KeyPair,
        tweak: impl FnOnce(&mut rcgen::CertificateParams),
    ) -> Vec<u8> {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyUsagePurpose, SanType};
        let issuer_key = rcgen::KeyPair::generate().unwrap();
        let issuer_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        let issuer = rcgen::Issuer::new(issuer_params, issuer_key);
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        p.subject_alt_names = vec![SanType::URI(
            rcgen::string::Ia5String::try_from("spiffe://cluster.local").unwrap(),
        )];
        let now = time::OffsetDateTime::now_utc();
        p.not_before = now - time::Duration::seconds(30);
        p.not_after = now + time::Duration::seconds(3600);
        tweak(&mut p);
        p.signed_by(key, &issuer).unwrap().der().to_vec()
    }

    #[test]
    fn what_vault_signed_must_be_what_was_asked_for() {
        use rcgen::{BasicConstraints, IsCa, KeyUsagePurpose, SanType};
        let m = mint(3600);
        let key = rcgen::KeyPair::generate().unwrap();
        let spki = rcgen::PublicKeyData::subject_public_key_info(&key);
        let now = SystemTime::now();
        assert_eq!(
            m.profile
                .judge(&intermediate(&key, |_| {}), &spki, &[], now),
            Ok(())
        );
        let uri = |u: &str| SanType::URI(rcgen::string::Ia5String::try_from(u).unwrap());
        let cases: Vec<(Box<Tweak>, &str)> = vec![
            (
                Box::new(|p| p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained)),
                "path length 0",
            ),
            (
                Box::new(|p| p.is_ca = IsCa::Ca(BasicConstraints::Constrained(1))),
                "path length 0",
            ),
            (Box::new(|p| p.is_ca = IsCa::ExplicitNoCa), "path length 0"),
            (
                Box::new(|p| p.key_usages = vec![KeyUsagePurpose::KeyCertSign]),
                "cRLSign",
            ),
            (
                Box::new(move |p| p.subject_alt_names.push(uri("spiffe://cluster.local/ns/x"))),
                "URI SANs",
            ),
            (
                Box::new(move |p| p.subject_alt_names = vec![uri("spiffe://other.domain")]),
                "URI SANs",
            ),
            (
                Box::new(|p| {
                    p.not_after = time::OffsetDateTime::now_utc() + time::Duration::seconds(600)
                }),
                "Vault cut it",
            ),
            (
                Box::new(|p| {
                    p.not_before = time::OffsetDateTime::now_utc() + time::Duration::seconds(3000)
                }),
                "notBefore",
            ),
        ];
        for (tweak, needle) in cases {
            let err = m
                .profile
                .judge(&intermediate(&key, tweak), &spki, &[], now)
                .unwrap_err();
            assert!(err.contains(needle), "{err} lacks {needle}");
        }
        let other = rcgen::KeyPair::generate().unwrap();
        let err = m
            .profile
            .judge(&intermediate(&other, |_| {}), &spki, &[], now)
            .unwrap_err();
        assert!(err.contains("another key"), "{err}");
        assert!(m.profile.judge(b"junk", &spki, &[], now).is_err());
    }

    #[test]
    fn the_new_certificate_is_not_its_own_chain() {
        let pem =
            |b: &[u8]| der::pem::encode_string("CERTIFICATE", der::pem::LineEnding::LF, b).unwrap();
        // Not parsed as X.509 here: only split and compared.
        let (a, b) = (pem(&[0x30, 0x00]), pem(&[0x30, 0x01, 0x00]));
        let answer = json!({"data": {"certificate": a, "ca_chain": [a, b], "issuing_ca": b}});
        let (cert, chain) = minted_answer(&answer, "p").unwrap();
        assert_eq!(cert.as_ref(), &[0x30, 0x00]);
        assert_eq!(chain.len(), 1);
        assert!(minted_answer(&json!({"data": {}}), "p").is_err());
    }
}
