//! `POST /apis/authentication.k8s.io/v1/tokenreviews`, answered as the API
//! server does: `authenticated: false` with an error for unknown tokens and
//! audiences it was not issued for, the user and pod extras otherwise.

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use axum::{
    Json,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};

use super::{Inner, authorize, gate, rbac, status};

pub(super) async fn create(
    State(inner): State<Arc<Inner>>,
    headers: HeaderMap,
    Json(review): Json<Value>,
) -> Response {
    if let Some(r) = gate(&inner, &headers).await {
        return r;
    }
    let asked = rbac::Request {
        verb: "create",
        group: "authentication.k8s.io",
        resource: "tokenreviews",
        namespace: None,
        name: None,
    };
    if let Some(r) = authorize(&inner, &asked) {
        return r;
    }
    let delay = *inner.review_delay.lock().unwrap();
    let now = inner.reviewing.fetch_add(1, Ordering::SeqCst) + 1;
    inner.peak_reviewing.fetch_max(now, Ordering::SeqCst);
    // Counted out however the handler ends, a client hanging up included.
    struct Reviewing<'a>(&'a AtomicUsize);
    impl Drop for Reviewing<'_> {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }
    let _reviewing = Reviewing(&inner.reviewing);
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
