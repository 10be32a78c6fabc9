//! What each namespace is given in the mesh: its issuer's roots and CRLs,
//! label bindings that follow relabelling, a bundle name per issuer.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_namespace_holds_the_roots_and_crls_its_workloads_need() {
    let kube = FakeKube::start().await;
    for ns in ["istio-system", "shop", "payments", "istio-ingress"] {
        kube.create_namespace(ns, &[]);
    }
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = kube.kubeconfig(dir.path(), "castellan-0");
    let payments = Ca::root("Payments Root", KeyAlg::EcP256);
    let edge = Ca::root("Edge Root", KeyAlg::EcP256);
    let extra = format!(
        "[kubernetes]\nkubeconfig = \"{}\"\nnamespace = \"istio-system\"\nidentity = \"castellan-0\"\n\
         [kubernetes.trust_bundle]\n\
         [trust]\nstate_file = \"{}\"\nrecord_interval_secs = 1\n[trust.crl]\nvalidity_secs = 600\n\
         upstream_files = [\"@DIR@/root-crl.pem\"]\n{}{}{}{}",
        kubeconfig.display(),
        dir.path().join("state.json").display(),
        file_issuer(
            dir.path(),
            "payments",
            &payments,
            "namespaces = [\"payments\"]"
        ),
        record(dir.path(), "payments", &payments),
        file_issuer(
            dir.path(),
            "edge",
            &edge,
            "namespaces = [\"istio-ingress\"]\ntrusts = [\"payments\"]"
        ),
        record(dir.path(), "edge", &edge),
    );
    let ca = TestCa::start_with(crate::support::Setup {
        extra,
        ..Default::default()
    })
    .await;
    let main_root = ca.root.pem.clone();
    let roots = |pems: &[&str]| pems.iter().flat_map(|p| pki_certs(p)).collect();
    let expected: [(&str, std::collections::BTreeSet<Vec<u8>>); 4] = [
        ("shop", roots(&[&main_root])),
        ("istio-system", roots(&[&main_root])),
        // The main root too: it chains castellan's and istiod's certificates.
        ("payments", roots(&[&payments.pem, &main_root])),
        (
            "istio-ingress",
            roots(&[&edge.pem, &payments.pem, &main_root]),
        ),
    ];
    let crls_of = |ns: &str| configmap(&kube, ns, "istio-ca-crl", "ca-crl.pem");
    assert!(
        eventually(Duration::from_secs(15), async || {
            expected.iter().all(|(ns, want)| {
                configmap(&kube, ns, "istio-ca-root-cert", "root-cert.pem")
                    .is_some_and(|got| pki_certs(&got) == *want)
                    && crls_of(ns).is_some()
            })
        })
        .await,
        "every namespace's bundle and CRLs, as its issuer binding says"
    );

    // Envoy's rule, a CRL for every CA of the chain: each namespace's CRL
    // file covers the chains its workloads receive and accept.
    let issue = async |ns: &str| {
        let (_, csr) = csr::istio_agent(&id(ns, "app"));
        ca.send(&csr, ns, "app", 3600).await.unwrap().cert_chain
    };
    let (shop, pay, gw) = (
        issue("shop").await,
        issue("payments").await,
        issue("istio-ingress").await,
    );
    let crl = |ns: &str| crls_of(ns).unwrap();
    verify::envoy(&shop, &main_root, &crl("shop")).unwrap();
    verify::envoy(&pay, &payments.pem, &crl("payments")).unwrap();
    let gw_roots = gw.last().unwrap().clone();
    verify::envoy(&gw, &gw_roots, &crl("istio-ingress")).unwrap();
    // The gateway accepts payments' workloads: its CRL file covers them too.
    verify::envoy(&pay, &gw_roots, &crl("istio-ingress")).unwrap();
    // And a tenant's file does not vouch for another tenant's chain.
    assert!(verify::envoy(&shop, &main_root, &crl("payments")).is_err());

    // Revocation goes to the issuer's own record: a serial needs --issuer
    // when there are several; an identity finds its issuer by namespace.
    let config = ca.dir.path().join("castellan.toml");
    let revoke = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_castellan"))
            .args(["revoke", "--config"])
            .arg(&config)
            .args(args)
            .output()
            .unwrap()
    };
    let serial = crate::support::serial_of(&pay);
    let out = revoke(&["--serial", &serial]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("say whose leaf it is with --issuer"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = revoke(&["--serial", &serial, "--issuer", "payments"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("payments-state.json"));
    assert!(
        eventually(Duration::from_secs(15), async || verify::envoy(
            &pay,
            &payments.pem,
            &crl("payments")
        )
        .is_err_and(|e| e.contains("revoked")))
        .await,
        "the payments leaf revoked in payments' CRL"
    );
    verify::envoy(&shop, &main_root, &crl("shop")).unwrap();
    let out = revoke(&["--identity", &id("payments", "app")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, csr) = csr::istio_agent(&id("payments", "app"));
    assert!(
        eventually(Duration::from_secs(15), async || ca
            .send(&csr, "payments", "app", 3600)
            .await
            .is_err_and(|s| s.code() == Code::PermissionDenied))
        .await,
        "the payments identity refused by its issuer"
    );
    issue("shop").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_bound_by_label_follow_their_labels() {
    let kube = FakeKube::start().await;
    kube.create_namespace("istio-system", &[]);
    kube.create_namespace("shop", &[]);
    kube.create_namespace("pay-eu", &[("tenant", "payments")]);
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = kube.kubeconfig(dir.path(), "castellan-0");
    let payments = Ca::root("Payments Root", KeyAlg::EcP256);
    let pci = Ca::root("PCI Root", KeyAlg::EcP256);
    let extra = format!(
        "[kubernetes]\nkubeconfig = \"{}\"\nnamespace = \"istio-system\"\nidentity = \"castellan-0\"\n\
         [kubernetes.trust_bundle]\n{}{}",
        kubeconfig.display(),
        file_issuer(
            dir.path(),
            "payments",
            &payments,
            "namespace_labels = { tenant = \"payments\" }"
        ),
        file_issuer(
            dir.path(),
            "pci",
            &pci,
            "namespace_labels = { zone = \"pci\" }"
        ),
    );
    let ca = TestCa::start_with(crate::support::Setup {
        extra,
        ..Default::default()
    })
    .await;
    let issue = async |ns: &str| {
        let (_, csr) = csr::istio_agent(&id(ns, "app"));
        ca.send(&csr, ns, "app", 3600).await.map(|r| r.cert_chain)
    };
    let roots_of = async |ns: &str| issue(ns).await.map(|c| roots_in(&c));
    assert!(
        eventually(Duration::from_secs(10), async || roots_of("pay-eu")
            .await
            .is_ok_and(|r| r == pki_certs(&payments.pem)))
        .await,
        "a namespace labelled tenant=payments is signed by payments"
    );
    assert_eq!(roots_of("shop").await.unwrap(), pki_certs(&ca.root.pem));
    let bundle = |ns: &str| {
        configmap(&kube, ns, "istio-ca-root-cert", "root-cert.pem").map(|b| pki_certs(&b))
    };
    let with_main = |pem: &str| -> std::collections::BTreeSet<_> {
        pki_certs(pem)
            .into_iter()
            .chain(pki_certs(&ca.root.pem))
            .collect()
    };
    assert!(
        eventually(Duration::from_secs(10), async || bundle("pay-eu")
            == Some(with_main(&payments.pem)))
        .await
    );

    // Relabelled: its requests and its bundle follow.
    kube.label_namespace("shop", "zone", Some("pci"));
    assert!(
        eventually(Duration::from_secs(10), async || roots_of("shop")
            .await
            .is_ok_and(|r| r == pki_certs(&pci.pem)))
        .await
    );
    assert!(
        eventually(Duration::from_secs(10), async || bundle("shop")
            == Some(with_main(&pci.pem)))
        .await,
        "the relabelled namespace's bundle"
    );
    // Claimed by two label bindings: refused, naming both, not guessed.
    kube.label_namespace("shop", "tenant", Some("payments"));
    assert!(
        eventually(Duration::from_secs(10), async || issue("shop")
            .await
            .is_err_and(|s| s.code() == Code::PermissionDenied
                && s.message().contains("`payments` and `pci`")))
        .await
    );
    kube.label_namespace("shop", "zone", None);
    kube.label_namespace("shop", "tenant", None);
    assert!(
        eventually(Duration::from_secs(10), async || roots_of("shop")
            .await
            .is_ok_and(|r| r == pki_certs(&ca.root.pem)))
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_issuer_with_a_bundle_name_of_its_own_publishes_only_there() {
    use castellan_testkit::kube::Kind;
    let kube = FakeKube::start().await;
    for ns in ["istio-system", "shop", "tenant-a"] {
        kube.create_namespace(ns, &[]);
    }
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = kube.kubeconfig(dir.path(), "castellan-0");
    let a = Ca::root("Tenant A Root", KeyAlg::EcP256);
    let extra = format!(
        "[kubernetes]\nkubeconfig = \"{}\"\nnamespace = \"istio-system\"\nidentity = \"castellan-0\"\n\
         [kubernetes.trust_bundle]\ncluster_trust_bundle = true\n{}",
        kubeconfig.display(),
        file_issuer(
            dir.path(),
            "tenant-a",
            &a,
            "namespaces = [\"tenant-a\"]\nbundle_name = \"istio-ca-root-cert-a\""
        ),
    );
    let ca = TestCa::start_with(crate::support::Setup {
        extra,
        ..Default::default()
    })
    .await;
    let main = pki_certs(&ca.root.pem);
    let a_and_main: std::collections::BTreeSet<_> =
        pki_certs(&a.pem).into_iter().chain(main.clone()).collect();
    let held =
        |ns: &str, name: &str| configmap(&kube, ns, name, "root-cert.pem").map(|b| pki_certs(&b));
    let ctb = |name: &str| {
        kube.object(
            Kind::ClusterTrustBundle,
            "",
            &format!("istio.io:istiod-ca:{name}"),
        )
        .map(|c| pki_certs(c["spec"]["trustBundle"].as_str().unwrap_or_default()))
    };
    assert!(
        eventually(Duration::from_secs(10), async || {
            held("tenant-a", "istio-ca-root-cert-a") == Some(a_and_main.clone())
                && held("shop", "istio-ca-root-cert") == Some(main.clone())
                && ctb("istio-ca-root-cert-a") == Some(a_and_main.clone())
                && ctb("istio-ca-root-cert") == Some(main.clone())
        })
        .await,
        "each bundle name in its own namespaces and ClusterTrustBundle"
    );
    assert_eq!(held("tenant-a", "istio-ca-root-cert"), None);
    assert_eq!(held("shop", "istio-ca-root-cert-a"), None);
}
