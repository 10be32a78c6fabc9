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
