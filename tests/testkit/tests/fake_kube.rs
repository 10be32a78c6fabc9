//! The fake API server claims the API behaviour castellan relies on; these
//! check each claim as a client sees it, over HTTPS with a bearer token:
//! status codes and `Status` bodies, resourceVersion and optimistic
//! concurrency, watches, forbidden verbs, TokenReview.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use castellan_testkit::kube::{CASTELLAN_TOKEN, FakeKube, Kind, Mode};
use futures_util::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    fn new(kube: &FakeKube) -> Self {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let ca = reqwest::Certificate::from_pem(kube.ca_pem().as_bytes()).unwrap();
        let http = reqwest::Client::builder()
            .add_root_certificate(ca)
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        Self {
            http,
            base: format!("https://127.0.0.1:{}", kube.addr.port()),
        }
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(CASTELLAN_TOKEN);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let code = resp.status();
        (code, resp.json().await.unwrap_or(Value::Null))
    }
}

fn configmap(name: &str, rv: Option<&str>, data: &str) -> Value {
    let mut meta = json!({"name": name, "namespace": "ns"});
    if let Some(rv) = rv {
        meta["resourceVersion"] = json!(rv);
    }
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": {"k": data}})
}

const MAPS: &str = "/api/v1/namespaces/ns/configmaps";

#[tokio::test]
async fn create_get_replace_follow_the_api_with_status_bodies() {
    let kube = FakeKube::start().await;
    kube.create_namespace("ns", &[]);
    let c = Client::new(&kube);
    let (code, created) = c
        .call(Method::POST, MAPS, Some(configmap("a", None, "1")))
        .await;
    assert_eq!(code, StatusCode::CREATED);
    let rv = created["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_owned();
    let (code, body) = c
        .call(Method::POST, MAPS, Some(configmap("a", None, "1")))
        .await;
    assert_eq!(code, StatusCode::CONFLICT);
    assert_eq!(
        (body["kind"].as_str(), body["reason"].as_str()),
        (Some("Status"), Some("AlreadyExists"))
    );
    let (code, body) = c.call(Method::GET, &format!("{MAPS}/missing"), None).await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    assert_eq!(body["reason"], "NotFound");
    // Optimistic concurrency: the current resourceVersion wins once.
    let (code, replaced) = c
        .call(
            Method::PUT,
            &format!("{MAPS}/a"),
            Some(configmap("a", Some(&rv), "2")),
        )
        .await;
    assert_eq!(code, StatusCode::OK);
    let newer = replaced["metadata"]["resourceVersion"].as_str().unwrap();
    assert_ne!(newer, rv, "a write moves the resourceVersion");
    let (code, body) = c
        .call(
            Method::PUT,
            &format!("{MAPS}/a"),
            Some(configmap("a", Some(&rv), "3")),
        )
        .await;
    assert_eq!(code, StatusCode::CONFLICT, "a stale resourceVersion");
    assert_eq!(body["reason"], "Conflict");
    assert_eq!(
        kube.object(Kind::ConfigMap, "ns", "a").unwrap()["data"]["k"],
        "2"
    );
    // A namespace that does not exist.
    let (code, _) = c
        .call(
            Method::POST,
            "/api/v1/namespaces/nowhere/configmaps",
            Some(configmap("a", None, "1")),
        )
        .await;
    assert_eq!(code, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn forbidden_verbs_failing_calls_and_strangers_are_refused_as_the_api_does() {
    let kube = FakeKube::start().await;
    kube.create_namespace("ns", &[]);
    let c = Client::new(&kube);
    kube.forbid("list", "configmaps", true);
    let (code, body) = c.call(Method::GET, MAPS, None).await;
    assert_eq!(code, StatusCode::FORBIDDEN);
    assert_eq!(body["reason"], "Forbidden");
    assert!(
        body["message"].as_str().unwrap().contains("configmaps"),
        "{body}"
    );
    kube.forbid("list", "configmaps", false);
    assert_eq!(c.call(Method::GET, MAPS, None).await.0, StatusCode::OK);
    kube.set_mode(Mode::Unavailable);
    assert_eq!(
        c.call(Method::GET, MAPS, None).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    kube.set_mode(Mode::Normal);
    let stranger = c
        .http
        .get(format!("{}{MAPS}", c.base))
        .bearer_auth("not-castellan")
        .send()
        .await
        .unwrap();
    assert_eq!(stranger.status(), StatusCode::UNAUTHORIZED);
    assert!(
        kube.calls_of("list", "configmaps") >= 2,
        "{:?}",
        kube.calls()
    );
}

#[tokio::test]
async fn a_watch_from_a_list_sees_every_later_change_in_order() {
    let kube = FakeKube::start().await;
    kube.create_namespace("ns", &[]);
    let c = Client::new(&kube);
    let (_, list) = c.call(Method::GET, MAPS, None).await;
    let rv = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_owned();
    let watch = c
        .http
        .get(format!(
            "{}{MAPS}?watch=true&resourceVersion={rv}&timeoutSeconds=5",
            c.base
        ))
        .bearer_auth(CASTELLAN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(watch.status(), StatusCode::OK);
    c.call(Method::POST, MAPS, Some(configmap("w", None, "1")))
        .await;
    kube.delete_object(Kind::ConfigMap, "ns", "w");
    let mut events = Vec::new();
    let mut buf = String::new();
    let mut stream = watch.bytes_stream();
    while events.len() < 2 {
        let chunk = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .expect("an event within 5 s")
            .expect("the watch stays open")
            .unwrap();
        buf.push_str(std::str::from_utf8(&chunk).unwrap());
        while let Some(at) = buf.find('\n') {
            let line: String = buf.drain(..=at).collect();
            let event: Value = serde_json::from_str(line.trim()).unwrap();
            if event["type"] != "BOOKMARK" {
                events.push((
                    event["type"].as_str().unwrap().to_owned(),
                    event["object"]["metadata"]["name"]
                        .as_str()
                        .unwrap()
                        .to_owned(),
                ));
            }
        }
    }
    assert_eq!(
        events,
        vec![
            ("ADDED".to_owned(), "w".to_owned()),
            ("DELETED".to_owned(), "w".to_owned())
        ]
    );
}

#[tokio::test]
async fn token_reviews_answer_what_the_api_server_knows() {
    let kube = FakeKube::start().await;
    kube.add_token("good", "ns", "sa", Some(("pod-1", "uid-1")));
    let c = Client::new(&kube);
    let review = |token: &str| {
        json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
               "spec": {"token": token, "audiences": ["istio-ca"]}})
    };
    let path = "/apis/authentication.k8s.io/v1/tokenreviews";
    let (code, known) = c.call(Method::POST, path, Some(review("good"))).await;
    assert_eq!(code, StatusCode::CREATED);
    assert_eq!(known["status"]["authenticated"], true);
    assert_eq!(
        known["status"]["user"]["username"],
        "system:serviceaccount:ns:sa"
    );
    let (_, unknown) = c.call(Method::POST, path, Some(review("bad"))).await;
    assert_eq!(unknown["status"]["authenticated"], false);
    assert_eq!(kube.reviews(), 2);
}
