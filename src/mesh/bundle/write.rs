//! One namespace's ConfigMap made to hold the bundle in use: created,
//! adopted, repaired or updated, with optimistic concurrency, and the
//! reason each write is counted under.

use k8s_openapi::api::core::v1::ConfigMap;
use kube::{
    Api,
    api::{ObjectMeta, PostParams},
};

use super::{LABEL, Publisher, WRITTEN, digest};
use crate::mesh::api::Trouble;

impl Publisher {
    /// Whether `cm` holds the payload in use and the label (or there is
    /// nothing to publish yet).
    pub(super) fn holds_current(&self, cm: &ConfigMap) -> bool {
        let Some(ns) = cm.metadata.namespace.as_deref() else {
            return false;
        };
        let Some(want) = self.payload.current(ns).map(|p| self.payload.canon(&p)) else {
            return true;
        };
        let data = cm.data.as_ref().and_then(|d| d.get(self.payload.key()));
        let labeled = cm
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(LABEL.0))
            .is_some_and(|v| v == LABEL.1);
        labeled && data.is_some_and(|d| self.payload.canon(d) == want)
    }

    /// Makes namespace `ns`'s ConfigMap hold the bundle in use.
    // Long: one namespace's read-compare-write; each outcome is counted where it happens.
    pub(super) async fn reconcile(&self, ns: &str) -> Result<(), Trouble> {
        if !self.leadership.is_leader() || self.lock().namespaces.get(ns) != Some(&true) {
            return Ok(());
        }
        let Some(bundle) = self.payload.current(ns) else {
            return Ok(());
        };
        let want = self.payload.canon(&bundle);
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), ns);
        let mut seen = self.lock().maps.get(ns).cloned();
        for attempt in 0..3 {
            if attempt > 0 {
                seen = api.get_opt(&self.name).await?;
            }
            if !self.leadership.is_leader() {
                return Ok(());
            }
            let throttled = self
                .guard
                .wait(&format!("{ns}/{}", self.name), &self.metrics);
            if !throttled.is_zero() {
                tokio::time::sleep(throttled).await;
                seen = api.get_opt(&self.name).await?;
            }
            let written = match seen.take() {
                None => match api
                    .create(&PostParams::default(), &self.fresh(ns, &bundle))
                    .await
                {
                    Ok(cm) if self.lock().published.contains(ns) => (cm, "repaired"),
                    Ok(cm) => (cm, "created"),
                    // Created meanwhile (by istiod, or before our watch saw it).
                    Err(kube::Error::Api(s)) if s.code == 409 => continue,
                    Err(e) => return Err(self.in_namespace(ns, e)),
                },
                Some(cm) if self.holds_current(&cm) => {
                    self.remember(ns, cm);
                    return Ok(());
                }
                Some(cm) => {
                    let reason = if self.untouched(&cm) {
                        "updated"
                    } else {
                        "repaired"
                    };
                    let mut update = cm;
                    update
                        .data
                        .get_or_insert_with(Default::default)
                        .insert(self.payload.key().to_owned(), bundle.clone());
                    update
                        .metadata
                        .labels
                        .get_or_insert_with(Default::default)
                        .insert(LABEL.0.to_owned(), LABEL.1.to_owned());
                    update
                        .metadata
                        .annotations
                        .get_or_insert_with(Default::default)
                        .insert(WRITTEN.to_owned(), digest(&want));
                    match api
                        .replace(&self.name, &PostParams::default(), &update)
                        .await
                    {
                        Ok(cm) => (cm, reason),
                        // Stale (someone wrote since) or gone: read again.
                        Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => continue,
                        Err(e) => return Err(self.in_namespace(ns, e)),
                    }
                }
            };
            let (cm, reason) = written;
            if reason == "repaired" {
                tracing::info!(
                    namespace = %ns,
                    configmap = %self.name,
                    what = self.payload.describe(),
                    "ConfigMap did not hold what castellan publishes (edited, or written by another): repaired"
                );
            }
            self.payload
                .writes(&self.metrics)
                .with_label_values(&[reason])
                .inc();
            self.remember(ns, cm);
            return Ok(());
        }
        Err(Trouble::Conflict(format!(
            "ConfigMap {ns}/{} kept changing under castellan",
            self.name
        )))
    }

    /// A namespace that went away while castellan wrote is not a failure.
    pub(super) fn in_namespace(&self, ns: &str, e: kube::Error) -> Trouble {
        let terminating = self.lock().namespaces.get(ns) != Some(&true);
        match Trouble::from(e) {
            Trouble::Gone(_) | Trouble::Forbidden(_) if terminating => {
                Trouble::Gone(format!("namespace {ns} is going away"))
            }
            other => other,
        }
    }

    pub(super) fn remember(&self, ns: &str, cm: ConfigMap) {
        let mut state = self.lock();
        state.maps.insert(ns.to_owned(), cm);
        state.in_sync.insert(ns.to_owned());
        state.published.insert(ns.to_owned());
        drop(state);
        self.publish_metrics();
        self.confirm_now();
    }

    /// Whether `cm` still holds exactly what castellan last wrote there (its
    /// digest, written beside it, says so): replacing that is an update.
    pub(super) fn untouched(&self, cm: &ConfigMap) -> bool {
        let stamped = cm
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(WRITTEN));
        let held = cm
            .data
            .as_ref()
            .and_then(|d| d.get(self.payload.key()))
            .map(|d| digest(&self.payload.canon(d)));
        stamped.is_some() && stamped == held.as_ref()
    }

    pub(super) fn fresh(&self, ns: &str, bundle: &str) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                namespace: Some(ns.to_owned()),
                labels: Some([(LABEL.0.to_owned(), LABEL.1.to_owned())].into()),
                annotations: Some(
                    [
                        (
                            "castellan.io/published-by".to_owned(),
                            format!("castellan: {}", self.payload.describe()),
                        ),
                        (WRITTEN.to_owned(), digest(&self.payload.canon(bundle))),
                    ]
                    .into(),
                ),
                ..ObjectMeta::default()
            },
            data: Some([(self.payload.key().to_owned(), bundle.to_owned())].into()),
            ..ConfigMap::default()
        }
    }
}
