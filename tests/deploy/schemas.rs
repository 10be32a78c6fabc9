//! Every rendering validates against the Kubernetes schemas offline and
//! parses into its k8s-openapi (or Prometheus Operator) type without losing
//! a field.

use super::*;

#[test]
fn every_rendering_validates_against_the_kubernetes_schemas_and_parses() {
    castellan_testkit::require!(castellan_testkit::tools::Tool::Kubectl);
    castellan_testkit::require!(castellan_testkit::tools::Tool::KubernetesValidate);
    castellan_testkit::require!(castellan_testkit::tools::Tool::Helm);
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
        batch::v1::Job,
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
        "Job" => check::<Job>(object),
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
