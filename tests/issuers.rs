//! Several issuers in one castellan: each namespace's workloads are signed
//! by the issuer bound to it, whatever `CertSigner` says; each issuer's
//! chain ends at its own roots (and those it trusts); one issuer's rotation
//! leaves the others untouched.

use std::{path::Path, time::Duration};

use castellan::cli::request;
use tonic::Code;

use crate::{
    kubernetes::{san, token, with_kube},
    support::{
        TestCa, csr, eventually, id, issuer_of,
        kube::FakeKube,
        pki::{self, Ca, KeyAlg},
        pki_certs, verify,
    },
};

/// An `[[issuers]]` entry signing from files under its own intermediate of
/// `root`, re-read every second.
fn file_issuer(dir: &Path, name: &str, root: &Ca, binding: &str) -> String {
    write_intermediate(dir, name, root, "1");
    format!(
        "[[issuers]]\nname = \"{name}\"\n{binding}\n[issuers.signer]\ntype = \"file\"\ndir = \"{}\"\n[issuers.ca]\nreload_interval_secs = 1\n",
        dir.join(name).display()
    )
}

/// A new intermediate of `root` in `dir/name` (Istio's cacerts layout).
fn write_intermediate(dir: &Path, name: &str, root: &Ca, generation: &str) {
    let int = root.intermediate(
        &format!("{name} Intermediate {generation}"),
        KeyAlg::EcP256,
        |_| {},
    );
    pki::write_cacerts(&dir.join(name), &int, &[&int, root], &root.pem);
}

/// Sends a CSR for `ns/sa` with its own token, naming `cert_signer`.
async fn send(
    ca: &TestCa,
    kube: &FakeKube,
    ns: &str,
    sa: &str,
    cert_signer: &str,
) -> Result<Vec<String>, tonic::Status> {
    let (_, csr) = csr::istio_agent(&id(ns, sa));
    let t = token(ca, kube, ns, sa, None);
    let mut req = request::request_for(&csr, 3600, &t, "Kubernetes").unwrap();
    request::set_cert_signer(&mut req, cert_signer);
    ca.client()
        .await
        .create_certificate(req)
        .await
        .map(|r| r.into_inner().cert_chain)
}

/// The subjects of the certificates in a response's root element.
fn roots_in(chain: &[String]) -> std::collections::BTreeSet<Vec<u8>> {
    pki_certs(chain.last().unwrap())
}

struct Tenants {
    kube: FakeKube,
    ca: TestCa,
    payments: Ca,
    edge: Ca,
    dir: tempfile::TempDir,
}

/// The main issuer (files, "Test Root") serving every other namespace;
/// `payments` under its own root, accepting Istio's RA-form CertSigner;
/// `edge` (istio-ingress) under a third root, trusting `payments`.
async fn tenants() -> Tenants {
    let kube = FakeKube::start().await;
    kube.put_pod(
        "istio-system",
        "ztunnel-n1",
        "zt-uid-1",
        "ztunnel",
        "node-1",
        "Running",
    );
    kube.put_pod("payments", "api-1", "api-uid", "api", "node-1", "Running");
    let dir = tempfile::tempdir().unwrap();
    let payments = Ca::root("Payments Root", KeyAlg::EcP256);
    let edge = Ca::root("Edge Root", KeyAlg::EcP384);
    let extra = format!(
        "[impersonation]\ntrusted_node_accounts = [\"istio-system/ztunnel\"]\n{}{}",
        file_issuer(
            dir.path(),
            "payments",
            &payments,
            "namespaces = [\"payments\"]\ncert_signers = [\"clusterissuers.istio.io/payments\"]",
        ),
        file_issuer(
            dir.path(),
            "edge",
            &edge,
            "namespaces = [\"istio-ingress\"]\ntrusts = [\"payments\"]",
        ),
    );
    let ca = with_kube(&kube, "", &extra).await;
    Tenants {
        kube,
        ca,
        payments,
        edge,
        dir,
    }
}

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

/// `[issuers.trust]` for the issuer just written: its own record, and a
/// CRL set completed by its root's CRL.
fn record(dir: &Path, name: &str, root: &Ca) -> String {
    let crl = dir.join(format!("{name}-root-crl.pem"));
    std::fs::write(&crl, root.crl(time::Duration::days(7), &[])).unwrap();
    format!(
        "[issuers.trust]\nstate_file = \"{}\"\nrecord_interval_secs = 1\n[issuers.trust.crl]\nvalidity_secs = 600\nupstream_files = [\"{}\"]\n",
        dir.join(format!("{name}-state.json")).display(),
        crl.display()
    )
}

fn configmap(kube: &FakeKube, ns: &str, name: &str, key: &str) -> Option<String> {
    kube.object(castellan_testkit::kube::Kind::ConfigMap, ns, name)
        .and_then(|cm| cm["data"][key].as_str().map(str::to_owned))
}

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

/// `[signer]` TOML rewritten as the last `[[issuers]]` entry's.
fn as_issuer_signer(signer: &str) -> String {
    signer.replace("[signer", "[issuers.signer")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_an_hsm_and_a_vault_minted_issuer_serve_their_own_tenants() {
    castellan_testkit::require!(castellan_testkit::tools::Tool::SoftHsm);
    castellan_testkit::require!(castellan_testkit::tools::Tool::OpenBao);
    let _hsm = crate::support::hsm::exclusive().await;
    let dir = tempfile::tempdir().unwrap();

    // payments: a P-256 key in a SoftHSM token, certified by its own root.
    let label = format!("issuers-{}", std::process::id());
    crate::support::hsm::token_with_key(&label, "EC:prime256v1");
    let payments = Ca::root("Payments HSM Root", KeyAlg::EcP256);
    let hsm = crate::support::hsm::signer_files(&dir.path().join("hsm"), &label, &payments, "");

    // retail: intermediates minted by castellan, certified by OpenBao's
    // enterprise issuing CA under the retail root.
    let retail = Ca::root("Retail Root", KeyAlg::EcP256);
    let bao = crate::support::bao::Bao::start().await;
    bao.policy().await;
    bao.enterprise_issuer(&retail).await;
    let token = bao.token_file(dir.path(), "1h").await;
    let retail_roots = dir.path().join("retail-roots.pem");
    std::fs::write(&retail_roots, &retail.pem).unwrap();
    let mint = format!(
        "[signer]\ntype = \"vault\"\naddress = \"{}\"\ntimeout_secs = 3\n[signer.auth]\nmethod = \"token\"\ntoken_file = \"{}\"\n[signer.mint]\nmount = \"pki_ent\"\nttl_secs = 7200\n",
        bao.addr(),
        token.display()
    );
    let extra = format!(
        "[[issuers]]\nname = \"payments\"\nnamespaces = [\"payments\"]\n{}\
         [[issuers]]\nname = \"retail\"\nnamespaces = [\"retail\"]\n{}[issuers.ca]\nroots_file = \"{}\"\n",
        as_issuer_signer(&hsm),
        as_issuer_signer(&mint),
        retail_roots.display()
    );
    let ca = TestCa::start_with(crate::support::Setup {
        issuance: "max_ttl_secs = 3600\ndefault_ttl_secs = 3600\n".into(),
        extra,
        ..Default::default()
    })
    .await;
    let issue = async |ns: &str| {
        let (_, csr) = csr::istio_agent(&id(ns, "app"));
        ca.send(&csr, ns, "app", 3600).await.unwrap().cert_chain
    };
    let cases = [
        ("shop", &ca.root, "CN=Test Intermediate"),
        (
            "payments",
            &payments,
            &*format!("CN=HSM Intermediate {label}"),
        ),
        ("retail", &retail, "castellan"),
    ];
    for (ns, root, issuer) in cases {
        let chain = issue(ns).await;
        verify::assert_good(&chain, &root.der, ns);
        assert_eq!(roots_in(&chain), pki_certs(&root.pem), "{ns}");
        assert!(
            issuer_of(&chain).contains(issuer),
            "{ns}: {}",
            issuer_of(&chain)
        );
        for (other, other_root, _) in cases {
            if other != ns {
                assert!(
                    verify::webpki(&chain, &other_root.der).is_err(),
                    "a {ns} leaf verifies under {other}'s root"
                );
            }
        }
    }
    ca.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_and_trust_init_cover_every_issuer_and_a_copied_key_is_refused() {
    let files = crate::support::Files::write(crate::support::Setup {
        init_trust: false,
        ..Default::default()
    });
    let dir = files.dir.path();
    let payments = Ca::root("Payments Root", KeyAlg::EcP256);
    let mut text = std::fs::read_to_string(&files.config).unwrap();
    text.push_str(&format!(
        "[trust]\nstate_file = \"{}\"\n{}[issuers.trust]\nstate_file = \"{}\"\n",
        dir.join("state.json").display(),
        file_issuer(dir, "payments", &payments, "namespaces = [\"payments\"]"),
        dir.join("payments-state.json").display(),
    ));
    std::fs::write(&files.config, &text).unwrap();
    let castellan = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_castellan"))
            .args(args)
            .arg("--config")
            .arg(&files.config)
            .output()
            .unwrap()
    };
    let out = castellan(&["trust", "init"]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains("state.json") && said.contains("payments-state.json"),
        "{said}"
    );
    assert!(dir.join("payments-state.json").exists());

    let out = castellan(&["check"]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains("ISSUER default  serves every namespace no other issuer is bound to"),
        "{said}"
    );
    assert!(
        said.contains("ISSUER payments  namespaces payments"),
        "{said}"
    );
    assert!(said.contains("CA    CN=payments Intermediate 1"), "{said}");
    assert_eq!(said.matches("ROOTS ").count(), 2, "{said}");

    // The same key under another name (a copy of the main issuer's files):
    // the configuration cannot tell, the keys can.
    let copy = dir.join("copy");
    std::fs::create_dir_all(&copy).unwrap();
    for f in std::fs::read_dir(dir.join("ca")).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), copy.join(f.file_name())).unwrap();
    }
    text.push_str(&format!(
        "[[issuers]]\nname = \"twin\"\nnamespaces = [\"twin\"]\n[issuers.signer]\ntype = \"file\"\ndir = \"{}\"\n",
        copy.display()
    ));
    std::fs::write(&files.config, &text).unwrap();
    let config = castellan::config::Config::load(&files.config).unwrap();
    let e = castellan::server::start(&config)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("issuers \"default\" and \"twin\" sign with the same key"),
        "{e}"
    );
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

/// Two issuers with keys on one PKCS#11 module share its process-wide
/// state. While the token directory is gone both keys keep recovering (the
/// module finalised and initialised again), under load on both: no call of
/// one may be inside the module while the other finalises it (SoftHSM
/// crashes), and once the tokens are back both serve again, without
/// breaking each other's fresh sessions.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hsm_issuers_on_one_module_recover_together_under_load() {
    const TASKS: usize = 4;
    castellan_testkit::require!(castellan_testkit::tools::Tool::SoftHsm);
    let _hsm = crate::support::hsm::exclusive().await;
    let dir = tempfile::tempdir().unwrap();
    let mut extra = String::new();
    for name in ["north", "south"] {
        let label = format!("{name}-{}", std::process::id());
        crate::support::hsm::token_with_key(&label, "EC:prime256v1");
        let root = Ca::root(&format!("{name} root"), KeyAlg::EcP256);
        let signer = crate::support::hsm::signer_files(&dir.path().join(name), &label, &root, "");
        extra.push_str(&format!(
            "[[issuers]]\nname = \"{name}\"\nnamespaces = [\"{name}\"]\n{}",
            as_issuer_signer(&signer)
        ));
    }
    let ca = std::sync::Arc::new(
        TestCa::start_with(crate::support::Setup {
            issuance: "max_ttl_secs = 3600\ndefault_ttl_secs = 3600\n".into(),
            extra,
            ..Default::default()
        })
        .await,
    );
    let served = std::sync::Arc::new([(); 2].map(|()| std::sync::atomic::AtomicUsize::new(0)));
    let refused = std::sync::Arc::new([(); 2].map(|()| std::sync::atomic::AtomicUsize::new(0)));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for (i, ns) in ["north", "south"].into_iter().enumerate() {
        for _ in 0..TASKS {
            let (ca, stop, served, refused) =
                (ca.clone(), stop.clone(), served.clone(), refused.clone());
            tasks.push(tokio::spawn(async move {
                let (_, csr) = csr::istio_agent(&id(ns, "app"));
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    match ca.send(&csr, ns, "app", 3600).await {
                        Ok(_) => served[i].fetch_add(1, std::sync::atomic::Ordering::SeqCst),
                        Err(_) => refused[i].fetch_add(1, std::sync::atomic::Ordering::SeqCst),
                    };
                }
            }));
        }
    }
    let count = |of: &[std::sync::atomic::AtomicUsize; 2]| {
        of.each_ref()
            .map(|c| c.load(std::sync::atomic::Ordering::SeqCst))
    };
    assert!(
        eventually(Duration::from_secs(20), async || count(&served)
            .iter()
            .all(|&n| n >= 50))
        .await,
        "both issuers serve under load"
    );

    let away = crate::support::hsm::TokensAway::take();
    // The tokens stay away for a few of each key's recoveries (at most one a
    // second), every one of them under the other issuer's load.
    let gone = count(&refused);
    assert!(
        eventually(Duration::from_secs(20), async || count(&refused)
            .iter()
            .zip(gone)
            .all(|(&n, before)| n > before))
        .await,
        "both issuers notice the tokens are gone"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    away.restore();
    let back = count(&served);
    assert!(
        eventually(Duration::from_secs(20), async || count(&served)
            .iter()
            .zip(back)
            .all(|(&n, before)| n >= before + 50))
        .await,
        "both issuers serve again: served {:?}, refused {:?}",
        count(&served),
        count(&refused)
    );
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for task in tasks {
        task.await.unwrap();
    }
    // And nothing fails any more, one issuer after the other.
    for round in 0..20 {
        for ns in ["north", "south"] {
            let (_, csr) = csr::istio_agent(&id(ns, "app"));
            if let Err(s) = ca.send(&csr, ns, "app", 3600).await {
                panic!("{ns}, round {round}, after both recovered: {s:?}");
            }
        }
    }
    std::sync::Arc::into_inner(ca).unwrap().close().await;
}
