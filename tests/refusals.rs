//! Every refusal of a bad CSR or a request outside policy, with its exact
//! gRPC code and a message the workload's owner can act on.

use rcgen::{CustomExtension, DnType, IsCa, SanType};
use tonic::Code;

use crate::support::{KeyAlg, Setup, TestCa, csr, id};

async fn refused(ca: &TestCa, csr: &str, ttl: i64) -> tonic::Status {
    ca.send(csr, "ns", "sa", ttl)
        .await
        .expect_err("must be refused")
}

fn uri(s: &str) -> SanType {
    SanType::URI(s.try_into().unwrap())
}

#[tokio::test]
async fn identity_mismatch_is_permission_denied_and_names_the_allowed_id() {
    let ca = TestCa::start().await;
    for other in [
        id("ns", "admin"),
        id("kube-system", "sa"),
        "spiffe://evil.example/ns/ns/sa/sa".to_owned(),
        "https://example.com/ns/ns/sa/sa".to_owned(),
    ] {
        let (_, csr) = csr::ztunnel(&other);
        let s = refused(&ca, &csr, 600).await;
        assert_eq!(s.code(), Code::PermissionDenied, "{other}: {s:?}");
        assert!(s.message().contains(&id("ns", "sa")), "{}", s.message());
    }
}

#[tokio::test]
async fn malformed_csrs_are_invalid_argument() {
    let ca = TestCa::start().await;
    let me = id("ns", "sa");
    let (_, good) = csr::ztunnel(&me);
    let cases: Vec<(&str, String, &str)> = vec![
        ("empty", String::new(), "PEM"),
        ("not PEM", "hello".into(), "PEM"),
        (
            "PEM of garbage",
            "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n".into(),
            "DER",
        ),
        (
            "oversized",
            format!("{good}{}", " ".repeat(70 * 1024)),
            "limit",
        ),
        ("tampered signature", csr::tampered(&good), "signature"),
        ("RSA-1024", csr::rsa_raw(1024, 65537), "1024 bits"),
        ("RSA-16384", csr::rsa_raw(16384, 65537), "16384 bits"),
        ("RSA e=3", csr::rsa_raw(2048, 3), "exponent"),
        (
            "Ed25519",
            csr::with_alg(&rcgen::PKCS_ED25519, &me),
            "Ed25519",
        ),
        (
            "P-521",
            csr::with_alg(&rcgen::PKCS_ECDSA_P521_SHA512, &me),
            "curve",
        ),
        (
            "DNS SAN",
            csr::build(KeyAlg::EcP256, |p| {
                p.subject_alt_names = vec![
                    uri(&me),
                    SanType::DnsName("evil.example".try_into().unwrap()),
                ]
            })
            .1,
            "DNS",
        ),
        (
            "IP SAN",
            csr::build(KeyAlg::EcP256, |p| {
                p.subject_alt_names = vec![SanType::IpAddress("10.0.0.1".parse().unwrap())]
            })
            .1,
            "IP",
        ),
        (
            "email SAN",
            csr::build(KeyAlg::EcP256, |p| {
                p.subject_alt_names = vec![SanType::Rfc822Name("a@b.c".try_into().unwrap())]
            })
            .1,
            "email",
        ),
        (
            "two URIs",
            csr::build(KeyAlg::EcP256, |p| {
                p.subject_alt_names = vec![uri(&me), uri(&id("ns", "sb"))]
            })
            .1,
            "2 URI",
        ),
        (
            "CA requested",
            csr::build(KeyAlg::EcP256, |p| {
                p.subject_alt_names = vec![uri(&me)];
                p.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            })
            .1,
            "CA",
        ),
        (
            "unknown extension",
            csr::build(KeyAlg::EcP256, |p| {
                p.subject_alt_names = vec![uri(&me)];
                p.custom_extensions = vec![CustomExtension::from_oid_content(
                    &[1, 3, 6, 1, 4, 1, 99999, 1],
                    vec![0x05, 0x00],
                )];
            })
            .1,
            "1.3.6.1.4.1.99999.1",
        ),
        (
            "subject CN",
            csr::build(KeyAlg::EcP256, |p| {
                p.distinguished_name.push(DnType::CommonName, "admin");
                p.subject_alt_names = vec![uri(&me)];
            })
            .1,
            "subject",
        ),
    ];
    for (name, csr, needle) in cases {
        let s = refused(&ca, &csr, 600).await;
        assert_eq!(s.code(), Code::InvalidArgument, "{name}: {s:?}");
        assert!(
            s.message().contains(needle),
            "{name}: `{}` lacks `{needle}`",
            s.message()
        );
    }
    let (_, metrics) = crate::support::http_get(&format!("{}/metrics", ca.metrics_url())).await;
    assert!(
        metrics.contains("citadel_server_csr_parsing_err_count 17"),
        "{metrics}"
    );
}

#[tokio::test]
async fn requested_key_usages_are_ignored_not_honoured() {
    let ca = TestCa::start().await;
    let me = id("ns", "sa");
    let (_, csr) = csr::build(KeyAlg::EcP256, |p| {
        p.subject_alt_names = vec![uri(&me)];
        p.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
    });
    let resp = ca.send(&csr, "ns", "sa", 600).await.unwrap();
    assert!(!resp.cert_chain[0].is_empty());
}

#[tokio::test]
async fn negative_ttl_is_invalid_argument() {
    let ca = TestCa::start().await;
    let (_, csr) = csr::ztunnel(&id("ns", "sa"));
    let s = refused(&ca, &csr, -1).await;
    assert_eq!(s.code(), Code::InvalidArgument);
    assert!(s.message().contains("negative"));
}

#[tokio::test]
async fn ttl_above_maximum_is_refused_when_configured() {
    let ca = TestCa::start_with(Setup {
        issuance: "max_ttl_secs = 3600\ndefault_ttl_secs = 3600\nover_max_ttl = \"reject\"\n"
            .into(),
        ..Setup::default()
    })
    .await;
    let (_, csr) = csr::ztunnel(&id("ns", "sa"));
    let s = refused(&ca, &csr, 3601).await;
    assert_eq!(s.code(), Code::InvalidArgument);
    assert!(
        s.message().contains("3601") && s.message().contains("3600"),
        "{}",
        s.message()
    );
    assert!(ca.send(&csr, "ns", "sa", 3600).await.is_ok());
}

#[tokio::test]
async fn impersonation_is_permission_denied_when_not_configured() {
    let ca = TestCa::start().await;
    let (_, csr) = csr::ztunnel(&id("bookinfo", "reviews"));
    let mut req = castellan::cli::request::request_for(
        &csr,
        600,
        &ca.token("istio-system", "ztunnel"),
        "Kubernetes",
    )
    .unwrap();
    req.get_mut().metadata.as_mut().unwrap().fields.insert(
        "ImpersonatedIdentity".into(),
        prost_types::Value {
            kind: Some(prost_types::value::Kind::StringValue(id(
                "bookinfo", "reviews",
            ))),
        },
    );
    let s = ca.client().await.create_certificate(req).await.unwrap_err();
    assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");
}
