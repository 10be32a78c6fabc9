//! An in-process Kubernetes API server for the parts castellan uses, speaking
//! the real HTTP API shapes: TokenReview create, Pod get, Pod list and watch
//! (resourceVersion, field selectors, bookmarks-free newline-delimited
//! events, DELETED when an object stops matching a selector), HTTPS with a
//! CA-signed certificate, bearer authentication of castellan itself, and
//! `Status` bodies for errors. A kubeconfig points castellan's real kube-rs
//! client at it. No kube-apiserver can run on this machine; this stands in.

use std::{
    collections::{BTreeMap, HashMap},
    convert::Infallible,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{
    Json, Router,
    body::{Body, Bytes},
    extract::{Path as UrlPath, Query, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use base64::Engine;
use rcgen::{CertificateParams, DnType, IsCa, SanType};
use serde_json::{Value, json};
use tokio::sync::broadcast;

use super::pki::{Ca, KeyAlg};

/// The bearer token castellan's kubeconfig carries.
pub const CASTELLAN_TOKEN: &str = "castellan-sa-token";

/// What the API server knows about one service-account token.
#[derive(Clone, Debug)]
pub struct TokenInfo {
    pub username: String,
    pub groups: Vec<String>,
    pub audiences: Vec<String>,
    /// (pod name, pod uid), as bound tokens carry in `user.extra`.
    pub pod: Option<(String, String)>,
}

/// How the server answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Normal,
    /// 503 with a Status body, as an overloaded or restarting API server.
    Unavailable,
    /// Accept the request and never answer.
    Hang,
}

#[derive(Clone, Debug)]
struct Event {
    rv: u64,
    old: Option<Value>,
    new: Option<Value>,
}

#[derive(Default)]
struct Pods {
    rv: u64,
    by_key: BTreeMap<(String, String), Value>,
    log: Vec<Event>,
}

struct Inner {
    tokens: Mutex<HashMap<String, TokenInfo>>,
    pods: Mutex<Pods>,
    events: broadcast::Sender<Event>,
    mode: Mutex<Mode>,
    /// Watches hold new events while this is set (an index lagging behind).
    watch_paused: Mutex<bool>,
    reviews: AtomicUsize,
    review_delay: Mutex<Duration>,
}

/// A running fake API server.
#[derive(Clone)]
pub struct FakeKube {
    inner: Arc<Inner>,
    pub addr: SocketAddr,
    ca: Arc<String>,
    acceptor: tokio_rustls::TlsAcceptor,
    stop: Arc<Mutex<tokio::sync::watch::Sender<bool>>>,
}

impl FakeKube {
    pub async fn start() -> Self {
        Self::start_on("127.0.0.1:0".parse().unwrap()).await
    }

    /// Listens on `addr` (a fixed port lets a test restart it in place).
    pub async fn start_on(addr: SocketAddr) -> Self {
        let (events, _) = broadcast::channel(1024);
        let inner = Arc::new(Inner {
            tokens: Mutex::default(),
            pods: Mutex::default(),
            events,
            mode: Mutex::new(Mode::Normal),
            watch_paused: Mutex::new(false),
            reviews: AtomicUsize::new(0),
            review_delay: Mutex::new(Duration::ZERO),
        });
        let root = Ca::root("Fake Kubernetes CA", KeyAlg::EcP256);
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params
            .subject_alt_names
            .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        params
            .distinguished_name
            .push(DnType::CommonName, "kube-apiserver");
        params.is_ca = IsCa::ExplicitNoCa;
        let leaf = root.sign(params, super::pki::key(KeyAlg::EcP256));
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der.clone().into()],
            rustls::pki_types::PrivateKeyDer::try_from(leaf.key.serialize_der()).unwrap(),
        )
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, _) = tokio::sync::watch::channel(false);
        let kube = Self {
            inner,
            addr,
            ca: Arc::new(root.pem),
            acceptor,
            stop: Arc::new(Mutex::new(stop)),
        };
        kube.serve(listener);
        kube
    }

    fn serve(&self, listener: tokio::net::TcpListener) {
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        *self.stop.lock().unwrap() = stop;
        let (acceptor, app) = (self.acceptor.clone(), router(Arc::clone(&self.inner)));
        tokio::spawn(async move {
            loop {
                let (tcp, _) = tokio::select! {
                    r = listener.accept() => match r { Ok(c) => c, Err(_) => continue },
                    _ = stopped.wait_for(|s| *s) => return,
                };
                let (acceptor, app, mut stopped) = (acceptor.clone(), app.clone(), stopped.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper_util::service::TowerToHyperService::new(app);
                    let conn = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .into_owned();
                    tokio::select! {
                        _ = conn => {}
                        _ = stopped.wait_for(|s| *s) => {}
                    }
                });
            }
        });
    }

    /// Listens again on the same address, with the same certificate and state.
    pub async fn restart(&self) {
        let listener = tokio::net::TcpListener::bind(self.addr).await.unwrap();
        self.serve(listener);
    }

    /// Stops listening and drops every connection.
    pub fn stop(&self) {
        self.stop.lock().unwrap().send_replace(true);
    }

    /// Writes a kubeconfig for castellan and returns its path.
    pub fn kubeconfig(&self, dir: &Path, name: &str) -> PathBuf {
        let ca = base64::engine::general_purpose::STANDARD.encode(self.ca.as_bytes());
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: {name}\n  cluster:\n    server: https://127.0.0.1:{port}\n    certificate-authority-data: {ca}\nusers:\n- name: castellan\n  user:\n    token: {CASTELLAN_TOKEN}\ncontexts:\n- name: {name}\n  context:\n    cluster: {name}\n    user: castellan\ncurrent-context: {name}\n",
            port = self.addr.port()
        );
        let path = dir.join(format!("{name}.kubeconfig"));
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Registers a bound service-account token for `ns/sa`.
    pub fn add_token(&self, token: &str, ns: &str, sa: &str, pod: Option<(&str, &str)>) {
        self.add_token_info(
            token,
            TokenInfo {
                username: format!("system:serviceaccount:{ns}:{sa}"),
                groups: vec![
                    "system:serviceaccounts".into(),
                    format!("system:serviceaccounts:{ns}"),
                    "system:authenticated".into(),
                ],
                audiences: vec!["istio-ca".into()],
                pod: pod.map(|(n, u)| (n.to_owned(), u.to_owned())),
            },
        );
    }

    pub fn add_token_info(&self, token: &str, info: TokenInfo) {
        self.inner
            .tokens
            .lock()
            .unwrap()
            .insert(token.to_owned(), info);
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.inner.mode.lock().unwrap() = mode;
    }

    pub fn set_review_delay(&self, d: Duration) {
        *self.inner.review_delay.lock().unwrap() = d;
    }

    pub fn pause_watches(&self, paused: bool) {
        *self.inner.watch_paused.lock().unwrap() = paused;
        if !paused {
            // Wake watchers so they flush what they held.
            let _ = self.inner.events.send(Event {
                rv: 0,
                old: None,
                new: None,
            });
        }
    }

    /// How many TokenReviews were answered.
    pub fn reviews(&self) -> usize {
        self.inner.reviews.load(Ordering::SeqCst)
    }

    /// Creates or replaces a pod.
    pub fn put_pod(&self, ns: &str, name: &str, uid: &str, sa: &str, node: &str, phase: &str) {
        let mut pods = self.inner.pods.lock().unwrap();
        pods.rv += 1;
        let rv = pods.rv;
        let pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "uid": uid, "resourceVersion": rv.to_string()},
            "spec": {"serviceAccountName": sa, "nodeName": node, "containers": [{"name": "app", "image": "app"}]},
            "status": {"phase": phase},
        });
        let old = pods
            .by_key
            .insert((ns.to_owned(), name.to_owned()), pod.clone());
        let event = Event {
            rv,
            old,
            new: Some(pod),
        };
        pods.log.push(event.clone());
        let _ = self.inner.events.send(event);
    }

    pub fn delete_pod(&self, ns: &str, name: &str) {
        let mut pods = self.inner.pods.lock().unwrap();
        pods.rv += 1;
        let rv = pods.rv;
        if let Some(mut old) = pods.by_key.remove(&(ns.to_owned(), name.to_owned())) {
            old["metadata"]["resourceVersion"] = json!(rv.to_string());
            let event = Event {
                rv,
                old: Some(old),
                new: None,
            };
            pods.log.push(event.clone());
            let _ = self.inner.events.send(event);
        }
    }
}

fn router(inner: Arc<Inner>) -> Router {
    Router::new()
        .route(
            "/apis/authentication.k8s.io/v1/tokenreviews",
            post(token_review),
        )
        .route("/api/v1/pods", get(list_or_watch))
        .route("/api/v1/namespaces/{ns}/pods/{name}", get(get_pod))
        .with_state(inner)
}

fn status(code: StatusCode, reason: &str, message: &str) -> Response {
    (
        code,
        Json(json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": message, "reason": reason, "code": code.as_u16(),
        })),
    )
        .into_response()
}

/// Authentication of castellan itself, and the failure modes.
async fn gate(inner: &Inner, headers: &HeaderMap) -> Option<Response> {
    let mode = *inner.mode.lock().unwrap();
    match mode {
        Mode::Normal => {}
        Mode::Unavailable => {
            return Some(status(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                "the server is currently unable to handle the request",
            ));
        }
        Mode::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
    }
    let auth = headers.get("authorization").and_then(|v| v.to_str().ok());
    if auth != Some(&format!("Bearer {CASTELLAN_TOKEN}")) {
        return Some(status(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "Unauthorized",
        ));
    }
    None
}

async fn token_review(
    State(inner): State<Arc<Inner>>,
    headers: HeaderMap,
    Json(review): Json<Value>,
) -> Response {
    if let Some(r) = gate(&inner, &headers).await {
        return r;
    }
    let delay = *inner.review_delay.lock().unwrap();
    tokio::time::sleep(delay).await;
    inner.reviews.fetch_add(1, Ordering::SeqCst);
    // Like the API server, default an absent kind/apiVersion from the URL.
    let wrong = |field: &str, want: &str| review.get(field).is_some_and(|v| v != want);
    if wrong("kind", "TokenReview") || wrong("apiVersion", "authentication.k8s.io/v1") {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "expected an authentication.k8s.io/v1 TokenReview",
        );
    }
    let token = review["spec"]["token"].as_str().unwrap_or_default();
    let wanted: Vec<String> = review["spec"]["audiences"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let info = inner.tokens.lock().unwrap().get(token).cloned();
    let status_body = match info {
        None => {
            json!({"authenticated": false, "error": "[invalid bearer token, token lookup failed]", "user": {}})
        }
        Some(info) => {
            let granted: Vec<&String> = info
                .audiences
                .iter()
                .filter(|a| wanted.is_empty() || wanted.contains(a))
                .collect();
            if granted.is_empty() {
                json!({"authenticated": false, "user": {}, "error": format!(
                    "[invalid bearer token, token audiences {:?} is invalid for the target audiences {:?}]",
                    info.audiences, wanted
                )})
            } else {
                let mut extra =
                    json!({"authentication.kubernetes.io/credential-id": ["JTI=0a1b2c"]});
                if let Some((name, uid)) = &info.pod {
                    extra["authentication.kubernetes.io/pod-name"] = json!([name]);
                    extra["authentication.kubernetes.io/pod-uid"] = json!([uid]);
                }
                // The service account's uid, which a real API server puts in
                // both the token and the review.
                let uid = jsonwebtoken::dangerous::insecure_decode_claims::<Value>(token)
                    .ok()
                    .and_then(|c| {
                        c["kubernetes.io"]["serviceaccount"]["uid"]
                            .as_str()
                            .map(str::to_owned)
                    })
                    .unwrap_or_else(|| "9f1e-sa-uid".to_owned());
                json!({
                    "authenticated": true,
                    "user": {"username": info.username, "uid": uid, "groups": info.groups, "extra": extra},
                    "audiences": granted,
                })
            }
        }
    };
    let mut answer = review.clone();
    answer["kind"] = json!("TokenReview");
    answer["apiVersion"] = json!("authentication.k8s.io/v1");
    answer["metadata"] = json!({"creationTimestamp": null});
    answer["status"] = status_body;
    (StatusCode::CREATED, Json(answer)).into_response()
}

async fn get_pod(
    State(inner): State<Arc<Inner>>,
    headers: HeaderMap,
    UrlPath((ns, name)): UrlPath<(String, String)>,
) -> Response {
    if let Some(r) = gate(&inner, &headers).await {
        return r;
    }
    match inner.pods.lock().unwrap().by_key.get(&(ns, name.clone())) {
        Some(p) => Json(p.clone()).into_response(),
        None => status(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("pods \"{name}\" not found"),
        ),
    }
}

/// A parsed `fieldSelector`.
#[derive(Clone, Debug, Default)]
struct Selector(Vec<(String, bool, String)>);

impl Selector {
    fn parse(s: Option<&String>) -> Result<Self, String> {
        let mut terms = Vec::new();
        for term in s
            .map(String::as_str)
            .unwrap_or("")
            .split(',')
            .filter(|t| !t.is_empty())
        {
            let (field, eq, value) = if let Some((f, v)) = term.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                (f, true, v)
            } else {
                return Err(format!("invalid selector: '{term}'"));
            };
            if ![
                "status.phase",
                "spec.nodeName",
                "metadata.name",
                "metadata.namespace",
                "spec.serviceAccountName",
            ]
            .contains(&field)
            {
                return Err(format!("field label not supported: {field}"));
            }
            terms.push((field.to_owned(), eq, value.to_owned()));
        }
        Ok(Self(terms))
    }

    fn matches(&self, pod: &Value) -> bool {
        self.0.iter().all(|(field, eq, value)| {
            let actual = field
                .split('.')
                .fold(pod, |v, k| &v[k])
                .as_str()
                .unwrap_or("");
            (actual == value) == *eq
        })
    }

    /// The watch event an object change is, seen through this selector.
    fn event(&self, e: &Event) -> Option<Value> {
        let was = e.old.as_ref().filter(|p| self.matches(p));
        let is = e.new.as_ref().filter(|p| self.matches(p));
        match (was, is) {
            (None, Some(p)) => Some(json!({"type": "ADDED", "object": p})),
            (Some(_), Some(p)) => Some(json!({"type": "MODIFIED", "object": p})),
            (Some(p), None) => {
                let mut p = p.clone();
                p["metadata"]["resourceVersion"] = json!(e.rv.to_string());
                Some(json!({"type": "DELETED", "object": p}))
            }
            (None, None) => None,
        }
    }
}

async fn list_or_watch(
    State(inner): State<Arc<Inner>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Some(r) = gate(&inner, &headers).await {
        return r;
    }
    let selector = match Selector::parse(q.get("fieldSelector")) {
        Ok(s) => s,
        Err(e) => return status(StatusCode::BAD_REQUEST, "BadRequest", &e),
    };
    if q.get("watch").is_some_and(|w| w == "true" || w == "1") {
        return watch(inner, selector, &q);
    }
    let pods = inner.pods.lock().unwrap();
    let items: Vec<&Value> = pods
        .by_key
        .values()
        .filter(|p| selector.matches(p))
        .collect();
    Json(json!({
        "apiVersion": "v1", "kind": "PodList",
        "metadata": {"resourceVersion": pods.rv.to_string()},
        "items": items,
    }))
    .into_response()
}

fn watch(inner: Arc<Inner>, selector: Selector, q: &HashMap<String, String>) -> Response {
    let from: u64 = q
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let timeout = Duration::from_secs(
        q.get("timeoutSeconds")
            .and_then(|v| v.parse().ok())
            .unwrap_or(290),
    );
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, Infallible>>(256);
    let mut live = inner.events.subscribe();
    let backlog: Vec<Event> = inner
        .pods
        .lock()
        .unwrap()
        .log
        .iter()
        .filter(|e| e.rv > from)
        .cloned()
        .collect();
    tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut held: Vec<Event> = backlog;
        let mut sent_up_to = from;
        loop {
            if !*inner.watch_paused.lock().unwrap() {
                for e in held.drain(..) {
                    if e.rv <= sent_up_to {
                        continue;
                    }
                    sent_up_to = e.rv;
                    if let Some(ev) = selector.event(&e) {
                        let line = format!("{ev}\n");
                        if tx.send(Ok(Bytes::from(line))).await.is_err() {
                            return;
                        }
                    }
                }
            }
            tokio::select! {
                e = live.recv() => match e {
                    Ok(e) if e.rv > 0 => held.push(e),
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => return,
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                () = tokio::time::sleep_until(deadline) => return,
            }
        }
    });
    Response::builder()
        .header("content-type", "application/json")
        .body(Body::from_stream(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ))
        .unwrap()
}
