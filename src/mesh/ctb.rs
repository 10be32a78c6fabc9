//! The optional ClusterTrustBundle `istio.io:istiod-ca:<bundle name>`
//! (`certificates.k8s.io/v1beta1`, signer `istio.io/istiod-ca`), for Istio's
//! `ENABLE_CLUSTER_TRUST_BUNDLE_API`: kept equal to the root bundle in use,
//! repaired when edited or deleted, driven by a watch of that one object.

use std::sync::Arc;

use futures_util::StreamExt;
use k8s_openapi::api::certificates::v1beta1::{ClusterTrustBundle, ClusterTrustBundleSpec};
use kube::{
    Api, Client,
    api::{ObjectMeta, PostParams},
    runtime::{WatchStreamExt, watcher},
};
use tokio::sync::Notify;

use super::payload::Roots;
use super::{api::Trouble, bundle::unix_now, lease::Leadership};
use crate::metrics::Metrics;

/// The signer Istio's ClusterTrustBundle carries.
pub(crate) const SIGNER: &str = "istio.io/istiod-ca";

/// Keeps the ClusterTrustBundle while this replica leads; runs until dropped.
// Long: the ClusterTrustBundle's keep loop: read, compare, write, and each outcome counted where it happens.
pub(crate) async fn run(
    client: Client,
    watch_client: Client,
    roots: Roots,
    metrics: Metrics,
    leadership: Leadership,
) {
    let name = format!("istio.io:istiod-ca:{}", roots.name);
    let roots = Arc::new(roots);
    let api: Api<ClusterTrustBundle> = Api::all(client);
    let poke = Arc::new(Notify::new());
    // The object as the watch last saw it, to confirm it holds the bundle
    // without a call.
    let seen: Arc<std::sync::Mutex<Option<ClusterTrustBundle>>> = Arc::default();
    let watching = {
        let (poke, name) = (Arc::clone(&poke), name.clone());
        let metrics_watch = metrics.clone();
        let seen = Arc::clone(&seen);
        let api: Api<ClusterTrustBundle> = Api::all(watch_client);
        tokio::spawn(async move {
            let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
            let mut events = watcher(api, config)
                .backoff(super::api::WatchBackoff::default())
                .boxed();
            while let Some(event) = events.next().await {
                match event {
                    Ok(event) => {
                        let latest = match event {
                            watcher::Event::Apply(o) | watcher::Event::InitApply(o) => Some(o),
                            watcher::Event::Delete(_) | watcher::Event::Init => None,
                            watcher::Event::InitDone => continue,
                        };
                        *seen
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner) = latest;
                        poke.notify_one();
                    }
                    Err(e) => Trouble::of_watch(&e).report(
                        &metrics_watch,
                        "clustertrustbundles",
                        "list/watch",
                        &name,
                    ),
                }
            }
        })
    };
    let following = {
        let (poke, roots) = (Arc::clone(&poke), Arc::clone(&roots));
        tokio::spawn(async move {
            let mut changes = roots.changes();
            while changes.changed().await {
                poke.notify_one();
            }
        })
    };
    // The publish timestamp means "held as of": confirmed from the watch
    // while nothing changes.
    let confirming = {
        let (seen, roots, metrics, leadership) = (
            Arc::clone(&seen),
            Arc::clone(&roots),
            metrics.clone(),
            leadership.clone(),
        );
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(15));
            loop {
                tick.tick().await;
                let held = seen
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .as_ref()
                    .is_some_and(|o| roots.cluster_bundle().is_some_and(|b| holds(o, &b)));
                if held && leadership.is_leader() {
                    metrics
                        .mesh
                        .trust_bundle_last_publish
                        .with_label_values(&["clustertrustbundle"])
                        .set(unix_now());
                }
            }
        })
    };
    let _stop = super::AbortOnDrop(vec![watching, following, confirming]);
    loop {
        poke.notified().await;
        if !leadership.is_leader() {
            continue;
        }
        let Some(bundle) = roots.cluster_bundle() else {
            continue;
        };
        if let Err(t) = reconcile(&api, &name, &bundle).await {
            t.report(&metrics, "clustertrustbundles", "write", &name);
            tokio::time::sleep(std::time::Duration::from_secs(2)).await;
            poke.notify_one();
        } else {
            metrics
                .mesh
                .trust_bundle_last_publish
                .with_label_values(&["clustertrustbundle"])
                .set(unix_now());
        }
    }
}

async fn reconcile(api: &Api<ClusterTrustBundle>, name: &str, bundle: &str) -> Result<(), Trouble> {
    let bundle = bundle.to_owned();
    for _ in 0..3 {
        match api.get_opt(name).await? {
            None => {
                let ctb = ClusterTrustBundle {
                    metadata: ObjectMeta {
                        name: Some(name.to_owned()),
                        ..ObjectMeta::default()
                    },
                    spec: ClusterTrustBundleSpec {
                        signer_name: Some(SIGNER.to_owned()),
                        trust_bundle: bundle.clone(),
                    },
                };
                match api.create(&PostParams::default(), &ctb).await {
                    Ok(_) => return Ok(()),
                    Err(kube::Error::Api(s)) if s.code == 409 => continue,
                    Err(e) => return Err(e.into()),
                }
            }
            Some(ctb) if holds(&ctb, &bundle) => return Ok(()),
            Some(mut ctb) => {
                ctb.spec.trust_bundle = bundle.clone();
                ctb.spec.signer_name = Some(SIGNER.to_owned());
                match api.replace(name, &PostParams::default(), &ctb).await {
                    Ok(_) => {
                        tracing::info!(clustertrustbundle = %name, "ClusterTrustBundle written");
                        return Ok(());
                    }
                    Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => continue,
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
    Err(Trouble::Conflict(format!(
        "ClusterTrustBundle {name} kept changing"
    )))
}

/// Whether `ctb` holds `bundle` (as a set) under Istio's signer.
fn holds(ctb: &ClusterTrustBundle, bundle: &str) -> bool {
    crate::pem::certificate_set(&ctb.spec.trust_bundle) == crate::pem::certificate_set(bundle)
        && ctb.spec.signer_name.as_deref() == Some(SIGNER)
}
