//! Which issuer signs: the identity's namespace decides, `CertSigner` is
//! only checked, a client certificate speaks only under its own issuer's
//! roots, and one issuer's rotation leaves the others untouched.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_namespace_is_signed_by_its_own_issuer_whatever_cert_signer_says() {
    let t = tenants().await;
    let (ca, kube) = (&t.ca, &t.kube);

    // Unbound namespaces: the main issuer, its root alone.
    let shop = send(ca, kube, "shop", "cart", "").await.unwrap();
    verify::assert_good(&shop, &ca.root.der, "main issuer");
    assert_eq!(roots_in(&shop), pki_certs(&ca.root.pem));
    assert_eq!(issuer_of(&shop), "CN=Test Intermediate");

    // A bound namespace: its issuer's chain, ending at its root alone —
    // with no CertSigner, the bare name, or Istio's RA form.
    for signer in ["", "payments", "clusterissuers.istio.io/payments"] {
        let chain = send(ca, kube, "payments", "api", signer).await.unwrap();
        verify::assert_good(&chain, &t.payments.der, "payments issuer");
        assert_eq!(roots_in(&chain), pki_certs(&t.payments.pem), "{signer}");
        assert!(
            verify::webpki(&chain, &ca.root.der).is_err(),
            "a payments leaf must not verify under the main root"
        );
        assert_eq!(san(&chain), [id("payments", "api")]);
    }

    // CertSigner is the pod author's word: naming another issuer, or one
    // the namespace is not bound to, is refused with what is allowed.
    let forged = send(ca, kube, "payments", "api", "default")
        .await
        .unwrap_err();
    assert_eq!(forged.code(), Code::PermissionDenied, "{forged:?}");
    assert!(
        forged
            .message()
            .contains("`payments`, `clusterissuers.istio.io/payments`"),
        "{}",
        forged.message()
    );
    let elsewhere = send(ca, kube, "shop", "cart", "payments")
        .await
        .unwrap_err();
    assert_eq!(elsewhere.code(), Code::PermissionDenied);
    assert!(
        elsewhere.message().contains("`default`"),
        "{}",
        elsewhere.message()
    );

    // A gateway's issuer trusting payments: both roots, its own first.
    let gateway = send(ca, kube, "istio-ingress", "gateway", "")
        .await
        .unwrap();
    verify::assert_good(&gateway, &t.edge.der, "edge issuer");
    let both: std::collections::BTreeSet<_> = pki_certs(&t.edge.pem)
        .into_iter()
        .chain(pki_certs(&t.payments.pem))
        .collect();
    assert_eq!(roots_in(&gateway), both);
    assert!(
        gateway
            .last()
            .unwrap()
            .starts_with(&t.edge.pem.trim_end()[..60])
    );

    // An impersonated identity selects by its own namespace, not ztunnel's.
    let zt = token(
        ca,
        kube,
        "istio-system",
        "ztunnel",
        Some(("ztunnel-n1", "zt-uid-1")),
    );
    let (_, zcsr) = csr::ztunnel(&id("payments", "api"));
    let mut req = request::request_for(&zcsr, 3600, &zt, "Kubernetes").unwrap();
    let meta = req.get_mut().metadata.as_mut().unwrap();
    meta.fields.clear();
    meta.fields.insert(
        "ImpersonatedIdentity".into(),
        prost_types::Value {
            kind: Some(prost_types::value::Kind::StringValue(id("payments", "api"))),
        },
    );
    let impersonated = ca
        .client()
        .await
        .create_certificate(req)
        .await
        .unwrap()
        .into_inner()
        .cert_chain;
    assert_eq!(roots_in(&impersonated), pki_certs(&t.payments.pem));
    verify::assert_good(&impersonated, &t.payments.der, "impersonated");

    // Counted by issuer; the refusals by their cause.
    let m = |name: &'static str, issuer: &'static str| async move {
        ca.metric_with(name, &[("issuer", issuer)]).await
    };
    assert_eq!(m("castellan_issued_by_issuer_count", "payments").await, 4.0);
    assert_eq!(m("castellan_issued_by_issuer_count", "edge").await, 1.0);
    assert_eq!(m("castellan_issued_by_issuer_count", "default").await, 1.0);
    assert_eq!(ca.metric("castellan_issuer_refusals_count").await, 2.0);
    assert_eq!(m("castellan_signer_healthy", "payments").await, 1.0);
    assert!(m("citadel_server_root_cert_expiry_timestamp", "edge").await > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_one_issuer_leaves_the_others_byte_identical() {
    let t = tenants().await;
    let (ca, kube) = (&t.ca, &t.kube);
    let before = |chain: &[String]| chain[1..].to_vec();
    let shop = before(&send(ca, kube, "shop", "cart", "").await.unwrap());
    let pay = before(&send(ca, kube, "payments", "api", "").await.unwrap());
    let edge = send(ca, kube, "istio-ingress", "gw", "").await.unwrap();
    assert_eq!(issuer_of(&edge), "CN=edge Intermediate 1");

    write_intermediate(t.dir.path(), "edge", &t.edge, "2");
    assert!(
        eventually(Duration::from_secs(10), async || {
            let c = send(ca, kube, "istio-ingress", "gw", "").await.unwrap();
            issuer_of(&c) == "CN=edge Intermediate 2"
        })
        .await,
        "the edge issuer never picked up its new intermediate"
    );
    let edge2 = send(ca, kube, "istio-ingress", "gw", "").await.unwrap();
    verify::assert_good(&edge2, &t.edge.der, "rotated edge issuer");
    assert_eq!(
        before(&send(ca, kube, "shop", "cart", "").await.unwrap()),
        shop
    );
    assert_eq!(
        before(&send(ca, kube, "payments", "api", "").await.unwrap()),
        pay
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_bound_to_no_issuer_is_refused_when_the_main_issuer_is_bound() {
    let kube = FakeKube::start().await;
    let dir = tempfile::tempdir().unwrap();
    let other = Ca::root("Other Root", KeyAlg::EcP256);
    let extra = format!(
        "[binding]\nnamespaces = [\"shop\"]\n{}",
        file_issuer(dir.path(), "other", &other, "namespaces = [\"bank\"]")
    );
    let ca = with_kube(&kube, "", &extra).await;
    send(&ca, &kube, "shop", "cart", "").await.unwrap();
    let bank = send(&ca, &kube, "bank", "teller", "").await.unwrap();
    assert_eq!(roots_in(&bank), pki_certs(&other.pem));
    let s = send(&ca, &kube, "elsewhere", "app", "").await.unwrap_err();
    assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");
    assert!(
        s.message().contains("bound to no issuer"),
        "{}",
        s.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_speaks_for_a_namespace_only_under_its_issuers_roots() {
    let dir = tempfile::tempdir().unwrap();
    let payments = Ca::root("Payments Root", KeyAlg::EcP256);
    let ca = TestCa::start_with(crate::support::Setup {
        authn: "\n[[authn]]\ntype = \"client_cert\"\n".into(),
        extra: file_issuer(
            dir.path(),
            "payments",
            &payments,
            "namespaces = [\"payments\"]",
        ),
        ..Default::default()
    })
    .await;
    let renew = async |chain: &str, key: &str, ns: &str| {
        let (_, csr) = csr::istio_agent(&id(ns, "api"));
        let mut req = request::request_for(&csr, 3600, "x", "Kubernetes").unwrap();
        req.metadata_mut().remove("authorization");
        ca.client_with_certificate(chain, key)
            .await
            .create_certificate(req)
            .await
            .map(|r| r.into_inner().cert_chain)
    };
    // Renewals with certificates each issuer issued: granted, by each.
    for (ns, root) in [("payments", &payments), ("shop", &ca.root)] {
        let (key, csr) = csr::istio_agent(&id(ns, "api"));
        let first = ca.send(&csr, ns, "api", 3600).await.unwrap().cert_chain;
        let renewed = renew(
            &format!("{}{}", first[0], first[1]),
            &key.serialize_pem(),
            ns,
        )
        .await
        .unwrap();
        assert_eq!(roots_in(&renewed), pki_certs(&root.pem), "{ns}");
    }
    // A certificate naming a payments identity, made under the main
    // issuer's intermediate: TLS lets it through (every issuer's roots),
    // the binding does not.
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.subject_alt_names = vec![rcgen::SanType::URI(
        rcgen::string::Ia5String::try_from(id("payments", "api")).unwrap(),
    )];
    params.is_ca = rcgen::IsCa::ExplicitNoCa;
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let forged = ca.intermediate.sign(params, pki::key(KeyAlg::EcP256));
    let s = renew(
        &format!("{}{}", forged.pem, ca.intermediate.pem),
        &forged.key.serialize_pem(),
        "payments",
    )
    .await
    .unwrap_err();
    assert_eq!(s.code(), Code::Unauthenticated, "{s:?}");
    assert_eq!(
        ca.metric("citadel_server_authentication_failure_count")
            .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn castellan_request_names_the_issuer_as_istio_agent_does() {
    let dir = tempfile::tempdir().unwrap();
    let payments = Ca::root("Payments Root", KeyAlg::EcP256);
    let ca = TestCa::start_with(crate::support::Setup {
        extra: file_issuer(
            dir.path(),
            "payments",
            &payments,
            "namespaces = [\"payments\"]\ncert_signers = [\"clusterissuers.istio.io/payments\"]",
        ),
        ..Default::default()
    })
    .await;
    // What a payments namespace's istio-ca-root-cert holds: its issuer's
    // roots, and the main one's, which chain castellan's own certificate.
    let bundle = dir.path().join("bundle.pem");
    std::fs::write(&bundle, format!("{}{}", payments.pem, ca.root.pem)).unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, ca.token("payments", "api")).unwrap();
    let request = |signer: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_castellan"))
            .args(["request", "--addr", &ca.addr(), "--root"])
            .arg(&bundle)
            .arg("--token")
            .arg(&token)
            .args(["--cert-signer", signer, "--out"])
            .arg(dir.path().join("out"))
            .output()
            .unwrap()
    };
    let out = request("payments");
    assert!(out.status.success(), "{out:?}");
    let root = std::fs::read_to_string(dir.path().join("out/root-cert.pem")).unwrap();
    assert_eq!(pki_certs(&root), pki_certs(&payments.pem));
    assert!(request("clusterissuers.istio.io/payments").status.success());
    let refused = request("default");
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        said.contains("permission")
            && said.contains(
                "accepts `payments`, `clusterissuers.istio.io/payments` (or no CertSigner)"
            ),
        "{said}"
    );
}
