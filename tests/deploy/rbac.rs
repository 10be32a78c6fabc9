//! RBAC least privilege: no wildcards, no cluster-wide Secrets, names that
//! follow castellan.toml, and a rule for each feature the config turns on.

use super::*;

#[test]
fn rbac_is_least_privilege_and_follows_the_config() {
    castellan_testkit::require!(castellan_testkit::tools::Tool::Kubectl);
    castellan_testkit::require!(castellan_testkit::tools::Tool::Helm);
    const VERBS: [&str; 6] = ["get", "list", "watch", "create", "update", "attest"];
    for (overlay, objects) in deploy::installs() {
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
        // (The chart's trust-init hook binds its own account: judged in
        // workloads.rs with the Job.)
        for binding in objects.iter().filter(|o| {
            (o["kind"] == "RoleBinding" || o["kind"] == "ClusterRoleBinding") && !deploy::is_hook(o)
        }) {
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
