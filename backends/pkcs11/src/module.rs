//! A PKCS#11 module is process-wide state: `C_Initialize` and `C_Finalize`
//! act on every session any part of the process holds on it. So every key
//! on one module (several issuers, the signer and the mint key store) shares
//! one context, and re-initialising it is one shared step: the first key
//! that finds the module broken finalises and initialises it again; a key
//! that finds it already re-initialised since it connected only reconnects
//! — finalising again would close the sessions the others just opened, and
//! two keys would take turns breaking each other. And no call may be in
//! flight on the module while it is finalised (the standard leaves that
//! undefined; SoftHSM crashes): every call on the module holds its shared
//! lock ([`calls`]), re-initialising holds it exclusively.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, LazyLock, Mutex, PoisonError, RwLock},
};

use cryptoki::{
    context::{CInitializeArgs, CInitializeFlags, Pkcs11},
    error::{Error as CkError, RvError},
    session::Session,
};

use crate::Error;

/// A module's context and how many times the process re-initialised it.
struct Loaded {
    ctx: Pkcs11,
    epoch: u64,
}

/// A loaded module: its context, and the lock its calls share.
struct Module {
    loaded: Mutex<Loaded>,
    calls: Arc<RwLock<()>>,
}

/// Every module the process loaded, by path.
static MODULES: LazyLock<Mutex<HashMap<PathBuf, Arc<Module>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// The lock every call on the module at `path` holds shared, and
/// re-initialising it holds exclusively — across every key on it.
pub(crate) fn calls(path: &Path) -> Result<Arc<RwLock<()>>, Error> {
    Ok(Arc::clone(&entry(path)?.calls))
}

/// The process's context for the module at `path`, loaded and initialised
/// on first use (tolerating a library something else already initialised),
/// and its epoch.
pub(crate) fn context(path: &Path) -> Result<(Pkcs11, u64), Error> {
    let entry = entry(path)?;
    let mut loaded = entry.loaded.lock().unwrap_or_else(PoisonError::into_inner);
    // Something else in the process may have finalised the module (another
    // library using it, a test rescanning tokens): initialise it again, a
    // new epoch like any re-initialisation.
    if initialize(&loaded.ctx)? {
        loaded.epoch = loaded.epoch.saturating_add(1);
    }
    Ok((loaded.ctx.clone(), loaded.epoch))
}

/// Re-initialises the module unless that happened since `seen` (the epoch
/// the caller connected at); either way the current context and epoch.
/// The caller holds [`calls`] exclusively.
pub(crate) fn reinitialize(path: &Path, seen: u64) -> Result<(Pkcs11, u64), Error> {
    let entry = entry(path)?;
    let mut loaded = entry.loaded.lock().unwrap_or_else(PoisonError::into_inner);
    if loaded.epoch == seen {
        // Only a fresh C_Initialize makes a module look for tokens again
        // (SoftHSM does not rescan); the old sessions are dead anyway.
        let _ = loaded.ctx.clone().finalize();
        loaded.epoch = loaded.epoch.saturating_add(1);
        initialize(&loaded.ctx)?;
        tracing::info!(module = %path.display(), epoch = loaded.epoch, "PKCS#11 module initialised again");
    } else if initialize(&loaded.ctx)? {
        // Finalised by something else since the other key's turn.
        loaded.epoch = loaded.epoch.saturating_add(1);
    }
    Ok((loaded.ctx.clone(), loaded.epoch))
}

/// Closes `session`, opened at `epoch`, if the module was not initialised
/// again since; otherwise its handle may already name another key's new
/// session, so it is forgotten, not closed (a few bytes; the module closed
/// it when it was finalised).
pub(crate) fn close(path: &Path, epoch: u64, session: Session) {
    match entry(path) {
        Ok(entry) => {
            let loaded = entry.loaded.lock().unwrap_or_else(PoisonError::into_inner);
            if loaded.epoch == epoch {
                drop(session);
            } else {
                forget(session);
            }
        }
        Err(_) => forget(session),
    }
}

/// Lets go of a session whose module was initialised again since it was
/// opened, without C_CloseSession (see [`close`]).
pub(crate) fn forget(session: Session) {
    std::mem::forget(session);
}

fn entry(path: &Path) -> Result<Arc<Module>, Error> {
    // One library under two names (a symlink) is still one module.
    let key = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    let mut modules = MODULES.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(entry) = modules.get(&key) {
        return Ok(Arc::clone(entry));
    }
    let ctx = Pkcs11::new(path)
        .map_err(|e| Error::Config(format!("cannot load module {}: {e}", path.display())))?;
    initialize(&ctx)?;
    let entry = Arc::new(Module {
        loaded: Mutex::new(Loaded { ctx, epoch: 0 }),
        calls: Arc::new(RwLock::new(())),
    });
    modules.insert(key, Arc::clone(&entry));
    Ok(entry)
}

/// `C_Initialize`; whether it initialised the module (false: it already was).
fn initialize(ctx: &Pkcs11) -> Result<bool, Error> {
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) => Ok(true),
        Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => Ok(false),
        Err(e) => Err(Error::Unavailable(format!("C_Initialize: {e}"))),
    }
}
