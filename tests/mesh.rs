//! Running a mesh with istiod's CA off, against the in-process API server:
//! leader election between two castellans, the trust bundle published,
//! followed and repaired, the ClusterTrustBundle, istiod's certificate, and
//! the faults (API server down, missing permission, conflicts).

use std::{sync::Arc, time::Duration};

use der::Decode;
use rustls_pki_types::{CertificateDer, pem::PemObject};
use serde_json::json;
use x509_cert::{
    Certificate,
    ext::pkix::{SubjectAltName, name::GeneralName},
};

use crate::support::{
    Setup, TestCa, eventually,
    kube::{FakeKube, Kind},
    pki::{self, Ca, KeyAlg},
};

const BUNDLE: &str = "istio-ca-root-cert";

pub fn clone_ca(ca: &Ca) -> Ca {
    Ca {
        params: ca.params.clone(),
        key: rcgen::KeyPair::from_pem(&ca.key.serialize_pem()).unwrap(),
        pem: ca.pem.clone(),
        der: ca.der.clone(),
    }
}

/// A castellan named `identity` writing into `kube`, with short Lease
/// timings (3 s lease, 2 s deadline, 1 s retry) and `sections` below
/// `[kubernetes]`.
async fn castellan(kube: &FakeKube, root: &Ca, identity: &str, sections: &str) -> TestCa {
    castellan_with(kube, root, identity, sections, "").await
}

/// As [`castellan`], with `[issuance]` lines.
async fn castellan_with(
    kube: &FakeKube,
    root: &Ca,
    identity: &str,
    sections: &str,
    issuance: &str,
) -> TestCa {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = kube.kubeconfig(dir.path(), identity);
    let ca = TestCa::start_with(Setup {
        root: Some(clone_ca(root)),
        issuance: issuance.into(),
        extra: format!(
            "[kubernetes]\nkubeconfig = \"{}\"\nnamespace = \"istio-system\"\nidentity = \"{identity}\"\n\
             [kubernetes.leader_election]\nlease_duration_secs = 3\nrenew_deadline_secs = 2\nretry_period_secs = 1\n{sections}",
            kubeconfig.display()
        ),
        ..Setup::default()
    })
    .await;
    std::mem::forget(dir);
    ca
}

fn certs(pem: &str) -> std::collections::BTreeSet<Vec<u8>> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .map(|c| c.unwrap().to_vec())
        .collect()
}

/// Whether `ns` has the ConfigMap with exactly `roots` and Istio's label.
fn published(kube: &FakeKube, ns: &str, roots: &str) -> bool {
    let Some(cm) = kube.object(Kind::ConfigMap, ns, BUNDLE) else {
        return false;
    };
    cm["metadata"]["labels"]["istio.io/config"] == "true"
        && cm["data"]["root-cert.pem"]
            .as_str()
            .is_some_and(|d| certs(d) == certs(roots))
}

fn holder(kube: &FakeKube) -> String {
    kube.object(Kind::Lease, "istio-system", "castellan")
        .and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

const PUBLISH: &str = "[kubernetes.trust_bundle]\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_leader_writes_and_another_takes_over_when_it_dies() {
    let kube = FakeKube::start().await;
    for ns in ["istio-system", "apps", "shop"] {
        kube.create_namespace(ns, &[]);
    }
    let root = Ca::root("Enterprise Root", KeyAlg::EcP256);
    let a = castellan(&kube, &root, "a", PUBLISH).await;
    assert!(
        eventually(Duration::from_secs(10), async || {
            ["istio-system", "apps", "shop"]
                .iter()
                .all(|ns| published(&kube, ns, &root.pem))
        })
        .await,
        "the leader publishes everywhere"
    );
    assert_eq!(holder(&kube), "a");
    assert_eq!(a.metric("castellan_leader").await, 1.0);

    let b = castellan(&kube, &root, "b", PUBLISH).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(b.metric("castellan_leader").await, 0.0, "one leader");
    assert_eq!(b.readyz().await, 200, "a follower is ready");
    assert_eq!(holder(&kube), "a");
    let writes = |ca: &TestCa| {
        let ca = ca.metrics_url();
        async move {
            let (_, text) = crate::support::http_get(&format!("{ca}/metrics")).await;
            text.lines()
                .filter(|l| l.starts_with("castellan_trust_bundle_writes_count{"))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>()
        }
    };
    assert_eq!(writes(&b).await, 0.0, "a follower writes nothing");
    // Both serve certificates.
    let (_, csr) = crate::support::csr::ztunnel(&crate::support::id("ns", "sa"));
    b.send(&csr, "ns", "sa", 600).await.unwrap();

    // The leader dies (nothing released): the other takes over within a
    // lease duration plus a retry period, and publishing goes on.
    let died = std::time::Instant::now();
    a.running.kill();
    assert!(
        eventually(Duration::from_secs(8), async || holder(&kube) == "b").await,
        "takeover"
    );
    assert!(
        died.elapsed() < Duration::from_secs(3 + 1 + 2),
        "{:?}",
        died.elapsed()
    );
    kube.create_namespace("new-team", &[]);
    assert!(
        eventually(Duration::from_secs(10), async || published(
            &kube, "new-team", &root.pem
        ))
        .await
    );
    assert_eq!(b.metric("castellan_leader").await, 1.0);

    // A graceful shutdown releases the Lease at once.
    let c = castellan(&kube, &root, "c", PUBLISH).await;
    b.running.shutdown();
    let released = std::time::Instant::now();
    assert!(eventually(Duration::from_secs(8), async || holder(&kube) == "c").await);
    assert!(
        released.elapsed() < Duration::from_secs(3),
        "the released Lease is taken without waiting out its duration: {:?}",
        released.elapsed()
    );
    drop(c);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configmaps_follow_namespaces_and_are_repaired() {
    let kube = FakeKube::start().await;
    kube.create_namespace("istio-system", &[("mesh", "on")]);
    kube.create_namespace("in", &[("mesh", "on")]);
    kube.create_namespace("out", &[]);
    // An existing ConfigMap written by istiod, with another bundle: adopted.
    kube.put_object(
        Kind::ConfigMap,
        "in",
        json!({"metadata": {"name": BUNDLE, "labels": {"istio.io/config": "true", "app": "istiod"}},
               "data": {"root-cert.pem": Ca::root("istiod self-signed", KeyAlg::EcP256).pem}}),
    );
    let root = Ca::root("Enterprise Root", KeyAlg::EcP256);
    let ca = castellan(
        &kube,
        &root,
        "a",
        "[kubernetes.trust_bundle]\nnamespace_selector = \"mesh=on\"\n",
    )
    .await;
    assert!(
        eventually(Duration::from_secs(10), async || published(
            &kube, "in", &root.pem
        ))
        .await
    );
    assert_eq!(
        kube.object(Kind::ConfigMap, "in", BUNDLE).unwrap()["metadata"]["labels"]["app"],
        "istiod",
        "adopted, not replaced"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        kube.object(Kind::ConfigMap, "out", BUNDLE).is_none(),
        "outside the selector"
    );

    // Deleted, edited, label removed: each repaired.
    kube.delete_object(Kind::ConfigMap, "in", BUNDLE);
    assert!(
        eventually(Duration::from_secs(5), async || published(
            &kube, "in", &root.pem
        ))
        .await
    );
    let mut cm = kube.object(Kind::ConfigMap, "in", BUNDLE).unwrap();
    cm["data"]["root-cert.pem"] = json!("not a certificate");
    kube.put_object(Kind::ConfigMap, "in", cm);
    assert!(
        eventually(Duration::from_secs(5), async || published(
            &kube, "in", &root.pem
        ))
        .await
    );
    let mut cm = kube.object(Kind::ConfigMap, "in", BUNDLE).unwrap();
    cm["metadata"]["labels"]
        .as_object_mut()
        .unwrap()
        .remove("istio.io/config");
    kube.put_object(Kind::ConfigMap, "in", cm);
    assert!(
        eventually(Duration::from_secs(5), async || published(
            &kube, "in", &root.pem
        ))
        .await
    );
    assert!(
        ca.metric("castellan_trust_bundle_writes_count{reason=\"repaired\"}")
            .await
            >= 3.0
    );

    // A namespace that joins the selector, and one that is deleted.
    kube.label_namespace("out", "mesh", Some("on"));
    assert!(
        eventually(Duration::from_secs(5), async || published(
            &kube, "out", &root.pem
        ))
        .await
    );
    kube.delete_namespace("in");
    assert!(
        eventually(Duration::from_secs(5), async || kube
            .object(Kind::Namespace, "", "in")
            .is_none())
        .await
    );
    kube.create_namespace("later", &[("mesh", "on")]);
    assert!(
        eventually(Duration::from_secs(5), async || published(
            &kube, "later", &root.pem
        ))
        .await
    );
    assert_eq!(ca.metric("castellan_trust_bundle_namespaces").await, 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_root_bundle_is_written_once_per_namespace() {
    let kube = FakeKube::start().await;
    let namespaces: Vec<String> = (0..20).map(|i| format!("team-{i}")).collect();
    kube.create_namespace("istio-system", &[]);
    for ns in &namespaces {
        kube.create_namespace(ns, &[]);
    }
    let root = Ca::root("Enterprise Root", KeyAlg::EcP256);
    let ca = castellan(&kube, &root, "a", PUBLISH).await;
    assert!(
        eventually(Duration::from_secs(10), async || {
            namespaces.iter().all(|ns| published(&kube, ns, &root.pem))
        })
        .await
    );
    let updates_before = kube.calls_of("update", "configmaps");
    // Root rotation begins: the bundle gains the incoming root.
    let incoming = Ca::root("Incoming Root", KeyAlg::EcP256);
    let both = format!("{}{}", root.pem, incoming.pem);
    pki::write_cacerts(
        &ca.ca_dir(),
        &ca.intermediate,
        &[&ca.intermediate, &root],
        &both,
    );
    assert!(
        eventually(Duration::from_secs(10), async || {
            namespaces.iter().all(|ns| published(&kube, ns, &both))
        })
        .await
    );
    assert!(published(&kube, "istio-system", &both));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        kube.calls_of("update", "configmaps") - updates_before,
        namespaces.len() + 1,
        "exactly one update per namespace"
    );
    assert_eq!(
        ca.metric("castellan_trust_bundle_writes_count{reason=\"updated\"}")
            .await,
        21.0
    );
    // The same roots in another order are the same bundle: nothing written.
    let reordered = format!("{}{}", incoming.pem, root.pem);
    pki::write_cacerts(
        &ca.ca_dir(),
        &ca.intermediate,
        &[&ca.intermediate, &root],
        &reordered,
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        kube.calls_of("update", "configmaps") - updates_before,
        namespaces.len() + 1,
        "order does not matter"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_trust_bundle_is_kept() {
    let kube = FakeKube::start().await;
    kube.create_namespace("istio-system", &[]);
    let root = Ca::root("Enterprise Root", KeyAlg::EcP256);
    let _ca = castellan(
        &kube,
        &root,
        "a",
        "[kubernetes.trust_bundle]\ncluster_trust_bundle = true\n",
    )
    .await;
    let name = "istio.io:istiod-ca:istio-ca-root-cert";
    let good = || {
        kube.object(Kind::ClusterTrustBundle, "", name)
            .is_some_and(|c| {
                c["spec"]["signerName"] == "istio.io/istiod-ca"
                    && certs(c["spec"]["trustBundle"].as_str().unwrap_or_default())
                        == certs(&root.pem)
            })
    };
    assert!(eventually(Duration::from_secs(10), async || good()).await);
    let mut ctb = kube.object(Kind::ClusterTrustBundle, "", name).unwrap();
    ctb["spec"]["trustBundle"] = json!(Ca::root("Rogue", KeyAlg::EcP256).pem);
    kube.put_object(Kind::ClusterTrustBundle, "", ctb);
    assert!(
        eventually(Duration::from_secs(5), async || good()).await,
        "repaired"
    );
}

fn istiod_secret(kube: &FakeKube) -> Option<(String, String, String)> {
    let s = kube.object(Kind::Secret, "istio-system", "istiod-tls")?;
    let text = |k: &str| {
        let b64 = s["data"][k].as_str()?;
        String::from_utf8(
            base64::Engine::decode(&base64::engine::general_purpose::STANDARD, b64).ok()?,
        )
        .ok()
    };
    assert_eq!(s["type"], "kubernetes.io/tls");
    Some((text("tls.crt")?, text("tls.key")?, text("ca.crt")?))
}

fn leaf(chain: &str) -> Certificate {
    let der = CertificateDer::from_pem_slice(chain.as_bytes()).unwrap();
    Certificate::from_der(&der).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istiods_certificate_is_issued_renewed_and_reissued() {
    let kube = FakeKube::start().await;
    kube.create_namespace("istio-system", &[]);
    let root = Ca::root("Enterprise Root", KeyAlg::EcP256);
    // No backdating: the shortest lifetime allowed is then 30 s, renewed
    // every 20 s.
    let ca = castellan_with(
        &kube,
        &root,
        "a",
        "[kubernetes.istiod_cert]\nrevisions = [\"default\", \"canary\"]\ndns_names = [\"istiod.example.com\"]\nttl_secs = 30\n",
        "not_before_skew_secs = 0\n",
    )
    .await;
    assert!(
        eventually(Duration::from_secs(10), async || istiod_secret(&kube)
            .is_some())
        .await
    );
    let (crt, key, ca_crt) = istiod_secret(&kube).unwrap();
    assert_eq!(certs(&ca_crt), certs(&root.pem));

    // openssl agrees: chain to the root, server and client, the key fits.
    let dir = tempfile::tempdir().unwrap();
    let blocks: Vec<&str> = crt.split_inclusive("-----END CERTIFICATE-----\n").collect();
    assert_eq!(blocks.len(), 2, "leaf and the intermediate");
    std::fs::write(dir.path().join("leaf.pem"), blocks[0]).unwrap();
    std::fs::write(dir.path().join("int.pem"), blocks[1]).unwrap();
    std::fs::write(dir.path().join("root.pem"), &ca_crt).unwrap();
    std::fs::write(dir.path().join("key.pem"), &key).unwrap();
    for purpose in ["sslserver", "sslclient"] {
        let out = std::process::Command::new("openssl")
            .args(["verify", "-x509_strict", "-purpose", purpose, "-CAfile"])
            .arg(dir.path().join("root.pem"))
            .arg("-untrusted")
            .arg(dir.path().join("int.pem"))
            .arg(dir.path().join("leaf.pem"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{purpose}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let pubkey = |args: &[&str]| {
        std::process::Command::new("openssl")
            .args(args)
            .output()
            .unwrap()
            .stdout
    };
    let leaf_path = dir.path().join("leaf.pem").display().to_string();
    let key_path = dir.path().join("key.pem").display().to_string();
    assert_eq!(
        pubkey(&["x509", "-noout", "-pubkey", "-in", &leaf_path]),
        pubkey(&["pkey", "-pubout", "-in", &key_path]),
        "tls.key is the certificate's key"
    );
    let cert = leaf(&crt);
    let (_, san) = cert
        .tbs_certificate()
        .get_extension::<SubjectAltName>()
        .unwrap()
        .unwrap();
    let names: Vec<String> = san
        .0
        .iter()
        .map(|n| match n {
            GeneralName::DnsName(d) => d.to_string(),
            GeneralName::UniformResourceIdentifier(u) => u.to_string(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        names,
        [
            "istiod.istio-system.svc",
            "istiod-canary.istio-system.svc",
            "istiod.example.com",
            "spiffe://cluster.local/ns/istio-system/sa/istiod"
        ]
    );
    let serial = |c: &Certificate| c.tbs_certificate().serial_number().clone();
    let first = serial(&cert);

    // Renewed at two thirds of its 30 s.
    assert!(
        eventually(Duration::from_secs(25), async || {
            istiod_secret(&kube).is_some_and(|(c, _, _)| serial(&leaf(&c)) != first)
        })
        .await,
        "renewed"
    );
    assert!(ca.metric("castellan_istiod_cert_expiry_timestamp").await > 0.0);

    // Deleted: written again at once.
    kube.delete_object(Kind::Secret, "istio-system", "istiod-tls");
    assert!(
        eventually(Duration::from_secs(5), async || istiod_secret(&kube)
            .is_some())
        .await
    );

    // A new signing CA: re-issued under it at once.
    let next = root.intermediate("Next Intermediate", KeyAlg::EcP256, |_| {});
    pki::write_cacerts(&ca.ca_dir(), &next, &[&next, &root], &root.pem);
    assert!(
        eventually(Duration::from_secs(5), async || {
            istiod_secret(&kube).is_some_and(|(c, _, _)| {
                leaf(&c).tbs_certificate().issuer().to_string() == "CN=Next Intermediate"
            })
        })
        .await,
        "re-issued by the new intermediate"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_leave_certificates_served_and_writing_resumes() {
    let kube = Arc::new(FakeKube::start().await);
    kube.create_namespace("istio-system", &[]);
    kube.create_namespace("apps", &[]);
    let root = Ca::root("Enterprise Root", KeyAlg::EcP256);
    // A missing permission: one metric, readiness unaffected.
    kube.forbid("create", "configmaps", true);
    let ca = castellan(&kube, &root, "a", PUBLISH).await;
    assert!(
        eventually(Duration::from_secs(10), async || {
            ca.metric_with(
                "castellan_kube_errors_count",
                &[("resource", "configmaps"), ("reason", "forbidden")],
            )
            .await
                >= 1.0
        })
        .await
    );
    assert_eq!(ca.readyz().await, 200);
    kube.forbid("create", "configmaps", false);
    assert!(
        eventually(Duration::from_secs(10), async || published(
            &kube, "apps", &root.pem
        ))
        .await
    );

    // Conflicts on update: re-read and retried.
    kube.fail("update", "configmaps", Some(http::StatusCode::CONFLICT));
    let mut cm = kube.object(Kind::ConfigMap, "apps", BUNDLE).unwrap();
    cm["data"]["root-cert.pem"] = json!("");
    kube.put_object(Kind::ConfigMap, "apps", cm);
    tokio::time::sleep(Duration::from_secs(1)).await;
    kube.fail("update", "configmaps", None);
    assert!(
        eventually(Duration::from_secs(10), async || published(
            &kube, "apps", &root.pem
        ))
        .await
    );

    // The API server goes away: the leader stops leading within the renew
    // deadline; certificates are still issued; it comes back and writes.
    kube.stop();
    assert!(
        eventually(Duration::from_secs(6), async || ca
            .metric("castellan_leader")
            .await
            == 0.0)
        .await,
        "a leader that cannot renew stops writing"
    );
    let (_, csr) = crate::support::csr::ztunnel(&crate::support::id("ns", "sa"));
    ca.send(&csr, "ns", "sa", 600)
        .await
        .expect("certificates keep being served");
    kube.restart().await;
    kube.create_namespace("after", &[]);
    assert!(
        eventually(Duration::from_secs(20), async || published(
            &kube, "after", &root.pem
        ))
        .await
    );
    assert_eq!(ca.metric("castellan_leader").await, 1.0);
}
