//! RBAC sufficiency: castellan does its whole job against the in-process
//! API server enforcing exactly the rendered rules, and a missing rule is
//! refused and named.

use super::*;

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
    // The CRLs of the CAs above, as ConfigMap castellan-crls would mount them.
    if let Some(crl) = config
        .get_mut("trust")
        .and_then(|t| t.get_mut("crl"))
        .and_then(toml::Value::as_table_mut)
    {
        let file = dir.path().join("root-crl.pem");
        std::fs::write(&file, root.crl(time::Duration::days(7), &[])).unwrap();
        crl.insert("upstream_files".into(), vec![path(&file)].into());
    }

    let file = dir.path().join("castellan.toml");
    std::fs::write(&file, toml::to_string(&config).unwrap()).unwrap();
    let config = Config::load(&file).unwrap();
    // What the castellan-trust-init Job does on a first install.
    crate::support::init_trust(&config).await;
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

/// The ambient overlay with the ClusterTrustBundle and CRL components:
/// every permission castellan can ask for.
fn everything() -> Vec<Value> {
    deploy::yaml_documents(&compose(
        "everything",
        &["overlays/ambient"],
        &["components/cluster-trust-bundle", "components/crl"],
    ))
}

/// What turning the components on means in castellan.toml: the
/// ClusterTrustBundle, and the CRL with the mounted upstream CRLs.
fn with_cluster_trust_bundle(config: &mut toml::Table) {
    config["kubernetes"]["trust_bundle"]
        .as_table_mut()
        .unwrap()
        .insert("cluster_trust_bundle".into(), true.into());
    let crl: toml::Table = toml::from_str(
        "upstream_files = [\"/etc/castellan/crls/root-crl.pem\"]\nvalidity_secs = 86400\n",
    )
    .unwrap();
    config["trust"]
        .as_table_mut()
        .unwrap()
        .insert("crl".into(), crl.into());
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
    castellan_testkit::require!(castellan_testkit::tools::Tool::Kubectl);
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
    castellan_testkit::require!(castellan_testkit::tools::Tool::Kubectl);
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
