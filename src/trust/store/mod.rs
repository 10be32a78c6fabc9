//! Where the record lives — a file for one replica, or a ConfigMap every
//! replica shares — and the rules both keep: a record is created only by
//! `castellan trust init`, never silently; one that is missing, corrupt or
//! cannot be written is an error naming it and the fix; every change is a
//! merge under a lock (file) or a resourceVersion (ConfigMap).

mod configmap;
mod file;

use std::path::PathBuf;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::Api;

use super::{Error, TrustState};

/// A place to read and merge the record into.
#[derive(Clone, Debug)]
pub struct Store(Kind);

#[derive(Clone, Debug)]
enum Kind {
    File(file::FileStore),
    /// Boxed: an API client is far larger than a path.
    ConfigMap(Box<configmap::ConfigMapStore>),
}

impl Store {
    pub fn file(path: PathBuf) -> Self {
        Self(Kind::File(file::FileStore::new(path)))
    }

    pub fn configmap(api: Api<ConfigMap>, name: String) -> Self {
        Self(Kind::ConfigMap(Box::new(configmap::ConfigMapStore::new(
            api, name,
        ))))
    }

    /// What the store is, for messages.
    pub fn describe(&self) -> String {
        match &self.0 {
            Kind::File(f) => f.describe(),
            Kind::ConfigMap(c) => c.describe(),
        }
    }

    /// The record as stored.
    ///
    /// # Errors
    /// [`Error::Missing`] when there is none yet; when it cannot be read or
    /// is not a record castellan wrote.
    pub async fn load(&self) -> Result<TrustState, Error> {
        match &self.0 {
            Kind::File(f) => blocking(f.clone(), |f| f.load()).await,
            Kind::ConfigMap(c) => c.load().await,
        }
    }

    /// Merges `delta` into the stored record, forgetting what `now` makes
    /// useless, and returns the result.
    ///
    /// # Errors
    /// As [`Store::load`], or when it cannot be written.
    pub async fn merge(&self, delta: &TrustState, now: u64) -> Result<TrustState, Error> {
        match &self.0 {
            Kind::File(f) => {
                let delta = delta.clone();
                blocking(f.clone(), move |f| f.merge(&delta, now)).await
            }
            Kind::ConfigMap(c) => c.merge(delta, now).await,
        }
    }

    /// As [`Store::merge`] with a serving replica's whole copy, which is
    /// written back if the record has gone missing. Returns whether it was.
    ///
    /// # Errors
    /// As [`Store::merge`].
    pub async fn restore(&self, full: &TrustState, now: u64) -> Result<(TrustState, bool), Error> {
        match &self.0 {
            Kind::File(f) => {
                let full = full.clone();
                blocking(f.clone(), move |f| f.restore(&full, now)).await
            }
            Kind::ConfigMap(c) => c.restore(full, now).await,
        }
    }

    /// Creates an empty record unless one exists (`castellan trust init`).
    /// Returns whether it did.
    ///
    /// # Errors
    /// When it cannot be read or written, or what exists is not a record.
    pub async fn init(&self, now: u64) -> Result<bool, Error> {
        match &self.0 {
            Kind::File(f) => blocking(f.clone(), move |f| f.init(now)).await,
            Kind::ConfigMap(c) => c.init(now).await,
        }
    }

    /// Proves the record can be written, changing nothing.
    ///
    /// # Errors
    /// Why it cannot.
    pub async fn check_writable(&self) -> Result<(), Error> {
        match &self.0 {
            Kind::File(f) => blocking(f.clone(), |f| f.check_writable()).await,
            Kind::ConfigMap(c) => c.check_writable().await,
        }
    }
}

/// File work (a lock that may wait, fsync) off the async workers.
async fn blocking<T: Send + 'static>(
    store: file::FileStore,
    work: impl FnOnce(&file::FileStore) -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    let path = store.path().to_owned();
    tokio::task::spawn_blocking(move || work(&store))
        .await
        .map_err(|e| Error::Io {
            what: format!("trust.state_file {}", path.display()),
            path,
            source: std::io::Error::other(e.to_string()),
        })?
}
