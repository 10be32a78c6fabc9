//! Publishing the trust bundle to 1,000 namespaces from a cold start, then
//! ten minutes of steady state, against the in-process API server: time to
//! publish, and every API call castellan made, by verb and resource.
//!
//!     cargo bench --bench mesh          (BENCH_NAMESPACES, BENCH_STEADY_SECS)
//!     BENCH_TRUST=1 cargo bench --bench mesh   as the shipped overlays: the
//!                                       trust record in a ConfigMap and the CRL

#![allow(
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    missing_debug_implementations
)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use support::{
    Setup, TestCa,
    kube::{FakeKube, Kind},
};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn report(title: &str, calls: &BTreeMap<(String, String), usize>, per: Option<f64>) {
    println!("{title}");
    for ((verb, resource), n) in calls {
        match per {
            Some(minutes) => println!(
                "  {verb:>7} {resource:<20} {n:>7}  ({:.1}/min)",
                *n as f64 / minutes
            ),
            None => println!("  {verb:>7} {resource:<20} {n:>7}"),
        }
    }
}

fn diff(
    after: &std::collections::HashMap<(String, String), usize>,
    before: &std::collections::HashMap<(String, String), usize>,
) -> BTreeMap<(String, String), usize> {
    after
        .iter()
        .filter(|((_, r), _)| r != "tokenreviews")
        .map(|(k, n)| (k.clone(), n - before.get(k).copied().unwrap_or(0)))
        .filter(|(_, n)| *n > 0)
        .collect()
}

fn main() {
    let namespaces = env("BENCH_NAMESPACES", 1000) as usize;
    let steady = Duration::from_secs(env("BENCH_STEADY_SECS", 600));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let kube = FakeKube::start().await;
        kube.create_namespace("istio-system", &[]);
        for i in 0..namespaces {
            kube.create_namespace(&format!("team-{i:04}"), &[]);
        }
        let total = namespaces + 1;
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = kube.kubeconfig(dir.path(), "bench");
        println!("castellan trust-bundle publishing: {total} namespaces, client-go lease timings (15/10/2 s), concurrency 8");
        let before = kube.calls();
        let started = Instant::now();
        let trust = env("BENCH_TRUST", 0) == 1;
        if trust {
            println!("with the trust record (ConfigMap castellan-trust) and the CRL (istio-ca-crl)");
        }
        let ca = TestCa::start_with(Setup {
            extra: format!(
                "[kubernetes]\nkubeconfig = \"{}\"\nnamespace = \"istio-system\"\nidentity = \"bench\"\n[kubernetes.trust_bundle]\n{}",
                kubeconfig.display(),
                if trust {
                    "[trust]\nstate_configmap = \"castellan-trust\"\n[trust.crl]\nupstream_files = [\"@DIR@/root-crl.pem\"]\n"
                } else {
                    ""
                }
            ),
            ..Setup::default()
        })
        .await;
        loop {
            let count = |name: &str| {
                kube.objects(Kind::ConfigMap)
                    .iter()
                    .filter(|cm| cm["metadata"]["name"] == name)
                    .count()
            };
            if count("istio-ca-root-cert") >= total && (!trust || count("istio-ca-crl") >= total) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let took = started.elapsed();
        let cold = diff(&kube.calls(), &before);
        println!("cold start: all {total} ConfigMaps published {:.2} s after castellan started", took.as_secs_f64());
        report("API calls during the cold start:", &cold, None);

        // Let the writes settle, then count a quiet period.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let settled = kube.calls();
        println!("steady state for {} s ...", steady.as_secs());
        tokio::time::sleep(steady).await;
        let minutes = steady.as_secs_f64() / 60.0;
        let quiet = diff(&kube.calls(), &settled);
        report("API calls at steady state:", &quiet, Some(minutes));
        let writes: usize = quiet
            .iter()
            .filter(|((v, r), _)| r == "configmaps" && (v == "create" || v == "update"))
            .map(|(_, n)| n)
            .sum();
        println!("ConfigMap writes at steady state: {writes}");
        ca.running.shutdown();
    });
}
