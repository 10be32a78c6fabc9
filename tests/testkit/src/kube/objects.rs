//! Namespaces, ConfigMaps, Secrets, Leases and ClusterTrustBundles, kept as
//! the API server keeps them: one resourceVersion sequence, create (201,
//! 409 AlreadyExists, 404 for a missing namespace, 403 in a terminating
//! one), get, replace with optimistic concurrency (409 Conflict on a stale
//! resourceVersion), delete (namespaces terminate first, then take their
//! objects with them), list and watch with label and field selectors,
//! resourceVersion, timeoutSeconds and bookmarks. Every request is counted by
//! verb and resource, and any verb on any resource can be forbidden (403,
//! the RBAC message) or made to fail.

use std::{collections::HashMap, convert::Infallible, sync::Arc, time::Duration};

use axum::{
    Json,
    body::{Body, Bytes},
    extract::{Path as UrlPath, Query, State},
    http::{HeaderMap, Method, StatusCode},
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};
use tokio::sync::broadcast;

use super::{Inner, authorize, gate, rbac, status};

/// A kind of object, with where it lives in the API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Namespace,
    ConfigMap,
    Secret,
    Lease,
    ClusterTrustBundle,
}

impl Kind {
    pub fn resource(self) -> &'static str {
        match self {
            Self::Namespace => "namespaces",
            Self::ConfigMap => "configmaps",
            Self::Secret => "secrets",
            Self::Lease => "leases",
            Self::ClusterTrustBundle => "clustertrustbundles",
        }
    }

    fn kind(self) -> &'static str {
        match self {
            Self::Namespace => "Namespace",
            Self::ConfigMap => "ConfigMap",
            Self::Secret => "Secret",
            Self::Lease => "Lease",
            Self::ClusterTrustBundle => "ClusterTrustBundle",
        }
    }

    fn api_version(self) -> &'static str {
        match self {
            Self::Namespace | Self::ConfigMap | Self::Secret => "v1",
            Self::Lease => "coordination.k8s.io/v1",
            Self::ClusterTrustBundle => "certificates.k8s.io/v1beta1",
        }
    }

    fn group(self) -> &'static str {
        match self {
            Self::Namespace | Self::ConfigMap | Self::Secret => "",
            Self::Lease => "coordination.k8s.io",
            Self::ClusterTrustBundle => "certificates.k8s.io",
        }
    }

    fn namespaced(self) -> bool {
        matches!(self, Self::ConfigMap | Self::Secret | Self::Lease)
    }
}

/// One change, as watches replay it.
#[derive(Clone, Debug)]
pub(super) struct Change {
    rv: u64,
    kind: Kind,
    old: Option<Value>,
    new: Option<Value>,
}

/// Every object and every change.
#[derive(Default)]
pub(super) struct Objects {
    rv: u64,
    by_key: HashMap<(Kind, String, String), Value>,
    log: Vec<Change>,
    uid: u64,
}

impl Objects {
    fn next(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    /// Stores `obj` (a new version of it) and records the change.
    pub(super) fn put(
        &mut self,
        changes: &broadcast::Sender<Change>,
        kind: Kind,
        ns: &str,
        mut obj: Value,
    ) -> Value {
        let rv = self.next();
        let name = obj["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let key = (kind, ns.to_owned(), name);
        let old = self.by_key.get(&key).cloned();
        obj["apiVersion"] = json!(kind.api_version());
        obj["kind"] = json!(kind.kind());
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        if kind.namespaced() {
            obj["metadata"]["namespace"] = json!(ns);
        }
        match &old {
            Some(o) => {
                obj["metadata"]["uid"] = o["metadata"]["uid"].clone();
                obj["metadata"]["creationTimestamp"] = o["metadata"]["creationTimestamp"].clone();
            }
            None => {
                self.uid += 1;
                obj["metadata"]["uid"] = json!(format!("uid-{}", self.uid));
                obj["metadata"]["creationTimestamp"] = json!("2026-12-01T00:00:00Z");
            }
        }
        self.by_key.insert(key, obj.clone());
        let change = Change {
            rv,
            kind,
            old,
            new: Some(obj.clone()),
        };
        self.log.push(change.clone());
        let _ = changes.send(change);
        obj
    }

    /// Removes an object and records the change.
    pub(super) fn remove(
        &mut self,
        changes: &broadcast::Sender<Change>,
        kind: Kind,
        ns: &str,
        name: &str,
    ) -> Option<Value> {
        let mut old = self
            .by_key
            .remove(&(kind, ns.to_owned(), name.to_owned()))?;
        let rv = self.next();
        old["metadata"]["resourceVersion"] = json!(rv.to_string());
        let change = Change {
            rv,
            kind,
            old: Some(old.clone()),
            new: None,
        };
        self.log.push(change.clone());
        let _ = changes.send(change);
        Some(old)
    }

    pub(super) fn get(&self, kind: Kind, ns: &str, name: &str) -> Option<&Value> {
        self.by_key.get(&(kind, ns.to_owned(), name.to_owned()))
    }

    fn namespace_state(&self, ns: &str) -> NamespaceState {
        match self.get(Kind::Namespace, "", ns) {
            None => NamespaceState::Missing,
            Some(n) if n["status"]["phase"] == "Terminating" => NamespaceState::Terminating,
            Some(_) => NamespaceState::Active,
        }
    }

    pub(super) fn of_kind(&self, kind: Kind) -> Vec<Value> {
        let mut v: Vec<Value> = self
            .by_key
            .iter()
            .filter(|((k, _, _), _)| *k == kind)
            .map(|(_, o)| o.clone())
            .collect();
        v.sort_by_key(|o| {
            o["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        });
        v
    }
}

enum NamespaceState {
    Missing,
    Terminating,
    Active,
}

/// A parsed `labelSelector` (equality, inequality, existence) and
/// `fieldSelector` (`metadata.name`, `metadata.namespace`).
#[derive(Clone, Debug, Default)]
struct Selector {
    labels: Vec<(String, Op)>,
    fields: Vec<(String, bool, String)>,
}

#[derive(Clone, Debug)]
enum Op {
    Eq(String),
    Ne(String),
    Exists,
    Absent,
}

impl Selector {
    fn parse(labels: Option<&String>, fields: Option<&String>) -> Result<Self, String> {
        let mut s = Self::default();
        for term in labels
            .map(String::as_str)
            .unwrap_or("")
            .split(',')
            .filter(|t| !t.is_empty())
        {
            let term = term.trim();
            let (key, op) = if let Some((k, v)) = term.split_once("!=") {
                (k, Op::Ne(v.to_owned()))
            } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                (k, Op::Eq(v.to_owned()))
            } else if let Some(k) = term.strip_prefix('!') {
                (k, Op::Absent)
            } else {
                (term, Op::Exists)
            };
            if key.is_empty() {
                return Err(format!("unable to parse requirement: {term}"));
            }
            s.labels.push((key.trim().to_owned(), op));
        }
        for term in fields
            .map(String::as_str)
            .unwrap_or("")
            .split(',')
            .filter(|t| !t.is_empty())
        {
            let (f, eq, v) = if let Some((f, v)) = term.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                (f, true, v)
            } else {
                return Err(format!("invalid selector: '{term}'"));
            };
            if !["metadata.name", "metadata.namespace"].contains(&f) {
                return Err(format!("field label not supported: {f}"));
            }
            s.fields.push((f.to_owned(), eq, v.to_owned()));
        }
        Ok(s)
    }

    fn matches(&self, obj: &Value) -> bool {
        let labels = &obj["metadata"]["labels"];
        let label_ok = self.labels.iter().all(|(k, op)| {
            let v = labels[k].as_str();
            match op {
                Op::Eq(want) => v == Some(want.as_str()),
                Op::Ne(want) => v != Some(want.as_str()),
                Op::Exists => v.is_some(),
                Op::Absent => v.is_none(),
            }
        });
        label_ok
            && self.fields.iter().all(|(f, eq, want)| {
                let v = f.split('.').fold(obj, |o, k| &o[k]).as_str().unwrap_or("");
                (v == want) == *eq
            })
    }
}

/// Where a request points.
#[derive(Clone, Debug)]
struct Target {
    kind: Kind,
    /// `None`: across namespaces (or cluster-scoped).
    ns: Option<String>,
    name: Option<String>,
}

fn forbidden(kind: Kind, verb: &str, ns: Option<&str>) -> Response {
    let scope = ns.map_or_else(
        || "at the cluster scope".to_owned(),
        |n| format!("in the namespace \"{n}\""),
    );
    status(
        StatusCode::FORBIDDEN,
        "Forbidden",
        &format!(
            "{res} is forbidden: User \"system:serviceaccount:istio-system:castellan\" cannot {verb} resource \"{res}\" in API group \"{group}\" {scope}",
            res = kind.resource(),
            group = kind.group(),
        ),
    )
}

/// What the API server answers for a resource type it does not serve
/// (or one asked for at the wrong scope).
fn unknown_resource() -> Response {
    status(
        StatusCode::NOT_FOUND,
        "NotFound",
        "the server could not find the requested resource",
    )
}

fn not_found(kind: Kind, name: &str) -> Response {
    status(
        StatusCode::NOT_FOUND,
        "NotFound",
        &format!("{} \"{name}\" not found", kind.resource()),
    )
}

/// Every route of this module comes here.
async fn serve(
    inner: Arc<Inner>,
    method: Method,
    headers: HeaderMap,
    target: Target,
    q: HashMap<String, String>,
    body: Bytes,
) -> Response {
    if let Some(r) = gate(&inner, &headers).await {
        return r;
    }
    let watch = q.get("watch").is_some_and(|w| w == "true" || w == "1");
    let verb = match (&method, &target.name, watch) {
        (&Method::GET, None, true) => "watch",
        (&Method::GET, None, false) => "list",
        (&Method::GET, Some(_), _) => "get",
        (&Method::POST, _, _) => "create",
        (&Method::PUT, _, _) => "update",
        (&Method::PATCH, _, _) => "patch",
        (&Method::DELETE, _, _) => "delete",
        _ => "other",
    };
    // `dryRun=All`: judged as the write would be (RBAC, admission, the
    // resourceVersion), stored never; counted apart from real writes.
    let dry = q.get("dryRun").is_some_and(|d| d == "All");
    inner.count(if dry { "dry-run" } else { verb }, target.kind.resource());
    if inner.is_forbidden(verb, target.kind.resource()) {
        return forbidden(target.kind, verb, target.ns.as_deref());
    }
    // RBAC sees a list's or watch's name only in a metadata.name field
    // selector, and a create's never.
    let selected = q
        .get("fieldSelector")
        .and_then(|f| f.strip_prefix("metadata.name="))
        .filter(|n| !n.contains(','));
    let name = match verb {
        "list" | "watch" => selected,
        "create" => None,
        _ => target.name.as_deref(),
    };
    let asked = rbac::Request {
        verb,
        group: target.kind.group(),
        resource: target.kind.resource(),
        namespace: target.ns.as_deref(),
        name,
    };
    if let Some(r) = authorize(&inner, &asked) {
        return r;
    }
    // Writing a ClusterTrustBundle for a signer also takes `attest` on that
    // signer (the ClusterTrustBundleAttest admission plugin).
    if target.kind == Kind::ClusterTrustBundle && matches!(verb, "create" | "update") {
        let signer = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|b| b["spec"]["signerName"].as_str().map(str::to_owned));
        if let Some(signer) = signer {
            let attest = rbac::Request {
                verb: "attest",
                group: "certificates.k8s.io",
                resource: "signers",
                namespace: None,
                name: Some(&signer),
            };
            if let Some(r) = authorize(&inner, &attest) {
                return r;
            }
        }
    }
    if let Some(code) = inner.failing(verb, target.kind.resource()) {
        return status(code, "InternalError", "injected failure");
    }
    match verb {
        "watch" => watch_objects(inner, target, &q),
        "list" => list(&inner, &target, &q),
        "get" => get(&inner, &target),
        "create" => create(&inner, &target, &body, dry),
        "update" => update(&inner, &target, &body, dry),
        "delete" => delete(&inner, &target),
        _ => status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "not supported here",
        ),
    }
}

fn list(inner: &Inner, target: &Target, q: &HashMap<String, String>) -> Response {
    let selector = match Selector::parse(q.get("labelSelector"), q.get("fieldSelector")) {
        Ok(s) => s,
        Err(e) => return status(StatusCode::BAD_REQUEST, "BadRequest", &e),
    };
    let objects = inner.objects.lock().unwrap();
    let items: Vec<Value> = objects
        .of_kind(target.kind)
        .into_iter()
        .filter(|o| {
            target
                .ns
                .as_ref()
                .is_none_or(|ns| o["metadata"]["namespace"] == ns.as_str())
        })
        .filter(|o| selector.matches(o))
        .collect();
    Json(json!({
        "apiVersion": target.kind.api_version(),
        "kind": format!("{}List", target.kind.kind()),
        "metadata": {"resourceVersion": objects.rv.to_string()},
        "items": items,
    }))
    .into_response()
}

fn get(inner: &Inner, target: &Target) -> Response {
    let name = target.name.as_deref().unwrap_or_default();
    let objects = inner.objects.lock().unwrap();
    match objects.get(target.kind, target.ns.as_deref().unwrap_or(""), name) {
        Some(o) => Json(o.clone()).into_response(),
        None => not_found(target.kind, name),
    }
}

fn parse(body: &Bytes) -> Result<Value, Box<Response>> {
    serde_json::from_slice(body).map_err(|e| {
        Box::new(status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            &format!("invalid body: {e}"),
        ))
    })
}

fn create(inner: &Inner, target: &Target, body: &Bytes, dry: bool) -> Response {
    let obj = match parse(body) {
        Ok(o) => o,
        Err(r) => return *r,
    };
    let Some(name) = obj["metadata"]["name"].as_str().map(str::to_owned) else {
        return status(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            "metadata.name: Required value",
        );
    };
    let ns = target.ns.clone().unwrap_or_default();
    let mut objects = inner.objects.lock().unwrap();
    if target.kind.namespaced() {
        match objects.namespace_state(&ns) {
            NamespaceState::Missing => {
                return status(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    &format!("namespaces \"{ns}\" not found"),
                );
            }
            NamespaceState::Terminating => {
                return status(
                    StatusCode::FORBIDDEN,
                    "Forbidden",
                    &format!(
                        "{} \"{name}\" is forbidden: unable to create new content in namespace {ns} because it is being terminated",
                        target.kind.resource()
                    ),
                );
            }
            NamespaceState::Active => {}
        }
    }
    if objects.get(target.kind, &ns, &name).is_some() {
        return status(
            StatusCode::CONFLICT,
            "AlreadyExists",
            &format!("{} \"{name}\" already exists", target.kind.resource()),
        );
    }
    if dry {
        return (StatusCode::CREATED, Json(obj)).into_response();
    }
    let stored = objects.put(&inner.changes, target.kind, &ns, obj);
    (StatusCode::CREATED, Json(stored)).into_response()
}

fn update(inner: &Inner, target: &Target, body: &Bytes, dry: bool) -> Response {
    let obj = match parse(body) {
        Ok(o) => o,
        Err(r) => return *r,
    };
    let name = target.name.clone().unwrap_or_default();
    let ns = target.ns.clone().unwrap_or_default();
    let mut objects = inner.objects.lock().unwrap();
    let Some(current) = objects.get(target.kind, &ns, &name) else {
        return not_found(target.kind, &name);
    };
    let sent = obj["metadata"]["resourceVersion"].as_str().unwrap_or("");
    if !sent.is_empty()
        && sent
            != current["metadata"]["resourceVersion"]
                .as_str()
                .unwrap_or("")
    {
        return status(
            StatusCode::CONFLICT,
            "Conflict",
            &format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                target.kind.resource()
            ),
        );
    }
    if dry {
        return Json(obj).into_response();
    }
    let stored = objects.put(&inner.changes, target.kind, &ns, obj);
    Json(stored).into_response()
}

fn delete(inner: &Arc<Inner>, target: &Target) -> Response {
    let name = target.name.clone().unwrap_or_default();
    let ns = target.ns.clone().unwrap_or_default();
    let mut objects = inner.objects.lock().unwrap();
    if target.kind == Kind::Namespace {
        let Some(mut n) = objects.get(Kind::Namespace, "", &name).cloned() else {
            return not_found(target.kind, &name);
        };
        n["status"]["phase"] = json!("Terminating");
        n["metadata"]["deletionTimestamp"] = json!("2026-12-01T00:00:00Z");
        let stored = objects.put(&inner.changes, Kind::Namespace, "", n);
        drop(objects);
        // The namespace controller removes the contents, then the namespace.
        let inner = Arc::clone(inner);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            inner.finish_namespace(&name);
        });
        return Json(stored).into_response();
    }
    match objects.remove(&inner.changes, target.kind, &ns, &name) {
        Some(o) => Json(o).into_response(),
        None => not_found(target.kind, &name),
    }
}

fn watch_objects(inner: Arc<Inner>, target: Target, q: &HashMap<String, String>) -> Response {
    let selector = match Selector::parse(q.get("labelSelector"), q.get("fieldSelector")) {
        Ok(s) => s,
        Err(e) => return status(StatusCode::BAD_REQUEST, "BadRequest", &e),
    };
    let from: u64 = q
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let timeout = Duration::from_secs(
        q.get("timeoutSeconds")
            .and_then(|v| v.parse().ok())
            .unwrap_or(290),
    );
    let bookmarks = q
        .get("allowWatchBookmarks")
        .is_some_and(|b| b == "true" || b == "1");
    let bookmark_every = *inner.bookmark_every.lock().unwrap();
    let mut live = inner.changes.subscribe();
    let (backlog, now) = {
        let objects = inner.objects.lock().unwrap();
        let backlog: Vec<Change> = objects
            .log
            .iter()
            .filter(|c| c.rv > from)
            .cloned()
            .collect();
        (backlog, objects.rv)
    };
    let in_scope = move |c: &Change, o: &Value| {
        c.kind == target.kind
            && target
                .ns
                .as_ref()
                .is_none_or(|ns| o["metadata"]["namespace"] == ns.as_str())
            && selector.matches(o)
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, Infallible>>(1024);
    let kind = target.kind;
    tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut bookmark =
            tokio::time::interval_at(tokio::time::Instant::now() + bookmark_every, bookmark_every);
        let mut sent_up_to = from;
        let mut held = backlog;
        let mut latest = now;
        loop {
            for c in held.drain(..) {
                if c.rv <= sent_up_to {
                    continue;
                }
                sent_up_to = c.rv;
                latest = latest.max(c.rv);
                let was = c.old.as_ref().filter(|o| in_scope(&c, o));
                let is = c.new.as_ref().filter(|o| in_scope(&c, o));
                let event = match (was, is) {
                    (None, Some(o)) => json!({"type": "ADDED", "object": o}),
                    (Some(_), Some(o)) => json!({"type": "MODIFIED", "object": o}),
                    (Some(o), None) => {
                        let mut o = o.clone();
                        o["metadata"]["resourceVersion"] = json!(c.rv.to_string());
                        json!({"type": "DELETED", "object": o})
                    }
                    (None, None) => continue,
                };
                if tx
                    .send(Ok(Bytes::from(format!("{event}\n"))))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            tokio::select! {
                c = live.recv() => match c {
                    Ok(c) => held.push(c),
                    Err(broadcast::error::RecvError::Lagged(_)) | Err(broadcast::error::RecvError::Closed) => return,
                },
                () = tokio::time::sleep_until(deadline) => return,
                _ = bookmark.tick(), if bookmarks => {
                    let line = json!({"type": "BOOKMARK", "object": {
                        "kind": kind.kind(), "apiVersion": kind.api_version(),
                        "metadata": {"resourceVersion": latest.max(sent_up_to).to_string()}}});
                    if tx.send(Ok(Bytes::from(format!("{line}\n")))).await.is_err() {
                        return;
                    }
                }
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

// === the routes ===

type Q = Query<HashMap<String, String>>;

pub(super) async fn core_all(
    State(inner): State<Arc<Inner>>,
    method: Method,
    headers: HeaderMap,
    UrlPath(resource): UrlPath<String>,
    Query(q): Q,
    body: Bytes,
) -> Response {
    let Some(kind) = kind_of(&resource) else {
        return unknown_resource();
    };
    let target = Target {
        kind,
        ns: None,
        name: None,
    };
    serve(inner, method, headers, target, q, body).await
}

pub(super) async fn namespace_one(
    State(inner): State<Arc<Inner>>,
    method: Method,
    headers: HeaderMap,
    UrlPath(name): UrlPath<String>,
    Query(q): Q,
    body: Bytes,
) -> Response {
    let target = Target {
        kind: Kind::Namespace,
        ns: None,
        name: Some(name),
    };
    serve(inner, method, headers, target, q, body).await
}

pub(super) async fn namespaced_all(
    State(inner): State<Arc<Inner>>,
    method: Method,
    headers: HeaderMap,
    UrlPath((ns, resource)): UrlPath<(String, String)>,
    Query(q): Q,
    body: Bytes,
) -> Response {
    let Some(kind) = kind_of(&resource).filter(|k| k.namespaced()) else {
        return unknown_resource();
    };
    let target = Target {
        kind,
        ns: Some(ns),
        name: None,
    };
    serve(inner, method, headers, target, q, body).await
}

pub(super) async fn namespaced_one(
    State(inner): State<Arc<Inner>>,
    method: Method,
    headers: HeaderMap,
    UrlPath((ns, resource, name)): UrlPath<(String, String, String)>,
    Query(q): Q,
    body: Bytes,
) -> Response {
    let Some(kind) = kind_of(&resource).filter(|k| k.namespaced()) else {
        return unknown_resource();
    };
    let target = Target {
        kind,
        ns: Some(ns),
        name: Some(name),
    };
    serve(inner, method, headers, target, q, body).await
}

pub(super) async fn cluster_all(
    State(inner): State<Arc<Inner>>,
    method: Method,
    headers: HeaderMap,
    UrlPath(resource): UrlPath<String>,
    Query(q): Q,
    body: Bytes,
) -> Response {
    let Some(kind) = kind_of(&resource).filter(|k| !k.namespaced()) else {
        return unknown_resource();
    };
    let target = Target {
        kind,
        ns: None,
        name: None,
    };
    serve(inner, method, headers, target, q, body).await
}

pub(super) async fn cluster_one(
    State(inner): State<Arc<Inner>>,
    method: Method,
    headers: HeaderMap,
    UrlPath((resource, name)): UrlPath<(String, String)>,
    Query(q): Q,
    body: Bytes,
) -> Response {
    let Some(kind) = kind_of(&resource).filter(|k| !k.namespaced()) else {
        return unknown_resource();
    };
    let target = Target {
        kind,
        ns: None,
        name: Some(name),
    };
    serve(inner, method, headers, target, q, body).await
}

fn kind_of(resource: &str) -> Option<Kind> {
    Some(match resource {
        "namespaces" => Kind::Namespace,
        "configmaps" => Kind::ConfigMap,
        "secrets" => Kind::Secret,
        "leases" => Kind::Lease,
        "clustertrustbundles" => Kind::ClusterTrustBundle,
        _ => return None,
    })
}
