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

#[test]
fn every_rendering_validates_against_the_kubernetes_schemas_and_parses() {
    let work = tempfile::tempdir().unwrap();
    for (name, text) in renderings() {
        let file = work.path().join("rendered.yaml");
        std::fs::write(&file, &text).unwrap();
        // The oldest Kubernetes these manifests support, and the newest.
        for version in ["1.30.0", "1.37.0"] {
            let out = Command::new("kubernetes-validate")
                .args(["--strict", "--quiet", "-k", version])
                .arg(&file)
                .output()
                .expect("kubernetes-validate (PyPI) is installed by scripts/test.sh");
            let report = String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr);
            assert!(
                out.status.success() && !report.contains("ERROR"),
                "{name} against Kubernetes {version}:\n{report}"
            );
            // Only the Prometheus Operator's kinds may lack a schema here;
            // they are checked against their own types below.
            for line in report
                .lines()
                .filter(|l| l.contains("Couldn't find schema"))
            {
                assert!(line.contains("monitoring.coreos.com/v1"), "{name}: {line}");
            }
        }
        let objects = deploy::yaml_documents(&text);
        assert!(!objects.is_empty(), "{name} renders nothing");
        for object in &objects {
            typed_round_trip(object);
        }
    }
}

/// Parses `object` into its k8s-openapi type and back: a field the type
/// does not know (a typo, a field of another version) is lost and fails.
fn typed_round_trip(object: &Value) {
    use k8s_openapi::api::{
        apps::v1::Deployment,
        core::v1::{ConfigMap, Secret, Service, ServiceAccount},
        networking::v1::NetworkPolicy,
        policy::v1::PodDisruptionBudget,
        rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding},
        scheduling::v1::PriorityClass,
    };
    fn check<T: DeserializeOwned + Serialize>(object: &Value) {
        let typed: T = serde_json::from_value(object.clone())
            .unwrap_or_else(|e| panic!("{} {}: {e}", object["kind"], object["metadata"]["name"]));
        assert_eq!(
            serde_json::to_value(&typed).unwrap(),
            *object,
            "{} {} has fields its type does not know",
            object["kind"],
            object["metadata"]["name"]
        );
    }
    match object["kind"].as_str().unwrap_or_default() {
        "ServiceAccount" => check::<ServiceAccount>(object),
        "Role" => check::<Role>(object),
        "ClusterRole" => check::<ClusterRole>(object),
        "RoleBinding" => check::<RoleBinding>(object),
        "ClusterRoleBinding" => check::<ClusterRoleBinding>(object),
        "ConfigMap" => check::<ConfigMap>(object),
        "Secret" => check::<Secret>(object),
        "Service" => check::<Service>(object),
        "PriorityClass" => check::<PriorityClass>(object),
        "Deployment" => check::<Deployment>(object),
        "PodDisruptionBudget" => check::<PodDisruptionBudget>(object),
        "NetworkPolicy" => check::<NetworkPolicy>(object),
        "ServiceMonitor" => check::<operator::ServiceMonitor>(object),
        "PrometheusRule" => check::<operator::PrometheusRule>(object),
        other => panic!("{other} is rendered: give it its type in typed_round_trip"),
    }
}

/// The Prometheus Operator's kinds, as far as castellan uses them (its CRD
/// schemas are not in kubernetes-validate).
mod operator {
    use std::collections::BTreeMap;

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
    use serde::{Deserialize, Serialize};

    #[derive(Deserialize, Serialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub struct ServiceMonitor {
        pub api_version: String,
        pub kind: String,
        pub metadata: ObjectMeta,
        pub spec: ServiceMonitorSpec,
    }

    #[derive(Deserialize, Serialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub struct ServiceMonitorSpec {
        pub selector: LabelSelector,
        pub namespace_selector: NamespaceSelector,
        pub endpoints: Vec<Endpoint>,
    }

    #[derive(Deserialize, Serialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub struct NamespaceSelector {
        pub match_names: Vec<String>,
    }

    #[derive(Deserialize, Serialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub struct Endpoint {
        pub port: String,
        pub path: String,
        pub interval: String,
    }

    #[derive(Deserialize, Serialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub struct PrometheusRule {
        pub api_version: String,
        pub kind: String,
        pub metadata: ObjectMeta,
        pub spec: RuleSpec,
    }

    #[derive(Deserialize, Serialize)]
    #[serde(deny_unknown_fields)]
    pub struct RuleSpec {
        pub groups: Vec<Group>,
    }

    #[derive(Deserialize, Serialize)]
    #[serde(deny_unknown_fields)]
    pub struct Group {
        pub name: String,
        pub rules: Vec<Rule>,
    }

    #[derive(Deserialize, Serialize)]
    #[serde(deny_unknown_fields)]
    pub struct Rule {
        pub alert: String,
        pub expr: String,
        #[serde(rename = "for", skip_serializing_if = "Option::is_none")]
        pub for_: Option<String>,
        pub labels: BTreeMap<String, String>,
        pub annotations: BTreeMap<String, String>,
    }
}

// === RBAC ===

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

#[test]
fn rbac_is_least_privilege_and_follows_the_config() {
    const VERBS: [&str; 6] = ["get", "list", "watch", "create", "update", "attest"];
    for overlay in deploy::overlays() {
        let objects = deploy::render(&format!("overlays/{overlay}"));
        let config = config_of(&objects);
        let rbac = Rbac::for_service_account(&objects, "istio-system", "castellan");
        for role in objects
            .iter()
            .filter(|o| o["kind"] == "Role" || o["kind"] == "ClusterRole")
        {
            let what = format!("{overlay}: {} {}", role["kind"], role["metadata"]["name"]);
            if role["kind"] == "Role" {
                assert_eq!(role["metadata"]["namespace"], "istio-system", "{what}");
            }
            for rule in role["rules"].as_array().unwrap() {
                let (groups, resources, verbs, names) = (
                    strings(&rule["apiGroups"]),
                    strings(&rule["resources"]),
                    strings(&rule["verbs"]),
                    strings(&rule["resourceNames"]),
                );
                for s in groups.iter().chain(&resources).chain(&verbs).chain(&names) {
                    assert!(!s.contains('*'), "{what}: wildcard {s}");
                }
                for v in &verbs {
                    assert!(VERBS.contains(&v.as_str()), "{what}: verb {v}");
                }
                if role["kind"] == "ClusterRole" {
                    assert!(
                        !resources.iter().any(|r| r == "secrets"),
                        "{what}: secrets cluster-wide"
                    );
                }
                // Reading and writing objects castellan owns is limited to
                // their names; only create cannot be.
                let owned = ["configmaps", "secrets", "leases", "clustertrustbundles"];
                if resources.iter().any(|r| owned.contains(&r.as_str()))
                    && verbs.iter().any(|v| v != "create")
                {
                    assert!(
                        !names.is_empty(),
                        "{what}: {resources:?} {verbs:?} by any name"
                    );
                    assert!(
                        !verbs.iter().any(|v| v == "create"),
                        "{what}: create in a rule limited by name is never limited"
                    );
                }
            }
        }
        for binding in objects
            .iter()
            .filter(|o| o["kind"] == "RoleBinding" || o["kind"] == "ClusterRoleBinding")
        {
            for s in binding["subjects"].as_array().unwrap() {
                assert_eq!(
                    (
                        s["kind"].as_str(),
                        s["namespace"].as_str(),
                        s["name"].as_str()
                    ),
                    (
                        Some("ServiceAccount"),
                        Some("istio-system"),
                        Some("castellan")
                    ),
                    "{overlay}: {} binds someone else",
                    binding["metadata"]["name"]
                );
            }
        }
        // Every feature configured has its rule, named as configured, and
        // nothing is granted for a feature that is not.
        let named = |resource: &str| -> BTreeSet<String> {
            rbac.rules()
                .filter(|(_, res, _, _)| res.iter().any(|r| r == resource))
                .flat_map(|(_, _, _, names)| names.to_vec())
                .collect()
        };
        let granted = |resource: &str| {
            rbac.rules()
                .any(|(_, res, _, _)| res.iter().any(|r| r == resource))
        };
        let kube = get(&config, "kubernetes").is_some();
        assert_eq!(granted("leases"), kube, "{overlay}: leases");
        if kube {
            let lease = get_str(
                &config,
                "kubernetes.leader_election.lease_name",
                "castellan",
            );
            assert_eq!(
                named("leases"),
                BTreeSet::from([lease.to_owned()]),
                "{overlay}"
            );
        }
        let bundle = get(&config, "kubernetes.trust_bundle").is_some();
        let record = get(&config, "trust.state_configmap").and_then(toml::Value::as_str);
        assert_eq!(
            granted("configmaps"),
            bundle || record.is_some(),
            "{overlay}: configmaps"
        );
        let cm = get_str(
            &config,
            "kubernetes.trust_bundle.configmap_name",
            "istio-ca-root-cert",
        );
        let mut configmaps = BTreeSet::new();
        if bundle {
            configmaps.insert(cm.to_owned());
        }
        let crl = get(&config, "trust.crl").is_some();
        if bundle && crl {
            configmaps
                .insert(get_str(&config, "trust.crl.configmap_name", "istio-ca-crl").to_owned());
        }
        if let Some(record) = record {
            configmaps.insert(record.to_owned());
            // The record lives in castellan's namespace only.
            assert!(
                rbac.rules()
                    .filter(|(_, _, _, names)| names.iter().any(|n| n == record))
                    .all(|(scope, _, _, _)| scope == Some("istio-system")),
                "{overlay}: the trust record outside castellan's namespace"
            );
        }
        assert_eq!(named("configmaps"), configmaps, "{overlay}");
        let ctb = get(&config, "kubernetes.trust_bundle.cluster_trust_bundle")
            .and_then(toml::Value::as_bool)
            .unwrap_or(false);
        assert_eq!(
            granted("clustertrustbundles"),
            ctb,
            "{overlay}: clustertrustbundles"
        );
        let istiod = get(&config, "kubernetes.istiod_cert").is_some();
        assert_eq!(granted("secrets"), istiod, "{overlay}: secrets");
        if istiod {
            let secret = get_str(&config, "kubernetes.istiod_cert.secret_name", "istiod-tls");
            assert_eq!(
                named("secrets"),
                BTreeSet::from([secret.to_owned()]),
                "{overlay}"
            );
            let ns = get_str(&config, "kubernetes.istiod_cert.namespace", "istio-system");
            assert!(
                rbac.rules()
                    .filter(|(_, res, _, _)| res.iter().any(|r| r == "secrets"))
                    .all(|(scope, _, _, _)| scope == Some(ns)),
                "{overlay}: secrets outside {ns}"
            );
        }
        let impersonation = get(&config, "impersonation.trusted_node_accounts")
            .and_then(toml::Value::as_array)
            .is_some_and(|a| !a.is_empty());
        assert_eq!(granted("pods"), impersonation, "{overlay}: pods");
        let reviews = config["authn"].as_array().unwrap().iter().any(|a| {
            a.get("type").and_then(toml::Value::as_str) == Some("tokenreview")
                && a.get("kubeconfig").is_none()
        });
        assert_eq!(granted("tokenreviews"), reviews, "{overlay}: tokenreviews");
    }
}

// === The Deployment and its config ===

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

#[test]
fn deployment_service_probes_and_mounts_agree_with_castellan_toml() {
    for overlay in deploy::overlays() {
        let what = format!("overlays/{overlay}");
        let objects = deploy::render(&what);
        let config = config_of(&objects);
        let deployment = deploy::find(&objects, "Deployment", "castellan");
        let pod = &deployment["spec"]["template"]["spec"];
        let c = deploy::container(&objects);
        let container_port = |name: &str| {
            c["ports"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["name"] == name)
                .and_then(|p| p["containerPort"].as_u64())
                .unwrap_or_else(|| panic!("{what}: no container port {name}"))
        };
        let grpc = port_of(get_str(&config, "server.listen", "127.0.0.1:15012"));
        let metrics = port_of(
            get(&config, "server.metrics_listen")
                .and_then(toml::Value::as_str)
                .unwrap_or_else(|| panic!("{what}: probes need server.metrics_listen")),
        );
        assert!(
            !get_str(&config, "server.listen", "").starts_with("127."),
            "{what}: listens on loopback only"
        );
        assert_eq!(container_port("grpc"), grpc, "{what}");
        assert_eq!(container_port("http-monitoring"), metrics, "{what}");
        for (probe, path) in [
            ("startupProbe", "/healthz"),
            ("livenessProbe", "/healthz"),
            ("readinessProbe", "/readyz"),
        ] {
            assert_eq!(c[probe]["httpGet"]["path"], path, "{what}: {probe}");
            assert_eq!(
                c[probe]["httpGet"]["port"], "http-monitoring",
                "{what}: {probe}"
            );
        }
        let service = deploy::find(&objects, "Service", "castellan");
        let ports: BTreeMap<u64, String> = service["spec"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p["port"].as_u64().unwrap(),
                    p["targetPort"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        assert_eq!(
            ports,
            BTreeMap::from([
                (grpc, "grpc".to_owned()),
                (metrics, "http-monitoring".to_owned())
            ]),
            "{what}: Service ports"
        );
        assert_eq!(
            service["spec"]["selector"],
            pod_labels(deployment, &["app"]),
            "{what}"
        );
        let policy = deploy::find(&objects, "NetworkPolicy", "castellan");
        let allowed: BTreeSet<u64> = policy["spec"]["ingress"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|r| r["ports"].as_array().unwrap().iter())
            .filter_map(|p| p["port"].as_u64())
            .collect();
        assert_eq!(
            allowed,
            BTreeSet::from([grpc, metrics]),
            "{what}: NetworkPolicy"
        );

        // The serving certificate names the address Istio dials.
        let names: Vec<String> = get(&config, "server.tls.dns_names")
            .and_then(toml::Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        assert!(
            names.iter().any(|n| n == "castellan.istio-system.svc")
                || get(&config, "server.tls.cert_file").is_some(),
            "{what}: dns_names lacks castellan.istio-system.svc"
        );

        // Every file castellan.toml names is under a mount, every mount has
        // its volume, and every volume is mounted.
        let mounts: Vec<(String, String)> = c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["name"].as_str().unwrap().to_owned(),
                    m["mountPath"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        let mut files = Vec::new();
        paths_in(&toml::Value::Table(config.clone()), "", &mut files);
        assert!(!files.is_empty());
        for f in &files {
            assert!(
                mounts.iter().any(|(_, m)| Path::new(f).starts_with(m)),
                "{what}: {f} is under no volume mount"
            );
        }
        let volumes: BTreeSet<String> = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["name"].as_str().unwrap().to_owned())
            .collect();
        let mut mounted: BTreeSet<String> = mounts.iter().map(|(n, _)| n.clone()).collect();
        for init in pod["initContainers"].as_array().into_iter().flatten() {
            for m in init["volumeMounts"].as_array().into_iter().flatten() {
                mounted.insert(m["name"].as_str().unwrap().to_owned());
            }
        }
        assert_eq!(volumes, mounted, "{what}: volumes and mounts");

        // The API token is mounted explicitly (no automount), and a token
        // for Vault never has the API server's audience.
        assert_eq!(pod["automountServiceAccountToken"], false, "{what}");
        assert_eq!(
            deploy::find(&objects, "ServiceAccount", "castellan")["automountServiceAccountToken"],
            false,
            "{what}"
        );
        for v in pod["volumes"].as_array().unwrap() {
            for s in v["projected"]["sources"].as_array().into_iter().flatten() {
                let token = &s["serviceAccountToken"];
                if token.is_null() {
                    continue;
                }
                let api = mounts.iter().any(|(n, m)| {
                    n == &v["name"] && m == "/var/run/secrets/kubernetes.io/serviceaccount"
                });
                assert_eq!(
                    token["audience"].is_null(),
                    api,
                    "{what}: {} audience",
                    v["name"]
                );
                assert!(
                    token["expirationSeconds"].as_u64().unwrap() <= 3607,
                    "{what}"
                );
            }
        }

        // Hardening.
        let sc = &c["securityContext"];
        assert_eq!(sc["readOnlyRootFilesystem"], true, "{what}");
        assert_eq!(sc["allowPrivilegeEscalation"], false, "{what}");
        assert_eq!(sc["runAsNonRoot"], true, "{what}");
        assert_eq!(
            sc["capabilities"]["drop"],
            serde_json::json!(["ALL"]),
            "{what}"
        );
        assert!(sc["capabilities"]["add"].is_null(), "{what}");
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{what}");
        assert_eq!(
            pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault",
            "{what}"
        );
        assert!(c["resources"]["requests"]["cpu"].is_string(), "{what}");
        assert!(c["resources"]["limits"]["memory"].is_string(), "{what}");

        // Availability.
        assert!(
            deployment["spec"]["replicas"].as_u64().unwrap() >= 2,
            "{what}"
        );
        assert_eq!(
            deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"], 0,
            "{what}"
        );
        let pdb = deploy::find(&objects, "PodDisruptionBudget", "castellan");
        assert_eq!(
            pdb["spec"]["selector"]["matchLabels"],
            pod_labels(deployment, &["app"]),
            "{what}"
        );
        assert_eq!(pdb["spec"]["minAvailable"], 1, "{what}");
        let class = pod["priorityClassName"].as_str().unwrap();
        deploy::find(&objects, "PriorityClass", class);
        let spread: BTreeSet<&str> = pod["topologySpreadConstraints"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|t| t["topologyKey"].as_str())
            .collect();
        assert_eq!(
            spread,
            BTreeSet::from(["kubernetes.io/hostname", "topology.kubernetes.io/zone"]),
            "{what}"
        );
        let grace = get(&config, "server.shutdown_grace_secs")
            .and_then(toml::Value::as_integer)
            .unwrap_or(25);
        assert!(
            pod["terminationGracePeriodSeconds"].as_i64().unwrap() > grace,
            "{what}: SIGKILL before the shutdown grace ends"
        );
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

#[test]
fn every_shipped_castellan_toml_passes_castellans_validation() {
    let dir = tempfile::tempdir().unwrap();
    for overlay in deploy::overlays() {
        let objects = deploy::render(&format!("overlays/{overlay}"));
        let path = dir.path().join(format!("{overlay}.toml"));
        std::fs::write(&path, deploy::castellan_toml(&objects)).unwrap();
        if let Err(e) = Config::load(&path) {
            panic!("overlays/{overlay}/castellan.toml: {e}");
        }
    }
}

// === RBAC sufficiency, against the in-process API server ===

/// A castellan started from a rendering's own castellan.toml, changed only
/// where the cluster differs from this machine: its addresses, the files a
/// pod would mount, and the way to the API server.
struct Rendered {
    running: server::Running,
    root: Ca,
    tokens: castellan::cli::token::TokenIssuer,
    _dir: tempfile::TempDir,
}

async fn run_rendered(
    objects: &[Value],
    kube: &FakeKube,
    edit: impl FnOnce(&mut toml::Table),
) -> Rendered {
    let dir = tempfile::tempdir().unwrap();
    let root = Ca::root("Enterprise Root", KeyAlg::EcP256);
    let intermediate = root.intermediate("Mesh Intermediate", KeyAlg::EcP256, |_| {});
    pki::write_cacerts(
        &dir.path().join("ca"),
        &intermediate,
        &[&intermediate, &root],
        &root.pem,
    );
    std::fs::write(dir.path().join("roots.pem"), &root.pem).unwrap();
    let kubeconfig = kube.kubeconfig(dir.path(), "castellan");
    let path = |p: &Path| toml::Value::String(p.display().to_string());

    let mut config = config_of(objects);
    let server = config["server"].as_table_mut().unwrap();
    server.insert("listen".into(), "127.0.0.1:0".into());
    server.insert("metrics_listen".into(), "127.0.0.1:0".into());
    if let Some(names) = server
        .get_mut("tls")
        .and_then(|t| t.get_mut("dns_names"))
        .and_then(toml::Value::as_array_mut)
    {
        names.push("localhost".into());
    }
    config["ca"]
        .as_table_mut()
        .unwrap()
        .insert("roots_file".into(), path(&dir.path().join("roots.pem")));
    assert_eq!(
        config["signer"]["type"].as_str(),
        Some("file"),
        "the run uses the file signer"
    );
    config["signer"]
        .as_table_mut()
        .unwrap()
        .insert("dir".into(), path(&dir.path().join("ca")));
    for authn in config["authn"].as_array_mut().unwrap() {
        let authn = authn.as_table_mut().unwrap();
        if authn["type"].as_str() == Some("tokenreview") {
            authn.insert("kubeconfig".into(), path(&kubeconfig));
        }
    }
    let k = config["kubernetes"].as_table_mut().unwrap();
    k.insert("kubeconfig".into(), path(&kubeconfig));
    // What the Deployment's POD_NAMESPACE and POD_NAME give a pod.
    k.insert("namespace".into(), "istio-system".into());
    k.insert("identity".into(), "castellan-0".into());
    edit(&mut config);

    let file = dir.path().join("castellan.toml");
    std::fs::write(&file, toml::to_string(&config).unwrap()).unwrap();
    let config = Config::load(&file).unwrap();
    let running = server::start(&config).await.unwrap();
    let (tokens, _) = castellan::cli::token::TokenIssuer::generate(ISSUER).unwrap();
    Rendered {
        running,
        root,
        tokens,
        _dir: dir,
    }
}

impl Rendered {
    async fn send(
        &self,
        kube: &FakeKube,
        ns: &str,
        sa: &str,
        pod: Option<(&str, &str)>,
        impersonate: Option<&str>,
    ) -> Result<Vec<String>, tonic::Status> {
        let token = self.tokens.mint(ns, sa, "istio-ca", 3600).unwrap();
        kube.add_token(&token, ns, sa, pod);
        let identity = impersonate.map_or_else(|| id(ns, sa), str::to_owned);
        let (_, csr) = csr::ztunnel(&identity);
        let mut req = request::request_for(&csr, 3600, &token, "Kubernetes").unwrap();
        if let Some(who) = impersonate {
            let fields = &mut req.get_mut().metadata.as_mut().unwrap().fields;
            fields.clear();
            fields.insert(
                "ImpersonatedIdentity".into(),
                prost_types::Value {
                    kind: Some(prost_types::value::Kind::StringValue(who.to_owned())),
                },
            );
        }
        let addr = format!("https://localhost:{}", self.running.addr.port());
        request::connect(&addr, None, self.root.pem.as_bytes())
            .await
            .unwrap()
            .create_certificate(req)
            .await
            .map(|r| r.into_inner().cert_chain)
    }

    async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let url = format!("http://{}/metrics", self.running.metrics_addr.unwrap());
        let (_, text) = http_get(&url).await;
        crate::support::metric_sum(&text, name, labels)
    }
}

/// The mesh castellan keeps: namespaces, ztunnel and a pod on its node.
fn cluster(kube: &FakeKube) {
    for ns in ["istio-system", "apps"] {
        kube.create_namespace(ns, &[]);
    }
    kube.put_pod(
        "istio-system",
        "ztunnel-n1",
        "zt-uid",
        "ztunnel",
        "node-1",
        "Running",
    );
    kube.put_pod("apps", "web-1", "web-uid", "web", "node-1", "Running");
}

/// The ambient overlay with the ClusterTrustBundle component: every
/// permission castellan can ask for.
fn everything() -> Vec<Value> {
    deploy::yaml_documents(&compose(
        "everything",
        &["overlays/ambient"],
        &["components/cluster-trust-bundle"],
    ))
}

fn with_cluster_trust_bundle(config: &mut toml::Table) {
    config["kubernetes"]["trust_bundle"]
        .as_table_mut()
        .unwrap()
        .insert("cluster_trust_bundle".into(), true.into());
}

/// The in-process cluster, authorizing castellan's account with exactly
/// the RBAC in `objects`.
async fn enforcing(objects: &[Value]) -> FakeKube {
    let kube = FakeKube::start().await;
    cluster(&kube);
    kube.enforce_rbac(Some(Rbac::for_service_account(
        objects,
        "istio-system",
        "castellan",
    )));
    kube
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn castellan_does_its_whole_job_with_exactly_the_rendered_rbac() {
    let objects = everything();
    let kube = enforcing(&objects).await;
    let ca = run_rendered(&objects, &kube, with_cluster_trust_bundle).await;

    assert!(
        eventually(Duration::from_secs(15), async || {
            let leased = kube
                .object(Kind::Lease, "istio-system", "castellan")
                .is_some_and(|l| l["spec"]["holderIdentity"] == "castellan-0");
            let published = ["istio-system", "apps"].iter().all(|ns| {
                kube.object(Kind::ConfigMap, ns, "istio-ca-root-cert")
                    .is_some_and(|cm| {
                        cm["data"]["root-cert.pem"]
                            .as_str()
                            .is_some_and(|d| d.contains("BEGIN CERTIFICATE"))
                    })
            });
            let ctb = kube
                .object(
                    Kind::ClusterTrustBundle,
                    "",
                    "istio.io:istiod-ca:istio-ca-root-cert",
                )
                .is_some();
            let istiod = kube
                .object(Kind::Secret, "istio-system", "istiod-tls")
                .is_some();
            let record = kube
                .object(Kind::ConfigMap, "istio-system", "castellan-trust")
                .is_some_and(|cm| cm["data"]["state.json"].is_string());
            let crl = kube
                .object(Kind::ConfigMap, "apps", "istio-ca-crl")
                .is_some_and(|cm| cm["data"]["ca-crl.pem"].is_string());
            leased && published && ctb && istiod && record && crl
        })
        .await,
        "Lease, trust bundle, ClusterTrustBundle, istiod's Secret, the trust record and the \
         CRL, all written; refused: {:?}",
        kube.denied()
    );
    // A workload's token reviewed, and ztunnel's impersonation checked
    // against the pod watch.
    ca.send(&kube, "apps", "web", None, None).await.unwrap();
    ca.send(
        &kube,
        "istio-system",
        "ztunnel",
        Some(("ztunnel-n1", "zt-uid")),
        Some(&id("apps", "web")),
    )
    .await
    .unwrap();
    // istiod's Secret deleted: castellan sees it (its watch is authorized
    // by name) and writes it again.
    kube.delete_object(Kind::Secret, "istio-system", "istiod-tls");
    assert!(
        eventually(Duration::from_secs(10), async || kube
            .object(Kind::Secret, "istio-system", "istiod-tls")
            .is_some())
        .await
    );
    assert_eq!(
        kube.denied(),
        Vec::<String>::new(),
        "nothing castellan asked was refused"
    );
    assert_eq!(
        ca.metric("castellan_kube_errors_count", &[("reason", "forbidden")])
            .await,
        0.0
    );
    ca.running.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_missing_from_the_rbac_is_refused_and_named() {
    // The enforcement bites: without the istiod-cert binding the Secret
    // cannot be written, and castellan says so; the rest goes on.
    let objects: Vec<Value> = everything()
        .into_iter()
        .filter(|o| {
            !(o["kind"] == "RoleBinding" && o["metadata"]["name"] == "castellan-istiod-cert")
        })
        .collect();
    let kube = enforcing(&objects).await;
    let ca = run_rendered(&objects, &kube, with_cluster_trust_bundle).await;
    assert!(
        eventually(Duration::from_secs(15), async || {
            ca.metric(
                "castellan_kube_errors_count",
                &[("resource", "secrets"), ("reason", "forbidden")],
            )
            .await
                > 0.0
        })
        .await,
        "refused: {:?}",
        kube.denied()
    );
    assert!(
        kube.denied()
            .iter()
            .any(|d| d.contains(" secrets istio-system/"))
    );
    assert!(
        kube.object(Kind::Secret, "istio-system", "istiod-tls")
            .is_none()
    );
    assert!(
        eventually(Duration::from_secs(10), async || kube
            .object(Kind::ConfigMap, "apps", "istio-ca-root-cert")
            .is_some())
        .await
    );
    ca.send(&kube, "apps", "web", None, None).await.unwrap();
    ca.running.kill();
}

// === Alerts and dashboard ===

/// The series of a `/metrics` exposition: name → label sets.
fn exposition(text: &str) -> BTreeMap<String, Vec<BTreeMap<String, String>>> {
    let mut series: BTreeMap<String, Vec<BTreeMap<String, String>>> = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (name, labels) = match line.split_once('{') {
            Some((name, rest)) => {
                let inner = rest.split_once('}').unwrap().0;
                let labels = inner
                    .split("\",")
                    .filter(|p| !p.is_empty())
                    .map(|p| {
                        let (k, v) = p.split_once('=').unwrap();
                        (k.to_owned(), v.trim_matches('"').to_owned())
                    })
                    .collect();
                (name.to_owned(), labels)
            }
            None => (line.split(' ').next().unwrap().to_owned(), BTreeMap::new()),
        };
        series.entry(name).or_default().push(labels);
    }
    series
}

/// Every vector selector of a PromQL expression.
fn selectors(
    expr: &promql_parser::parser::Expr,
    out: &mut Vec<promql_parser::parser::VectorSelector>,
) {
    use promql_parser::parser::Expr;
    match expr {
        Expr::Aggregate(a) => {
            selectors(&a.expr, out);
            if let Some(p) = &a.param {
                selectors(p, out);
            }
        }
        Expr::Unary(u) => selectors(&u.expr, out),
        Expr::Binary(b) => {
            selectors(&b.lhs, out);
            selectors(&b.rhs, out);
        }
        Expr::Paren(p) => selectors(&p.expr, out),
        Expr::Subquery(s) => selectors(&s.expr, out),
        Expr::VectorSelector(v) => out.push(v.clone()),
        Expr::MatrixSelector(m) => out.push(m.vs.clone()),
        Expr::Call(c) => {
            for a in &c.args.args {
                selectors(a, out);
            }
        }
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => {}
    }
}

/// Checks `expr` parses and names only series castellan exports, with
/// label values it exports.
fn check_expr(where_: &str, expr: &str, series: &BTreeMap<String, Vec<BTreeMap<String, String>>>) {
    use promql_parser::label::MatchOp;
    let expr_text = expr.replace("$__rate_interval", "5m");
    let parsed = promql_parser::parser::parse(&expr_text)
        .unwrap_or_else(|e| panic!("{where_}: {expr}: {e}"));
    let mut found = Vec::new();
    selectors(&parsed, &mut found);
    assert!(!found.is_empty(), "{where_}: {expr} reads no metric");
    for s in found {
        let name = s.name.clone().unwrap_or_default();
        let Some(sets) = series.get(&name) else {
            panic!("{where_}: {name} is not in castellan's /metrics");
        };
        for m in &s.matchers.matchers {
            let values: Vec<String> = match &m.op {
                MatchOp::Equal => vec![m.value.clone()],
                MatchOp::Re(_) => m.value.split('|').map(str::to_owned).collect(),
                MatchOp::NotEqual | MatchOp::NotRe(_) => continue,
            };
            for v in values {
                assert!(
                    sets.iter().any(|l| l.get(&m.name) == Some(&v)),
                    "{where_}: {name} has no series with {}=\"{v}\"",
                    m.name
                );
            }
        }
    }
}

#[tokio::test]
async fn alerts_and_dashboard_parse_and_name_only_what_castellan_exports() {
    let ca = TestCa::start().await;
    let (_, text) = http_get(&format!("{}/metrics", ca.metrics_url())).await;
    let series = exposition(&text);

    let objects = deploy::yaml_documents(&compose(
        "monitoring",
        &["overlays/file"],
        &["components/monitoring"],
    ));
    let rules = deploy::find(&objects, "PrometheusRule", "castellan");
    let mut alerts = BTreeSet::new();
    for group in rules["spec"]["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            let alert = rule["alert"].as_str().unwrap();
            assert!(alerts.insert(alert.to_owned()), "{alert} twice");
            check_expr(alert, rule["expr"].as_str().unwrap(), &series);
            let severity = rule["labels"]["severity"].as_str().unwrap_or_default();
            assert!(
                ["warning", "critical"].contains(&severity),
                "{alert}: severity {severity}"
            );
            assert!(
                rule["annotations"]["summary"].is_string(),
                "{alert}: summary"
            );
            let runbook = rule["annotations"]["runbook"].as_str().unwrap_or_default();
            assert!(
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join(runbook)
                    .is_file(),
                "{alert}: runbook {runbook:?} does not exist"
            );
        }
    }
    for must in [
        "CastellanIntermediateExpiresSoon",
        "CastellanRootExpiresSoon",
        "CastellanCannotSign",
        "CastellanServerErrors",
        "CastellanOverloaded",
        "CastellanTrustBundleBehind",
        "CastellanIstiodCertificateExpiring",
        "CastellanNoLeader",
    ] {
        assert!(alerts.contains(must), "no {must}");
    }

    let monitor = deploy::find(&objects, "ServiceMonitor", "castellan");
    assert_eq!(monitor["spec"]["endpoints"][0]["port"], "http-monitoring");
    assert_eq!(monitor["spec"]["endpoints"][0]["path"], "/metrics");

    let dashboard: Value = serde_json::from_str(
        deploy::find(&objects, "ConfigMap", "castellan-dashboard")["data"]["castellan-dashboard.json"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    let mut exprs = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        if panel["type"] == "row" {
            continue;
        }
        let title = panel["title"].as_str().unwrap();
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title}: no query");
        for t in targets {
            check_expr(title, t["expr"].as_str().unwrap(), &series);
            exprs += 1;
        }
    }
    assert!(exprs >= 20, "the dashboard shows {exprs} queries");
    ca.running.kill();
}

// === Istio wiring ===

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

/// `castellan ...` command lines in the fenced code blocks of `text`.
fn castellan_commands(text: &str) -> Vec<String> {
    let mut commands = Vec::new();
    let mut in_code = false;
    let mut continued = String::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if !in_code {
            continue;
        }
        let line = line.trim();
        if let Some(head) = line.strip_suffix('\\') {
            continued.push_str(head);
            continue;
        }
        let full = std::mem::take(&mut continued) + line;
        // The command word, not a name like deploy/castellan before it.
        if let Some((at, _)) = full.match_indices("castellan ").find(|(at, _)| {
            let before = &full[..*at];
            before.is_empty()
                || before.ends_with("-- ")
                || before.ends_with("$ ")
                || before.ends_with("./")
        }) {
            commands.push(full[at..].to_owned());
        }
    }
    commands
}

#[test]
fn every_castellan_command_in_the_runbooks_exists() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![root.join("README.md")];
    for entry in std::fs::read_dir(root.join("docs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            files.push(path);
        }
    }
    let mut checked = 0;
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for command in castellan_commands(&text) {
            let words: Vec<&str> = command.split_whitespace().collect();
            let Some(sub) = words.get(1).filter(|w| !w.starts_with('-')) else {
                continue;
            };
            let help = Command::new(env!("CARGO_BIN_EXE_castellan"))
                .args([sub, "--help"])
                .output()
                .unwrap();
            assert!(
                help.status.success(),
                "{}: `{command}`: castellan has no command {sub}",
                file.display()
            );
            let help = String::from_utf8_lossy(&help.stdout);
            for flag in words.iter().filter(|w| w.starts_with("--")) {
                let flag = flag.split('=').next().unwrap();
                assert!(
                    help.contains(flag),
                    "{}: `{command}`: castellan {sub} has no {flag}",
                    file.display()
                );
            }
            checked += 1;
        }
    }
    assert!(
        checked >= 10,
        "only {checked} castellan commands found in the docs"
    );
}

// === The image ===

#[test]
fn the_image_builds_the_binary_ci_builds() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let recipe = std::fs::read_to_string(root.join("deploy/Containerfile")).unwrap();
    let ci = std::fs::read_to_string(root.join("scripts/test.sh")).unwrap();
    let build = "cargo build --release --locked --bin castellan";
    assert!(
        recipe.contains(build),
        "the Containerfile builds with `{build}`"
    );
    assert!(ci.contains(build), "CI builds with `{build}`");
    assert!(
        recipe.contains("USER 65532"),
        "the image runs as the Deployment's user"
    );
    let entry = recipe
        .lines()
        .find(|l| l.starts_with("ENTRYPOINT"))
        .unwrap();
    assert!(entry.contains("/castellan"), "{entry}");
}
