//! The HSM-held signing key: opened once, used from many threads through the
//! session pool, and recovered in place when the token misbehaves.

mod recovery;

use std::{
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Instant,
};

use cryptoki::{
    context::Pkcs11,
    error::{Error as CkError, RvError},
    mechanism::MechanismType,
    object::ObjectHandle,
    slot::Slot,
    types::AuthPin,
};

use crate::{
    Config, Error, KeyAlgorithm, RsaPadding, encoding,
    mechanism::{Signing, required_mechanism},
    module, pool, token,
};

/// A private key in an HSM.
pub struct Pkcs11Key {
    config: Config,
    pin: AuthPin,
    signing: Signing,
    spki: Option<Vec<u8>>,
    live: RwLock<Arc<Live>>,
    pool: pool::Pool,
    healthy: AtomicBool,
    last_recovery: Mutex<Option<Instant>>,
    /// Held shared by every call into the module and exclusively by
    /// recovery: `C_Finalize` must not run while another thread is inside
    /// the library (PKCS#11 §5.4). The module's, so shared with every key
    /// on it — another issuer's, the mint key store's (`module.rs`).
    calls: Arc<RwLock<()>>,
    /// The module's epoch at this key's last recovery attempt (`module.rs`).
    attempted: AtomicU64,
    /// How many times the key has been looked up; each lookup may have
    /// found another object, so castellan proves each one.
    resolutions: AtomicU64,
}

/// One connection to the token; replaced wholesale on recovery.
struct Live {
    ctx: Pkcs11,
    slot: Slot,
    key: Mutex<Resolved>,
    generation: u64,
    /// The module's epoch this connection was made at (`module.rs`).
    epoch: u64,
}

/// A key handle and which lookup found it.
#[derive(Clone, Copy)]
struct Resolved {
    handle: ObjectHandle,
    resolution: u64,
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
        let pin = token::read_pin(config)?;
        let calls = module::calls(&config.module)?;
        let _shared = calls
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (ctx, slot, epoch) = token::connect(config)?;
        let session = pool::open(&ctx, slot, &pin)?;
        let key = token::find_key(&session, config)?;
        let kind = token::describe_key(&session, key, config)?;
        // Asked one by one: listing them all makes cryptoki log every
        // vendor mechanism it does not know as an error.
        let offers = |m: MechanismType| ctx.get_mechanism_info(slot, m).is_ok();
        let (algorithm, spki) = algorithm_of(kind, config.rsa_padding)?;
        let needed = required_mechanism(algorithm);
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
            signing: Signing {
                algorithm,
                rsa_combined,
            },
            spki,
            live: RwLock::new(Arc::new(Live {
                ctx,
                slot,
                key: Mutex::new(Resolved {
                    handle: key,
                    resolution: 1,
                }),
                generation: 0,
                epoch,
            })),
            pool,
            healthy: AtomicBool::new(true),
            last_recovery: Mutex::new(None),
            calls: Arc::clone(&calls),
            attempted: AtomicU64::new(epoch),
            resolutions: AtomicU64::new(1),
        })
    }

    pub fn algorithm(&self) -> KeyAlgorithm {
        self.signing.algorithm
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
        let _calls = self.shared_calls();
        let live = self.current();
        let session = self
            .pool
            .checkout(live.generation, &live.ctx, live.slot, &self.pin)?;
        let cert = token::certificate(&session, label);
        self.pool.checkin(live.generation, session);
        cert
    }

    /// Signs a DER TBSCertificate; returns the signature and which lookup
    /// of the key made it. Blocks: call it off the async runtime.
    ///
    /// A lost login is restored and a closed session replaced, each once; a
    /// device error marks the key unhealthy and answers
    /// [`Error::Unavailable`] until [`Pkcs11Key::recover`] brings it back.
    ///
    /// # Errors
    /// [`Error::Unavailable`] while the token is unusable, [`Error::Failed`]
    /// when it refuses the operation.
    // Long: one signature on a pooled session, each way the token can fail handled where the session is in hand.
    pub fn sign(&self, tbs: &[u8]) -> Result<(Vec<u8>, u64), Error> {
        if !self.healthy() {
            self.recover()?;
        }
        let _calls = self.shared_calls();
        let (mechanism, data) = self.signing.prepare(tbs);
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
            match session.sign(&mechanism, key.handle, &data) {
                Ok(raw) => {
                    self.pool.checkin(live.generation, session);
                    return Ok((self.signing.finish(raw)?, key.resolution));
                }
                Err(e) => {
                    last = format!("C_Sign with the configured key: {e}");
                    match classify(&e) {
                        Failure::NotLoggedIn => {
                            tracing::warn!("HSM session lost its login; logging in again");
                            let relogged = token::login(&session, &self.pin);
                            self.pool.checkin(live.generation, session);
                            relogged?;
                            self.refind_key(&live)?;
                        }
                        Failure::SessionGone => {
                            tracing::warn!(
                                error = %e,
                                "HSM session or key handle gone; replacing the session and \
                                 looking the key up again (castellan proves it is the same key)"
                            );
                            module::close(&self.config.module, live.epoch, session);
                            self.pool.discard();
                            self.refind_key(&live)?;
                        }
                        Failure::Device => {
                            module::close(&self.config.module, live.epoch, session);
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

    /// A cheap sign of life from the token without signing: its info.
    ///
    /// # Errors
    /// [`Error::Unavailable`] when the module cannot describe the token.
    pub fn check(&self) -> Result<(), Error> {
        let _calls = self.shared_calls();
        let live = self.current();
        match live.ctx.get_token_info(live.slot) {
            Ok(_) => Ok(()),
            Err(e) => {
                let why = format!("C_GetTokenInfo: {e}");
                self.mark_unhealthy(&why);
                Err(Error::Unavailable(why))
            }
        }
    }

    fn shared_calls(&self) -> std::sync::RwLockReadGuard<'_, ()> {
        self.calls
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn next_resolution(&self) -> u64 {
        self.resolutions.fetch_add(1, Ordering::SeqCst) + 1
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
}

impl std::fmt::Debug for Pkcs11Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkcs11Key")
            .field("module", &self.config.module)
            .field("token_label", &self.config.token_label)
            .field("key_label", &self.config.key_label)
            .field("algorithm", &self.signing.algorithm)
            .field("pin", &"[redacted]")
            .field("healthy", &self.healthy())
            .finish()
    }
}

/// The signature algorithm a key on the token makes, and its public key.
fn algorithm_of(
    kind: token::KeyKind,
    padding: RsaPadding,
) -> Result<(KeyAlgorithm, Option<Vec<u8>>), Error> {
    Ok(match kind {
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
        token::KeyKind::Rsa { spki } => match padding {
            RsaPadding::Pkcs1 => (KeyAlgorithm::RsaPkcs1Sha256, Some(spki)),
            RsaPadding::Pss => (KeyAlgorithm::RsaPssSha256, Some(spki)),
        },
    })
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
