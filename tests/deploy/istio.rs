//! The Istio wiring (Helm values, IstioOperator) uses documented keys that
//! agree with castellan's configuration.

use super::*;

/// The dotted keys of a values document (arrays are leaves).
fn keys(prefix: &str, v: &Value, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, v) in m {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                keys(&key, v, out);
            }
        }
        Value::Object(_) => {}
        _ => {
            out.insert(prefix.to_owned());
        }
    }
}

/// The README's table of the Istio settings castellan needs: key → source.
fn readme_keys() -> BTreeMap<String, String> {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let section = readme
        .split("## Pointing Istio at castellan")
        .nth(1)
        .expect("README has 'Pointing Istio at castellan'");
    let section = section.split("\n## ").next().unwrap();
    section
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            (
                cells[1].trim_matches('`').to_owned(),
                cells[cells.len() - 2].to_owned(),
            )
        })
        .collect()
}

#[test]
fn istio_wiring_uses_documented_keys_that_agree_with_castellan() {
    castellan_testkit::require!(castellan_testkit::tools::Tool::Kubectl);
    let istio = deploy::root().join("istio");
    let load = |f: &str| -> Value {
        let text = std::fs::read_to_string(istio.join(f)).unwrap();
        deploy::yaml_documents(&text)
            .into_iter()
            .next()
            .unwrap_or(Value::Null)
    };
    let istiod = load("istiod-values.yaml");
    let ztunnel = load("ztunnel-values.yaml");
    let operator = load("istio-operator.yaml");
    assert_eq!(
        load("base-values.yaml"),
        serde_json::json!({}),
        "the base chart needs nothing"
    );

    // The IstioOperator carries the same values as the Helm files.
    assert_eq!(operator["spec"]["values"]["global"], istiod["global"]);
    assert_eq!(operator["spec"]["values"]["pilot"], istiod["pilot"]);
    assert_eq!(operator["spec"]["meshConfig"], istiod["meshConfig"]);

    let mut used = BTreeSet::new();
    keys("", &istiod, &mut used);
    let mut zt = BTreeSet::new();
    keys("", &ztunnel, &mut zt);
    used.extend(zt.into_iter().map(|k| format!("ztunnel: {k}")));
    let mut op = BTreeSet::new();
    keys("", &operator["spec"], &mut op);
    for k in op {
        if let Some(rest) = k.strip_prefix("values.") {
            assert!(
                used.contains(rest),
                "IstioOperator {k} is not in istiod-values.yaml"
            );
        } else if !k.starts_with("meshConfig.") {
            used.insert(format!("IstioOperator: {k}"));
        }
    }
    for arg in strings(&istiod["pilot"]["extraContainerArgs"]) {
        used.insert(arg.split('=').next().unwrap().to_owned());
    }
    let documented = readme_keys();
    let documented_keys: BTreeSet<String> = documented.keys().cloned().collect();
    assert_eq!(
        used, documented_keys,
        "README's table and deploy/istio/ differ"
    );
    // Each row cites where Istio documents the key; the project's reference
    // notes, where they are beside the checkout, must name it.
    let reference = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/reference");
    for (key, source) in &documented {
        assert!(
            source.contains(".md") || source.contains("istio/"),
            "{key}: no source ({source})"
        );
        for doc in ["protocol.md", "operations.md"] {
            if source.contains(doc) && reference.join(doc).is_file() {
                let text = std::fs::read_to_string(reference.join(doc)).unwrap();
                let last = key.rsplit([' ', '.']).next().unwrap();
                assert!(text.contains(last), "{key}: {doc} does not name {last}");
            }
        }
    }

    // The values agree with the manifests and castellan's configuration.
    let objects = deploy::render("overlays/file");
    let config = config_of(&objects);
    let service = deploy::find(&objects, "Service", "castellan");
    let grpc = service["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "grpc-castellan")
        .unwrap()["port"]
        .clone();
    let address = format!(
        "{}.{}.svc:{grpc}",
        service["metadata"]["name"].as_str().unwrap(),
        service["metadata"]["namespace"].as_str().unwrap()
    );
    assert_eq!(istiod["global"]["caAddress"], address.as_str());
    assert_eq!(ztunnel["caAddress"], address.as_str());
    assert_eq!(
        istiod["global"]["trustBundleName"],
        get_str(
            &config,
            "kubernetes.trust_bundle.configmap_name",
            "istio-ca-root-cert"
        )
    );
    assert_eq!(
        istiod["meshConfig"]["trustDomain"],
        get_str(&config, "trust_domain", "")
    );
    let audiences: Vec<String> = config["authn"][0]["audiences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect();
    assert!(
        audiences.contains(
            &istiod["global"]["sds"]["token"]["aud"]
                .as_str()
                .unwrap()
                .to_owned()
        )
    );
    assert_eq!(istiod["pilot"]["env"]["ENABLE_CA_SERVER"], "false");
    assert_eq!(
        istiod["pilot"]["volumes"][0]["secret"]["secretName"],
        get_str(&config, "kubernetes.istiod_cert.secret_name", "istiod-tls")
    );
    let mount = istiod["pilot"]["volumeMounts"][0]["mountPath"]
        .as_str()
        .unwrap();
    let args: BTreeSet<String> = strings(&istiod["pilot"]["extraContainerArgs"])
        .into_iter()
        .collect();
    assert_eq!(
        args,
        BTreeSet::from([
            format!("--tlsCertFile={mount}/tls.crt"),
            format!("--tlsKeyFile={mount}/tls.key"),
            format!("--caCertFile={mount}/ca.crt"),
        ]),
        "istiod reads the Secret's keys castellan writes"
    );
}

// === Runbooks ===
