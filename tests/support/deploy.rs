//! The shipped manifests, rendered as a user renders them (`kubectl
//! kustomize`), and the pieces of them the deploy tests look into.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::Value;

/// The repository's `deploy/`.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

/// Every overlay under `deploy/kubernetes/overlays/`, by name.
pub fn overlays() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(root().join("kubernetes/overlays"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// `kubectl kustomize deploy/kubernetes/<dir>`'s output.
pub fn render_text(dir: &str) -> String {
    let path = root().join("kubernetes").join(dir);
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(&path)
        .output()
        .expect("kubectl (with its built-in kustomize) renders the manifests; scripts/test.sh checks for it");
    assert!(
        out.status.success(),
        "kubectl kustomize {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The rendered objects of `deploy/kubernetes/<dir>`.
pub fn render(dir: &str) -> Vec<Value> {
    yaml_documents(&render_text(dir))
}

/// Every document of a YAML stream, as JSON values.
pub fn yaml_documents(text: &str) -> Vec<Value> {
    serde_saphyr::from_multiple::<Value>(text)
        .unwrap()
        .into_iter()
        .filter(|v| !v.is_null())
        .collect()
}

/// The one object of `kind` named `name` (any namespace).
pub fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    let mut found = objects
        .iter()
        .filter(|o| o["kind"] == kind && o["metadata"]["name"] == name);
    let one = found
        .next()
        .unwrap_or_else(|| panic!("no {kind} {name} rendered"));
    assert!(found.next().is_none(), "two {kind} {name} rendered");
    one
}

/// castellan.toml from the ConfigMap the Deployment mounts.
pub fn castellan_toml(objects: &[Value]) -> String {
    let deployment = find(objects, "Deployment", "castellan");
    let volumes = deployment["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap();
    let name = volumes
        .iter()
        .find(|v| v["name"] == "config")
        .and_then(|v| v["configMap"]["name"].as_str())
        .expect("the Deployment mounts its castellan.toml from a ConfigMap");
    find(objects, "ConfigMap", name)["data"]["castellan.toml"]
        .as_str()
        .expect("the ConfigMap holds castellan.toml")
        .to_owned()
}

/// The castellan container of the Deployment.
pub fn container(objects: &[Value]) -> &Value {
    let deployment = find(objects, "Deployment", "castellan");
    deployment["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "castellan")
        .expect("a container named castellan")
}

/// The Helm chart, `deploy/helm/castellan`.
pub fn chart() -> PathBuf {
    root().join("helm/castellan")
}

/// Every values file under the chart's `ci/` (chart-testing's place for
/// them), by name without `-values.yaml`.
pub fn chart_cases() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(chart().join("ci"))
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            name.strip_suffix("-values.yaml").map(str::to_owned)
        })
        .collect();
    names.sort();
    names
}

/// `scripts/helm.py <args>` (Helm 4 as a library): its stdout, or its
/// stderr when it fails.
pub fn helm(args: &[&str]) -> Result<String, String> {
    let out = Command::new("python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/helm.py"))
        .args(args)
        .output()
        .expect("python3 runs scripts/helm.py");
    if out.status.success() {
        Ok(String::from_utf8(out.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// The chart rendered with `ci/<case>-values.yaml`, as `helm template
/// castellan deploy/helm/castellan -n istio-system -f …` renders it.
pub fn render_chart_text(case: &str) -> String {
    let values = chart().join(format!("ci/{case}-values.yaml"));
    helm(&["render", "-f", values.to_str().unwrap()])
        .unwrap_or_else(|e| panic!("helm template with ci/{case}-values.yaml: {e}"))
}

/// Every installation of castellan itself a user can apply, rendered: each
/// overlay, and the chart with each of its `ci/` values files (but the
/// remote cluster's, which has no castellan).
pub fn installs() -> Vec<(String, Vec<Value>)> {
    let mut all: Vec<(String, Vec<Value>)> = overlays()
        .into_iter()
        .map(|o| {
            let objects = render(&format!("overlays/{o}"));
            (format!("overlays/{o}"), objects)
        })
        .collect();
    for case in chart_cases() {
        if case != "remote" {
            let objects = yaml_documents(&render_chart_text(&case));
            all.push((format!("chart ci/{case}-values.yaml"), objects));
        }
    }
    all
}

/// Whether the object is a Helm hook (run around an install, not kept).
pub fn is_hook(object: &Value) -> bool {
    object["metadata"]["annotations"]["helm.sh/hook"].is_string()
}
