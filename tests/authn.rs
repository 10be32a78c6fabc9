//! JWT authentication: every way a token can be wrong is UNAUTHENTICATED with
//! an opaque message; an unreachable JWKS is UNAVAILABLE; rotation works.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{SystemTime, UNIX_EPOCH},
};

use axum::{Router, extract::State, http::StatusCode, routing::get};
use castellan::cli::{request, token::TokenIssuer};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use tonic::Code;

use crate::support::{ISSUER, Setup, TestCa, csr, id};

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A token with arbitrary claims, signed with the CA's trusted issuer key.
fn forge(ca: &TestCa, claims: serde_json::Value, alg: Algorithm) -> String {
    let der = der::pem::decode_vec(ca.token_key.as_bytes()).unwrap().1;
    let key = EncodingKey::from_ec_der(&der);
    let kid = jsonwebtoken::decode_header(ca.token("a", "b")).unwrap().kid;
    let mut header = Header::new(alg);
    header.kid = kid;
    jsonwebtoken::encode(&header, &claims, &key).unwrap()
}

fn claims(sub: &str) -> serde_json::Value {
    json!({"iss": ISSUER, "sub": sub, "aud": ["istio-ca"], "iat": now(), "nbf": now(), "exp": now() + 600})
}

async fn status(ca: &TestCa, token: &str) -> tonic::Status {
    let (_, csr) = csr::ztunnel(&id("ns", "sa"));
    ca.send_token(&csr, token, 600)
        .await
        .expect_err("must be refused")
}

fn assert_opaque(s: &tonic::Status, case: &str) {
    assert_eq!(s.code(), Code::Unauthenticated, "{case}: {s:?}");
    assert_eq!(
        s.message(),
        "authentication failed",
        "{case}: the reason must not leak"
    );
}

#[tokio::test]
async fn bad_tokens_are_unauthenticated_and_opaque() {
    let ca = TestCa::start().await;
    let sa = "system:serviceaccount:ns:sa";
    let with = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut c = claims(sa);
        f(&mut c);
        forge(&ca, c, Algorithm::ES256)
    };
    let (other, _) = TokenIssuer::generate("https://other.issuer").unwrap();
    let (same_iss_other_key, _) = TokenIssuer::generate(ISSUER).unwrap();
    let cases: Vec<(&str, String)> = vec![
        ("garbage", "not-a-jwt".into()),
        (
            "alg none",
            format!(
                "eyJhbGciOiJub25lIn0.{}.",
                base64url(&claims(sa).to_string())
            ),
        ),
        (
            "unknown issuer",
            other.mint("ns", "sa", "istio-ca", 600).unwrap(),
        ),
        (
            "unknown key",
            same_iss_other_key
                .mint("ns", "sa", "istio-ca", 600)
                .unwrap(),
        ),
        (
            "wrong audience",
            ca.tokens.mint("ns", "sa", "vault", 600).unwrap(),
        ),
        ("expired", with(&|c| c["exp"] = json!(now() - 3600))),
        ("not yet valid", with(&|c| c["nbf"] = json!(now() + 3600))),
        (
            "issued in the future",
            with(&|c| c["iat"] = json!(now() + 3600)),
        ),
        (
            "no exp",
            with(&|c| {
                c.as_object_mut().unwrap().remove("exp");
            }),
        ),
        (
            "not a service account",
            with(&|c| c["sub"] = json!("alice")),
        ),
        (
            "node, not service account",
            with(&|c| c["sub"] = json!("system:node:worker-1")),
        ),
        (
            "five-part username",
            with(&|c| c["sub"] = json!("system:serviceaccount:ns:sa:x")),
        ),
        (
            "kubernetes.io disagrees",
            with(&|c| {
                c["kubernetes.io"] = json!({"namespace": "kube-system", "serviceaccount": {"name": "sa", "uid": "1"}})
            }),
        ),
    ];
    for (case, token) in cases {
        assert_opaque(&status(&ca, &token).await, case);
    }
    // HMAC with the public JWKS as the secret: the classic algorithm confusion.
    let hs = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims(sa),
        &EncodingKey::from_secret(ca.tokens.jwks().as_bytes()).unwrap(),
    )
    .unwrap();
    assert_opaque(&status(&ca, &hs).await, "HS256");

    let (_, metrics) = crate::support::http_get(&format!("{}/metrics", ca.metrics_url())).await;
    assert!(
        metrics.contains("citadel_server_authentication_failure_count 14"),
        "{metrics}"
    );
}

#[tokio::test]
async fn missing_or_malformed_authorization_is_unauthenticated() {
    let ca = TestCa::start().await;
    let (_, csr) = csr::ztunnel(&id("ns", "sa"));
    let mut client = ca.client().await;
    let mut req = request::request_for(&csr, 600, "x", "Kubernetes").unwrap();
    req.metadata_mut().remove("authorization");
    assert_opaque(
        &client.create_certificate(req).await.unwrap_err(),
        "no header",
    );

    let mut req = request::request_for(&csr, 600, "x", "Kubernetes").unwrap();
    let basic = format!("Basic {}", ca.token("ns", "sa")).parse().unwrap();
    req.metadata_mut().insert("authorization", basic);
    assert_opaque(
        &client.create_certificate(req).await.unwrap_err(),
        "Basic scheme",
    );

    let mut req = request::request_for(&csr, 600, "x", "Kubernetes").unwrap();
    let lower = format!("bearer {}", ca.token("ns", "sa")).parse().unwrap();
    req.metadata_mut().insert("authorization", lower);
    client
        .create_certificate(req)
        .await
        .expect("scheme is case-insensitive");

    let huge = "a".repeat(10 * 1024);
    assert_opaque(&status(&ca, &huge).await, "oversized token");
}

#[tokio::test]
async fn kubernetes_claims_with_pod_binding_are_accepted() {
    let ca = TestCa::start().await;
    let mut c = claims("system:serviceaccount:ns:sa");
    c["kubernetes.io"] = json!({
        "namespace": "ns",
        "serviceaccount": {"name": "sa", "uid": "u1"},
        "pod": {"name": "sa-1234", "uid": "u2"},
        "node": {"name": "worker-1", "uid": "u3"},
    });
    let token = forge(&ca, c, Algorithm::ES256);
    let (_, csr) = csr::ztunnel(&id("ns", "sa"));
    ca.send_token(&csr, &token, 600).await.unwrap();
}

/// The document served (`None`: answer 500) and the number of fetches.
type JwksState = (Arc<Mutex<Option<String>>>, Arc<AtomicUsize>);

/// A JWKS endpoint whose document and health the test controls.
struct JwksServer {
    addr: SocketAddr,
    doc: Arc<Mutex<Option<String>>>,
    fetches: Arc<AtomicUsize>,
}

impl JwksServer {
    async fn start(doc: Option<String>) -> Self {
        let state = (Arc::new(Mutex::new(doc)), Arc::new(AtomicUsize::new(0)));
        let app = Router::new()
            .route(
                "/jwks",
                get(|State((doc, n)): State<JwksState>| async move {
                    n.fetch_add(1, Ordering::SeqCst);
                    match doc.lock().unwrap().clone() {
                        Some(d) => (StatusCode::OK, d),
                        None => (StatusCode::INTERNAL_SERVER_ERROR, "down".into()),
                    }
                }),
            )
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self {
            addr,
            doc: state.0,
            fetches: state.1,
        }
    }

    fn setup(&self, refresh_secs: u64) -> Setup {
        Setup {
            jwks: Some(format!(
                "jwks_url = \"http://{}/jwks\"\njwks_refresh_secs = {refresh_secs}",
                self.addr
            )),
            ..Setup::default()
        }
    }
}

#[tokio::test]
async fn jwks_url_is_cached_and_kept_when_down_and_unknown_kids_do_not_flood_it() {
    let jwks = JwksServer::start(None).await;
    let ca = TestCa::start_with(jwks.setup(3600)).await;
    *jwks.doc.lock().unwrap() = Some(ca.tokens.jwks().to_owned());
    let (_, csr) = csr::ztunnel(&id("ns", "sa"));

    ca.send(&csr, "ns", "sa", 600).await.unwrap();
    let fetched = jwks.fetches.load(Ordering::SeqCst);
    for _ in 0..20 {
        ca.send(&csr, "ns", "sa", 600).await.unwrap();
    }
    assert_eq!(
        jwks.fetches.load(Ordering::SeqCst),
        fetched,
        "cached, not fetched per request"
    );

    // Tokens naming unknown keys: refused, and at most one refetch per 30 s.
    let (forger, _) = TokenIssuer::generate(ISSUER).unwrap();
    for _ in 0..10 {
        let token = forger.mint("ns", "sa", "istio-ca", 600).unwrap();
        let s = ca.send_token(&csr, &token, 600).await.unwrap_err();
        assert_eq!(s.code(), Code::Unauthenticated);
    }
    assert_eq!(
        jwks.fetches.load(Ordering::SeqCst),
        fetched,
        "no fetch flood"
    );

    // The endpoint goes down: the cached keys keep working.
    *jwks.doc.lock().unwrap() = None;
    ca.send(&csr, "ns", "sa", 600).await.unwrap();
}

#[tokio::test]
async fn jwks_key_rotation_is_picked_up_without_restart() {
    let jwks = JwksServer::start(None).await;
    let ca = TestCa::start_with(jwks.setup(1)).await;
    *jwks.doc.lock().unwrap() = Some(ca.tokens.jwks().to_owned());
    let (_, csr) = csr::ztunnel(&id("ns", "sa"));
    ca.send(&csr, "ns", "sa", 600).await.unwrap();

    let (rotated, _) = TokenIssuer::generate(ISSUER).unwrap();
    *jwks.doc.lock().unwrap() = Some(rotated.jwks().to_owned());
    let token = rotated.mint("ns", "sa", "istio-ca", 600).unwrap();
    let accepted = crate::support::eventually(std::time::Duration::from_secs(5), async || {
        ca.send_token(&csr, &token, 600).await.is_ok()
    })
    .await;
    assert!(
        accepted,
        "the rotated key is fetched within the refresh period"
    );
}

#[tokio::test]
async fn jwks_url_unreachable_is_unavailable() {
    let jwks = JwksServer::start(None).await;
    let ca = TestCa::start_with(jwks.setup(3600)).await;
    let (_, csr) = csr::ztunnel(&id("ns", "sa"));
    let s = ca.send(&csr, "ns", "sa", 600).await.unwrap_err();
    assert_eq!(s.code(), Code::Unavailable, "{s:?}");

    // A burst while it is down does not turn into a burst of fetches.
    let before = jwks.fetches.load(Ordering::SeqCst);
    for _ in 0..10 {
        assert_eq!(
            ca.send(&csr, "ns", "sa", 600).await.unwrap_err().code(),
            Code::Unavailable
        );
    }
    assert!(jwks.fetches.load(Ordering::SeqCst) <= before + 1);

    // The endpoint recovers: no restart needed.
    *jwks.doc.lock().unwrap() = Some(ca.tokens.jwks().to_owned());
    let recovered = crate::support::eventually(std::time::Duration::from_secs(5), async || {
        ca.send(&csr, "ns", "sa", 600).await.is_ok()
    })
    .await;
    assert!(recovered);
}

fn base64url(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
}

#[tokio::test]
async fn verdicts_are_reused_until_the_token_expires() {
    let ca = TestCa::start_with(Setup {
        authn: "clock_skew_secs = 0".into(),
        ..Setup::default()
    })
    .await;
    let mut c = claims("system:serviceaccount:ns:sa");
    c["exp"] = json!(now() + 2);
    let token = forge(&ca, c, Algorithm::ES256);
    let (_, csr) = csr::ztunnel(&id("ns", "sa"));
    for _ in 0..5 {
        ca.send_token(&csr, &token, 600).await.unwrap();
    }
    let (_, m) = crate::support::http_get(&format!("{}/metrics", ca.metrics_url())).await;
    assert!(m.contains("castellan_authn_cache_misses_count 1"), "{m}");
    assert!(m.contains("castellan_authn_cache_hits_count 4"), "{m}");

    tokio::time::sleep(std::time::Duration::from_millis(3100)).await;
    assert_opaque(&status(&ca, &token).await, "expired while cached");
}
