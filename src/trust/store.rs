//! Where the record lives: a file for one replica, or a ConfigMap in
//! castellan's namespace that every replica reads and merges into, written
//! with the resourceVersion it read (a 409 means: read again, merge, retry).

use std::{
    io::Write,
    path::{Path, PathBuf},
};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ObjectMeta, PostParams};

use super::{Error, TrustState};

/// The ConfigMap key holding the record.
const KEY: &str = "state.json";
/// Writes that lost a race more often than this in a row give up until the
/// next round.
const MAX_CONFLICTS: usize = 5;

/// A place to read and merge the record into.
#[derive(Clone, Debug)]
pub enum Store {
    File(PathBuf),
    ConfigMap {
        api: Box<Api<ConfigMap>>,
        name: String,
    },
}

impl Store {
    /// What the store is, for messages.
    pub fn describe(&self) -> String {
        match self {
            Self::File(path) => format!("trust.state_file {}", path.display()),
            Self::ConfigMap { api: _, name } => format!("trust.state_configmap {name}"),
        }
    }

    /// The record as stored; empty when there is none yet.
    ///
    /// # Errors
    /// When it cannot be read or is not a record castellan wrote.
    pub async fn load(&self) -> Result<TrustState, Error> {
        match self {
            Self::File(path) => read_file(path),
            Self::ConfigMap { api, name } => Ok(match get(api, name).await? {
                Some(cm) => parse_configmap(&cm, name)?,
                None => TrustState::default(),
            }),
        }
    }

    /// Merges `mine` into the stored record and returns the result.
    ///
    /// # Errors
    /// When the record cannot be read or written.
    pub async fn merge(&self, mine: &TrustState) -> Result<TrustState, Error> {
        match self {
            Self::File(path) => {
                let stored = read_file(path)?;
                let mut state = stored.clone();
                state.merge(mine);
                state.prune(unix_now());
                if state != stored {
                    write_file(path, &state)?;
                }
                Ok(state)
            }
            Self::ConfigMap { api, name } => merge_configmap(api, name, mine).await,
        }
    }
}

fn read_file(path: &Path) -> Result<TrustState, Error> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| Error::Corrupt {
            what: format!("trust.state_file {}", path.display()),
            problem: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(TrustState::default()),
        Err(source) => Err(Error::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Written beside the file and renamed over it, so a crash leaves either
/// record whole; 0600 like every file castellan writes.
fn write_file(path: &Path, state: &TrustState) -> Result<(), Error> {
    let io = |source| Error::Io {
        path: path.to_owned(),
        source,
    };
    let json = serde_json::to_vec_pretty(state).map_err(|e| Error::Corrupt {
        what: format!("trust.state_file {}", path.display()),
        problem: e.to_string(),
    })?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut file = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io)?
    };
    file.write_all(&json).map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

async fn get(api: &Api<ConfigMap>, name: &str) -> Result<Option<ConfigMap>, Error> {
    api.get_opt(name).await.map_err(|e| kube_error(name, &e))
}

/// A failed call, with the RBAC rule to add when it was refused.
fn kube_error(name: &str, e: &kube::Error) -> Error {
    let mut detail = crate::kube::describe(e);
    if matches!(e, kube::Error::Api(s) if s.code == 403) {
        detail.push_str(&format!(
            "; castellan needs configmaps create, and get, update on {name}, in its namespace \
             (deploy/kubernetes/base/rbac-trust-state.yaml)"
        ));
    }
    Error::Kube {
        name: name.to_owned(),
        detail,
    }
}

fn parse_configmap(cm: &ConfigMap, name: &str) -> Result<TrustState, Error> {
    let text = cm.data.as_ref().and_then(|d| d.get(KEY));
    match text {
        Some(text) => serde_json::from_str(text).map_err(|e| Error::Corrupt {
            what: format!("ConfigMap {name} key {KEY}"),
            problem: e.to_string(),
        }),
        None => Ok(TrustState::default()),
    }
}

async fn merge_configmap(
    api: &Api<ConfigMap>,
    name: &str,
    mine: &TrustState,
) -> Result<TrustState, Error> {
    for _ in 0..MAX_CONFLICTS {
        let existing = get(api, name).await?;
        let mut state = match &existing {
            Some(cm) => parse_configmap(cm, name)?,
            None => TrustState::default(),
        };
        state.merge(mine);
        state.prune(unix_now());
        if existing
            .as_ref()
            .is_some_and(|cm| parse_configmap(cm, name).is_ok_and(|s| s == state))
        {
            return Ok(state);
        }
        let json = serde_json::to_string_pretty(&state).map_err(|e| Error::Corrupt {
            what: format!("ConfigMap {name}"),
            problem: e.to_string(),
        })?;
        let data = Some([(KEY.to_owned(), json)].into());
        let result = match existing {
            Some(mut cm) => {
                cm.data = data;
                api.replace(name, &PostParams::default(), &cm).await
            }
            None => {
                let cm = ConfigMap {
                    metadata: ObjectMeta {
                        name: Some(name.to_owned()),
                        labels: Some(
                            [(
                                "app.kubernetes.io/managed-by".to_owned(),
                                "castellan".to_owned(),
                            )]
                            .into(),
                        ),
                        ..ObjectMeta::default()
                    },
                    data,
                    ..ConfigMap::default()
                };
                api.create(&PostParams::default(), &cm).await
            }
        };
        match result {
            Ok(_) => return Ok(state),
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(kube_error(name, &e)),
        }
    }
    Err(Error::Kube {
        name: name.to_owned(),
        detail: format!("{MAX_CONFLICTS} conflicting writes in a row; retrying next round"),
    })
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
