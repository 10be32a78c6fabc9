//! The shipped deployment, checked as CI can check it without a cluster:
//! every overlay rendered with `kubectl kustomize`, validated against the
//! Kubernetes schemas offline (`kubernetes-validate --strict`) and parsed
//! into k8s-openapi types without losing a field; RBAC least privilege, and
//! RBAC sufficiency (castellan runs against the in-process API server
//! enforcing exactly the rendered rules); Deployment, Service, probes,
//! mounts and castellan.toml agree; alerts and the dashboard parse as
//! PromQL and name only series castellan exports; the Istio wiring uses
//! documented keys that agree with castellan's config; the runbooks'
//! castellan commands exist.

mod chart;
mod cluster;
mod docs;
mod istio;
mod monitoring;
mod rbac;
mod schemas;
mod workloads;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Component, Path, PathBuf},
    process::Command,
    time::Duration,
};

use castellan::{cli::request, config::Config, server};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;

use crate::support::{
    Ca, ISSUER, KeyAlg, TestCa, csr, deploy, eventually, http_get, id,
    kube::{FakeKube, Kind, rbac::Rbac},
    pki,
};

/// Every rendering a user can apply: each overlay, the remote cluster's
/// manifests, and an overlay with the monitoring component (which needs the
/// Prometheus Operator's CRDs, so no overlay includes it by default).
fn renderings() -> Vec<(String, String)> {
    let mut all: Vec<(String, String)> = deploy::overlays()
        .into_iter()
        .map(|o| {
            let text = deploy::render_text(&format!("overlays/{o}"));
            (format!("overlays/{o}"), text)
        })
        .collect();
    all.push(("remote".into(), deploy::render_text("remote")));
    all.push((
        "overlays/file + components/monitoring".into(),
        compose("monitoring", &["overlays/file"], &["components/monitoring"]),
    ));
    all.push((
        "overlays/file + components/crl".into(),
        compose("crl", &["overlays/file"], &["components/crl"]),
    ));
    for case in deploy::chart_cases() {
        all.push((
            format!("chart ci/{case}-values.yaml"),
            deploy::render_chart_text(&case),
        ));
    }
    all
}

/// Renders a kustomization of the shipped `resources` and `components`
/// (paths under deploy/kubernetes), as a user's own overlay would.
fn compose(name: &str, resources: &[&str], components: &[&str]) -> String {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("deploy")
        .join(name);
    std::fs::create_dir_all(&dir).unwrap();
    // Kustomize takes only relative paths to other directories.
    let up = relative(&dir, &deploy::root().join("kubernetes"));
    let list = |items: &[&str]| -> String {
        items
            .iter()
            .map(|i| format!("  - {}\n", up.join(i).display()))
            .collect()
    };
    std::fs::write(
        dir.join("kustomization.yaml"),
        format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n{}components:\n{}",
            list(resources),
            list(components)
        ),
    )
    .unwrap();
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(&dir)
        .output()
        .expect("kubectl renders the manifests");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The path from directory `from` to `to`, both absolute.
fn relative(from: &Path, to: &Path) -> PathBuf {
    let (from, to): (Vec<Component<'_>>, Vec<Component<'_>>) =
        (from.components().collect(), to.components().collect());
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut path = PathBuf::new();
    for _ in common..from.len() {
        path.push("..");
    }
    for c in &to[common..] {
        path.push(c);
    }
    path
}

// === Schemas ===

/// castellan.toml of a rendering, as a TOML table.
fn config_of(objects: &[Value]) -> toml::Table {
    deploy::castellan_toml(objects).parse().unwrap()
}

fn get<'a>(t: &'a toml::Table, path: &str) -> Option<&'a toml::Value> {
    let mut parts = path.split('.');
    let mut v = t.get(parts.next()?)?;
    for p in parts {
        v = v.as_table()?.get(p)?;
    }
    Some(v)
}

fn get_str<'a>(t: &'a toml::Table, path: &str, default: &'a str) -> &'a str {
    get(t, path)
        .and_then(toml::Value::as_str)
        .unwrap_or(default)
}

use crate::support::strings;

fn port_of(addr: &str) -> u64 {
    addr.rsplit(':').next().unwrap().parse().unwrap()
}

/// Every file path castellan.toml names.
fn paths_in(value: &toml::Value, key: &str, out: &mut Vec<String>) {
    match value {
        toml::Value::Table(t) => {
            for (k, v) in t {
                paths_in(v, k, out);
            }
        }
        toml::Value::Array(a) => {
            for v in a {
                paths_in(v, key, out);
            }
        }
        toml::Value::String(s)
            if key.ends_with("_file") || ["dir", "module", "kubeconfig"].contains(&key) =>
        {
            out.push(s.clone());
        }
        _ => {}
    }
}

/// The pod template's labels named `keys`.
fn pod_labels(deployment: &Value, keys: &[&str]) -> Value {
    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    Value::Object(
        keys.iter()
            .map(|k| ((*k).to_owned(), labels[*k].clone()))
            .collect(),
    )
}
