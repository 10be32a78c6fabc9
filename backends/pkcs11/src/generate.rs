//! Keys castellan makes inside the token itself, for intermediates it has
//! certified on the spot (Vault mint mode with `[signer.mint.pkcs11]`): one
//! key pair per intermediate, never extractable, found by a label that
//! carries its creation time, destroyed when castellan stops signing with
//! it — or, if castellan died first, by whichever replica mints after the
//! key can no longer be in anyone's use.

use std::{
    sync::{Arc, PoisonError},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use castellan_signer::{KeyAlgorithm, KeySigner, RsaPadding};
use cryptoki::{
    mechanism::Mechanism,
    object::{Attribute, ObjectClass},
};
use der::Encode;

use crate::{
    Config, Error, Pkcs11Key, Workers, encoding, module, pool, source::Pkcs11Signer, token,
};

/// Where minted keys are made: a token and how to log in to it.
#[derive(Clone, Debug, serde::Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct KeyStore {
    pub module: std::path::PathBuf,
    pub token_label: Option<String>,
    pub token_serial: Option<String>,
    pub pin_file: Option<std::path::PathBuf>,
    pub pin_env: Option<String>,
    /// Sessions (and signing threads) per key.
    #[serde(default = "crate::default_pool_size")]
    pub pool_size: usize,
    /// Minted keys are labelled `<prefix>-<unix time>-<random>`.
    #[serde(default = "default_prefix")]
    pub label_prefix: String,
}

fn default_prefix() -> String {
    "castellan-mint".into()
}

/// Keys made inside the token, each opened as a signer that destroys it
/// when dropped; the token work runs off the async runtime.
#[castellan_signer::async_trait]
impl castellan_signer::KeyMaker for KeyStore {
    async fn make(
        &self,
        algorithm: KeyAlgorithm,
        stale_after: Duration,
    ) -> Result<Arc<dyn KeySigner>, castellan_signer::Error> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.generate(algorithm, stale_after))
            .await
            .map_err(|e| castellan_signer::Error::unavailable(format!("generating the key: {e}")))?
            .map_err(castellan_signer::Error::from)
    }

    fn describe(&self) -> String {
        format!(
            "in the PKCS#11 token {} ({})",
            self.token_label
                .as_deref()
                .or(self.token_serial.as_deref())
                .unwrap_or("-"),
            self.module.display()
        )
    }
}

// === impl KeyStore ===

impl KeyStore {
    /// Relative paths are relative to `base`, the configuration's folder.
    pub fn resolve_paths(&mut self, base: &std::path::Path) {
        if self.module.components().count() > 1 {
            castellan_signer::resolve(base, &mut self.module);
        }
        castellan_signer::resolve_opt(base, &mut self.pin_file);
    }

    /// The rules the section must meet.
    ///
    /// # Errors
    /// [`crate::ConfigError`] naming the keys to change.
    pub fn validate(&self) -> Result<(), crate::ConfigError> {
        crate::session_rules(
            (&self.pin_file, &self.pin_env),
            (&self.token_label, &self.token_serial),
            self.pool_size,
        )?;
        if self.label_prefix.is_empty() || self.label_prefix.len() > 64 {
            return Err(crate::ConfigError::LabelPrefix);
        }
        Ok(())
    }

    /// The signer configuration for the key labelled `label`.
    fn config(&self, label: &str) -> Config {
        Config {
            module: self.module.clone(),
            token_label: self.token_label.clone(),
            token_serial: self.token_serial.clone(),
            key_label: Some(label.to_owned()),
            key_id: None,
            pin_file: self.pin_file.clone(),
            pin_env: self.pin_env.clone(),
            pool_size: self.pool_size,
            rsa_padding: RsaPadding::Pkcs1,
            // Unused for a minted key: its certifier certifies it.
            cert_file: Some("minted".into()),
            cert_label: None,
            chain_file: None,
            root_file: None,
            mint: None,
        }
    }

    /// Makes a new key pair on the token (destroying keys of ours older
    /// than `stale_after`, which no replica can still sign with) and opens
    /// it as a signer that destroys the key when dropped. Blocking: call it
    /// off the async runtime.
    ///
    /// # Errors
    /// [`Error::Config`] for what an operator must fix, else
    /// [`Error::Unavailable`].
    // Long: the token's key generation in the order PKCS#11 needs it: session, templates, generate, open.
    pub fn generate(
        &self,
        algorithm: KeyAlgorithm,
        stale_after: Duration,
    ) -> Result<Arc<dyn KeySigner>, Error> {
        let curve = match algorithm {
            KeyAlgorithm::EcdsaP256Sha256 => encoding::SECP256R1,
            KeyAlgorithm::EcdsaP384Sha384 => encoding::SECP384R1,
            KeyAlgorithm::RsaPkcs1Sha256 | KeyAlgorithm::RsaPssSha256 => {
                return Err(Error::Config("minted keys are ECDSA P-256 or P-384".into()));
            }
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let mut random = [0u8; 8];
        aws_lc_rs::rand::fill(&mut random)
            .map_err(|_| Error::Failed("the system RNG failed".into()))?;
        let hex: String = random.iter().map(|b| format!("{b:02x}")).collect();
        let label = format!("{}-{now}-{hex}", self.label_prefix);
        let config = self.config(&label);
        {
            let pin = token::read_pin(&config)?;
            let calls = module::calls(&config.module)?;
            let _calls = calls.read().unwrap_or_else(PoisonError::into_inner);
            let (ctx, slot, _) = token::connect(&config)?;
            let session = pool::open_rw(&ctx, slot, &pin)?;
            self.destroy_stale(&session, now, stale_after);
            let params = curve
                .to_der()
                .map_err(|e| Error::Failed(format!("EC parameters: {e}")))?;
            let common = [
                Attribute::Token(true),
                Attribute::Label(label.as_bytes().to_vec()),
                Attribute::Id(random.to_vec()),
            ];
            // A signing key and nothing else: an intermediate's key that
            // could also decrypt, unwrap or derive would be one more way to
            // use it outside castellan's profile.
            let mut public = common.to_vec();
            public.extend([
                Attribute::EcParams(params),
                Attribute::Verify(true),
                Attribute::Encrypt(false),
                Attribute::Wrap(false),
                Attribute::Derive(false),
            ]);
            let mut private = common.to_vec();
            private.extend([
                Attribute::Private(true),
                Attribute::Sensitive(true),
                Attribute::Extractable(false),
                Attribute::Sign(true),
                Attribute::Decrypt(false),
                Attribute::Unwrap(false),
                Attribute::Derive(false),
            ]);
            session
                .generate_key_pair(&Mechanism::EccKeyPairGen, &public, &private)
                .map_err(|e| Error::Unavailable(format!("C_GenerateKeyPair: {e}")))?;
        }
        let opened = Pkcs11Key::open(&config).and_then(|key| {
            let key = Arc::new(key);
            Ok(Pkcs11Signer::new(Arc::clone(&key), Workers::start(key)?))
        });
        match opened {
            Ok(signer) => Ok(Arc::new(Minted {
                signer,
                store: self.clone(),
                label,
            })),
            Err(e) => {
                destroy(&config, &label);
                Err(e)
            }
        }
    }

    /// Destroys keys with our prefix made more than `stale_after` before
    /// `now` (left behind by a replica that died before destroying them).
    fn destroy_stale(&self, session: &cryptoki::session::Session, now: u64, stale_after: Duration) {
        let Ok(found) = session.find_objects(&[Attribute::Token(true)]) else {
            return;
        };
        let prefix = format!("{}-", self.label_prefix);
        for handle in found {
            let Ok(attrs) =
                session.get_attributes(handle, &[cryptoki::object::AttributeType::Label])
            else {
                continue;
            };
            let Some(Attribute::Label(label)) = attrs.first() else {
                continue;
            };
            let made = String::from_utf8_lossy(label)
                .strip_prefix(&prefix)
                .and_then(|rest| rest.split('-').next()?.parse::<u64>().ok());
            if made.is_some_and(|t| now.saturating_sub(t) > stale_after.as_secs())
                && session.destroy_object(handle).is_ok()
            {
                tracing::info!(label = %String::from_utf8_lossy(label), "stale minted key destroyed");
            }
        }
    }
}

/// A key minted on the token: signs as any PKCS#11 key, and is destroyed
/// when castellan no longer uses it (the last request that holds it is done).
#[derive(Debug)]
struct Minted {
    signer: Pkcs11Signer,
    store: KeyStore,
    label: String,
}

impl Drop for Minted {
    fn drop(&mut self) {
        let (config, label) = (self.store.config(&self.label), self.label.clone());
        // PKCS#11 calls block: never on the async worker dropping us.
        let _ = std::thread::Builder::new()
            .name("pkcs11-destroy".into())
            .spawn(move || destroy(&config, &label));
    }
}

#[castellan_signer::async_trait]
impl KeySigner for Minted {
    fn algorithm(&self) -> KeyAlgorithm {
        self.signer.algorithm()
    }

    async fn sign(
        &self,
        tbs: &[u8],
    ) -> Result<castellan_signer::Signature, castellan_signer::Error> {
        self.signer.sign(tbs).await
    }

    fn healthy(&self) -> bool {
        self.signer.healthy()
    }

    async fn probe(&self) {
        self.signer.probe().await;
    }

    async fn reresolve(&self) {
        self.signer.reresolve().await;
    }

    fn public_key_der(&self) -> Option<Vec<u8>> {
        self.signer.public_key_der()
    }

    fn queue(&self) -> Option<Arc<castellan_signer::queue::QueueStats>> {
        self.signer.queue()
    }
}

/// Destroys both halves of the key labelled `label`.
fn destroy(config: &Config, label: &str) {
    let outcome = (|| -> Result<usize, Error> {
        let pin = token::read_pin(config)?;
        let calls = module::calls(&config.module)?;
        let _calls = calls.read().unwrap_or_else(PoisonError::into_inner);
        let (ctx, slot, _) = token::connect(config)?;
        let session = pool::open_rw(&ctx, slot, &pin)?;
        let mut n = 0;
        for class in [ObjectClass::PRIVATE_KEY, ObjectClass::PUBLIC_KEY] {
            let found = session
                .find_objects(&[
                    Attribute::Class(class),
                    Attribute::Label(label.as_bytes().to_vec()),
                ])
                .map_err(|e| Error::Unavailable(format!("C_FindObjects: {e}")))?;
            for handle in found {
                session
                    .destroy_object(handle)
                    .map_err(|e| Error::Unavailable(format!("C_DestroyObject: {e}")))?;
                n += 1;
            }
        }
        Ok(n)
    })();
    match outcome {
        Ok(n) => tracing::debug!(label, objects = n, "minted key destroyed"),
        Err(e) => {
            tracing::warn!(label, error = %e, "minted key not destroyed; a later mint removes it")
        }
    }
}
