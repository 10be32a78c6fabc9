//! The record in a ConfigMap in castellan's namespace, shared by every
//! replica: read, merged and written with the resourceVersion read (a 409
//! means another writer came first: read again, merge, retry).

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ObjectMeta, PostParams};

use super::super::{Error, TrustState};

/// The ConfigMap key holding the record.
const KEY: &str = "state.json";
/// Writes that lost a race more often than this in a row give up until the
/// next round.
const MAX_CONFLICTS: usize = 5;

#[derive(Clone, Debug)]
pub(super) struct ConfigMapStore {
    api: Api<ConfigMap>,
    name: String,
}

impl ConfigMapStore {
    pub(super) fn new(api: Api<ConfigMap>, name: String) -> Self {
        Self { api, name }
    }

    pub(super) fn describe(&self) -> String {
        format!("trust.state_configmap {}", self.name)
    }

    pub(super) async fn load(&self) -> Result<TrustState, Error> {
        let cm = self.get().await?.ok_or_else(|| self.missing())?;
        self.parse(&cm)
    }

    pub(super) async fn merge(&self, delta: &TrustState, now: u64) -> Result<TrustState, Error> {
        self.write_merged(delta, now, false).await.map(|(s, _)| s)
    }

    pub(super) async fn restore(
        &self,
        full: &TrustState,
        now: u64,
    ) -> Result<(TrustState, bool), Error> {
        self.write_merged(full, now, true).await
    }

    /// Creates the ConfigMap with an empty record unless it exists.
    pub(super) async fn init(&self, now: u64) -> Result<bool, Error> {
        if let Some(cm) = self.get().await? {
            // An existing one must hold a record: a ConfigMap of that name
            // with something else in it is not castellan's to take over.
            self.parse(&cm)?;
            return Ok(false);
        }
        let state = TrustState {
            created: Some(now),
            ..TrustState::default()
        };
        match self
            .api
            .create(&PostParams::default(), &self.object(&state, None)?)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(self.kube_error(&e)),
        }
    }

    /// Proves the record can be written: the same content written back
    /// with `dryRun=All`, which the API server checks (RBAC, admission,
    /// resourceVersion) without storing anything.
    pub(super) async fn check_writable(&self) -> Result<(), Error> {
        let cm = self.get().await?.ok_or_else(|| self.missing())?;
        let params = PostParams {
            dry_run: true,
            ..PostParams::default()
        };
        self.api
            .replace(&self.name, &params, &cm)
            .await
            .map(|_| ())
            .map_err(|e| self.kube_error(&e))
    }

    async fn write_merged(
        &self,
        mine: &TrustState,
        now: u64,
        restore: bool,
    ) -> Result<(TrustState, bool), Error> {
        for _ in 0..MAX_CONFLICTS {
            let existing = self.get().await?;
            let restored = existing.is_none();
            if restored && !restore {
                return Err(self.missing());
            }
            let stored = match &existing {
                Some(cm) => self.parse(cm)?,
                None => TrustState::default(),
            };
            let mut state = stored.clone();
            state.merge(mine);
            state.prune(now);
            if !restored && state == stored {
                return Ok((state, false));
            }
            let version = existing.and_then(|cm| cm.metadata.resource_version);
            let object = self.object(&state, version.clone())?;
            let result = match version {
                Some(_) => {
                    self.api
                        .replace(&self.name, &PostParams::default(), &object)
                        .await
                }
                None => self.api.create(&PostParams::default(), &object).await,
            };
            match result {
                Ok(_) => return Ok((state, restored)),
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(e) => return Err(self.kube_error(&e)),
            }
        }
        Err(Error::Kube {
            name: self.name.clone(),
            detail: format!("{MAX_CONFLICTS} conflicting writes in a row; retrying next round"),
        })
    }

    fn object(&self, state: &TrustState, version: Option<String>) -> Result<ConfigMap, Error> {
        let json = serde_json::to_string_pretty(state).map_err(|e| Error::Corrupt {
            what: self.describe(),
            problem: e.to_string(),
        })?;
        Ok(ConfigMap {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                resource_version: version,
                labels: Some(
                    [(
                        "app.kubernetes.io/managed-by".to_owned(),
                        "castellan".to_owned(),
                    )]
                    .into(),
                ),
                ..ObjectMeta::default()
            },
            data: Some([(KEY.to_owned(), json)].into()),
            ..ConfigMap::default()
        })
    }

    async fn get(&self) -> Result<Option<ConfigMap>, Error> {
        self.api
            .get_opt(&self.name)
            .await
            .map_err(|e| self.kube_error(&e))
    }

    /// A ConfigMap without the key, or with something else in it, is not a
    /// record: never read as an empty one.
    fn parse(&self, cm: &ConfigMap) -> Result<TrustState, Error> {
        let text = cm
            .data
            .as_ref()
            .and_then(|d| d.get(KEY))
            .ok_or_else(|| Error::Corrupt {
                what: format!("ConfigMap {}", self.name),
                problem: format!("it has no key {KEY}"),
            })?;
        serde_json::from_str(text).map_err(|e| Error::Corrupt {
            what: format!("ConfigMap {} key {KEY}", self.name),
            problem: e.to_string(),
        })
    }

    fn missing(&self) -> Error {
        Error::Missing {
            what: self.describe(),
        }
    }

    /// A failed call, with the RBAC rule to add when it was refused.
    fn kube_error(&self, e: &kube::Error) -> Error {
        let mut detail = crate::kube::describe(e);
        if matches!(e, kube::Error::Api(s) if s.code == 403) {
            detail.push_str(&format!(
                "; castellan needs configmaps create, and get, update on {}, in its namespace \
                 (deploy/kubernetes/base/rbac-trust-state.yaml)",
                self.name
            ));
        }
        Error::Kube {
            name: self.name.clone(),
            detail,
        }
    }
}
