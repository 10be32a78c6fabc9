//! The record in a JSON file: changed only under an exclusive lock (a
//! `.lock` file beside it, since the record itself is replaced by rename),
//! written to a temporary file of its own, synced, renamed over the record
//! and the folder synced — so any number of `castellan revoke` calls and a
//! serving castellan lose nothing, and a crash leaves one whole record.

use std::{
    fs::{File, OpenOptions},
    io::Write,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use aws_lc_rs::rand::SecureRandom;

use super::super::{Error, TrustState};

/// A record file.
#[derive(Clone, Debug)]
pub(super) struct FileStore {
    path: PathBuf,
}

/// Held while the record is read, merged and written; released on drop.
struct Locked {
    _file: File,
}

impl FileStore {
    pub(super) fn new(path: PathBuf) -> Self {
        Self { path }
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    pub(super) fn describe(&self) -> String {
        format!("trust.state_file {}", self.path.display())
    }

    /// The record; [`Error::Missing`] when there is none.
    pub(super) fn load(&self) -> Result<TrustState, Error> {
        self.read()?.ok_or_else(|| self.missing())
    }

    /// Reads the record, merges `delta` in, forgets what `now` makes
    /// useless, and writes it if that changed anything — all under the lock.
    pub(super) fn merge(&self, delta: &TrustState, now: u64) -> Result<TrustState, Error> {
        let _lock = self.lock()?;
        let stored = self.read()?.ok_or_else(|| self.missing())?;
        let mut state = stored.clone();
        state.merge(delta);
        state.prune(now);
        if state != stored {
            self.write(&state)?;
        }
        Ok(state)
    }

    /// As [`FileStore::merge`], but a record that has gone missing is
    /// written back from `full` (a serving replica's whole copy). Returns
    /// the record and whether it had to be restored.
    pub(super) fn restore(&self, full: &TrustState, now: u64) -> Result<(TrustState, bool), Error> {
        let _lock = self.lock()?;
        let (mut state, restored) = match self.read()? {
            Some(stored) => (stored, false),
            None => (TrustState::default(), true),
        };
        let before = state.clone();
        state.merge(full);
        state.prune(now);
        if restored || state != before {
            self.write(&state)?;
        }
        Ok((state, restored))
    }

    /// Creates an empty record unless one exists. Returns whether it did.
    pub(super) fn init(&self, now: u64) -> Result<bool, Error> {
        let _lock = self.lock()?;
        if self.read()?.is_some() {
            return Ok(false);
        }
        let state = TrustState {
            created: Some(now),
            ..TrustState::default()
        };
        self.write(&state)?;
        Ok(true)
    }

    /// Proves the record can be changed: the lock taken, a temporary file
    /// written, synced and removed beside it. Nothing of the record changes.
    pub(super) fn check_writable(&self) -> Result<(), Error> {
        let _lock = self.lock()?;
        let (tmp, mut file) = self.temporary()?;
        let written = file
            .write_all(b"{}")
            .and_then(|()| file.sync_all())
            .map_err(|source| self.io(&tmp, source));
        let removed = std::fs::remove_file(&tmp).map_err(|source| self.io(&tmp, source));
        written.and(removed)
    }

    fn read(&self) -> Result<Option<TrustState>, Error> {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| Error::Corrupt {
                    what: self.describe(),
                    problem: e.to_string(),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(self.io(&self.path, source)),
        }
    }

    fn write(&self, state: &TrustState) -> Result<(), Error> {
        let json = serde_json::to_vec_pretty(state).map_err(|e| Error::Corrupt {
            what: self.describe(),
            problem: e.to_string(),
        })?;
        let (tmp, mut file) = self.temporary()?;
        let written = file
            .write_all(&json)
            .and_then(|()| file.sync_all())
            .and_then(|()| std::fs::rename(&tmp, &self.path));
        if let Err(source) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(self.io(&tmp, source));
        }
        // The rename itself is durable once the folder is.
        File::open(self.folder())
            .and_then(|dir| dir.sync_all())
            .map_err(|source| self.io(self.folder(), source))
    }

    /// A new file beside the record with a name no other writer uses, 0600
    /// like every file castellan writes.
    fn temporary(&self) -> Result<(PathBuf, File), Error> {
        let mut random = [0u8; 8];
        aws_lc_rs::rand::SystemRandom::new()
            .fill(&mut random)
            .map_err(|_| self.io(&self.path, std::io::Error::other("no randomness")))?;
        let mut name = self
            .path
            .file_name()
            .map(std::ffi::OsStr::to_os_string)
            .unwrap_or_default();
        name.push(format!(
            ".{}.{}.tmp",
            std::process::id(),
            crate::profile::hex(&random)
        ));
        let tmp = self.folder().join(name);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|source| self.io(&tmp, source))?;
        Ok((tmp, file))
    }

    /// The exclusive lock every writer takes, waiting for the others.
    fn lock(&self) -> Result<Locked, Error> {
        let mut name = self.path.as_os_str().to_owned();
        name.push(".lock");
        let path = PathBuf::from(name);
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|source| self.io(&path, source))?;
        file.lock().map_err(|source| self.io(&path, source))?;
        Ok(Locked { _file: file })
    }

    fn folder(&self) -> &Path {
        match self.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        }
    }

    fn missing(&self) -> Error {
        Error::Missing {
            what: self.describe(),
        }
    }

    fn io(&self, path: &Path, source: std::io::Error) -> Error {
        Error::Io {
            what: self.describe(),
            path: path.to_owned(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trust::{Reason, Revoked};

    fn revoked(serial: &str) -> TrustState {
        let mut s = TrustState::default();
        s.revoked.insert(
            serial.to_owned(),
            Revoked {
                reason: Reason::KeyCompromise,
                at: 10,
                until: 1_000,
                identity: None,
            },
        );
        s
    }

    #[test]
    fn nothing_is_read_or_merged_before_init_and_init_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::new(dir.path().join("state.json"));
        assert!(matches!(store.load(), Err(Error::Missing { .. })));
        assert!(matches!(
            store.merge(&revoked("0a"), 20),
            Err(Error::Missing { .. })
        ));
        assert!(!dir.path().join("state.json").exists());
        assert!(store.init(5).unwrap());
        assert_eq!(store.load().unwrap().created, Some(5));
        store.merge(&revoked("0a"), 20).unwrap();
        assert!(!store.init(6).unwrap(), "exists: left alone");
        assert!(store.load().unwrap().revoked.contains_key("0a"));
    }

    #[test]
    fn concurrent_writers_lose_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::new(dir.path().join("state.json"));
        store.init(1).unwrap();
        std::thread::scope(|s| {
            for i in 0..32 {
                let store = store.clone();
                s.spawn(move || store.merge(&revoked(&format!("{i:x}")), 20).unwrap());
            }
        });
        assert_eq!(store.load().unwrap().revoked.len(), 32);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "no temporary file left behind");
    }

    #[test]
    fn a_vanished_record_is_restored_from_a_full_copy() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::new(dir.path().join("state.json"));
        store.init(1).unwrap();
        let full = store.merge(&revoked("0a"), 20).unwrap();
        std::fs::remove_file(dir.path().join("state.json")).unwrap();
        let (state, restored) = store.restore(&full, 30).unwrap();
        assert!(restored);
        assert!(state.revoked.contains_key("0a"));
        assert_eq!(store.load().unwrap(), state);
    }

    #[test]
    fn a_corrupt_record_is_named_and_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        std::fs::write(&path, "{not json").unwrap();
        let store = FileStore::new(path.clone());
        let e = store.merge(&revoked("0a"), 20).unwrap_err();
        assert!(matches!(e, Error::Corrupt { .. }), "{e}");
        assert!(e.to_string().contains("state.json"), "{e}");
        assert!(!store.init(1).is_ok_and(|created| created));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{not json");
    }
}
