//! Ambient mode: ztunnel asking for certificates on behalf of the pods on
//! its node, granted only by node authorization against the pod watch of the
//! in-process Kubernetes API server.

use std::time::Duration;

use castellan::cli::request;
use tonic::Code;

use crate::{
    kubernetes::{san, token, with_kube},
    support::{TestCa, csr, eventually, id, kube::FakeKube},
};

/// ztunnel on node-1 and the pods around it.
async fn ambient() -> (FakeKube, TestCa, String) {
    let kube = FakeKube::start().await;
    kube.put_pod(
        "istio-system",
        "ztunnel-n1",
        "zt-uid-1",
        "ztunnel",
        "node-1",
        "Running",
    );
    kube.put_pod(
        "bookinfo",
        "reviews-1",
        "rv-uid",
        "reviews",
        "node-1",
        "Running",
    );
    kube.put_pod(
        "bookinfo",
        "ratings-1",
        "ra-uid",
        "ratings",
        "node-2",
        "Running",
    );
    kube.put_pod(
        "bookinfo",
        "details-1",
        "de-uid",
        "details",
        "node-1",
        "Failed",
    );
    let ca = with_kube(
        &kube,
        "",
        "[impersonation]\ntrusted_node_accounts = [\"istio-system/ztunnel\"]\n",
    )
    .await;
    let zt = token(
        &ca,
        &kube,
        "istio-system",
        "ztunnel",
        Some(("ztunnel-n1", "zt-uid-1")),
    );
    (kube, ca, zt)
}

async fn impersonate(
    ca: &TestCa,
    token: &str,
    identity: &str,
) -> Result<Vec<String>, tonic::Status> {
    // ztunnel's CSR: P-256, empty subject, one critical URI SAN (the pod's identity).
    let (_, csr) = csr::ztunnel(identity);
    let mut req = request::request_for(&csr, 86400, token, "Kubernetes").unwrap();
    let metadata = req.get_mut().metadata.as_mut().unwrap();
    metadata.fields.clear();
    metadata.fields.insert(
        "ImpersonatedIdentity".into(),
        prost_types::Value {
            kind: Some(prost_types::value::Kind::StringValue(identity.to_owned())),
        },
    );
    ca.client()
        .await
        .create_certificate(req)
        .await
        .map(|r| r.into_inner().cert_chain)
}

#[tokio::test]
async fn ztunnel_gets_certificates_for_pods_on_its_node() {
    let (_kube, ca, zt) = ambient().await;
    let chain = impersonate(&ca, &zt, &id("bookinfo", "reviews"))
        .await
        .unwrap();
    assert_eq!(
        san(&chain),
        [id("bookinfo", "reviews")],
        "exactly the impersonated identity"
    );
    assert!(chain.len() >= 2);

    for (case, identity) in [
        ("pod on another node", id("bookinfo", "ratings")),
        ("only pod is Failed", id("bookinfo", "details")),
        ("no such workload", id("bookinfo", "ghost")),
        (
            "another trust domain",
            "spiffe://evil.example/ns/bookinfo/sa/reviews".to_owned(),
        ),
        (
            "not a workload id",
            "spiffe://cluster.local/anything".to_owned(),
        ),
    ] {
        let s = impersonate(&ca, &zt, &identity).await.unwrap_err();
        assert_eq!(s.code(), Code::PermissionDenied, "{case}: {s:?}");
    }
}

#[tokio::test]
async fn impersonation_refused_for_untrusted_callers_and_stale_pods() {
    let (kube, ca, _) = ambient().await;
    // A workload that is not a node agent.
    kube.put_pod(
        "bookinfo",
        "ratings-x",
        "rx-uid",
        "ratings",
        "node-1",
        "Running",
    );
    let app = token(
        &ca,
        &kube,
        "bookinfo",
        "ratings",
        Some(("ratings-x", "rx-uid")),
    );
    let s = impersonate(&ca, &app, &id("bookinfo", "reviews"))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::PermissionDenied, "not trusted: {s:?}");

    // A ztunnel token bound to a pod uid that no longer exists.
    let old = token(
        &ca,
        &kube,
        "istio-system",
        "ztunnel",
        Some(("ztunnel-n1", "zt-uid-OLD")),
    );
    let s = impersonate(&ca, &old, &id("bookinfo", "reviews"))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::PermissionDenied, "uid mismatch: {s:?}");

    // A ztunnel token without a pod binding.
    let unbound = token(&ca, &kube, "istio-system", "ztunnel", None);
    let s = impersonate(&ca, &unbound, &id("bookinfo", "reviews"))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::PermissionDenied, "no pod binding: {s:?}");

    // The caller's pod turns Failed.
    kube.put_pod(
        "istio-system",
        "ztunnel-n1",
        "zt-uid-1",
        "ztunnel",
        "node-1",
        "Failed",
    );
    let zt = token(
        &ca,
        &kube,
        "istio-system",
        "ztunnel",
        Some(("ztunnel-n1", "zt-uid-1")),
    );
    let denied = eventually(Duration::from_secs(5), async || {
        impersonate(&ca, &zt, &id("bookinfo", "reviews"))
            .await
            .is_err_and(|s| s.code() == Code::PermissionDenied)
    })
    .await;
    assert!(denied, "caller pod Failed");
}

#[tokio::test]
async fn a_pod_the_index_has_not_seen_yet_is_checked_with_the_api_once() {
    let (kube, ca, _) = ambient().await;
    // Let the index sync, then hold back watch events: the index lags.
    let zt = token(
        &ca,
        &kube,
        "istio-system",
        "ztunnel",
        Some(("ztunnel-n1", "zt-uid-1")),
    );
    impersonate(&ca, &zt, &id("bookinfo", "reviews"))
        .await
        .unwrap();
    kube.pause_watches(true);
    kube.delete_pod("istio-system", "ztunnel-n1");
    kube.put_pod(
        "istio-system",
        "ztunnel-n1",
        "zt-uid-2",
        "ztunnel",
        "node-1",
        "Running",
    );
    let restarted = token(
        &ca,
        &kube,
        "istio-system",
        "ztunnel",
        Some(("ztunnel-n1", "zt-uid-2")),
    );
    let chain = impersonate(&ca, &restarted, &id("bookinfo", "reviews"))
        .await
        .unwrap();
    assert_eq!(san(&chain), [id("bookinfo", "reviews")]);
    kube.pause_watches(false);
}

#[tokio::test]
async fn impersonation_without_configuration_is_permission_denied() {
    let kube = FakeKube::start().await;
    let ca = with_kube(&kube, "", "").await;
    let zt = token(
        &ca,
        &kube,
        "istio-system",
        "ztunnel",
        Some(("ztunnel-n1", "zt-uid-1")),
    );
    let s = impersonate(&ca, &zt, &id("bookinfo", "reviews"))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::PermissionDenied);
}

/// A real API server is silent between events for minutes: the watch must
/// survive silence longer than castellan's request timeout (1 s here), so
/// a deleted pod's identity stops being impersonable at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pod_watch_survives_silence_and_deletions_take_effect_promptly() {
    let (kube, ca, zt) = ambient().await;
    impersonate(&ca, &zt, &id("bookinfo", "reviews"))
        .await
        .unwrap();
    // Idle for three times the request timeout, no bookmarks.
    tokio::time::sleep(Duration::from_secs(3)).await;
    kube.delete_pod("bookinfo", "reviews-1");
    let started = std::time::Instant::now();
    let refused = eventually(Duration::from_secs(5), async || {
        impersonate(&ca, &zt, &id("bookinfo", "reviews"))
            .await
            .is_err_and(|s| s.code() == Code::PermissionDenied)
    })
    .await;
    assert!(refused);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "a deleted pod's identity was still impersonable after {:?}",
        started.elapsed()
    );
}

/// Authorization never rests on an index older than
/// `impersonation.max_staleness_secs`: with the API server gone, requests
/// turn UNAVAILABLE (retried by ztunnel), and work again once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_pod_index_is_unavailable_until_the_api_server_is_back() {
    let kube = FakeKube::start().await;
    kube.put_pod(
        "istio-system",
        "ztunnel-n1",
        "zt-uid-1",
        "ztunnel",
        "node-1",
        "Running",
    );
    kube.put_pod(
        "bookinfo",
        "reviews-1",
        "rv-uid",
        "reviews",
        "node-1",
        "Running",
    );
    let ca = with_kube(
        &kube,
        "",
        "[impersonation]\ntrusted_node_accounts = [\"istio-system/ztunnel\"]\nmax_staleness_secs = 2\n",
    )
    .await;
    let zt = token(
        &ca,
        &kube,
        "istio-system",
        "ztunnel",
        Some(("ztunnel-n1", "zt-uid-1")),
    );
    impersonate(&ca, &zt, &id("bookinfo", "reviews"))
        .await
        .unwrap();
    // Idle past the staleness bound: the watch's own renewals keep it fresh.
    tokio::time::sleep(Duration::from_secs(4)).await;
    impersonate(&ca, &zt, &id("bookinfo", "reviews"))
        .await
        .expect("an idle cluster's index stays fresh");

    kube.stop();
    let unavailable = eventually(Duration::from_secs(6), async || {
        impersonate(&ca, &zt, &id("bookinfo", "reviews"))
            .await
            .is_err_and(|s| s.code() == Code::Unavailable)
    })
    .await;
    assert!(
        unavailable,
        "the caller's token is cached; the index is what is stale"
    );
    kube.restart().await;
    let back = eventually(Duration::from_secs(6), async || {
        impersonate(&ca, &zt, &id("bookinfo", "reviews"))
            .await
            .is_ok()
    })
    .await;
    assert!(back);
}
