//! The Deployment, Service, probes and mounts agree with the shipped
//! castellan.toml, and every shipped castellan.toml passes castellan's own
//! validation.

use super::*;

#[test]
fn deployment_service_probes_and_mounts_agree_with_castellan_toml() {
    castellan_testkit::require!(castellan_testkit::tools::Tool::Kubectl);
    castellan_testkit::require!(castellan_testkit::tools::Tool::Helm);
    for (what, objects) in deploy::installs() {
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

#[test]
fn every_shipped_castellan_toml_passes_castellans_validation() {
    castellan_testkit::require!(castellan_testkit::tools::Tool::Kubectl);
    castellan_testkit::require!(castellan_testkit::tools::Tool::Helm);
    let dir = tempfile::tempdir().unwrap();
    for (i, (what, objects)) in deploy::installs().into_iter().enumerate() {
        let path = dir.path().join(format!("{i}.toml"));
        std::fs::write(&path, deploy::castellan_toml(&objects)).unwrap();
        if let Err(e) = Config::load(&path) {
            panic!("{what}: castellan.toml: {e}");
        }
    }
}

// === RBAC sufficiency, against the in-process API server ===

/// A record in a ConfigMap exists only once `castellan trust init` made it:
/// the castellan-trust-init Job runs it on castellan's own configuration.
/// The overlays run it as castellan's service account; the chart runs it as
/// a pre-install hook, before castellan's account exists, so as an account
/// of its own allowed exactly what castellan's record rule allows, reading
/// a copy of the same castellan.toml.
#[test]
fn the_trust_init_job_creates_the_record_from_the_same_configuration() {
    castellan_testkit::require!(castellan_testkit::tools::Tool::Kubectl);
    castellan_testkit::require!(castellan_testkit::tools::Tool::Helm);
    for (what, objects) in deploy::installs() {
        let config = config_of(&objects);
        if get(&config, "trust.state_configmap").is_none() {
            continue;
        }
        let job = deploy::find(&objects, "Job", "castellan-trust-init");
        let deployment = deploy::find(&objects, "Deployment", "castellan");
        let spec = &job["spec"]["template"]["spec"];
        let account = spec["serviceAccountName"].as_str().unwrap();
        if deploy::is_hook(job) {
            assert_eq!(account, "castellan-trust-init", "{what}");
            let rules =
                |kind: &str, name: &str| deploy::find(&objects, kind, name)["rules"].clone();
            assert_eq!(
                rules("Role", "castellan-trust-init"),
                rules("Role", "castellan-trust-state"),
                "{what}: the hook's account may do what castellan's record rule allows, no more"
            );
            let binding = deploy::find(&objects, "RoleBinding", "castellan-trust-init");
            assert_eq!(binding["roleRef"]["name"], "castellan-trust-init", "{what}");
            assert_eq!(
                binding["subjects"][0]["name"], "castellan-trust-init",
                "{what}"
            );
            for name in ["castellan-trust-init"] {
                for kind in ["ServiceAccount", "Role", "RoleBinding", "ConfigMap"] {
                    assert!(
                        deploy::is_hook(deploy::find(&objects, kind, name)),
                        "{what}: {kind} {name} is not a hook"
                    );
                }
            }
        } else {
            assert_eq!(account, "castellan", "{what}");
        }
        assert_eq!(
            strings(&spec["containers"][0]["args"]),
            [
                "trust",
                "init",
                "--config",
                "/etc/castellan/config/castellan.toml"
            ],
            "{what}"
        );
        let config_text = |pod: &Value| {
            let name = pod["volumes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|v| v["name"] == "config")
                .and_then(|v| v["configMap"]["name"].as_str())
                .unwrap();
            deploy::find(&objects, "ConfigMap", name)["data"]["castellan.toml"].clone()
        };
        assert_eq!(
            config_text(spec),
            config_text(&deployment["spec"]["template"]["spec"]),
            "{what}: the Job reads the Deployment's castellan.toml"
        );
        assert_eq!(
            spec["containers"][0]["image"],
            deployment["spec"]["template"]["spec"]["containers"][0]["image"],
            "{what}"
        );
    }
}
