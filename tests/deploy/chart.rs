//! The Helm chart (`deploy/helm/castellan`) and the Kustomize overlays are
//! one deployment: for each overlay, the chart with the matching `ci/`
//! values file renders the same objects, compared after normalising what
//! only differs by tool (Helm's labels and hooks, Kustomize's generated
//! ConfigMap name, castellan.toml compared as TOML, lists by name). The
//! overlays stay hand-written Kustomize a user can compose; the chart
//! renders castellan.toml from values; this test keeps the two from
//! drifting. Also: lint --strict, the schema refuses unknown keys and wrong
//! types naming them, values.yaml, the schema and the README table agree,
//! the monitoring files are the component's, and the chart packages.

use super::*;

/// One overlay (or overlay + components) and the chart values that select
/// the same, with what the values also turn on in castellan.toml (the
/// components leave the overlay's castellan.toml as it is).
struct Case {
    values: &'static str,
    overlay: &'static str,
    components: &'static [&'static str],
    toml_also: &'static str,
}

const CASES: &[Case] = &[
    Case {
        values: "file",
        overlay: "overlays/file",
        components: &[],
        toml_also: "",
    },
    Case {
        values: "ambient",
        overlay: "overlays/ambient",
        components: &[],
        toml_also: "",
    },
    Case {
        values: "multicluster",
        overlay: "overlays/multicluster",
        components: &[],
        toml_also: "",
    },
    Case {
        values: "pkcs11",
        overlay: "overlays/pkcs11",
        components: &[],
        toml_also: "",
    },
    Case {
        values: "pkcs11-mint",
        overlay: "overlays/pkcs11-mint",
        components: &[],
        toml_also: "",
    },
    Case {
        values: "vault-mint",
        overlay: "overlays/vault-mint",
        components: &[],
        toml_also: "",
    },
    Case {
        values: "vault-pki",
        overlay: "overlays/vault-pki",
        components: &[],
        toml_also: "",
    },
    Case {
        values: "vault-transit",
        overlay: "overlays/vault-transit",
        components: &[],
        toml_also: "",
    },
    Case {
        values: "remote",
        overlay: "remote",
        components: &[],
        toml_also: "",
    },
    Case {
        values: "monitoring",
        overlay: "overlays/file",
        components: &["components/monitoring"],
        toml_also: "",
    },
    Case {
        values: "crl",
        overlay: "overlays/file",
        components: &["components/crl"],
        toml_also: "[trust.crl]\nvalidity_secs = 86400\nconfigmap_name = \"istio-ca-crl\"\n\
                    upstream_files = [\"/etc/castellan/crls/root-crl.pem\"]\n",
    },
    Case {
        values: "cluster-trust-bundle",
        overlay: "overlays/file",
        components: &["components/cluster-trust-bundle"],
        toml_also: "[kubernetes.trust_bundle]\ncluster_trust_bundle = true\n",
    },
];

/// Chart values files with no overlay to match: rendered, linted and
/// judged by the other deploy tests, not compared.
const CHART_ONLY: &[&str] = &["migration", "vault-mint-hsm"];

fn kustomize(case: &Case) -> Vec<Value> {
    if case.components.is_empty() {
        deploy::render(case.overlay)
    } else {
        deploy::yaml_documents(&compose(case.values, &[case.overlay], case.components))
    }
}

/// The objects by kind, namespace and name, normalised; `toml_also` merged
/// into castellan.toml.
fn normalised(objects: &[Value], toml_also: &str) -> BTreeMap<String, Value> {
    let generated = |name: &str| {
        name.strip_prefix("castellan-config-")
            .is_some_and(|hash| hash.len() == 10 && !hash.contains('-'))
    };
    let mut out = BTreeMap::new();
    for object in objects {
        let mut o = object.clone();
        rename(&mut o, &|s| {
            generated(s).then(|| "castellan-config".to_owned())
        });
        let meta = o["metadata"].as_object_mut().unwrap();
        for key in ["labels", "annotations"] {
            if let Some(Value::Object(map)) = meta.get_mut(key) {
                map.retain(|k, _| {
                    !k.starts_with("app.kubernetes.io/") && !k.starts_with("helm.sh/")
                });
                if map.is_empty() {
                    meta.remove(key);
                }
            }
        }
        if o["kind"] == "Deployment" {
            let annotations = o["spec"]["template"]["metadata"]["annotations"]
                .as_object_mut()
                .unwrap();
            annotations.remove("checksum/config");
        }
        if let Some(text) = o["data"]["castellan.toml"].as_str() {
            let mut config: toml::Table = text.parse().unwrap();
            merge(&mut config, toml_also.parse().unwrap());
            o["data"]["castellan.toml"] = serde_json::to_value(config).unwrap();
        }
        sort_named_lists(&mut o);
        let key = format!(
            "{} {}/{}",
            o["kind"].as_str().unwrap(),
            o["metadata"]["namespace"].as_str().unwrap_or(""),
            o["metadata"]["name"].as_str().unwrap()
        );
        assert!(out.insert(key.clone(), o).is_none(), "{key} twice");
    }
    out
}

/// Replaces every string `to` maps.
fn rename(v: &mut Value, to: &dyn Fn(&str) -> Option<String>) {
    match v {
        Value::String(s) => {
            if let Some(new) = to(s) {
                *s = new;
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|v| rename(v, to)),
        Value::Object(m) => m.values_mut().for_each(|v| rename(v, to)),
        _ => {}
    }
}

/// Lists whose items all have a name (containers, volumes, mounts, env,
/// ports) in name order: where a patch puts an item is not meaningful.
fn sort_named_lists(v: &mut Value) {
    match v {
        Value::Array(a) => {
            a.iter_mut().for_each(sort_named_lists);
            if !a.is_empty() && a.iter().all(|i| i["name"].is_string()) {
                a.sort_by(|x, y| x["name"].as_str().cmp(&y["name"].as_str()));
            }
        }
        Value::Object(m) => m.values_mut().for_each(sort_named_lists),
        _ => {}
    }
}

fn merge(into: &mut toml::Table, also: toml::Table) {
    for (k, v) in also {
        match (into.get_mut(&k), v) {
            (Some(toml::Value::Table(a)), toml::Value::Table(b)) => merge(a, b),
            (_, v) => {
                into.insert(k, v);
            }
        }
    }
}

/// The chart's trust-init hook, folded into what the overlays have: its
/// Job as the overlays' (castellan's account, castellan's ConfigMap), its
/// account, Role, RoleBinding and ConfigMap gone — after checking they are
/// what workloads.rs judges (the same rules and castellan.toml).
fn fold_hook(chart: &mut BTreeMap<String, Value>, hooks: &[Value]) {
    let ns = "istio-system";
    let config = chart[&format!("ConfigMap {ns}/castellan-config")].clone();
    let hook_config = chart
        .remove(&format!("ConfigMap {ns}/castellan-trust-init"))
        .expect("the hook's castellan.toml");
    assert_eq!(
        hook_config["data"]["castellan.toml"], config["data"]["castellan.toml"],
        "the hook reads castellan's castellan.toml"
    );
    for (kind, weight) in [
        ("ServiceAccount", "-10"),
        ("Role", "-10"),
        ("RoleBinding", "-10"),
        ("ConfigMap", "-10"),
        ("Job", "0"),
    ] {
        let object = deploy::find(hooks, kind, "castellan-trust-init");
        let annotations = &object["metadata"]["annotations"];
        assert_eq!(
            annotations["helm.sh/hook"], "pre-install,pre-upgrade",
            "{kind}"
        );
        assert_eq!(
            annotations["helm.sh/hook-delete-policy"], "before-hook-creation,hook-succeeded",
            "{kind}"
        );
        assert_eq!(
            annotations["helm.sh/hook-weight"], weight,
            "{kind}: made before the Job"
        );
        if kind != "Job" && kind != "ConfigMap" {
            chart
                .remove(&format!("{kind} {ns}/castellan-trust-init"))
                .unwrap_or_else(|| panic!("the hook's {kind}"));
        }
    }
    let job = chart
        .get_mut(&format!("Job {ns}/castellan-trust-init"))
        .unwrap();
    let pod = &mut job["spec"]["template"]["spec"];
    pod["serviceAccountName"] = "castellan".into();
    for volume in pod["volumes"].as_array_mut().unwrap() {
        if volume["name"] == "config" {
            volume["configMap"]["name"] = "castellan-config".into();
        }
    }
}

/// Where two values first differ, as a path.
fn first_difference(a: &Value, b: &Value, path: &str) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for k in x.keys().chain(y.keys()) {
                let (l, r) = (
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                );
                if let Some(d) = first_difference(l, r, &format!("{path}.{k}")) {
                    return Some(d);
                }
            }
            None
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (l, r))| first_difference(l, r, &format!("{path}[{i}]"))),
        _ if a == b => None,
        _ => Some(format!("{path}: Kustomize {a}, chart {b}")),
    }
}

/// Every difference between the overlay's objects and the chart's.
fn differences(kustomize: &[Value], chart: &[Value], toml_also: &str) -> Vec<String> {
    let k = normalised(kustomize, toml_also);
    let mut c = normalised(chart, "");
    if c.contains_key("Job istio-system/castellan-trust-init") {
        fold_hook(&mut c, chart);
    }
    let mut found = Vec::new();
    for key in k.keys().chain(c.keys()).collect::<BTreeSet<_>>() {
        match (k.get(key), c.get(key)) {
            (Some(_), None) => found.push(format!("{key}: only in Kustomize")),
            (None, Some(_)) => found.push(format!("{key}: only in the chart")),
            (Some(a), Some(b)) => {
                if let Some(d) = first_difference(a, b, "") {
                    found.push(format!("{key}: {d}"));
                }
            }
            (None, None) => unreachable!(),
        }
    }
    found
}

#[test]
fn the_chart_renders_what_each_overlay_renders() {
    castellan_testkit::require!(castellan_testkit::tools::Tool::Kubectl);
    castellan_testkit::require!(castellan_testkit::tools::Tool::Helm);
    let mut compared: BTreeSet<&str> = CHART_ONLY.iter().copied().collect();
    for case in CASES {
        let chart = deploy::yaml_documents(&deploy::render_chart_text(case.values));
        let found = differences(&kustomize(case), &chart, case.toml_also);
        assert!(
            found.is_empty(),
            "ci/{}-values.yaml vs {} + {:?}:\n{}",
            case.values,
            case.overlay,
            case.components,
            found.join("\n")
        );
        compared.insert(case.values);
    }
    let every: BTreeSet<String> = deploy::chart_cases().into_iter().collect();
    assert_eq!(
        every,
        compared.iter().map(|c| (*c).to_owned()).collect(),
        "every ci/ values file is compared with an overlay or listed as chart-only"
    );
    let mut overlays: BTreeSet<String> = deploy::overlays()
        .into_iter()
        .map(|o| format!("overlays/{o}"))
        .collect();
    for case in CASES {
        overlays.remove(case.overlay);
    }
    assert!(
        overlays.is_empty(),
        "overlays no chart values match: {overlays:?}"
    );
}

/// The equivalence test fails when one field of one template drifts (shown
/// once on a copy of the chart: the readiness probe's period).
#[test]
fn a_drifted_template_fails_the_equivalence() {
    castellan_testkit::require!(castellan_testkit::tools::Tool::Kubectl);
    castellan_testkit::require!(castellan_testkit::tools::Tool::Helm);
    let copy = tempfile::tempdir().unwrap();
    copy_dir(&deploy::chart(), copy.path());
    let deployment = copy.path().join("templates/deployment.yaml");
    let text = std::fs::read_to_string(&deployment).unwrap();
    let probe = "path: /readyz\n              port: http-monitoring\n            periodSeconds: 2";
    assert!(text.contains(probe));
    std::fs::write(
        &deployment,
        text.replace(probe, &probe.replace(": 2", ": 3")),
    )
    .unwrap();
    let chart = deploy::yaml_documents(
        &deploy::helm(&["render", "--chart", copy.path().to_str().unwrap()]).unwrap(),
    );
    let found = differences(&deploy::render("overlays/file"), &chart, "");
    assert_eq!(
        found,
        [
            ".spec.template.spec.containers[0].readinessProbe.periodSeconds: Kustomize 2, chart 3"
                .to_owned()
        ]
        .map(|d| format!("Deployment istio-system/castellan: {d}")),
    );
}

fn copy_dir(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[test]
fn lint_strict_passes_for_every_values_file() {
    castellan_testkit::require!(castellan_testkit::tools::Tool::Helm);
    deploy::helm(&["lint"]).unwrap_or_else(|e| panic!("helm lint --strict: {e}"));
    for case in deploy::chart_cases() {
        let values = deploy::chart().join(format!("ci/{case}-values.yaml"));
        deploy::helm(&["lint", "-f", values.to_str().unwrap()])
            .unwrap_or_else(|e| panic!("helm lint --strict -f ci/{case}-values.yaml: {e}"));
    }
}

/// Unknown keys and wrong types are refused by values.schema.json, naming
/// the key; what no schema can say is refused by the templates.
#[test]
fn values_the_chart_does_not_know_are_refused_naming_the_key() {
    castellan_testkit::require!(castellan_testkit::tools::Tool::Helm);
    for (set, named) in [
        (
            "signer.typo=\"x\"",
            "at '/signer': additional properties 'typo' not allowed",
        ),
        (
            "replicaCount=\"two\"",
            "at '/replicaCount': got string, want integer",
        ),
        ("signer.type=\"vault\"", "at '/signer/type'"),
        ("crl.upstreamFiles=[]", "at '/crl/upstreamFiles'"),
        (
            "imagePullSecret=[]",
            "additional properties 'imagePullSecret' not allowed",
        ),
        (
            "shutdownGraceSecs=40",
            "terminationGracePeriodSeconds must exceed shutdownGraceSecs",
        ),
    ] {
        let err = deploy::helm(&["render", "--set-json", set])
            .expect_err(&format!("--set-json {set} rendered"));
        assert!(err.contains(named), "--set-json {set}: {err}");
    }
    // A user's values file, as `helm install -f` reads it.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("my-values.yaml");
    std::fs::write(
        &file,
        "signer:\n  type: pkcs11\n  pkcs11:\n    poolSize: \"4\"\n    tokenLable: x\n",
    )
    .unwrap();
    let err = deploy::helm(&["render", "-f", file.to_str().unwrap()]).unwrap_err();
    assert!(err.contains("at '/signer/pkcs11'"), "{err}");
    assert!(err.contains("'tokenLable' not allowed"), "{err}");
    assert!(
        err.contains("at '/signer/pkcs11/poolSize': got string, want integer"),
        "{err}"
    );
    let err = deploy::helm(&[
        "render",
        "--set-json",
        "signer.type=\"vault-pki\"",
        "--set-json",
        "istiodCert.enabled=true",
    ])
    .unwrap_err();
    assert!(
        err.contains("istiodCert.enabled: signer.type vault-pki cannot sign istiod's certificate"),
        "{err}"
    );
}

/// values.yaml holds exactly the schema's defaults, every value has a
/// description, and the README's table is the one generated from the
/// schema.
#[test]
fn values_yaml_the_schema_and_the_readme_agree() {
    castellan_testkit::require!(castellan_testkit::tools::Tool::Helm);
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(deploy::chart().join("values.schema.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        schema["$schema"],
        "https://json-schema.org/draft/2020-12/schema"
    );
    let values: Value = serde_saphyr::from_str(
        &std::fs::read_to_string(deploy::chart().join("values.yaml")).unwrap(),
    )
    .unwrap();
    fn defaults(schema: &Value, path: &str, out: &mut BTreeMap<String, Value>) {
        assert!(
            schema["description"].is_string() || path.is_empty(),
            "{path}: no description"
        );
        match schema["properties"].as_object() {
            Some(props) if schema["type"] == "object" => {
                assert_eq!(
                    schema["additionalProperties"], false,
                    "{path}: unknown keys allowed"
                );
                for (k, v) in props {
                    defaults(v, &format!("{path}/{k}"), out);
                }
            }
            _ => {
                out.insert(path.to_owned(), schema["default"].clone());
            }
        }
    }
    fn leaves(values: &Value, schema: &Value, path: &str, out: &mut BTreeMap<String, Value>) {
        match (values, schema["properties"].as_object()) {
            (Value::Object(m), Some(_)) if schema["type"] == "object" => {
                for (k, v) in m {
                    leaves(v, &schema["properties"][k], &format!("{path}/{k}"), out);
                }
            }
            _ => {
                out.insert(path.to_owned(), values.clone());
            }
        }
    }
    let mut from_schema = BTreeMap::new();
    defaults(&schema, "", &mut from_schema);
    let mut from_values = BTreeMap::new();
    leaves(&values, &schema, "", &mut from_values);
    assert_eq!(
        from_values, from_schema,
        "values.yaml and the schema's defaults"
    );
    deploy::helm(&["readme", "--check"]).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn the_monitoring_files_are_the_components_and_the_chart_packages() {
    castellan_testkit::require!(castellan_testkit::tools::Tool::Helm);
    for (ours, theirs) in [
        (
            "files/prometheusrule.yaml",
            "components/monitoring/prometheusrule.yaml",
        ),
        (
            "files/castellan-dashboard.json",
            "components/monitoring/castellan-dashboard.json",
        ),
    ] {
        assert_eq!(
            std::fs::read(deploy::chart().join(ours)).unwrap(),
            std::fs::read(deploy::root().join("kubernetes").join(theirs)).unwrap(),
            "deploy/helm/castellan/{ours} is a copy of deploy/kubernetes/{theirs}"
        );
    }
    let out = tempfile::tempdir().unwrap();
    let archive = deploy::helm(&["package", out.path().to_str().unwrap()]).unwrap();
    let archive = archive.trim();
    assert!(archive.ends_with("castellan-0.1.0.tgz"), "{archive}");
    let listing = Command::new("tar").args(["tzf", archive]).output().unwrap();
    let listing = String::from_utf8(listing.stdout).unwrap();
    for file in [
        "castellan/values.schema.json",
        "castellan/templates/NOTES.txt",
        "castellan/files/prometheusrule.yaml",
    ] {
        assert!(
            listing.lines().any(|l| l == file),
            "{file} not packaged:\n{listing}"
        );
    }
}

/// NOTES.txt tells the user what to create and which runbook commands to
/// run next, for the values they chose.
#[test]
fn the_notes_say_what_to_check_next() {
    castellan_testkit::require!(castellan_testkit::tools::Tool::Helm);
    let dir = tempfile::tempdir().unwrap();
    let notes = dir.path().join("notes");
    let values = deploy::chart().join("ci/vault-transit-values.yaml");
    deploy::helm(&[
        "render",
        "-f",
        values.to_str().unwrap(),
        "--namespace",
        "mesh-ca",
        "--notes",
        notes.to_str().unwrap(),
    ])
    .unwrap();
    let notes = std::fs::read_to_string(notes).unwrap();
    for line in [
        "castellan (vault-transit signer) is installed in mesh-ca.",
        "ConfigMap castellan-roots with root-cert.pem",
        "ConfigMap castellan-vault-ca with Vault's ca.crt",
        "ConfigMap castellan-intermediate with intermediate.pem and chain.pem",
        "kubectl -n mesh-ca rollout status deployment/castellan",
        "kubectl -n mesh-ca exec deploy/castellan -- castellan check --config /etc/castellan/config/castellan.toml",
        "global.caAddress=castellan.mesh-ca.svc:15012",
    ] {
        assert!(notes.contains(line), "NOTES.txt lacks {line:?}:\n{notes}");
    }
    assert!(
        !notes.contains("castellan-ca with the intermediate"),
        "{notes}"
    );
}

/// What extraConfig appends is castellan.toml like the rest: a section the
/// values already render, given again, is refused when castellan loads it,
/// naming the line.
#[test]
fn extra_config_giving_a_section_twice_is_refused_naming_it() {
    castellan_testkit::require!(castellan_testkit::tools::Tool::Helm);
    let text = deploy::helm(&[
        "render",
        "--set-json",
        "extraConfig=\"[trust]\\nstate_configmap = \\\"x\\\"\\n\"",
    ])
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("castellan.toml");
    std::fs::write(
        &path,
        deploy::castellan_toml(&deploy::yaml_documents(&text)),
    )
    .unwrap();
    let err = Config::load(&path).unwrap_err().to_string();
    assert!(
        err.contains("duplicate key") && err.contains("[trust]"),
        "{err}"
    );
}
