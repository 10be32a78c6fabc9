//! An in-process Kubernetes API server for the parts castellan uses, speaking
//! the real HTTP API shapes: TokenReview create, Pod get, Pod list and watch
//! (resourceVersion, field selectors, bookmarks-free newline-delimited
//! events, DELETED when an object stops matching a selector), HTTPS with a
//! CA-signed certificate, bearer authentication of castellan itself, and
//! `Status` bodies for errors. A kubeconfig points castellan's real kube-rs
//! client at it. No kube-apiserver can run on this machine; this stands in.

use std::{
    collections::{BTreeMap, HashMap},
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
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::{any, get, post},
};
use base64::Engine;
use rcgen::{CertificateParams, DnType, IsCa, SanType};
use serde_json::{Value, json};
use tokio::sync::broadcast;

use crate::pki::{Ca, KeyAlg};

mod objects;
mod pods;
pub mod rbac;
mod tokenreview;

pub use objects::Kind;

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
    /// 429 TooManyRequests, as API Priority and Fairness sheds load.
    Throttled,
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
    /// TokenReviews being answered now, and the most ever at once.
    reviewing: AtomicUsize,
    peak_reviewing: AtomicUsize,
    review_delay: Mutex<Duration>,
    bookmark_every: Mutex<Duration>,
    objects: Mutex<objects::Objects>,
    changes: broadcast::Sender<objects::Change>,
    /// Requests by (verb, resource).
    calls: Mutex<HashMap<(String, String), usize>>,
    /// (verb, resource) castellan's RBAC does not grant.
    forbidden: Mutex<std::collections::HashSet<(String, String)>>,
    /// (verb, resource) answered with this status.
    failing: Mutex<HashMap<(String, String), StatusCode>>,
    /// When set, every request is authorized by these rules, as the real
    /// API server's RBAC authorizer would.
    rbac: Mutex<Option<rbac::Rbac>>,
    /// Requests RBAC refused: "verb resource namespace/name".
    denied: Mutex<Vec<String>>,
}

impl Inner {
    fn count(&self, verb: &str, resource: &str) {
        *self
            .calls
            .lock()
            .unwrap()
            .entry((verb.to_owned(), resource.to_owned()))
            .or_default() += 1;
    }

    fn is_forbidden(&self, verb: &str, resource: &str) -> bool {
        self.forbidden
            .lock()
            .unwrap()
            .contains(&(verb.to_owned(), resource.to_owned()))
    }

    /// RBAC's decision (allowed when no rules are enforced); refusals are
    /// recorded.
    fn authorized(&self, r: &rbac::Request<'_>) -> bool {
        let allowed = self
            .rbac
            .lock()
            .unwrap()
            .as_ref()
            .is_none_or(|rules| rules.allows(r));
        if !allowed {
            self.denied.lock().unwrap().push(format!(
                "{} {} {}/{}",
                r.verb,
                r.resource,
                r.namespace.unwrap_or("*"),
                r.name.unwrap_or("*")
            ));
        }
        allowed
    }

    fn failing(&self, verb: &str, resource: &str) -> Option<StatusCode> {
        self.failing
            .lock()
            .unwrap()
            .get(&(verb.to_owned(), resource.to_owned()))
            .copied()
    }

    /// The namespace controller's part: contents go, then the namespace.
    fn finish_namespace(&self, name: &str) {
        let mut objects = self.objects.lock().unwrap();
        for kind in [Kind::ConfigMap, Kind::Secret, Kind::Lease] {
            for o in objects.of_kind(kind) {
                if o["metadata"]["namespace"] == name {
                    let n = o["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned();
                    objects.remove(&self.changes, kind, name, &n);
                }
            }
        }
        objects.remove(&self.changes, Kind::Namespace, "", name);
    }
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
            reviewing: AtomicUsize::new(0),
            peak_reviewing: AtomicUsize::new(0),
            review_delay: Mutex::new(Duration::ZERO),
            bookmark_every: Mutex::new(Duration::from_secs(60)),
            objects: Mutex::default(),
            changes: broadcast::channel(65536).0,
            calls: Mutex::default(),
            forbidden: Mutex::default(),
            failing: Mutex::default(),
            rbac: Mutex::default(),
            denied: Mutex::default(),
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
        let leaf = root.sign(params, crate::pki::key(KeyAlg::EcP256));
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

    /// The PEM of the CA its serving certificate chains to.
    pub fn ca_pem(&self) -> &str {
        &self.ca
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

    /// How often watches that asked for bookmarks get one (60 s by default,
    /// as a real API server roughly does).
    pub fn set_bookmark_interval(&self, every: Duration) {
        *self.inner.bookmark_every.lock().unwrap() = every;
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

    /// A namespace, as `kubectl create namespace` makes it, with labels.
    pub fn create_namespace(&self, name: &str, labels: &[(&str, &str)]) {
        let labels: serde_json::Map<String, Value> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), json!(v)))
            .collect();
        let ns = json!({"metadata": {"name": name, "labels": labels}, "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}});
        let mut objects = self.inner.objects.lock().unwrap();
        objects.put(&self.inner.changes, Kind::Namespace, "", ns);
    }

    /// Sets a label on a namespace (`kubectl label`).
    pub fn label_namespace(&self, name: &str, key: &str, value: Option<&str>) {
        let mut objects = self.inner.objects.lock().unwrap();
        let Some(mut ns) = objects.get(Kind::Namespace, "", name).cloned() else {
            return;
        };
        match value {
            Some(v) => ns["metadata"]["labels"][key] = json!(v),
            None => {
                if let Some(l) = ns["metadata"]["labels"].as_object_mut() {
                    l.remove(key);
                }
            }
        }
        objects.put(&self.inner.changes, Kind::Namespace, "", ns);
    }

    /// Deletes a namespace: Terminating at once, gone with its contents soon after.
    pub fn delete_namespace(&self, name: &str) {
        let mut objects = self.inner.objects.lock().unwrap();
        let Some(mut ns) = objects.get(Kind::Namespace, "", name).cloned() else {
            return;
        };
        ns["status"]["phase"] = json!("Terminating");
        ns["metadata"]["deletionTimestamp"] = json!("2026-12-01T00:00:00Z");
        objects.put(&self.inner.changes, Kind::Namespace, "", ns);
        drop(objects);
        let inner = Arc::clone(&self.inner);
        let name = name.to_owned();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            inner.finish_namespace(&name);
        });
    }

    /// An object as stored (`ns` empty for cluster-scoped kinds).
    pub fn object(&self, kind: Kind, ns: &str, name: &str) -> Option<Value> {
        self.inner
            .objects
            .lock()
            .unwrap()
            .get(kind, ns, name)
            .cloned()
    }

    /// Every object of a kind.
    pub fn objects(&self, kind: Kind) -> Vec<Value> {
        self.inner.objects.lock().unwrap().of_kind(kind)
    }

    /// Writes an object as someone else would (an edit behind castellan's back).
    pub fn put_object(&self, kind: Kind, ns: &str, obj: Value) -> Value {
        self.inner
            .objects
            .lock()
            .unwrap()
            .put(&self.inner.changes, kind, ns, obj)
    }

    /// Deletes an object as someone else would.
    pub fn delete_object(&self, kind: Kind, ns: &str, name: &str) {
        self.inner
            .objects
            .lock()
            .unwrap()
            .remove(&self.inner.changes, kind, ns, name);
    }

    /// Requests by (verb, resource) so far.
    pub fn calls(&self) -> HashMap<(String, String), usize> {
        self.inner.calls.lock().unwrap().clone()
    }

    /// Requests of `verb` on `resource` so far.
    pub fn calls_of(&self, verb: &str, resource: &str) -> usize {
        self.calls()
            .get(&(verb.to_owned(), resource.to_owned()))
            .copied()
            .unwrap_or(0)
    }

    /// Requests that are not watches (writes and reads), so far.
    pub fn non_watch_calls(&self) -> usize {
        self.calls()
            .iter()
            .filter(|((v, _), _)| v != "watch")
            .map(|(_, n)| n)
            .sum()
    }

    /// Refuses `verb` on `resource` (403, the RBAC message), or grants it again.
    pub fn forbid(&self, verb: &str, resource: &str, forbidden: bool) {
        let key = (verb.to_owned(), resource.to_owned());
        let mut f = self.inner.forbidden.lock().unwrap();
        if forbidden {
            f.insert(key);
        } else {
            f.remove(&key);
        }
    }

    /// Answers `verb` on `resource` with `code` (or normally again with `None`).
    pub fn fail(&self, verb: &str, resource: &str, code: Option<StatusCode>) {
        let key = (verb.to_owned(), resource.to_owned());
        let mut f = self.inner.failing.lock().unwrap();
        match code {
            Some(c) => {
                f.insert(key, c);
            }
            None => {
                f.remove(&key);
            }
        }
    }

    /// Authorizes every request with `rules` from now on (`None`: everything
    /// is allowed, as before).
    pub fn enforce_rbac(&self, rules: Option<rbac::Rbac>) {
        *self.inner.rbac.lock().unwrap() = rules;
    }

    /// The requests RBAC refused, as "verb resource namespace/name".
    pub fn denied(&self) -> Vec<String> {
        self.inner.denied.lock().unwrap().clone()
    }

    /// How many TokenReviews were answered.
    pub fn reviews(&self) -> usize {
        self.inner.reviews.load(Ordering::SeqCst)
    }

    /// The most TokenReviews the server was answering at one time.
    pub fn peak_concurrent_reviews(&self) -> usize {
        self.inner.peak_reviewing.load(Ordering::SeqCst)
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
            post(tokenreview::create),
        )
        .route("/api/v1/pods", get(pods::list_or_watch))
        .route("/api/v1/namespaces/{ns}/pods/{name}", get(pods::get))
        .route("/api/v1/{resource}", any(objects::core_all))
        .route("/api/v1/namespaces/{name}", any(objects::namespace_one))
        .route(
            "/api/v1/namespaces/{ns}/{resource}",
            any(objects::namespaced_all),
        )
        .route(
            "/api/v1/namespaces/{ns}/{resource}/{name}",
            any(objects::namespaced_one),
        )
        .route(
            "/apis/coordination.k8s.io/v1/namespaces/{ns}/{resource}",
            any(objects::namespaced_all),
        )
        .route(
            "/apis/coordination.k8s.io/v1/namespaces/{ns}/{resource}/{name}",
            any(objects::namespaced_one),
        )
        .route(
            "/apis/certificates.k8s.io/v1beta1/{resource}",
            any(objects::cluster_all),
        )
        .route(
            "/apis/certificates.k8s.io/v1beta1/{resource}/{name}",
            any(objects::cluster_one),
        )
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

/// The API server's 403 for a request RBAC refused.
fn refused(r: &rbac::Request<'_>) -> Response {
    let scope = r.namespace.map_or_else(
        || "at the cluster scope".to_owned(),
        |n| format!("in the namespace \"{n}\""),
    );
    let named = r.name.map(|n| format!(" \"{n}\"")).unwrap_or_default();
    status(
        StatusCode::FORBIDDEN,
        "Forbidden",
        &format!(
            "{res}{named} is forbidden: User \"system:serviceaccount:istio-system:castellan\" cannot {verb} resource \"{res}\" in API group \"{group}\" {scope}",
            res = r.resource,
            verb = r.verb,
            group = r.group,
        ),
    )
}

/// Authorizes `r`, answering 403 as the API server does when RBAC refuses.
fn authorize(inner: &Inner, r: &rbac::Request<'_>) -> Option<Response> {
    (!inner.authorized(r)).then(|| refused(r))
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
        Mode::Throttled => {
            let mut r = status(
                StatusCode::TOO_MANY_REQUESTS,
                "TooManyRequests",
                "Too many requests, please try again later.",
            );
            r.headers_mut()
                .insert("retry-after", http::HeaderValue::from_static("1"));
            return Some(r);
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
