//! What a minted intermediate must be, whoever certified it: castellan
//! mints its own short-lived intermediates and has a certifier sign each
//! (Vault / OpenBao today; an HSM-held or cloud-KMS CA key are certifiers
//! of the same kind). Every certifier's answer is judged by the one
//! [`MintProfile`] — the key castellan generated, a CA with path length 0
//! for certificate and CRL signing, the trust domain as its one URI SAN,
//! the lifetime asked for, and never outliving the CA that certified it.

mod build;

use std::time::{Duration, SystemTime};

use der::{Decode, Encode, asn1::Ia5String};
use rustls_pki_types::CertificateDer;
use x509_cert::{
    Certificate,
    ext::pkix::{BasicConstraints, KeyUsage, KeyUsages, SubjectAltName, name::GeneralName},
};

pub use build::{Request, assemble};

/// The key castellan generates for each minted intermediate, whoever
/// certifies it (`signer.mint.key_type`).
#[derive(Clone, Copy, Debug, Default, serde::Deserialize, PartialEq, Eq)]
pub enum MintKey {
    #[default]
    #[serde(rename = "ec-p256")]
    EcP256,
    #[serde(rename = "ec-p384")]
    EcP384,
}

impl MintKey {
    /// The signature algorithm such a key makes.
    pub const fn algorithm(self) -> crate::KeyAlgorithm {
        match self {
            Self::EcP256 => crate::KeyAlgorithm::EcdsaP256Sha256,
            Self::EcP384 => crate::KeyAlgorithm::EcdsaP384Sha384,
        }
    }
}

/// A certifier may backdate notBefore (Vault: 30 s by default); more than
/// this is a clock or an answer castellan does not trust.
const MAX_BACKDATE: Duration = Duration::from_secs(300);

/// What every minted intermediate must carry, and how a refusal names the
/// certifier's part in it.
#[derive(Clone, Debug)]
pub struct MintProfile {
    /// `spiffe://<trust domain>`: the intermediate's one URI SAN.
    spiffe_id: String,
    ttl: Duration,
    /// The least lifetime accepted.
    min_life: Duration,
    /// Who cuts a lifetime and why, e.g. "Vault cut it (the mount's
    /// max_lease_ttl or the issuer's own expiry)".
    cut: String,
    /// What to change when it does.
    tune: String,
    /// Why a certifier would sign past its own expiry.
    past_expiry: String,
}

impl MintProfile {
    /// Intermediates for `trust_domain`, asked to live `ttl`, refused below
    /// `min_life`; the three texts name the certifier in refusals.
    pub fn new(
        trust_domain: &str,
        ttl: Duration,
        min_life: Duration,
        cut: impl Into<String>,
        tune: impl Into<String>,
        past_expiry: impl Into<String>,
    ) -> Self {
        Self {
            spiffe_id: format!("spiffe://{trust_domain}"),
            ttl,
            min_life,
            cut: cut.into(),
            tune: tune.into(),
            past_expiry: past_expiry.into(),
        }
    }

    /// The one URI SAN every intermediate carries.
    pub fn spiffe_id(&self) -> &str {
        &self.spiffe_id
    }

    /// The lifetime asked for.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The certificate `der` a certifier made for the key `spki`, with the
    /// certificates above it, judged at `now`.
    ///
    /// # Errors
    /// What is wrong with it, for the refusal's message.
    pub fn judge(
        &self,
        der: &[u8],
        spki: &[u8],
        chain: &[CertificateDer<'static>],
        now: SystemTime,
    ) -> Result<(), String> {
        self.check(der, spki, now)
            .and_then(|()| self.within_issuer(der, chain))
    }

    /// What castellan asked for, checked on what the certifier made.
    // Long: every property of the minted intermediate checked against what was asked, one refusal each.
    fn check(&self, der: &[u8], spki: &[u8], now: SystemTime) -> Result<(), String> {
        let cert = Certificate::from_der(der).map_err(|e| format!("not a certificate: {e}"))?;
        let tbs = cert.tbs_certificate();
        let key = tbs
            .subject_public_key_info()
            .to_der()
            .map_err(|e| e.to_string())?;
        if key != spki {
            return Err("it certifies another key than the one castellan generated".into());
        }
        match tbs.get_extension::<BasicConstraints>() {
            Ok(Some((_, bc))) if bc.ca && bc.path_len_constraint == Some(0) => {}
            Ok(_) => return Err("it is not a CA with path length 0".into()),
            Err(e) => return Err(format!("basicConstraints: {e}")),
        }
        match tbs.get_extension::<KeyUsage>() {
            Ok(Some((_, ku)))
                if ku.0.contains(KeyUsages::KeyCertSign) && ku.0.contains(KeyUsages::CRLSign) => {}
            Ok(_) => return Err("its key usage lacks keyCertSign or cRLSign".into()),
            Err(e) => return Err(format!("keyUsage: {e}")),
        }
        let uris: Vec<String> = match tbs.get_extension::<SubjectAltName>() {
            Ok(Some((_, san))) => san
                .0
                .iter()
                .filter_map(|n| match n {
                    GeneralName::UniformResourceIdentifier(u) => Some(Ia5String::to_string(u)),
                    _ => None,
                })
                .collect(),
            Ok(None) => Vec::new(),
            Err(e) => return Err(format!("subjectAltName: {e}")),
        };
        if uris != [self.spiffe_id.as_str()] {
            return Err(format!(
                "its URI SANs are {uris:?}, not exactly [\"{}\"]",
                self.spiffe_id
            ));
        }
        let validity = tbs.validity();
        let (not_before, not_after) = (
            validity.not_before.to_system_time(),
            validity.not_after.to_system_time(),
        );
        if not_before > now + MAX_BACKDATE || not_before + MAX_BACKDATE + self.ttl < now {
            return Err("its notBefore is far from now (check the clocks)".into());
        }
        // Rotation comes at half of notBefore..notAfter: that span must
        // hold two of the longest leaves.
        let life = not_after.duration_since(not_before).unwrap_or_default();
        if life < self.min_life {
            return Err(format!(
                "it lives {} s, not the {} s asked for: {} below {} s, and a leaf issued before \
                 the next rotation (at half its life) would be cut short; {}",
                life.as_secs(),
                self.ttl.as_secs(),
                self.cut,
                self.min_life.as_secs(),
                self.tune
            ));
        }
        Ok(())
    }

    /// A minted intermediate must end before the CA that certified it: a
    /// chain is valid only while every certificate in it is.
    fn within_issuer(&self, der: &[u8], chain: &[CertificateDer<'static>]) -> Result<(), String> {
        let cert = Certificate::from_der(der).map_err(|e| format!("not a certificate: {e}"))?;
        let tbs = cert.tbs_certificate();
        let not_after = tbs.validity().not_after.to_system_time();
        for above in chain {
            let Ok(above) = Certificate::from_der(above) else {
                continue;
            };
            let a = above.tbs_certificate();
            let ends = a.validity().not_after.to_system_time();
            if a.subject() == tbs.issuer() && ends < not_after {
                return Err(format!(
                    "it outlives its issuer `{}`, which ends at {} ({}): leaves under it would \
                     outlive their chain; renew the issuing CA",
                    a.subject(),
                    der::DateTime::from_system_time(ends)
                        .map_or_else(|_| "?".into(), |d| d.to_string()),
                    self.past_expiry
                ));
            }
        }
        Ok(())
    }
}

/// Every intermediate's own subject: `common_name`, when it was minted and
/// a random tag, at most 64 characters (X.520's bound). ztunnel picks the
/// first CRL whose issuer *name* matches a certificate's issuer, so two
/// generations alive under one name would fail the leaves of one of them.
///
/// # Errors
/// When the system has no randomness or `now` is not a certificate time.
pub fn generation_name(common_name: &str, now: SystemTime) -> Result<String, String> {
    use aws_lc_rs::rand::SecureRandom;
    let mut tag = [0u8; 3];
    aws_lc_rs::rand::SystemRandom::new()
        .fill(&mut tag)
        .map_err(|_| "no randomness for the intermediate's name".to_owned())?;
    let minted = der::DateTime::from_system_time(now).map_err(|e| format!("the time now: {e}"))?;
    let suffix = format!(" {minted} {:02x}{:02x}{:02x}", tag[0], tag[1], tag[2]);
    let room = 64usize.saturating_sub(suffix.len());
    let base: String = common_name.chars().take(room).collect();
    Ok(format!("{}{suffix}", base.trim_end()))
}

/// How far before now an intermediate starts, for clocks a little behind:
/// 30 s, or a tenth of a lifetime shorter than five minutes.
pub fn backdate(ttl: Duration) -> Duration {
    (ttl / 10).clamp(Duration::from_secs(1), Duration::from_secs(30))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_generation_has_a_name_of_its_own_within_64_characters() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_000_000);
        let a = generation_name("castellan cluster.local", now).unwrap();
        let b = generation_name("castellan cluster.local", now).unwrap();
        assert_ne!(a, b, "same second, another name");
        assert!(a.starts_with("castellan cluster.local 2026-"), "{a}");
        let long = generation_name(&"x".repeat(100), now).unwrap();
        assert_eq!(long.chars().count(), 64, "{long}");
    }

    #[test]
    fn the_backdate_is_a_tenth_between_one_and_thirty_seconds() {
        assert_eq!(backdate(Duration::from_secs(5)), Duration::from_secs(1));
        assert_eq!(backdate(Duration::from_secs(120)), Duration::from_secs(12));
        assert_eq!(
            backdate(Duration::from_secs(86_400)),
            Duration::from_secs(30)
        );
    }
}
