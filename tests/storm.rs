//! A mesh restart: hundreds of freshly started agents, each opening its own
//! TLS connection for one certificate, all at once — served whole, none
//! turned away, also with an idle flood holding connections; and a request
//! over the size castellan reads is RESOURCE_EXHAUSTED in castellan's words.

use std::time::{Duration, Instant};

use tonic::Code;

use crate::support::{Setup, TestCa, csr, http_get, id, kube::FakeKube};

/// `n` agents at once, each on a connection of its own; the codes they got.
async fn storm(ca: &TestCa, n: usize) -> Vec<Result<(), String>> {
    storm_with(ca, n, |ns, sa| ca.token(ns, sa)).await
}

/// As [`storm`], each agent's token made by `token`.
async fn storm_with(
    ca: &TestCa,
    n: usize,
    token: impl Fn(&str, &str) -> String,
) -> Vec<Result<(), String>> {
    let addr = ca.addr();
    let root = ca.root.pem.clone();
    let agents: Vec<_> = (0..n)
        .map(|i| {
            let sa = format!("agent-{i}");
            let (_, csr) = csr::ztunnel(&id("storm", &sa));
            let token = token("storm", &sa);
            (csr, token)
        })
        .collect();
    let tasks: Vec<_> = agents
        .into_iter()
        .map(|(csr, token)| {
            let (addr, root) = (addr.clone(), root.clone());
            tokio::spawn(async move {
                let mut client = castellan::cli::request::connect(&addr, None, root.as_bytes())
                    .await
                    .map_err(|e| format!("connect: {e}"))?;
                let req = castellan::cli::request::request_for(&csr, 3600, &token, "Kubernetes")?;
                client
                    .create_certificate(req)
                    .await
                    .map(|_| ())
                    .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
            })
        })
        .collect();
    let mut results = Vec::with_capacity(n);
    for t in tasks {
        results.push(t.await.unwrap_or_else(|e| Err(e.to_string())));
    }
    results
}

fn failures(results: &[Result<(), String>]) -> Vec<&String> {
    results.iter().filter_map(|r| r.as_ref().err()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_agents_each_on_its_own_connection_is_served_whole() {
    let ca = TestCa::start().await;
    let started = Instant::now();
    // Four times the handshakes castellan runs at once: the rest wait in
    // the accept queue, none is evicted while it makes progress.
    let results = storm(&ca, 1000).await;
    let failed = failures(&results);
    assert!(
        failed.is_empty(),
        "{} of 1000 turned away: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(started.elapsed() < Duration::from_secs(60));
    assert_eq!(ca.metric("castellan_connections_refused_count").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_beside_an_idle_flood_is_served_whole() {
    let ca = TestCa::start().await;
    let addr = ca.running.addr;
    // Connections that never say a word hold handshake slots…
    let mut idle = Vec::new();
    for _ in 0..300 {
        if let Ok(c) = tokio::net::TcpStream::connect(addr).await {
            idle.push(c);
        }
    }
    // …and give them up, once stalled, to agents that talk.
    let results = storm(&ca, 300).await;
    let failed = failures(&results);
    assert!(
        failed.is_empty(),
        "{} of 300 turned away: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    drop(idle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_new_tokens_reaches_the_api_server_a_bounded_number_at_a_time() {
    let kube = FakeKube::start().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::start_with(Setup {
        authn_sections: Some(format!(
            "[[authn]]\ntype = \"tokenreview\"\nkubeconfig = \"{}\"\nmax_concurrent = 8\n",
            kube.kubeconfig(dir.path(), "local").display()
        )),
        ..Setup::default()
    })
    .await;
    // A review takes a while, as on a loaded API server: 300 new tokens
    // over 8 reviews at a time take about 0.75 s, well within a deadline.
    kube.set_review_delay(Duration::from_millis(20));
    let results = storm_with(&ca, 300, |ns, sa| {
        let t = ca.token(ns, sa);
        kube.add_token(&t, ns, sa, None);
        t
    })
    .await;
    let failed = failures(&results);
    assert!(
        failed.is_empty(),
        "{} of 300 turned away: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert_eq!(kube.reviews(), 300, "one review per new token");
    let peak = kube.peak_concurrent_reviews();
    assert!(
        (2..=8).contains(&peak),
        "the API server answered {peak} reviews at once; castellan allows 8"
    );
    // Every series is there, the zeros included.
    let (_, text) = http_get(&format!("{}/metrics", ca.metrics_url())).await;
    let value = |name: &str| -> f64 {
        let series = format!("{name}{{queue=\"tokenreview:Kubernetes\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&series)?.parse().ok())
            .unwrap_or_else(|| panic!("no {series} in {text}"))
    };
    assert_eq!(value("castellan_backend_queue_capacity"), 8.0);
    assert_eq!(value("castellan_backend_queue_admitted_total"), 300.0);
    assert_eq!(value("castellan_backend_queue_turned_away_total"), 0.0);
    assert!(value("castellan_backend_queue_wait_seconds_total") > 0.0);
    assert_eq!(value("castellan_backend_queue_in_use"), 0.0);
    assert_eq!(value("castellan_backend_queue_waiting"), 0.0);
}

#[tokio::test]
async fn a_message_over_the_limit_is_resource_exhausted_in_castellans_words() {
    let ca = TestCa::start().await;
    let huge = "A".repeat(100 * 1024);
    let status = ca.send(&huge, "ns", "sa", 3600).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("request message too large"),
        "{}",
        status.message()
    );
    // A CSR of a sane size after it is served as ever.
    let (_, csr) = csr::ztunnel(&id("ns", "sa"));
    assert!(ca.send(&csr, "ns", "sa", 3600).await.is_ok());
}
