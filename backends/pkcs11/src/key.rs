//! The HSM-held signing key: opened once, used from many threads through the
//! session pool, and recovered in place when the token misbehaves.

use std::{
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use aws_lc_rs::digest;
use cryptoki::{
    context::Pkcs11,
    error::{Error as CkError, RvError},
    mechanism::{
        Mechanism, MechanismType,
        rsa::{PkcsMgfType, PkcsPssParams},
    },
    object::ObjectHandle,
    slot::Slot,
    types::AuthPin,
};

use crate::{Config, Error, RsaPadding, encoding, pool, token};

/// Recovery is attempted at most this often.
const RECOVERY_INTERVAL: Duration = Duration::from_secs(1);

/// The signature the key makes, which fixes the certificate's `signatureAlgorithm`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyAlgorithm {
    /// `CKM_ECDSA` over a SHA-256 digest made here (SoftHSM has no
    /// `CKM_ECDSA_SHA256`), returned as DER.
    EcdsaP256Sha256,
    EcdsaP384Sha384,
    /// PKCS#1 v1.5 with SHA-256.
    RsaPkcs1Sha256,
    /// RSASSA-PSS, SHA-256, MGF1-SHA-256, salt length 32.
    RsaPssSha256,
}

/// A private key in an HSM.
pub struct Pkcs11Key {
    config: Config,
    pin: AuthPin,
    algorithm: KeyAlgorithm,
    /// `CKM_SHA256_RSA_PKCS` is missing on some tokens; then `CKM_RSA_PKCS`
    /// over a DigestInfo made here.
    rsa_combined: bool,
    spki: Option<Vec<u8>>,
    live: RwLock<Arc<Live>>,
    pool: pool::Pool,
    healthy: AtomicBool,
    last_recovery: Mutex<Option<Instant>>,
}

/// One connection to the token; replaced wholesale on recovery.
struct Live {
    ctx: Pkcs11,
    slot: Slot,
    key: Mutex<ObjectHandle>,
    generation: u64,
}

/// How a failed call should be handled.
enum Failure {
    NotLoggedIn,
    SessionGone,
    Device,
    Other,
}

// === impl Pkcs11Key ===

impl Pkcs11Key {
    /// Opens the token, logs in, finds the key and keeps one session open.
    ///
    /// # Errors
    /// A message naming what to fix: module, token, PIN, key, key type.
    pub fn open(config: &Config) -> Result<Self, Error> {
        let pin = read_pin(config)?;
        let (ctx, slot) = token::connect(config)?;
        let session = pool::open(&ctx, slot, &pin)?;
        let key = token::find_key(&session, config)?;
        let kind = token::describe_key(&session, key, config)?;
        // Asked one by one: listing them all makes cryptoki log every
        // vendor mechanism it does not know as an error.
        let offers = |m: MechanismType| ctx.get_mechanism_info(slot, m).is_ok();
        let (algorithm, spki) = match kind {
            token::KeyKind::Ec { curve, spki } if curve == encoding::SECP256R1 => {
                (KeyAlgorithm::EcdsaP256Sha256, spki)
            }
            token::KeyKind::Ec { curve, spki } if curve == encoding::SECP384R1 => {
                (KeyAlgorithm::EcdsaP384Sha384, spki)
            }
            token::KeyKind::Ec { curve, .. } => {
                return Err(Error::Config(format!(
                    "EC curve {curve} is not supported; use P-256 or P-384"
                )));
            }
            token::KeyKind::Rsa { spki } => match config.rsa_padding {
                RsaPadding::Pkcs1 => (KeyAlgorithm::RsaPkcs1Sha256, Some(spki)),
                RsaPadding::Pss => (KeyAlgorithm::RsaPssSha256, Some(spki)),
            },
        };
        let needed = match algorithm {
            KeyAlgorithm::EcdsaP256Sha256 | KeyAlgorithm::EcdsaP384Sha384 => MechanismType::ECDSA,
            KeyAlgorithm::RsaPkcs1Sha256 => MechanismType::RSA_PKCS,
            KeyAlgorithm::RsaPssSha256 => MechanismType::SHA256_RSA_PKCS_PSS,
        };
        if !offers(needed) {
            return Err(Error::Config(format!(
                "the token does not offer {needed} for this key"
            )));
        }
        let rsa_combined = offers(MechanismType::SHA256_RSA_PKCS);
        let pool = pool::Pool::new(config.pool_size);
        pool.checkin(0, session);
        Ok(Self {
            config: config.clone(),
            pin,
            algorithm,
            rsa_combined,
            spki,
            live: RwLock::new(Arc::new(Live {
                ctx,
                slot,
                key: Mutex::new(key),
                generation: 0,
            })),
            pool,
            healthy: AtomicBool::new(true),
            last_recovery: Mutex::new(None),
        })
    }

    pub fn algorithm(&self) -> KeyAlgorithm {
        self.algorithm
    }

    /// How many signatures the session pool serves at once.
    pub fn pool_size(&self) -> usize {
        self.config.pool_size.max(1)
    }

    /// The key's SubjectPublicKeyInfo, when the token publishes it (an EC key
    /// without a public object does not; its certificate then says, and
    /// castellan proves the pair with a probe signature).
    pub fn public_key_der(&self) -> Option<&[u8]> {
        self.spki.as_deref()
    }

    /// False from a device error until [`Pkcs11Key::recover`] succeeds.
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::SeqCst)
    }

    /// The DER of a certificate object on the token.
    ///
    /// # Errors
    /// When there is not exactly one such object.
    pub fn certificate(&self, label: &str) -> Result<Vec<u8>, Error> {
        let live = self.current();
        let session = self
            .pool
            .checkout(live.generation, &live.ctx, live.slot, &self.pin)?;
        let cert = token::certificate(&session, label);
        self.pool.checkin(live.generation, session);
        cert
    }

    /// Signs a DER TBSCertificate. Blocks: call it off the async runtime.
    ///
    /// A lost login is restored and a closed session replaced, each once; a
    /// device error marks the key unhealthy and answers
    /// [`Error::Unavailable`] until [`Pkcs11Key::recover`] brings it back.
    ///
    /// # Errors
    /// [`Error::Unavailable`] while the token is unusable, [`Error::Failed`]
    /// when it refuses the operation.
    pub fn sign(&self, tbs: &[u8]) -> Result<Vec<u8>, Error> {
        if !self.healthy() {
            self.recover()?;
        }
        let (mechanism, data) = self.prepare(tbs);
        let mut last = String::new();
        for _attempt in 0..2 {
            let live = self.current();
            let session = match self
                .pool
                .checkout(live.generation, &live.ctx, live.slot, &self.pin)
            {
                Ok(s) => s,
                Err(e @ Error::Config(_)) => return Err(e),
                Err(e) => {
                    self.mark_unhealthy(&e.to_string());
                    return Err(e);
                }
            };
            let key = *live
                .key
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match session.sign(&mechanism, key, &data) {
                Ok(raw) => {
                    self.pool.checkin(live.generation, session);
                    return self.finish(raw);
                }
                Err(e) => {
                    last = e.to_string();
                    match classify(&e) {
                        Failure::NotLoggedIn => {
                            tracing::warn!("HSM session lost its login; logging in again");
                            let relogged = token::login(&session, &self.pin);
                            self.pool.checkin(live.generation, session);
                            relogged?;
                            self.refind_key(&live)?;
                        }
                        Failure::SessionGone => {
                            tracing::warn!(error = %e, "HSM session closed; replacing it");
                            drop(session);
                            self.pool.discard();
                            self.refind_key(&live)?;
                        }
                        Failure::Device => {
                            drop(session);
                            self.pool.discard();
                            self.mark_unhealthy(&last);
                            return Err(Error::Unavailable(last));
                        }
                        Failure::Other => {
                            self.pool.checkin(live.generation, session);
                            return Err(Error::Failed(last));
                        }
                    }
                }
            }
        }
        Err(Error::Failed(format!("after one retry: {last}")))
    }

    /// Re-initialises the module, finds the token and the key again and
    /// swaps the connection in, at most once per second. Success makes the
    /// key healthy.
    ///
    /// # Errors
    /// [`Error::Unavailable`] while the token is still gone.
    pub fn recover(&self) -> Result<(), Error> {
        {
            let mut last = self
                .last_recovery
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if last.is_some_and(|t| t.elapsed() < RECOVERY_INTERVAL) {
                return Err(Error::Unavailable("the HSM is recovering".into()));
            }
            *last = Some(Instant::now());
        }
        let old = self.current();
        let generation = old.generation + 1;
        // Only a fresh C_Initialize makes the module look for tokens again
        // (SoftHSM does not rescan), and the old sessions are dead anyway.
        let _ = old.ctx.clone().finalize();
        self.pool.clear();
        let (ctx, slot) = token::connect(&self.config)?;
        let session = pool::open(&ctx, slot, &self.pin)?;
        let key = token::find_key(&session, &self.config)?;
        if let (
            Some(expected),
            token::KeyKind::Ec {
                spki: Some(now), ..
            }
            | token::KeyKind::Rsa { spki: now },
        ) = (
            &self.spki,
            token::describe_key(&session, key, &self.config)?,
        ) && &now != expected
        {
            return Err(Error::Unavailable(
                "the key on the token is not the key castellan started with".into(),
            ));
        }
        self.pool.clear();
        self.pool.checkin(generation, session);
        *self
            .live
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(Live {
            ctx,
            slot,
            key: Mutex::new(key),
            generation,
        });
        self.healthy.store(true, Ordering::SeqCst);
        tracing::info!("HSM connection recovered");
        Ok(())
    }

    fn current(&self) -> Arc<Live> {
        Arc::clone(
            &self
                .live
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    fn mark_unhealthy(&self, why: &str) {
        if self.healthy.swap(false, Ordering::SeqCst) {
            tracing::error!(
                error = why,
                "HSM unusable; signing answers UNAVAILABLE until it recovers"
            );
        }
        self.pool.clear();
    }

    /// After a session vanished or the login was lost, object handles are
    /// stale too (SoftHSM invalidates them on logout). If the key cannot be
    /// found again the token itself is in trouble: recover in the background.
    fn refind_key(&self, live: &Live) -> Result<(), Error> {
        let found = self
            .pool
            .checkout(live.generation, &live.ctx, live.slot, &self.pin)
            .and_then(|session| {
                let found = token::login(&session, &self.pin)
                    .and_then(|()| token::find_key(&session, &self.config));
                self.pool.checkin(live.generation, session);
                found
            });
        match found {
            Ok(key) => {
                *live
                    .key
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = key;
                Ok(())
            }
            Err(e) => {
                let why = format!("the key is gone from the token: {e}");
                self.mark_unhealthy(&why);
                Err(Error::Unavailable(why))
            }
        }
    }

    fn prepare(&self, tbs: &[u8]) -> (Mechanism<'static>, Vec<u8>) {
        match self.algorithm {
            KeyAlgorithm::EcdsaP256Sha256 => (
                Mechanism::Ecdsa,
                digest::digest(&digest::SHA256, tbs).as_ref().to_vec(),
            ),
            KeyAlgorithm::EcdsaP384Sha384 => (
                Mechanism::Ecdsa,
                digest::digest(&digest::SHA384, tbs).as_ref().to_vec(),
            ),
            KeyAlgorithm::RsaPkcs1Sha256 if self.rsa_combined => {
                (Mechanism::Sha256RsaPkcs, tbs.to_vec())
            }
            KeyAlgorithm::RsaPkcs1Sha256 => {
                let mut info = encoding::SHA256_DIGEST_INFO.to_vec();
                info.extend_from_slice(digest::digest(&digest::SHA256, tbs).as_ref());
                (Mechanism::RsaPkcs, info)
            }
            KeyAlgorithm::RsaPssSha256 => (
                Mechanism::Sha256RsaPkcsPss(PkcsPssParams {
                    hash_alg: MechanismType::SHA256,
                    mgf: PkcsMgfType::MGF1_SHA256,
                    s_len: 32.into(),
                }),
                tbs.to_vec(),
            ),
        }
    }

    fn finish(&self, raw: Vec<u8>) -> Result<Vec<u8>, Error> {
        match self.algorithm {
            KeyAlgorithm::EcdsaP256Sha256 | KeyAlgorithm::EcdsaP384Sha384 => {
                encoding::ecdsa_der(&raw)
                    .map_err(|e| Error::Failed(format!("ECDSA signature: {e}")))
            }
            KeyAlgorithm::RsaPkcs1Sha256 | KeyAlgorithm::RsaPssSha256 => Ok(raw),
        }
    }
}

impl std::fmt::Debug for Pkcs11Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkcs11Key")
            .field("module", &self.config.module)
            .field("token_label", &self.config.token_label)
            .field("key_label", &self.config.key_label)
            .field("algorithm", &self.algorithm)
            .field("pin", &"[redacted]")
            .field("healthy", &self.healthy())
            .finish()
    }
}

fn classify(e: &CkError) -> Failure {
    match e {
        CkError::Pkcs11(rv, _) => match rv {
            RvError::UserNotLoggedIn => Failure::NotLoggedIn,
            RvError::SessionHandleInvalid
            | RvError::SessionClosed
            | RvError::KeyHandleInvalid
            | RvError::ObjectHandleInvalid => Failure::SessionGone,
            RvError::DeviceError
            | RvError::DeviceRemoved
            | RvError::DeviceMemory
            | RvError::TokenNotPresent
            | RvError::TokenNotRecognized
            | RvError::CryptokiNotInitialized
            | RvError::GeneralError => Failure::Device,
            _ => Failure::Other,
        },
        _ => Failure::Other,
    }
}

fn read_pin(config: &Config) -> Result<AuthPin, Error> {
    let pin = match (&config.pin_file, &config.pin_env) {
        (Some(path), None) => {
            let text = zeroize::Zeroizing::new(
                std::fs::read_to_string(path)
                    .map_err(|e| Error::Config(format!("pin_file {}: {e}", path.display())))?,
            );
            text.trim_end_matches(['\n', '\r']).to_owned()
        }
        (None, Some(var)) => {
            std::env::var(var).map_err(|_| Error::Config(format!("pin_env: ${var} is not set")))?
        }
        _ => {
            return Err(Error::Config(
                "set exactly one of pin_file and pin_env".into(),
            ));
        }
    };
    Ok(AuthPin::new(pin.into()))
}
