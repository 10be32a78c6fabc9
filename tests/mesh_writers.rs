//! What an operator relies on around the mesh writers, against the
//! in-process API server: istiod's certificate at its shortest lifetime is
//! written no faster than its renewals; a missing permission on a list, a
//! watch or an update is an ERROR naming it and the RBAC rule, counted as
//! forbidden (so the alert fires), and publishing resumes within seconds of
//! the grant; a root rotation across a restart is an update, not a repair;
//! one 409 does not end leadership; the publish timestamp advances on a
//! leader with nothing to write; Kubernetes' own namespaces are left out.

use std::time::Duration;

use castellan::config::Config;

use crate::{
    logs::Process,
    mesh::clone_ca,
    support::{
        Setup, TestCa, eventually, http_get,
        kube::{FakeKube, Kind},
        metric_sum,
        pki::{Ca, KeyAlg},
    },
};

const BUNDLE: &str = "istio-ca-root-cert";

fn kube_sections(kubeconfig: &std::path::Path, identity: &str, more: &str) -> String {
    format!(
        "[kubernetes]\nkubeconfig = \"{}\"\nnamespace = \"istio-system\"\nidentity = \"{identity}\"\n\
         [kubernetes.leader_election]\nlease_duration_secs = 3\nrenew_deadline_secs = 2\n\
         retry_period_secs = 1\n{more}",
        kubeconfig.display()
    )
}

fn holds(kube: &FakeKube, ns: &str, roots: &str) -> bool {
    kube.object(Kind::ConfigMap, ns, BUNDLE)
        .and_then(|cm| cm["data"]["root-cert.pem"].as_str().map(str::to_owned))
        .is_some_and(|d| crate::support::pki_certs(&d) == crate::support::pki_certs(roots))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istiods_certificate_at_its_shortest_lifetime_is_written_no_faster_than_it_renews() {
    // With the default 120 s backdating a lifetime below 90 s would be due
    // again within 20 s of each write: refused, naming the minimum.
    let dir = tempfile::tempdir().unwrap();
    let kube = FakeKube::start().await;
    kube.create_namespace("istio-system", &[]);
    let kubeconfig = kube.kubeconfig(dir.path(), "a");
    let files = crate::support::Files::write(Setup {
        extra: kube_sections(
            &kubeconfig,
            "a",
            "[kubernetes.istiod_cert]\nttl_secs = 60\n",
        ),
        ..Setup::default()
    });
    let e = Config::load(&files.config).unwrap_err().to_string();
    assert!(
        e.contains("kubernetes.istiod_cert.ttl_secs") && e.contains("between 90"),
        "{e}"
    );

    // At the minimum, two minutes: one write at start, then one per
    // renewal (every 20 s) — castellan's own writes never trigger another.
    let ca = TestCa::start_with(Setup {
        extra: kube_sections(
            &kubeconfig,
            "a",
            "[kubernetes.istiod_cert]\nttl_secs = 90\n",
        ),
        ..Setup::default()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(120)).await;
    let writes = kube.calls_of("create", "secrets") + kube.calls_of("update", "secrets");
    assert!(
        (4..=9).contains(&writes),
        "{writes} writes of istiod's Secret in 120 s"
    );
    assert_eq!(
        ca.metric_with(
            "castellan_kube_write_throttled_count",
            &[("resource", "secrets")]
        )
        .await,
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forbidden_list_and_update_are_named_counted_and_recovered_from() {
    let kube = FakeKube::start().await;
    for ns in ["istio-system", "apps"] {
        kube.create_namespace(ns, &[]);
    }
    // The list castellan starts from is forbidden: nothing can be published.
    kube.forbid("list", "configmaps", true);
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = kube.kubeconfig(dir.path(), "p");
    let p = Process::start(Setup {
        extra: kube_sections(&kubeconfig, "p", "[kubernetes.trust_bundle]\n"),
        ..Setup::default()
    })
    .await;
    let metrics = format!("{}/metrics", p.metrics_url());
    let forbidden = async || {
        metric_sum(
            &http_get(&metrics).await.1,
            "castellan_kube_errors_count",
            &[("resource", "configmaps"), ("reason", "forbidden")],
        )
    };
    assert!(
        eventually(Duration::from_secs(10), async || forbidden().await >= 1.0).await,
        "counted as forbidden, not unavailable"
    );
    // The alert's expression, sum(increase(...{reason="forbidden"}[5m])) > 0,
    // holds on these series: the counter moved from 0.
    let line = p
        .lines()
        .into_iter()
        .find(|l| l.contains("ERROR") && l.contains("not allowed to list/watch configmaps"))
        .unwrap_or_else(|| panic!("{}", p.lines().join("\n")));
    assert!(line.contains("rbac-trust-bundle.yaml"), "{line}");
    assert!(
        line.contains("istio-ca-root-cert in every namespace"),
        "{line}"
    );

    // Granted: published within the documented five seconds.
    kube.forbid("list", "configmaps", false);
    let root = p.files.root.pem.clone();
    assert!(
        eventually(Duration::from_secs(5), async || holds(&kube, "apps", &root)).await,
        "published within 5 s of the grant"
    );

    // Someone edits it while castellan may not update it.
    kube.forbid("update", "configmaps", true);
    let mut cm = kube.object(Kind::ConfigMap, "apps", BUNDLE).unwrap();
    cm["data"]["root-cert.pem"] = serde_json::Value::String(String::new());
    kube.put_object(Kind::ConfigMap, "apps", cm);
    assert!(
        eventually(Duration::from_secs(10), async || {
            p.lines().iter().any(|l| {
                l.contains("ERROR") && l.contains("not allowed to write configmaps (apps/")
            })
        })
        .await,
        "{}",
        p.lines().join("\n")
    );
    kube.forbid("update", "configmaps", false);
    assert!(
        eventually(Duration::from_secs(8), async || holds(&kube, "apps", &root)).await,
        "repaired once allowed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_rotation_across_a_restart_is_an_update() {
    let kube = FakeKube::start().await;
    for ns in ["istio-system", "apps", "shop"] {
        kube.create_namespace(ns, &[]);
    }
    let root = Ca::root("Root One", KeyAlg::EcP256);
    let next = Ca::root("Root Two", KeyAlg::EcP256);
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = kube.kubeconfig(dir.path(), "r");
    let roots_file = dir.path().join("roots.pem");
    std::fs::write(&roots_file, &root.pem).unwrap();
    let setup = |root: &Ca| Setup {
        root: Some(clone_ca(root)),
        ca: format!(
            "roots_file = \"{}\"\nreload_interval_secs = 1\n",
            roots_file.display()
        ),
        extra: kube_sections(&kubeconfig, "r", "[kubernetes.trust_bundle]\n"),
        ..Setup::default()
    };
    let first = TestCa::start_with(setup(&root)).await;
    assert!(
        eventually(Duration::from_secs(10), async || holds(
            &kube, "shop", &root.pem
        ))
        .await
    );
    first.running.kill();

    // The runbook's step 1: both roots in ca.roots_file, castellan restarted.
    let both = format!("{}{}", root.pem, next.pem);
    std::fs::write(&roots_file, &both).unwrap();
    let second = TestCa::start_with(setup(&root)).await;
    assert!(
        eventually(Duration::from_secs(10), async || {
            ["istio-system", "apps", "shop"]
                .iter()
                .all(|ns| holds(&kube, ns, &both))
        })
        .await
    );
    let writes = |reason| {
        let second = &second;
        async move {
            second
                .metric_with("castellan_trust_bundle_writes_count", &[("reason", reason)])
                .await
        }
    };
    assert_eq!(writes("updated").await, 3.0);
    assert_eq!(writes("repaired").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_409_on_renewal_does_not_end_leadership_and_an_idle_leader_confirms_what_it_holds() {
    let kube = FakeKube::start().await;
    for ns in [
        "istio-system",
        "apps",
        "kube-system",
        "kube-public",
        "kube-node-lease",
    ] {
        kube.create_namespace(ns, &[]);
    }
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = kube.kubeconfig(dir.path(), "l");
    let ca = TestCa::start_with(Setup {
        extra: kube_sections(&kubeconfig, "l", "[kubernetes.trust_bundle]\n"),
        ..Setup::default()
    })
    .await;
    let root = ca.root.pem.clone();
    assert!(
        eventually(Duration::from_secs(10), async || holds(
            &kube, "apps", &root
        ))
        .await
    );
    assert!(
        holds(&kube, "kube-system", &root),
        "kube-system is served, as istiod serves it"
    );
    for skipped in ["kube-public", "kube-node-lease"] {
        assert!(
            kube.object(Kind::ConfigMap, skipped, BUNDLE).is_none(),
            "{skipped} is left out, as istiod leaves it out"
        );
    }
    assert_eq!(ca.metric("castellan_leader").await, 1.0);

    // One renewal answered 409 (another writer raced it): still leading.
    kube.fail("update", "leases", Some(http::StatusCode::CONFLICT));
    let mut always = true;
    for _ in 0..12 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        always &= ca.metric("castellan_leader").await == 1.0;
    }
    kube.fail("update", "leases", None);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    always &= ca.metric("castellan_leader").await == 1.0;
    assert!(
        always,
        "leadership held through a 409 shorter than the renew deadline"
    );

    // Nothing to write: the publish timestamp still advances.
    let stamp = async || {
        ca.metric_with(
            "castellan_trust_bundle_last_publish_timestamp",
            &[("target", "configmaps")],
        )
        .await
    };
    let before = stamp().await;
    let writes = kube.calls_of("update", "configmaps") + kube.calls_of("create", "configmaps");
    assert!(
        eventually(Duration::from_secs(20), async || stamp().await > before).await,
        "an idle leader confirms"
    );
    assert_eq!(
        kube.calls_of("update", "configmaps") + kube.calls_of("create", "configmaps"),
        writes,
        "without writing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istiods_secret_deleted_while_its_watch_is_refused_comes_back_within_seconds() {
    let kube = FakeKube::start().await;
    kube.create_namespace("istio-system", &[]);
    // Its RBAC lacks list and watch on the Secret (get, create, update are
    // there): the watch never starts.
    kube.forbid("watch", "secrets", true);
    kube.forbid("list", "secrets", true);
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = kube.kubeconfig(dir.path(), "w");
    let ca = TestCa::start_with(Setup {
        extra: kube_sections(&kubeconfig, "w", "[kubernetes.istiod_cert]\n"),
        ..Setup::default()
    })
    .await;
    let present = || {
        kube.object(Kind::Secret, "istio-system", "istiod-tls")
            .is_some()
    };
    assert!(eventually(Duration::from_secs(10), async || present()).await);
    assert!(
        eventually(Duration::from_secs(10), async || {
            ca.metric_with(
                "castellan_kube_errors_count",
                &[("resource", "secrets"), ("reason", "forbidden")],
            )
            .await
                >= 1.0
        })
        .await,
        "the watch's refusal is counted, not dropped"
    );
    kube.delete_object(Kind::Secret, "istio-system", "istiod-tls");
    assert!(
        eventually(Duration::from_secs(10), async || present()).await,
        "written again without the watch (istiod's renewal is hours away)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_roots_file_is_logged_with_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let roots_file = dir.path().join("roots.pem");
    let root = Ca::root("Root One", KeyAlg::EcP256);
    std::fs::write(&roots_file, &root.pem).unwrap();
    let p = Process::start(Setup {
        root: Some(clone_ca(&root)),
        ca: format!(
            "roots_file = \"{}\"\nreload_interval_secs = 1\n",
            roots_file.display()
        ),
        ..Setup::default()
    })
    .await;
    let next = Ca::root("Root Two", KeyAlg::EcP256);
    std::fs::write(&roots_file, format!("{}{}", root.pem, next.pem)).unwrap();
    assert!(
        eventually(Duration::from_secs(10), async || {
            p.lines()
                .iter()
                .any(|l| l.contains("ca.roots_file changed") && l.contains("rollout restart"))
        })
        .await,
        "{}",
        p.lines().join("\n")
    );
    let said = p
        .lines()
        .iter()
        .filter(|l| l.contains("ca.roots_file changed"))
        .count();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        p.lines()
            .iter()
            .filter(|l| l.contains("ca.roots_file changed"))
            .count(),
        said,
        "said once per new content"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forbidden_watch_is_named_counted_and_recovered_from() {
    let kube = FakeKube::start().await;
    for ns in ["istio-system", "apps"] {
        kube.create_namespace(ns, &[]);
    }
    // The list is allowed (so the bundle goes out), the watch that should
    // follow is not: deletions and edits would go unseen.
    kube.forbid("watch", "configmaps", true);
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = kube.kubeconfig(dir.path(), "v");
    let p = Process::start(Setup {
        extra: kube_sections(&kubeconfig, "v", "[kubernetes.trust_bundle]\n"),
        ..Setup::default()
    })
    .await;
    let root = p.files.root.pem.clone();
    assert!(
        eventually(Duration::from_secs(10), async || holds(
            &kube, "apps", &root
        ))
        .await
    );
    assert!(
        eventually(Duration::from_secs(10), async || {
            p.lines().iter().any(|l| {
                l.contains("ERROR")
                    && l.contains("not allowed to list/watch configmaps")
                    && l.contains("rbac-trust-bundle.yaml")
            })
        })
        .await,
        "{}",
        p.lines().join("\n")
    );
    let metrics = format!("{}/metrics", p.metrics_url());
    let forbidden = metric_sum(
        &http_get(&metrics).await.1,
        "castellan_kube_errors_count",
        &[("resource", "configmaps"), ("reason", "forbidden")],
    );
    assert!(forbidden >= 1.0);
    // Granted: the watch starts within seconds, and sees a deletion.
    kube.forbid("watch", "configmaps", false);
    tokio::time::sleep(Duration::from_secs(5)).await;
    kube.delete_object(Kind::ConfigMap, "apps", BUNDLE);
    assert!(
        eventually(Duration::from_secs(5), async || holds(&kube, "apps", &root)).await,
        "repaired through the watch"
    );
}
