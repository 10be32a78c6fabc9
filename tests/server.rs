//! The listener: what TLS it offers each kind of Istio client, client
//! certificates, the in-flight limit, deadlines and graceful shutdown.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{Router, extract::State, http::StatusCode, routing::get};
use rustls::{
    ClientConfig, RootCertStore,
    crypto::{CryptoProvider, aws_lc_rs},
    pki_types::{CertificateDer, PrivateKeyDer, ServerName},
};
use tonic::Code;

use crate::support::{KeyAlg, Setup, TestCa, csr, id, pki::Ca};

fn provider(
    suites: Vec<rustls::SupportedCipherSuite>,
    groups: Vec<&'static dyn rustls::crypto::SupportedKxGroup>,
) -> Arc<CryptoProvider> {
    Arc::new(CryptoProvider {
        cipher_suites: suites,
        kx_groups: groups,
        ..aws_lc_rs::default_provider()
    })
}

struct Handshake {
    version: rustls::ProtocolVersion,
    group: rustls::NamedGroup,
    alpn: Option<Vec<u8>>,
}

async fn handshake(
    ca: &TestCa,
    provider: Arc<CryptoProvider>,
    versions: &[&'static rustls::SupportedProtocolVersion],
    server_name: &str,
    client_cert: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Result<Handshake, std::io::Error> {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from(ca.root.der.clone()))
        .unwrap();
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match client_cert {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key).unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(ca.running.addr).await?;
    let name = ServerName::try_from(server_name.to_owned()).unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await?;
    // TLS 1.3 client-certificate failures surface on the first read.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await?;
    let mut buf = [0u8; 9];
    tls.read_exact(&mut buf).await?;
    let (_, conn) = tls.get_ref();
    Ok(Handshake {
        version: conn.protocol_version().unwrap(),
        group: conn.negotiated_key_exchange_group().unwrap().name(),
        alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
    })
}

#[tokio::test]
async fn every_istio_client_tls_mode_connects() {
    use aws_lc_rs::{cipher_suite as cs, kx_group as kx};
    use rustls::version::{TLS12, TLS13};
    let ca = TestCa::start().await;
    let fips = castellan::fips::BUILD;

    // ztunnel: TLS 1.3, AES-GCM only; the default groups (X25519 first,
    // which the FIPS build does not offer: it settles on P-256).
    let h = handshake(
        &ca,
        provider(
            vec![cs::TLS13_AES_256_GCM_SHA384],
            vec![kx::X25519, kx::SECP256R1],
        ),
        &[&TLS13],
        "localhost",
        None,
    )
    .await
    .unwrap();
    assert_eq!(
        (h.version, h.group),
        (
            rustls::ProtocolVersion::TLSv1_3,
            if fips {
                rustls::NamedGroup::secp256r1
            } else {
                rustls::NamedGroup::X25519
            }
        )
    );
    assert_eq!(h.alpn.as_deref(), Some(&b"h2"[..]));

    // istio-agent with COMPLIANCE_POLICY=fips-140-2: TLS 1.2 only, P-256 only.
    let h = handshake(
        &ca,
        provider(
            vec![cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256],
            vec![kx::SECP256R1],
        ),
        &[&TLS12],
        "localhost",
        None,
    )
    .await
    .unwrap();
    assert_eq!(
        (h.version, h.group),
        (
            rustls::ProtocolVersion::TLSv1_2,
            rustls::NamedGroup::secp256r1
        )
    );

    // COMPLIANCE_POLICY=fips-140-3: TLS 1.2-1.3, P-256/P-384.
    let h = handshake(
        &ca,
        provider(
            vec![
                cs::TLS13_AES_256_GCM_SHA384,
                cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            ],
            vec![kx::SECP384R1],
        ),
        &[&TLS13, &TLS12],
        "localhost",
        None,
    )
    .await
    .unwrap();
    assert_eq!(
        (h.version, h.group),
        (
            rustls::ProtocolVersion::TLSv1_3,
            rustls::NamedGroup::secp384r1
        )
    );

    // COMPLIANCE_POLICY=pqc: TLS 1.3, X25519MLKEM768 only (not in the FIPS
    // build: see docs/security.md, "FIPS 140-3 build").
    let pqc = handshake(
        &ca,
        provider(vec![cs::TLS13_AES_128_GCM_SHA256], vec![kx::X25519MLKEM768]),
        &[&TLS13],
        "localhost",
        None,
    )
    .await;
    if fips {
        assert!(pqc.is_err(), "the FIPS build offered X25519MLKEM768");
        let x25519 = provider(vec![cs::TLS13_AES_128_GCM_SHA256], vec![kx::X25519]);
        assert!(
            handshake(&ca, x25519, &[&TLS13], "localhost", None)
                .await
                .is_err(),
            "the FIPS build offered X25519"
        );
    } else {
        assert_eq!(pqc.unwrap().group, rustls::NamedGroup::X25519MLKEM768);
    }

    // The serving certificate also names 127.0.0.1.
    handshake(
        &ca,
        Arc::new(aws_lc_rs::default_provider()),
        &[&TLS13],
        "127.0.0.1",
        None,
    )
    .await
    .unwrap();

    // Not offered: ChaCha20, and names the certificate does not carry.
    let chacha = provider(vec![cs::TLS13_CHACHA20_POLY1305_SHA256], vec![kx::X25519]);
    assert!(
        handshake(&ca, chacha, &[&TLS13], "localhost", None)
            .await
            .is_err()
    );
    assert!(
        handshake(
            &ca,
            Arc::new(aws_lc_rs::default_provider()),
            &[&TLS13],
            "evil.example",
            None
        )
        .await
        .is_err()
    );
}

#[tokio::test]
async fn client_certificates_are_optional_but_verified_when_presented() {
    let ca = TestCa::start().await;
    let default = || Arc::new(aws_lc_rs::default_provider());
    let v13 = &[&rustls::version::TLS13];

    // A workload certificate castellan issued (VM renewal) is accepted…
    let (key, csr) = csr::ztunnel(&id("vm", "app"));
    let resp = ca.send(&csr, "vm", "app", 600).await.unwrap();
    let chain = vec![
        CertificateDer::from(der_of(&resp.cert_chain[0])),
        CertificateDer::from(der_of(&resp.cert_chain[1])),
    ];
    let pk = PrivateKeyDer::try_from(key.serialize_der()).unwrap();
    handshake(&ca, default(), v13, "localhost", Some((chain, pk)))
        .await
        .unwrap();

    // …one from a foreign CA is not.
    let foreign =
        Ca::root("Foreign", KeyAlg::EcP256).intermediate("Foreign Int", KeyAlg::EcP256, |_| {});
    let fake_leaf = foreign.intermediate("leaf", KeyAlg::EcP256, |p| {
        p.is_ca = rcgen::IsCa::ExplicitNoCa
    });
    let chain = vec![CertificateDer::from(fake_leaf.der.clone())];
    let pk = PrivateKeyDer::try_from(fake_leaf.key.serialize_der()).unwrap();
    assert!(
        handshake(&ca, default(), v13, "localhost", Some((chain, pk)))
            .await
            .is_err()
    );
}

fn der_of(pem: &str) -> Vec<u8> {
    der::pem::decode_vec(pem.as_bytes()).unwrap().1
}

/// A JWKS endpoint that answers slowly, to hold requests in flight.
async fn slow_jwks(delay: Duration) -> (String, Arc<Mutex<Option<String>>>) {
    let doc: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
    let app = Router::new()
        .route(
            "/jwks",
            get(
                move |State(doc): State<Arc<Mutex<Option<String>>>>| async move {
                    let current = doc.lock().unwrap().clone();
                    match current {
                        Some(d) => {
                            tokio::time::sleep(delay).await;
                            (StatusCode::OK, d)
                        }
                        None => (StatusCode::SERVICE_UNAVAILABLE, String::new()),
                    }
                },
            ),
        )
        .with_state(doc.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("jwks_url = \"http://{addr}/jwks\""), doc)
}

#[tokio::test]
async fn over_the_in_flight_limit_waits_then_is_resource_exhausted() {
    let (jwks, doc) = slow_jwks(Duration::from_millis(2500)).await;
    let ca = Arc::new(
        TestCa::start_with(Setup {
            jwks: Some(jwks),
            server: "max_in_flight = 1".into(),
            ..Setup::default()
        })
        .await,
    );
    *doc.lock().unwrap() = Some(ca.tokens.jwks().to_owned());
    let (_, csr) = csr::ztunnel(&id("ns", "sa"));
    let slow = {
        let (ca, csr) = (ca.clone(), csr.clone());
        tokio::spawn(async move { ca.send(&csr, "ns", "sa", 600).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A request whose deadline passes while the slot is held waits it out
    // and is refused as busy.
    let token = ca.token("ns", "sa");
    let mut hurried =
        castellan::cli::request::request_for(&csr, 600, &token, "Kubernetes").unwrap();
    // castellan answers a tenth of the budget early, so a client whose
    // request took a while to arrive still hears "busy", not its own timeout.
    hurried.set_timeout(Duration::from_millis(1000));
    let asked = std::time::Instant::now();
    let s = ca
        .client()
        .await
        .create_certificate(hurried)
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
    assert!(
        asked.elapsed() >= Duration::from_millis(850),
        "{:?}",
        asked.elapsed()
    );
    // One with time to spare waits for the slot and is served.
    let patient = ca.send(&csr, "ns", "sa", 600).await;
    slow.await
        .unwrap()
        .expect("the request holding the slot succeeds");
    patient.expect("served once the slot is free");
}

#[tokio::test]
async fn requests_past_their_deadline_are_deadline_exceeded() {
    let (jwks, doc) = slow_jwks(Duration::from_secs(3)).await;
    let ca = TestCa::start_with(Setup {
        jwks: Some(jwks),
        server: "request_timeout_secs = 1".into(),
        ..Setup::default()
    })
    .await;
    *doc.lock().unwrap() = Some(ca.tokens.jwks().to_owned());
    let (_, csr) = csr::ztunnel(&id("ns", "sa"));
    let started = std::time::Instant::now();
    let s = ca.send(&csr, "ns", "sa", 600).await.unwrap_err();
    assert_eq!(s.code(), Code::DeadlineExceeded, "{s:?}");
    assert!(started.elapsed() < Duration::from_millis(2500));
    // A client's shorter `grpc-timeout`: tests/limits.rs, over raw HTTP/2.
}

#[tokio::test]
async fn shutdown_finishes_requests_in_flight() {
    let (jwks, doc) = slow_jwks(Duration::from_millis(800)).await;
    let ca = Arc::new(
        TestCa::start_with(Setup {
            jwks: Some(jwks),
            ..Setup::default()
        })
        .await,
    );
    *doc.lock().unwrap() = Some(ca.tokens.jwks().to_owned());
    let (_, csr) = csr::ztunnel(&id("ns", "sa"));
    let mut client = ca.client().await;
    let req = castellan::cli::request::request_for(&csr, 600, &ca.token("ns", "sa"), "Kubernetes")
        .unwrap();
    let in_flight = tokio::spawn(async move { client.create_certificate(req).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    ca.running.shutdown();
    let resp = in_flight.await.unwrap();
    assert!(resp.is_ok(), "the in-flight request completes: {resp:?}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let after = castellan::cli::request::connect(&ca.addr(), None, ca.root.pem.as_bytes()).await;
    assert!(after.is_err(), "no new connections after shutdown");
}

/// Each new connection goes to the serving worker with the fewest; every
/// worker serves its own, and gives its share back when they close.
#[tokio::test]
async fn connections_are_spread_over_the_workers() {
    for workers in [1, 3] {
        let ca = TestCa::start_with(Setup {
            server: format!("workers = {workers}"),
            ..Setup::default()
        })
        .await;
        let (_, csr) = csr::ztunnel(&id("ns", "sa"));
        let token = ca.token("ns", "sa");
        let mut clients = Vec::new();
        for _ in 0..6 {
            let mut client = ca.client().await;
            let req =
                castellan::cli::request::request_for(&csr, 600, &token, "Kubernetes").unwrap();
            client.create_certificate(req).await.expect("served");
            clients.push(client);
        }
        for w in 0..workers {
            let label = w.to_string();
            let on = ca
                .metric_with("castellan_worker_connections", &[("worker", &label)])
                .await;
            assert_eq!(on, f64::from(6 / workers), "worker {w} of {workers}");
        }
        assert_eq!(ca.metric("castellan_connections_open").await, 6.0);
        drop(clients);
        let released = crate::support::eventually(Duration::from_secs(5), async || {
            ca.metric_with("castellan_worker_connections", &[]).await == 0.0
        })
        .await;
        assert!(
            released,
            "closed connections give their worker's share back"
        );
    }
}
