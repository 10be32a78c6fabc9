//! Pods: get, and list or watch across namespaces with the field selectors
//! and resourceVersion semantics kube-rs's watcher relies on.

use std::{collections::HashMap, convert::Infallible, sync::Arc, time::Duration};

use axum::{
    Json,
    body::{Body, Bytes},
    extract::{Path as UrlPath, Query, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};
use tokio::sync::broadcast;

use super::{Event, Inner, authorize, gate, rbac, status};

pub(super) async fn get(
    State(inner): State<Arc<Inner>>,
    headers: HeaderMap,
    UrlPath((ns, name)): UrlPath<(String, String)>,
) -> Response {
    if let Some(r) = gate(&inner, &headers).await {
        return r;
    }
    let asked = rbac::Request {
        verb: "get",
        group: "",
        resource: "pods",
        namespace: Some(&ns),
        name: Some(&name),
    };
    if let Some(r) = authorize(&inner, &asked) {
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

pub(super) async fn list_or_watch(
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
    let watching = q.get("watch").is_some_and(|w| w == "true" || w == "1");
    let asked = rbac::Request {
        verb: if watching { "watch" } else { "list" },
        group: "",
        resource: "pods",
        namespace: None,
        name: None,
    };
    if let Some(r) = authorize(&inner, &asked) {
        return r;
    }
    if watching {
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
    // Like the real API server: with allowWatchBookmarks, a BOOKMARK now and
    // then carrying the current resourceVersion (about every minute there).
    let bookmarks = q
        .get("allowWatchBookmarks")
        .is_some_and(|b| b == "true" || b == "1");
    let bookmark_every = *inner.bookmark_every.lock().unwrap();
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
        let mut bookmark =
            tokio::time::interval_at(tokio::time::Instant::now() + bookmark_every, bookmark_every);
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
                _ = bookmark.tick(), if bookmarks => {
                    if *inner.watch_paused.lock().unwrap() {
                        continue;
                    }
                    let rv = sent_up_to.max(inner.pods.lock().unwrap().rv);
                    let line = format!(
                        "{}\n",
                        json!({"type": "BOOKMARK", "object": {"kind": "Pod", "apiVersion": "v1", "metadata": {"resourceVersion": rv.to_string()}}})
                    );
                    if tx.send(Ok(Bytes::from(line))).await.is_err() {
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
