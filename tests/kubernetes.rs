//! Kubernetes identity against the in-process API server: TokenReview with
//! its cache and single flight, API outages, two clusters chosen by
//! `clusterid`, ztunnel's impersonation with node authorization, and renewal
//! by client certificate.

use std::{sync::Arc, time::Duration};

use castellan::cli::request;
use der::Decode;
use rustls_pki_types::{CertificateDer, pem::PemObject};
use tonic::Code;
use x509_cert::{
    Certificate,
    ext::pkix::{SubjectAltName, name::GeneralName},
};

use crate::support::{
    Setup, TestCa, csr, eventually, http_get, id,
    kube::{FakeKube, Mode, TokenInfo},
};

/// A TestCa whose only authenticator is TokenReview against `kube` (and
/// optionally more clusters), with `extra` configuration.
pub(crate) async fn with_kube(kube: &FakeKube, more: &str, extra: &str) -> TestCa {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = kube.kubeconfig(dir.path(), "local");
    let ca = TestCa::start_with(Setup {
        authn_sections: Some(format!(
            "[[authn]]\ntype = \"tokenreview\"\nkubeconfig = \"{}\"\ncluster_aliases = [\"local-alias\"]\ntimeout_secs = 1\n{more}",
            kubeconfig.display()
        )),
        extra: extra.to_owned(),
        ..Setup::default()
    })
    .await;
    std::mem::forget(dir);
    ca
}

/// A projected-token-shaped JWT (castellan reads its `exp` once the API
/// server has vouched for it), registered with the API server.
pub(crate) fn token(
    ca: &TestCa,
    kube: &FakeKube,
    ns: &str,
    sa: &str,
    pod: Option<(&str, &str)>,
) -> String {
    let t = ca.token(ns, sa);
    kube.add_token(&t, ns, sa, pod);
    t
}

pub(crate) async fn send_with(
    ca: &TestCa,
    csr: &str,
    token: &str,
    cluster: Option<&str>,
) -> Result<Vec<String>, tonic::Status> {
    let mut req = request::request_for(csr, 600, token, "x").unwrap();
    match cluster {
        Some(c) => {
            req.metadata_mut().insert("clusterid", c.parse().unwrap());
        }
        None => {
            req.metadata_mut().remove("clusterid");
        }
    }
    ca.client()
        .await
        .create_certificate(req)
        .await
        .map(|r| r.into_inner().cert_chain)
}

pub(crate) fn san(chain: &[String]) -> Vec<String> {
    let leaf = CertificateDer::from_pem_slice(chain[0].as_bytes()).unwrap();
    let cert = Certificate::from_der(&leaf).unwrap();
    let (_, san) = cert
        .tbs_certificate()
        .get_extension::<SubjectAltName>()
        .unwrap()
        .unwrap();
    san.0
        .into_iter()
        .filter_map(|n| match n {
            GeneralName::UniformResourceIdentifier(u) => Some(u.to_string()),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn tokenreview_authenticates_service_accounts_and_refuses_the_rest() {
    let kube = FakeKube::start().await;
    let ca = with_kube(&kube, "", "").await;
    let (_, csr) = csr::ztunnel(&id("shop", "cart"));
    let good = token(&ca, &kube, "shop", "cart", Some(("cart-1", "uid-1")));
    let chain = send_with(&ca, &csr, &good, Some("Kubernetes"))
        .await
        .unwrap();
    assert_eq!(san(&chain), [id("shop", "cart")]);
    // No header means the local cluster; an alias names it too.
    send_with(&ca, &csr, &good, None).await.unwrap();
    send_with(&ca, &csr, &good, Some("local-alias"))
        .await
        .unwrap();

    // Tokens the API server vouches for, but not as castellan needs.
    let cases = [
        (
            "wrong audience",
            "system:serviceaccount:shop:cart",
            "system:serviceaccounts",
            "vault",
        ),
        (
            "a user, not a service account",
            "alice@example.com",
            "system:authenticated",
            "istio-ca",
        ),
        (
            "not in system:serviceaccounts",
            "system:serviceaccount:shop:cart",
            "system:authenticated",
            "istio-ca",
        ),
        (
            "five-part username",
            "system:serviceaccount:shop:cart:extra",
            "system:serviceaccounts",
            "istio-ca",
        ),
    ];
    let mut refused = vec![("unknown token", "never-issued".to_owned())];
    for (n, (case, username, group, audience)) in cases.into_iter().enumerate() {
        let t = ca.token("shop", &format!("case{n}"));
        let info = TokenInfo {
            username: username.into(),
            groups: vec![group.into()],
            audiences: vec![audience.into()],
            pod: None,
        };
        kube.add_token_info(&t, info);
        refused.push((case, t));
    }
    for (case, t) in refused {
        let s = send_with(&ca, &csr, &t, Some("Kubernetes"))
            .await
            .unwrap_err();
        assert_eq!(s.code(), Code::Unauthenticated, "{case}: {s:?}");
        assert_eq!(s.message(), "authentication failed", "{case}");
    }
    // The good token for another identity's CSR is still denied by policy.
    let (_, other) = csr::ztunnel(&id("shop", "admin"));
    assert_eq!(
        send_with(&ca, &other, &good, None)
            .await
            .unwrap_err()
            .code(),
        Code::PermissionDenied
    );
    // An unknown cluster is refused without asking anyone.
    let before = kube.reviews();
    let s = send_with(&ca, &csr, &good, Some("elsewhere"))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::Unauthenticated);
    assert_eq!(kube.reviews(), before);
}

#[tokio::test]
async fn verdicts_are_cached_and_concurrent_misses_share_one_review() {
    let kube = FakeKube::start().await;
    let ca = Arc::new(with_kube(&kube, "", "").await);
    let (_, csr) = csr::ztunnel(&id("ns", "sa"));
    let t = token(&ca, &kube, "ns", "sa", None);
    for _ in 0..10 {
        send_with(&ca, &csr, &t, None).await.unwrap();
    }
    assert_eq!(kube.reviews(), 1, "positive verdicts are cached");

    // A rejected token is remembered briefly too.
    for _ in 0..5 {
        send_with(&ca, &csr, "bogus", None).await.unwrap_err();
    }
    assert_eq!(kube.reviews(), 2, "negative verdicts are cached");

    // 50 concurrent requests with one new token: one TokenReview.
    kube.set_review_delay(Duration::from_millis(300));
    let fresh = token(&ca, &kube, "ns", "sa", None);
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (ca, csr, fresh) = (ca.clone(), csr.clone(), fresh.clone());
        tasks.push(tokio::spawn(async move {
            send_with(&ca, &csr, &fresh, None).await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(kube.reviews(), 3, "single flight");
    let (_, m) = http_get(&format!("{}/metrics", ca.metrics_url())).await;
    assert!(m.contains("castellan_authn_cache_misses_count 3"), "{m}");
    // Every other request was a hit, those that waited for the one review
    // in flight included: 65 requests in all.
    assert!(m.contains("castellan_authn_cache_hits_count 62"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_from_100_workloads_makes_100_token_reviews() {
    let kube = FakeKube::start().await;
    let ca = Arc::new(with_kube(&kube, "", "").await);
    let mut work = Vec::new();
    for i in 0..100 {
        let sa = format!("w{i}");
        let (_, csr) = csr::ztunnel(&id("burst", &sa));
        work.push((token(&ca, &kube, "burst", &sa, None), csr));
    }
    let work = Arc::new(work);
    let mut tasks = Vec::new();
    for caller in 0..32 {
        let (ca, work) = (ca.clone(), work.clone());
        tasks.push(tokio::spawn(async move {
            let mut client = ca.client().await;
            for n in 0..63 {
                let (t, csr) = &work[(caller * 63 + n) % work.len()];
                let req = request::request_for(csr, 600, t, "Kubernetes").unwrap();
                client.create_certificate(req).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // 32 × 63 = 2,016 CSRs (the benchmark runs 10,000).
    assert_eq!(kube.reviews(), 100);
}

#[tokio::test]
async fn api_server_outage_is_unavailable_then_recovers() {
    let kube = FakeKube::start().await;
    let ca = with_kube(&kube, "", "").await;
    let (_, csr) = csr::ztunnel(&id("ns", "sa"));

    for (mode, name) in [(Mode::Unavailable, "503"), (Mode::Hang, "timeout")] {
        kube.set_mode(mode);
        let t = token(&ca, &kube, "ns", "sa", None);
        let s = send_with(&ca, &csr, &t, None).await.unwrap_err();
        assert_eq!(s.code(), Code::Unavailable, "{name}: {s:?}");
        kube.set_mode(Mode::Normal);
        let ok = eventually(Duration::from_secs(5), async || {
            send_with(&ca, &csr, &t, None).await.is_ok()
        })
        .await;
        assert!(ok, "{name}: recovers once the API server answers");
    }

    // The API server goes away entirely (connection refused), then comes back.
    kube.stop();
    let t = token(&ca, &kube, "ns", "sa", None);
    let s = send_with(&ca, &csr, &t, None).await.unwrap_err();
    assert_eq!(s.code(), Code::Unavailable, "{s:?}");
    kube.restart().await;
    let ok = eventually(Duration::from_secs(5), async || {
        send_with(&ca, &csr, &t, None).await.is_ok()
    })
    .await;
    assert!(ok, "recovers without a restart of castellan");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reviews_past_the_deadline_are_busy_not_down() {
    let kube = FakeKube::start().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = Arc::new(
        TestCa::start_with(Setup {
            authn_sections: Some(format!(
                "[[authn]]\ntype = \"tokenreview\"\nkubeconfig = \"{}\"\nmax_concurrent = 1\ntimeout_secs = 5\n",
                kube.kubeconfig(dir.path(), "local").display()
            )),
            server: "request_timeout_secs = 3".into(),
            ..Setup::default()
        })
        .await,
    );
    // One review at a time, 0.8 s each: within 3 s three or so are
    // answered; the rest wait out their deadline in line.
    kube.set_review_delay(Duration::from_millis(800));
    let mut tasks = Vec::new();
    for i in 0..8 {
        let sa = format!("w{i}");
        let (_, csr) = csr::ztunnel(&id("ns", &sa));
        let t = token(&ca, &kube, "ns", &sa, None);
        let ca = ca.clone();
        tasks.push(tokio::spawn(
            async move { send_with(&ca, &csr, &t, None).await },
        ));
    }
    let (mut issued, mut busy) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => issued += 1,
            Err(s) if s.code() == Code::ResourceExhausted => {
                assert_eq!(s.message(), "authentication backend busy; retry");
                busy += 1;
            }
            // A review started just before the deadline may not end in time.
            Err(s) if s.code() == Code::DeadlineExceeded => {}
            Err(s) => panic!("overload answered as {s:?}"),
        }
    }
    assert!(issued >= 2, "{issued} issued");
    assert!(busy >= 3, "{busy} busy");
    // castellan has one review in progress at a time; the API server may
    // still be answering one whose request's deadline passed as the next
    // is sent.
    assert!(kube.peak_concurrent_reviews() <= 2);
    assert_eq!(
        ca.metric("castellan_backend_queue_turned_away_total{queue=\"tokenreview:Kubernetes\"}")
            .await,
        f64::from(busy)
    );
    // Busy is not remembered: with room again, the same callers are served.
    kube.set_review_delay(Duration::ZERO);
    let (_, csr) = csr::ztunnel(&id("ns", "w7"));
    let t = token(&ca, &kube, "ns", "w7", None);
    send_with(&ca, &csr, &t, None).await.unwrap();
}

#[tokio::test]
async fn an_api_server_shedding_load_is_busy_and_not_remembered() {
    let kube = FakeKube::start().await;
    let ca = with_kube(&kube, "", "").await;
    let (_, csr) = csr::ztunnel(&id("ns", "sa"));
    let t = token(&ca, &kube, "ns", "sa", None);
    kube.set_mode(Mode::Throttled);
    let s = send_with(&ca, &csr, &t, None).await.unwrap_err();
    assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
    assert_eq!(s.message(), "authentication backend busy; retry");
    // The same token is asked about again at once, not after a cached
    // verdict runs out.
    kube.set_mode(Mode::Normal);
    send_with(&ca, &csr, &t, None).await.unwrap();
}

#[tokio::test]
async fn clusterid_selects_the_cluster() {
    let local = FakeKube::start().await;
    let remote = FakeKube::start().await;
    let dir = tempfile::tempdir().unwrap();
    let remote_config = remote.kubeconfig(dir.path(), "remote");
    let ca = with_kube(
        &local,
        &format!(
            "[[authn]]\ntype = \"tokenreview\"\ncluster_id = \"remote-1\"\nkubeconfig = \"{}\"\n",
            remote_config.display()
        ),
        "",
    )
    .await;
    let (_, csr) = csr::ztunnel(&id("ns", "sa"));
    let remote_token = ca.token("ns", "sa");
    remote.add_token(&remote_token, "ns", "sa", None);

    let chain = send_with(&ca, &csr, &remote_token, Some("remote-1"))
        .await
        .unwrap();
    assert_eq!(
        san(&chain),
        [id("ns", "sa")],
        "identities stay spiffe://<td>/ns/<ns>/sa/<sa>"
    );
    assert_eq!((local.reviews(), remote.reviews()), (0, 1));
    // The same token presented as the local cluster's is checked there, and fails.
    let s = send_with(&ca, &csr, &remote_token, Some("Kubernetes"))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::Unauthenticated);
    assert_eq!(local.reviews(), 1);
    let s = send_with(&ca, &csr, &remote_token, Some("nowhere"))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn vm_renews_with_its_client_certificate() {
    let kube = FakeKube::start().await;
    let ca = with_kube(&kube, "[[authn]]\ntype = \"client_cert\"\n", "").await;
    // First certificate: with a token, as a VM bootstraps.
    let t = token(&ca, &kube, "vms", "billing", None);
    let (key, csr) = csr::ztunnel(&id("vms", "billing"));
    let chain = send_with(&ca, &csr, &t, None).await.unwrap();

    // Renewal: no token, the issued certificate as the TLS client certificate.
    let mut client = ca
        .client_with_certificate(&format!("{}{}", chain[0], chain[1]), &key.serialize_pem())
        .await;
    let (_, renewal_csr) = csr::ztunnel(&id("vms", "billing"));
    let mut req = request::request_for(&renewal_csr, 600, "x", "Kubernetes").unwrap();
    req.metadata_mut().remove("authorization");
    let renewed = client
        .create_certificate(req)
        .await
        .unwrap()
        .into_inner()
        .cert_chain;
    assert_eq!(san(&renewed), [id("vms", "billing")]);
    assert_eq!(kube.reviews(), 1, "the renewal needed no TokenReview");

    // The certificate only speaks for itself.
    let (_, other) = csr::ztunnel(&id("vms", "payroll"));
    let mut req = request::request_for(&other, 600, "x", "Kubernetes").unwrap();
    req.metadata_mut().remove("authorization");
    assert_eq!(
        client.create_certificate(req).await.unwrap_err().code(),
        Code::PermissionDenied
    );
}

#[tokio::test]
async fn client_certificates_are_ignored_unless_configured() {
    let kube = FakeKube::start().await;
    let ca = with_kube(&kube, "", "").await;
    let t = token(&ca, &kube, "vms", "billing", None);
    let (key, csr) = csr::ztunnel(&id("vms", "billing"));
    let chain = send_with(&ca, &csr, &t, None).await.unwrap();
    let mut client = ca
        .client_with_certificate(&format!("{}{}", chain[0], chain[1]), &key.serialize_pem())
        .await;
    let mut req = request::request_for(&csr, 600, "x", "Kubernetes").unwrap();
    req.metadata_mut().remove("authorization");
    let s = client.create_certificate(req).await.unwrap_err();
    assert_eq!(s.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn a_remote_cluster_can_be_an_oidc_issuer() {
    let kube = FakeKube::start().await;
    let (remote, _) =
        castellan::cli::token::TokenIssuer::generate("https://oidc.remote.example").unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("remote-jwks.json"), remote.jwks()).unwrap();
    let ca = with_kube(
        &kube,
        &format!(
            "[[authn]]\ntype = \"jwt\"\nissuers = [\"https://oidc.remote.example\"]\ncluster_ids = [\"remote-oidc\"]\njwks_file = \"{}\"\n",
            dir.path().join("remote-jwks.json").display()
        ),
        "",
    )
    .await;
    let (_, csr) = csr::ztunnel(&id("ns", "sa"));
    let t = remote.mint("ns", "sa", "istio-ca", 600).unwrap();
    send_with(&ca, &csr, &t, Some("remote-oidc")).await.unwrap();
    // Presented as the local cluster's, it goes to TokenReview, which does not know it.
    let s = send_with(&ca, &csr, &t, None).await.unwrap_err();
    assert_eq!(s.code(), Code::Unauthenticated);
    assert_eq!(kube.reviews(), 1);
}

#[tokio::test]
async fn expired_client_certificates_are_refused() {
    let kube = FakeKube::start().await;
    let ca = with_kube(&kube, "[[authn]]\ntype = \"client_cert\"\n", "").await;
    let now = time::OffsetDateTime::now_utc();
    let expired = ca
        .intermediate
        .intermediate("expired", crate::support::KeyAlg::EcP256, |p| {
            p.is_ca = rcgen::IsCa::ExplicitNoCa;
            p.distinguished_name = rcgen::DistinguishedName::new();
            p.subject_alt_names = vec![rcgen::SanType::URI(
                id("vms", "billing").as_str().try_into().unwrap(),
            )];
            p.not_before = now - time::Duration::days(2);
            p.not_after = now - time::Duration::days(1);
        });
    let identity = tonic::transport::Identity::from_pem(
        format!("{}{}", expired.pem, ca.intermediate.pem),
        expired.key.serialize_pem(),
    );
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(&ca.root.pem))
        .domain_name("localhost")
        .identity(identity);
    let endpoint = tonic::transport::Endpoint::from_shared(ca.addr())
        .unwrap()
        .tls_config(tls)
        .unwrap();
    let refused = match endpoint.connect().await {
        Err(_) => true,
        Ok(channel) => {
            let mut client = castellan::proto::istio_certificate_service_client::IstioCertificateServiceClient::new(channel);
            let (_, csr) = csr::ztunnel(&id("vms", "billing"));
            let mut req = request::request_for(&csr, 600, "x", "Kubernetes").unwrap();
            req.metadata_mut().remove("authorization");
            client.create_certificate(req).await.is_err()
        }
    };
    assert!(refused);
}

/// The roots that decide which client certificates are accepted follow the
/// root bundle in use: after a reload adds a root, a VM certificate under it
/// is accepted without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_follow_a_reloaded_root_bundle() {
    use crate::support::{Setup, pki};
    let ca = TestCa::start_with(Setup {
        extra: "[[authn]]\ntype = \"client_cert\"\n".into(),
        ..Setup::default()
    })
    .await;
    // A VM certificate from another enterprise root, not yet trusted.
    let other = pki::Ca::root("Other Root", pki::KeyAlg::EcP256);
    let other_int = other.intermediate("Other Intermediate", pki::KeyAlg::EcP256, |_| {});
    let vm_key = pki::key(pki::KeyAlg::EcP256);
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.subject_alt_names = vec![rcgen::SanType::URI(
        id("vms", "billing").try_into().unwrap(),
    )];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let vm = other_int.sign(params, vm_key);
    let renew = async || {
        let identity = tonic::transport::Identity::from_pem(
            format!("{}{}", vm.pem, other_int.pem),
            vm.key.serialize_pem(),
        );
        let tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&ca.root.pem))
            .domain_name("localhost")
            .identity(identity);
        let channel = tonic::transport::Endpoint::from_shared(ca.addr())
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
            .map_err(|e| e.to_string())?;
        let mut client =
            castellan::proto::istio_certificate_service_client::IstioCertificateServiceClient::new(
                channel,
            );
        let (_, csr) = csr::ztunnel(&id("vms", "billing"));
        let mut req = request::request_for(&csr, 600, "x", "Kubernetes").unwrap();
        req.metadata_mut().remove("authorization");
        client
            .create_certificate(req)
            .await
            .map(|r| r.into_inner().cert_chain)
            .map_err(|s| format!("{s:?}"))
    };
    assert!(renew().await.is_err(), "a root not in the bundle");

    // The root bundle gains the other root (same signing intermediate).
    let bundle = format!("{}{}", ca.root.pem, other.pem);
    pki::write_cacerts(
        &ca.ca_dir(),
        &ca.intermediate,
        &[&ca.intermediate, &ca.root],
        &bundle,
    );
    let accepted = eventually(Duration::from_secs(10), async || renew().await.is_ok()).await;
    assert!(
        accepted,
        "the reloaded bundle's root is trusted for client certificates"
    );
    assert_eq!(san(&renew().await.unwrap()), [id("vms", "billing")]);
}
