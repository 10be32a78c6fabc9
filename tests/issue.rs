//! Happy paths over real gRPC and TLS: the response's shape, every field of
//! the issued certificate, and independent verification (webpki, openssl).

use std::time::{Duration, SystemTime};

use const_oid::db::{rfc5280, rfc5912};
use der::{Decode, Encode};
use rustls_pki_types::{CertificateDer, UnixTime, pem::PemObject};
use x509_cert::{
    Certificate,
    ext::pkix::{
        AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage, KeyUsages,
        SubjectAltName, SubjectKeyIdentifier, name::GeneralName,
    },
    request::CertReq,
};

use crate::support::{KeyAlg, Setup, TestCa, csr, id};

/// Everything a workload certificate must be, asserted field by field.
fn assert_profile(
    chain: &[String],
    csr_pem: &str,
    ca: &TestCa,
    identity: &str,
    ttl: Duration,
    rsa_leaf: bool,
) {
    // Shape: leaf, intermediate, root bundle; one PEM per element, each ending in "\n".
    assert_eq!(chain.len(), 3, "{chain:#?}");
    for element in chain {
        assert!(
            element.ends_with("-----END CERTIFICATE-----\n"),
            "{element}"
        );
    }
    assert_eq!(chain[0].matches("BEGIN CERTIFICATE").count(), 1);
    assert_eq!(chain[1], ca.intermediate.pem.replace("\r\n", "\n"));
    assert_eq!(chain[2].trim(), ca.root.pem.trim());

    let leaf_der = CertificateDer::from_pem_slice(chain[0].as_bytes()).unwrap();
    let leaf = Certificate::from_der(&leaf_der).unwrap();
    let tbs = leaf.tbs_certificate();
    let issuer = Certificate::from_der(&ca.intermediate.der).unwrap();

    assert_eq!(tbs.version(), x509_cert::certificate::Version::V3);
    let serial = tbs.serial_number().as_bytes();
    assert_eq!(serial.len(), 16, "128-bit serial");
    assert!(serial[0] & 0x80 == 0, "positive serial");
    assert!(tbs.subject().is_empty(), "empty subject");
    assert_eq!(tbs.issuer(), issuer.tbs_certificate().subject());

    // Only the public key comes from the CSR.
    let req = CertReq::from_der(&der::pem::decode_vec(csr_pem.as_bytes()).unwrap().1).unwrap();
    assert_eq!(
        tbs.subject_public_key_info().to_der().unwrap(),
        req.info.public_key.to_der().unwrap()
    );

    let (critical, san) = tbs.get_extension::<SubjectAltName>().unwrap().unwrap();
    assert!(critical, "SAN critical with an empty subject");
    assert_eq!(
        san.0,
        vec![GeneralName::UniformResourceIdentifier(
            der::asn1::Ia5String::new(identity).unwrap()
        )]
    );

    let (critical, ku) = tbs.get_extension::<KeyUsage>().unwrap().unwrap();
    assert!(critical);
    let mut want: der::flagset::FlagSet<KeyUsages> = KeyUsages::DigitalSignature.into();
    if rsa_leaf {
        want |= KeyUsages::KeyEncipherment;
    }
    assert_eq!(ku.0, want);

    let (_, eku) = tbs.get_extension::<ExtendedKeyUsage>().unwrap().unwrap();
    assert_eq!(
        eku.0,
        vec![rfc5280::ID_KP_SERVER_AUTH, rfc5280::ID_KP_CLIENT_AUTH]
    );

    let (critical, bc) = tbs.get_extension::<BasicConstraints>().unwrap().unwrap();
    assert!(critical && !bc.ca && bc.path_len_constraint.is_none());

    assert!(
        tbs.get_extension::<SubjectKeyIdentifier>()
            .unwrap()
            .is_some()
    );
    let (_, aki) = tbs
        .get_extension::<AuthorityKeyIdentifier>()
        .unwrap()
        .unwrap();
    let (_, issuer_ski) = issuer
        .tbs_certificate()
        .get_extension::<SubjectKeyIdentifier>()
        .unwrap()
        .unwrap();
    assert_eq!(aki.key_identifier.unwrap(), issuer_ski.0);
    assert_eq!(tbs.extensions().unwrap().len(), 6, "no other extensions");

    let now = SystemTime::now();
    let nb = tbs.validity().not_before.to_system_time();
    let na = tbs.validity().not_after.to_system_time();
    let skew = now.duration_since(nb).unwrap();
    assert!(
        (Duration::from_secs(115)..=Duration::from_secs(125)).contains(&skew),
        "{skew:?}"
    );
    let life = na.duration_since(now).unwrap();
    assert!(
        life <= ttl && life + Duration::from_secs(10) >= ttl,
        "{life:?} vs {ttl:?}"
    );

    verify_webpki(chain, &ca.root.der);
    verify_openssl(chain);
}

fn verify_webpki(chain: &[String], root: &[u8]) {
    let leaf = CertificateDer::from_pem_slice(chain[0].as_bytes()).unwrap();
    let intermediates: Vec<_> = chain[1..chain.len() - 1]
        .iter()
        .map(|p| CertificateDer::from_pem_slice(p.as_bytes()).unwrap())
        .collect();
    let root = CertificateDer::from(root.to_vec());
    let anchor = webpki::anchor_from_trusted_cert(&root).unwrap();
    let ee = webpki::EndEntityCert::try_from(&leaf).unwrap();
    for usage in [
        webpki::KeyUsage::client_auth(),
        webpki::KeyUsage::server_auth(),
    ] {
        ee.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            std::slice::from_ref(&anchor),
            &intermediates,
            UnixTime::now(),
            usage,
            None,
            None,
        )
        .unwrap();
    }
}

fn verify_openssl(chain: &[String]) {
    let dir = tempfile::tempdir().unwrap();
    let path = |n: &str| dir.path().join(n);
    std::fs::write(path("leaf.pem"), &chain[0]).unwrap();
    std::fs::write(path("int.pem"), chain[1..chain.len() - 1].concat()).unwrap();
    std::fs::write(path("root.pem"), chain.last().unwrap()).unwrap();
    let out = std::process::Command::new("openssl")
        .args(["verify", "-x509_strict", "-purpose", "sslclient", "-CAfile"])
        .arg(path("root.pem"))
        .arg("-untrusted")
        .arg(path("int.pem"))
        .arg(path("leaf.pem"))
        .output()
        .expect("openssl is installed by scripts/test.sh");
    assert!(
        out.status.success(),
        "openssl verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn signature_oid(chain: &[String]) -> const_oid::ObjectIdentifier {
    let leaf = CertificateDer::from_pem_slice(chain[0].as_bytes()).unwrap();
    Certificate::from_der(&leaf)
        .unwrap()
        .signature_algorithm()
        .oid
}

#[tokio::test]
async fn ztunnel_shaped_p256_csr_with_p256_ca() {
    let ca = TestCa::start().await;
    let identity = id("bookinfo", "reviews");
    let (_, csr) = csr::ztunnel(&identity);
    let resp = ca.send(&csr, "bookinfo", "reviews", 3600).await.unwrap();
    assert_profile(
        &resp.cert_chain,
        &csr,
        &ca,
        &identity,
        Duration::from_secs(3600),
        false,
    );
    assert_eq!(signature_oid(&resp.cert_chain), rfc5912::ECDSA_WITH_SHA_256);
}

#[tokio::test]
async fn istio_agent_shaped_rsa_csr_with_rsa_ca() {
    let ca = TestCa::start_with(Setup {
        ca_alg: KeyAlg::Rsa2048,
        ..Setup::default()
    })
    .await;
    let identity = id("default", "productpage");
    let (_, csr) = csr::istio_agent(&identity);
    // istio-agent asks for SECRET_TTL, 24 h by default.
    let resp = ca
        .send(&csr, "default", "productpage", 86400)
        .await
        .unwrap();
    assert_profile(
        &resp.cert_chain,
        &csr,
        &ca,
        &identity,
        Duration::from_secs(86400),
        true,
    );
    assert_eq!(
        signature_oid(&resp.cert_chain),
        rfc5912::SHA_256_WITH_RSA_ENCRYPTION
    );
}

#[tokio::test]
async fn p384_ca_signs_with_sha384() {
    let ca = TestCa::start_with(Setup {
        ca_alg: KeyAlg::EcP384,
        ..Setup::default()
    })
    .await;
    let identity = id("ns", "sa");
    let (_, csr) = csr::build(KeyAlg::EcP384, |p| {
        p.subject_alt_names = vec![rcgen::SanType::URI(identity.as_str().try_into().unwrap())];
    });
    let resp = ca.send(&csr, "ns", "sa", 600).await.unwrap();
    assert_profile(
        &resp.cert_chain,
        &csr,
        &ca,
        &identity,
        Duration::from_secs(600),
        false,
    );
    assert_eq!(signature_oid(&resp.cert_chain), rfc5912::ECDSA_WITH_SHA_384);
}

#[tokio::test]
async fn csr_without_san_gets_the_callers_identity() {
    let ca = TestCa::start().await;
    let (_, csr) = csr::build(KeyAlg::EcP256, |_| {});
    let resp = ca.send(&csr, "ns1", "sa1", 0).await.unwrap();
    // 0 asks for the default: 24 h.
    assert_profile(
        &resp.cert_chain,
        &csr,
        &ca,
        &id("ns1", "sa1"),
        Duration::from_secs(86400),
        false,
    );
}

#[tokio::test]
async fn non_critical_san_is_accepted() {
    let ca = TestCa::start().await;
    let identity = id("ns", "sa");
    // A subject makes rcgen write the SAN non-critical; `O=` is what istio-agent sends.
    let (_, csr) = csr::build(KeyAlg::EcP256, |p| {
        p.distinguished_name
            .push(rcgen::DnType::OrganizationName, "");
        p.subject_alt_names = vec![rcgen::SanType::URI(identity.as_str().try_into().unwrap())];
    });
    let resp = ca.send(&csr, "ns", "sa", 600).await.unwrap();
    assert_profile(
        &resp.cert_chain,
        &csr,
        &ca,
        &identity,
        Duration::from_secs(600),
        false,
    );
}

#[tokio::test]
async fn ttl_above_maximum_is_clamped_by_default() {
    let ca = TestCa::start_with(Setup {
        issuance: "default_ttl_secs = 1800\nmax_ttl_secs = 3600\n".into(),
        ..Setup::default()
    })
    .await;
    let identity = id("ns", "sa");
    let (_, csr) = csr::ztunnel(&identity);
    let resp = ca.send(&csr, "ns", "sa", 7 * 86400).await.unwrap();
    assert_profile(
        &resp.cert_chain,
        &csr,
        &ca,
        &identity,
        Duration::from_secs(3600),
        false,
    );
    let resp = ca.send(&csr, "ns", "sa", 0).await.unwrap();
    assert_profile(
        &resp.cert_chain,
        &csr,
        &ca,
        &identity,
        Duration::from_secs(1800),
        false,
    );
    let (_, metrics) = crate::support::http_get(&format!("{}/metrics", ca.metrics_url())).await;
    assert!(
        metrics.contains("castellan_ttl_clamped_count 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn root_bundle_travels_as_one_last_element() {
    let ca = TestCa::start_with(Setup {
        extra_root: true,
        ..Setup::default()
    })
    .await;
    let (_, csr) = csr::ztunnel(&id("ns", "sa"));
    let resp = ca.send(&csr, "ns", "sa", 600).await.unwrap();
    assert_eq!(resp.cert_chain.len(), 3);
    let last = resp.cert_chain.last().unwrap();
    assert_eq!(
        last.matches("BEGIN CERTIFICATE").count(),
        2,
        "both roots in the last element"
    );
    assert!(last.starts_with(ca.root.pem.trim_end()));
    verify_webpki(&resp.cert_chain, &ca.root.der);
}

#[tokio::test]
async fn every_serial_is_distinct() {
    let ca = TestCa::start().await;
    let (_, csr) = csr::ztunnel(&id("ns", "sa"));
    let mut serials = std::collections::HashSet::new();
    for _ in 0..20 {
        let resp = ca.send(&csr, "ns", "sa", 600).await.unwrap();
        let leaf = CertificateDer::from_pem_slice(resp.cert_chain[0].as_bytes()).unwrap();
        let cert = Certificate::from_der(&leaf).unwrap();
        assert!(serials.insert(cert.tbs_certificate().serial_number().as_bytes().to_vec()));
    }
}

#[tokio::test]
async fn metrics_count_issuance() {
    let ca = TestCa::start().await;
    let (_, csr) = csr::ztunnel(&id("ns", "sa"));
    ca.send(&csr, "ns", "sa", 600).await.unwrap();
    let (_, bad) = csr::ztunnel(&id("ns", "other"));
    ca.send(&bad, "ns", "sa", 600).await.unwrap_err();
    let (code, metrics) = crate::support::http_get(&format!("{}/metrics", ca.metrics_url())).await;
    assert_eq!(code, 200);
    for line in [
        "citadel_server_csr_count 2",
        "citadel_server_success_cert_issuance_count 1",
        "castellan_request_duration_seconds_count{code=\"OK\"} 1",
        "castellan_request_duration_seconds_count{code=\"PERMISSION_DENIED\"} 1",
        "citadel_server_cert_chain_expiry_timestamp",
        "citadel_server_root_cert_expiry_timestamp",
    ] {
        assert!(metrics.contains(line), "missing {line} in\n{metrics}");
    }
    assert_eq!(
        crate::support::http_get(&format!("{}/readyz", ca.metrics_url()))
            .await
            .0,
        200
    );
    assert_eq!(
        crate::support::http_get(&format!("{}/healthz", ca.metrics_url()))
            .await
            .0,
        200
    );
}

/// The issuance pipeline serves any front end: driven without gRPC, from
/// the configuration a running castellan uses, the same steps issue a
/// verifiable certificate to the caller and refuse a CSR for someone else.
#[tokio::test]
async fn the_issuance_pipeline_runs_without_the_grpc_front_end() {
    use std::sync::Arc;

    use castellan::{
        authn::{self, Credentials},
        authority::Authority,
        clock::Clock,
        config::Config,
        error::Error,
        issue::{Ask, Pipeline, Trace},
        issuer::Issuer,
        metrics::Metrics,
        policy::TtlRules,
        tenancy::Tenants,
    };

    let ca = TestCa::start().await;
    let config = Config::load(&ca.dir.path().join("castellan.toml")).unwrap();
    let metrics = Metrics::new().unwrap();
    let clock = Clock::system();
    let authority = Authority::start(&config, &metrics, clock.clone())
        .await
        .unwrap();
    let chain = authn::Chain::from_config(
        &config.authn,
        &config.authn_cache,
        &config.trust_domain,
        &metrics,
        &clock,
    )
    .await
    .unwrap();
    let issuer = Issuer::new(
        Arc::clone(authority.ca()),
        Duration::from_secs(config.issuance.not_before_skew_secs),
        Duration::from_secs(config.issuance.min_ttl_secs),
    );
    let pipeline = Pipeline::new(
        chain,
        None,
        Arc::new(Tenants::single(issuer, authority.revocations().cloned())),
        TtlRules::from(&config.issuance),
    );
    fn ask<'a>(token: &'a str, csr: &'a str) -> Ask<'a> {
        Ask {
            credentials: Credentials {
                bearer: Some(token),
                cluster_id: None,
                peer_certs: None,
            },
            csr,
            validity_secs: 600,
            on_behalf_of: None,
            cert_signer: None,
        }
    }
    let token = ca.token("ns", "sa");
    let (_, mine) = csr::ztunnel(&id("ns", "sa"));
    let mut trace = Trace::default();
    let issued = pipeline
        .issue(ask(&token, &mine), &mut trace)
        .await
        .unwrap();
    assert_eq!(trace.caller(), Some(id("ns", "sa").as_str()));
    crate::support::verify::assert_good(&issued.chain, &ca.root.der, "pipeline-issued");
    let (_, theirs) = csr::ztunnel(&id("ns", "other"));
    let refused = pipeline
        .issue(ask(&token, &theirs), &mut Trace::default())
        .await
        .unwrap_err();
    assert!(matches!(refused, Error::Policy(_)), "{refused:?}");
    authority.stop();
}
