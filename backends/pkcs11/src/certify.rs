//! The token's key as the issuing CA that certifies castellan's own
//! short-lived intermediates (`[signer.mint]` with the PKCS#11 signer): an
//! HSM shop keeps its issuing CA's key in the HSM, has it sign one
//! intermediate a day, and castellan signs every workload certificate with
//! a key of its own. castellan writes the intermediate's TBSCertificate
//! from the CA's certificate (`cert_file`), the token signs it, and the
//! result is judged as any certifier's ([`castellan_signer::mint`]) and its
//! signature verified under the CA's certificate: what the token did is
//! never taken on its word.

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use castellan_signer::{
    KeyAlgorithm, KeyMaker, KeySigner, Material,
    mint::{MintKey, MintProfile, Request, assemble, generation_name},
};
use der::{Decode, Encode};
use rustls_pki_types::CertificateDer;
use x509_cert::Certificate;

use crate::ConfigError;

/// A minted intermediate's lifetime bounds, as for Vault's certifier.
pub(crate) const MIN_TTL_SECS: u64 = 10;
pub(crate) const MAX_TTL_SECS: u64 = 30 * 86_400;

/// Shorter than this share of the lifetime asked for is refused, unless
/// castellan sets [`Certify::min_life_secs`] from its longest leaf.
const MIN_SHARE_OF_TTL: f64 = 0.9;

/// `[signer.mint]` of the PKCS#11 signer.
#[derive(Clone, Debug, serde::Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Certify {
    /// Each intermediate's lifetime; the next is minted at half of it.
    #[serde(default = "default_ttl")]
    pub ttl_secs: u64,
    /// The minted keys' type.
    #[serde(default)]
    pub key_type: MintKey,
    /// The intermediates' common name before the generation's time and tag;
    /// default `castellan <trust domain>`.
    pub common_name: Option<String>,
    /// The least lifetime accepted: set by castellan (twice the longest
    /// leaf), not read from the file.
    #[serde(skip)]
    pub min_life_secs: Option<u64>,
}

fn default_ttl() -> u64 {
    172_800
}

impl Certify {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if !(MIN_TTL_SECS..=MAX_TTL_SECS).contains(&self.ttl_secs) {
            return Err(ConfigError::MintTtl(MIN_TTL_SECS, MAX_TTL_SECS));
        }
        Ok(())
    }

    /// What every intermediate must be, for `trust_domain`.
    pub(crate) fn profile(&self, trust_domain: &str) -> MintProfile {
        let ttl = Duration::from_secs(self.ttl_secs);
        let min_life = self
            .min_life_secs
            .map_or_else(|| ttl.mul_f64(MIN_SHARE_OF_TTL), Duration::from_secs);
        MintProfile::new(
            trust_domain,
            ttl,
            min_life,
            "castellan built it shorter (the issuing CA's certificate ends sooner)",
            "renew the issuing CA or lower signer.mint.ttl_secs",
            "castellan refuses to certify past the issuing CA's end",
        )
    }
}

/// One minted intermediate: a new key from `keys`, certified by `ca_key`
/// (the token's) under `ca_cert`, judged by `profile`, with `above` (the
/// CA's own chain) after it.
///
/// # Errors
/// [`castellan_signer::Error`]: unavailable when the key cannot be made or
/// the token cannot sign, invalid results refused with what is wrong.
pub(crate) async fn mint(
    certify: &Certify,
    profile: &MintProfile,
    keys: &dyn KeyMaker,
    ca_key: &dyn KeySigner,
    ca_cert: &CertificateDer<'static>,
    above: &[CertificateDer<'static>],
    common_name: &str,
) -> Result<(Arc<dyn KeySigner>, Material), castellan_signer::Error> {
    let refused = |what: String| {
        castellan_signer::Error::failed(format!(
            "refusing the intermediate certified by the token's CA key: {what}"
        ))
    };
    let stale = profile.ttl().saturating_add(Duration::from_secs(3600));
    let key = keys.make(certify.key_type.algorithm(), stale).await?;
    let spki = key
        .public_key_der()
        .ok_or_else(|| refused("the generated key has no public key".into()))?;
    let now = SystemTime::now();
    let tbs = profile
        .tbs(&Request {
            issuer_cert: ca_cert.as_ref(),
            issuer_algorithm: ca_key.algorithm(),
            spki: &spki,
            common_name: &generation_name(common_name, now).map_err(refused)?,
            serial: &serial()?,
            now,
        })
        .map_err(refused)?;
    let signature = ca_key.sign(&tbs).await?;
    let cert = assemble(&tbs, ca_key.algorithm(), &signature.value).map_err(refused)?;
    verify_under(&cert, ca_cert, ca_key.algorithm()).map_err(refused)?;
    let mut chain = Vec::with_capacity(above.len() + 1);
    chain.push(ca_cert.clone());
    chain.extend(above.iter().cloned());
    profile.judge(&cert, &spki, &chain, now).map_err(refused)?;
    Ok((
        key,
        Material {
            cert: CertificateDer::from(cert),
            chain,
            roots: Vec::new(),
            cert_source: String::new(),
            fingerprint: None,
            upstream_crls: Vec::new(),
        },
    ))
}

/// The certificate's signature verifies under the CA certificate's key:
/// the token signed with the key the CA's certificate is for.
fn verify_under(cert: &[u8], ca: &[u8], algorithm: KeyAlgorithm) -> Result<(), String> {
    let cert = Certificate::from_der(cert).map_err(|e| e.to_string())?;
    let ca = Certificate::from_der(ca).map_err(|e| format!("the CA certificate: {e}"))?;
    let key = ca
        .tbs_certificate()
        .subject_public_key_info()
        .subject_public_key
        .raw_bytes();
    let tbs = cert.tbs_certificate().to_der().map_err(|e| e.to_string())?;
    aws_lc_rs::signature::UnparsedPublicKey::new(algorithm.verification(), key)
        .verify(&tbs, cert.signature().raw_bytes())
        .map_err(|_| {
            "its signature does not verify under the issuing CA's certificate: the token \
             signed with another key than the one cert_file certifies"
                .to_owned()
        })
}

/// A positive 128-bit random serial.
fn serial() -> Result<[u8; 16], castellan_signer::Error> {
    let mut serial = [0u8; 16];
    aws_lc_rs::rand::fill(&mut serial)
        .map_err(|_| castellan_signer::Error::failed("the system RNG failed"))?;
    serial[0] = (serial[0] & 0x3f) | 0x40;
    Ok(serial)
}
