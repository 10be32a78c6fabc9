//! Root rotation guarded by the trust record: a switch to a root workloads
//! have not had a soak to learn is refused (at start, by `check`, and at a
//! reload until the soak has passed); a root is not dropped while leaves
//! under it live; the record is a 0600 file or a ConfigMap every replica
//! merges into.

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use castellan::{cli::token::TokenIssuer, config::Config, server, trust};
use rustls_pki_types::CertificateDer;
use serde_json::{Value, json};

use crate::support::{
    Files, Setup, TestCa, csr, eventually,
    kube::{FakeKube, Kind},
    pki::{self, Ca, KeyAlg},
};

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn fp(ca: &Ca) -> String {
    trust::fingerprint(&CertificateDer::from(ca.der.clone()))
}

/// `[ca]` with `roots` as the root bundle, and `[trust]` keeping its record
/// in `state`.
fn setup(root: Ca, aux: &Path, roots: &[&Ca], trust_extra: &str) -> Setup {
    let bundle: String = roots.iter().map(|r| r.pem.as_str()).collect();
    std::fs::write(aux.join("roots.pem"), bundle).unwrap();
    Setup {
        root: Some(root),
        ca: format!(
            "roots_file = \"{}\"\nreload_interval_secs = 1\n",
            aux.join("roots.pem").display()
        ),
        extra: format!(
            "[trust]\nstate_file = \"{}\"\n{trust_extra}",
            aux.join("state.json").display()
        ),
        ..Setup::default()
    }
}

fn state(aux: &Path) -> Value {
    std::fs::read(aux.join("state.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null)
}

fn write_state(path: &Path, roots: &[(&Ca, &str, Option<u64>, Option<u64>)]) {
    let mut map = serde_json::Map::new();
    for (ca, subject, served, issued) in roots {
        map.insert(
            fp(ca),
            json!({"subject": subject, "first_served": served, "last_issued": issued}),
        );
    }
    std::fs::write(path, serde_json::to_vec(&json!({ "roots": map })).unwrap()).unwrap();
}

fn check(config: &Path) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_castellan"))
        .args(["check", "--config"])
        .arg(config)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// Asks for a certificate, trusting `roots` for castellan's own serving
/// certificate (it follows the signing CA to the new root).
async fn send(ca: &TestCa, roots: &str) -> Vec<String> {
    send_at(&ca.running, &ca.tokens, roots).await
}

async fn send_at(running: &server::Running, tokens: &TokenIssuer, roots: &str) -> Vec<String> {
    let (_, csr) = csr::ztunnel(&crate::support::id("apps", "web"));
    let addr = format!("https://localhost:{}", running.addr.port());
    let mut client = castellan::cli::request::connect(&addr, None, roots.as_bytes())
        .await
        .unwrap();
    let token = tokens.mint("apps", "web", "istio-ca", 3600).unwrap();
    let req = castellan::cli::request::request_for(&csr, 3600, &token, "Kubernetes").unwrap();
    client
        .create_certificate(req)
        .await
        .unwrap()
        .into_inner()
        .cert_chain
}

async fn leaf_issuer(ca: &TestCa, roots: &str) -> String {
    crate::support::issuer_of(&send(ca, roots).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switch_waits_for_the_new_root_to_soak_then_happens_by_itself() {
    let aux = tempfile::tempdir().unwrap();
    let r1 = Ca::root("Root One", KeyAlg::EcP256);
    let r1_copy = crate::mesh::clone_ca(&r1);
    let r2 = Ca::root("Root Two", KeyAlg::EcP256);
    let roots_pem = format!("{}{}", r1.pem, r2.pem);
    let started = Instant::now();
    // A soak of one renewal cycle: half of the 8 s maximum lifetime.
    let mut short = setup(r1, aux.path(), &[&r1_copy, &r2], "soak_secs = 4\n");
    short.issuance = "default_ttl_secs = 8\nmin_ttl_secs = 1\nmax_ttl_secs = 8\n".into();
    let ca = TestCa::start_with(short).await;
    assert!(
        eventually(Duration::from_secs(5), async || {
            let s = state(aux.path());
            s["roots"][fp(&r1_copy)]["last_issued"].is_u64()
                && s["roots"][fp(&r2)]["first_served"].is_u64()
        })
        .await,
        "the record names both roots: {}",
        state(aux.path())
    );
    assert_eq!(
        std::fs::metadata(aux.path().join("state.json"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    assert!(state(aux.path())["roots"][fp(&r2)]["last_issued"].is_null());

    // The operator swaps in an intermediate under the new root at once.
    let i2 = r2.intermediate("Intermediate Two", KeyAlg::EcP256, |_| {});
    pki::write_cacerts(&ca.ca_dir(), &i2, &[&i2, &r2], &roots_pem);
    assert!(
        eventually(Duration::from_secs(5), async || {
            ca.metric("castellan_signer_reload_refused_count").await >= 1.0
        })
        .await,
        "the premature switch is refused"
    );
    if started.elapsed() < Duration::from_secs(3) {
        assert!(
            leaf_issuer(&ca, &roots_pem)
                .await
                .contains("Test Intermediate"),
            "the old intermediate keeps signing while the new root soaks"
        );
    }

    // Once the new root has been served for the soak, castellan switches
    // without anyone touching it, and reported the refusal once.
    assert!(
        eventually(Duration::from_secs(15), async || {
            leaf_issuer(&ca, &roots_pem)
                .await
                .contains("Intermediate Two")
        })
        .await,
        "switched after the soak"
    );
    assert!(started.elapsed() >= Duration::from_secs(4));
    assert_eq!(
        ca.metric("castellan_signer_reload_refused_count").await,
        1.0
    );
    assert!(
        eventually(Duration::from_secs(5), async || {
            state(aux.path())["roots"][fp(&r2)]["last_issued"].is_u64()
        })
        .await,
        "the record says castellan now signs under the new root"
    );
    // Every response still verifies under its own chain and carries both roots.
    let chain = send(&ca, &roots_pem).await;
    let last = chain.last().unwrap();
    assert!(last.contains(r2.pem.trim()) && last.contains(r1_copy.pem.trim()));
}

/// A castellan's files, the signing intermediate under `signing_root`, and
/// its record (as written before, or created as `castellan trust init` does).
async fn files(signing_root: Ca, aux: &Path, roots: &[&Ca], trust_extra: &str) -> (Files, PathBuf) {
    let files = Files::write(setup(signing_root, aux, roots, trust_extra));
    let config = files.config.clone();
    crate::support::init_trust(&Config::load(&config).unwrap()).await;
    (files, config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_and_check_refuse_an_unsoaked_root_alike_unless_forced() {
    let aux = tempfile::tempdir().unwrap();
    let r1 = Ca::root("Root One", KeyAlg::EcP256);
    let r2 = Ca::root("Root Two", KeyAlg::EcP256);
    let t = now();
    // Root One signed until a minute ago; Root Two was first served ten
    // seconds ago, far less than a day's soak.
    write_state(
        &aux.path().join("state.json"),
        &[
            (&r1, "CN=Root One", Some(t - 86_400 * 3), Some(t - 60)),
            (&r2, "CN=Root Two", Some(t - 10), None),
        ],
    );
    let r2_copy = crate::mesh::clone_ca(&r2);
    let (_files, config) = files(r2, aux.path(), &[&r1, &r2_copy], "").await;

    let (code, out) = check(&config);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("FAIL  {}", trust::ROTATION_PRACTICE)),
        "{out}"
    );
    assert!(out.contains("without a break only since"), "{out}");
    assert!(out.contains("incoming") || out.contains("active"), "{out}");
    assert!(out.contains("outgoing  `CN=Root One`"), "{out}");
    let before = std::fs::read(aux.path().join("state.json")).unwrap();

    let refused = server::start(&Config::load(&config).unwrap()).await;
    let e = refused
        .expect_err("serve refuses what check fails")
        .to_string();
    assert!(e.contains(trust::ROTATION_PRACTICE), "{e}");
    assert_eq!(
        std::fs::read(aux.path().join("state.json")).unwrap(),
        before,
        "neither check nor a refused start writes the record"
    );

    // Forced: reported as waived, and served.
    let text = std::fs::read_to_string(&config).unwrap() + "force = true\n";
    std::fs::write(&config, text).unwrap();
    let (code, out) = check(&config);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!("WAIVED  {}", trust::ROTATION_PRACTICE)),
        "{out}"
    );
    let running = server::start(&Config::load(&config).unwrap()).await;
    assert!(running.is_ok(), "{:?}", running.err());
    running.unwrap().kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_stays_until_its_last_leaf_has_expired() {
    let aux = tempfile::tempdir().unwrap();
    let r1 = Ca::root("Root One", KeyAlg::EcP256);
    let r2 = Ca::root("Root Two", KeyAlg::EcP256);
    let t = now();
    let state_path = aux.path().join("state.json");
    // Switched to Root Two two days ago; Root One was signed under until a
    // minute ago (a replica that lagged), so its leaves live for a day more.
    write_state(
        &state_path,
        &[
            (&r1, "CN=Root One", Some(t - 86_400 * 5), Some(t - 60)),
            (&r2, "CN=Root Two", Some(t - 86_400 * 4), Some(t - 30)),
        ],
    );
    let r2_copy = crate::mesh::clone_ca(&r2);
    // The bundle: Root Two only.
    let (_files, config) = files(r2, aux.path(), &[&r2_copy], "").await;

    let (code, out) = check(&config);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("FAIL  {}", trust::RETIREMENT_PRACTICE)),
        "{out}"
    );
    assert!(out.contains("`CN=Root One`"), "{out}");
    assert!(out.contains("removed   `CN=Root One`"), "{out}");
    let e = server::start(&Config::load(&config).unwrap())
        .await
        .expect_err("serve refuses to drop a root still needed")
        .to_string();
    assert!(e.contains(trust::RETIREMENT_PRACTICE), "{e}");

    // A day and more later, nothing under Root One is alive: it may go.
    write_state(
        &state_path,
        &[
            (
                &r1,
                "CN=Root One",
                Some(t - 86_400 * 5),
                Some(t - 86_400 - 1_200),
            ),
            (&r2_copy, "CN=Root Two", Some(t - 86_400 * 4), Some(t - 30)),
        ],
    );
    let (code, out) = check(&config);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("removed   `CN=Root One`") && out.contains("retired"),
        "{out}"
    );
    assert!(out.contains("active    `CN=Root Two`"), "{out}");
    server::start(&Config::load(&config).unwrap())
        .await
        .unwrap()
        .kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_the_record_in_a_configmap() {
    let kube = FakeKube::start().await;
    kube.create_namespace("istio-system", &[]);
    let r1 = Ca::root("Root One", KeyAlg::EcP256);
    let r2 = Ca::root("Root Two", KeyAlg::EcP256);
    let bundle = format!("{}{}", r1.pem, r2.pem);
    let start = |identity: &'static str, root: &Ca| {
        let aux = tempfile::tempdir().unwrap();
        let kubeconfig = kube.kubeconfig(aux.path(), identity);
        std::fs::write(aux.path().join("roots.pem"), &bundle).unwrap();
        let setup = Setup {
            root: Some(crate::mesh::clone_ca(root)),
            ca: format!(
                "roots_file = \"{}\"\nreload_interval_secs = 1\n",
                aux.path().join("roots.pem").display()
            ),
            extra: format!(
                "[kubernetes]\nkubeconfig = \"{}\"\nnamespace = \"istio-system\"\n\
                 [trust]\nstate_configmap = \"castellan-trust\"\n",
                kubeconfig.display()
            ),
            ..Setup::default()
        };
        std::mem::forget(aux);
        setup
    };
    let one = TestCa::start_with(start("one", &r1)).await;
    let record = || {
        kube.object(Kind::ConfigMap, "istio-system", "castellan-trust")
            .and_then(|cm| cm["data"]["state.json"].as_str().map(str::to_owned))
            .and_then(|s| serde_json::from_str::<Value>(&s).ok())
            .unwrap_or(Value::Null)
    };
    assert!(
        eventually(Duration::from_secs(5), async || {
            record()["roots"][fp(&r1)]["last_issued"].is_u64()
        })
        .await,
        "the first replica records in the ConfigMap: {}",
        record()
    );
    let served = record()["roots"][fp(&r2)]["first_served"].as_u64().unwrap();

    // A second replica started with an intermediate under Root Two reads
    // the shared record: Root Two has not soaked, so it refuses to start.
    let files = Files::write(start("two", &r2));
    let e = server::start(&Config::load(&files.config).unwrap())
        .await
        .expect_err("the shared record refuses the premature switch")
        .to_string();
    assert!(e.contains(trust::ROTATION_PRACTICE), "{e}");

    // A second replica like the first merges into the record, never
    // moving a root's first serving later.
    let two = TestCa::start_with(start("two-ok", &r1)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        record()["roots"][fp(&r2)]["first_served"].as_u64(),
        Some(served)
    );
    assert!(kube.calls_of("update", "configmaps") + kube.calls_of("create", "configmaps") <= 4);
    drop((one, two));
}

/// `openssl verify` of `chain`'s leaf, its intermediates untrusted, against
/// the PEM bundle `trusted` (what the other side of a connection holds).
fn verifies(chain: &[String], trusted: &str) -> bool {
    let dir = tempfile::tempdir().unwrap();
    let (leaf, ints) = chain.split_first().unwrap();
    std::fs::write(dir.path().join("leaf.pem"), leaf).unwrap();
    std::fs::write(dir.path().join("ints.pem"), ints.concat()).unwrap();
    std::fs::write(dir.path().join("trusted.pem"), trusted).unwrap();
    let mut cmd = Command::new("openssl");
    cmd.arg("verify").arg("-x509_strict");
    cmd.arg("-CAfile").arg(dir.path().join("trusted.pem"));
    if !ints.is_empty() {
        cmd.arg("-untrusted").arg(dir.path().join("ints.pem"));
    }
    let out = cmd.arg(dir.path().join("leaf.pem")).output().unwrap();
    out.status.success()
}

/// A leaf the way istiod's self-signed CA makes them: signed by the root.
fn istiod_leaf(root: &Ca) -> Vec<String> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.subject_alt_names = vec![rcgen::SanType::URI(
        rcgen::string::Ia5String::try_from(crate::support::id("legacy", "app")).unwrap(),
    )];
    params.is_ca = rcgen::IsCa::ExplicitNoCa;
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    let leaf = root.sign(params, pki::key(KeyAlg::EcP256));
    vec![leaf.pem]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mesh_moves_off_istiods_ca_with_both_sides_trusting_each_other_at_every_step() {
    let aux = tempfile::tempdir().unwrap();
    let old = Ca::root("istiod self-signed", KeyAlg::EcP256);
    let ent = Ca::root("Enterprise Root", KeyAlg::EcP256);
    let ent_copy = crate::mesh::clone_ca(&ent);
    let old_leaf = istiod_leaf(&old);
    std::fs::write(aux.path().join("istiod-root.pem"), &old.pem).unwrap();
    let external = |signs_until: Option<String>| {
        format!(
            "[[trust.external]]\nroots_file = \"{}\"\nmax_leaf_ttl_secs = 86400\n{}",
            aux.path().join("istiod-root.pem").display(),
            signs_until.map_or_else(String::new, |t| format!("signs_until = {t}\n"))
        )
    };
    // Step 1: istiod's bundle holds both roots (its cacerts root-cert.pem).
    let istiod_bundle = format!("{}{}", old.pem, ent.pem);
    assert!(verifies(&old_leaf, &istiod_bundle), "istiod's own leaves");

    // Step 2: castellan beside istiod, the old root in its bundle as
    // another CA's, which still signs.
    let (files, config) = files(ent, aux.path(), &[&ent_copy, &old], &external(None)).await;
    let (code, out) = check(&config);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("joining a mesh signed under `CN=istiod self-signed`"),
        "{out}"
    );
    assert!(out.contains("external  `CN=istiod self-signed`"), "{out}");
    let running = server::start(&Config::load(&config).unwrap())
        .await
        .unwrap();
    let new_chain = send_at(&running, &files.tokens, &ent_copy.pem).await;
    let castellan_bundle = new_chain.last().unwrap().clone();
    let new_leaf = new_chain[..new_chain.len() - 1].to_vec();
    // Steps 2–4: each side's leaf verifies against what the other holds.
    assert!(
        verifies(&new_leaf, &istiod_bundle),
        "castellan's leaf, to an old pod"
    );
    assert!(
        verifies(&old_leaf, &castellan_bundle),
        "an old pod's leaf, to a new pod"
    );
    assert!(verifies(&new_leaf, &castellan_bundle));
    running.kill();

    // Step 5, too early: the old root cannot leave while istiod signs, nor
    // within a leaf lifetime after it stopped.
    std::fs::write(aux.path().join("roots.pem"), &ent_copy.pem).unwrap();
    let text = std::fs::read_to_string(&config).unwrap();
    let base = text.split("[[trust.external]]").next().unwrap().to_owned();
    for (signs_until, why) in [
        (None, "still signs under"),
        (
            Some(castellan::clock::date(
                SystemTime::now() - Duration::from_secs(3600),
            )),
            "until",
        ),
    ] {
        std::fs::write(&config, base.clone() + &external(signs_until)).unwrap();
        let (code, out) = check(&config);
        assert_eq!(code, 1, "{out}");
        assert!(
            out.contains(&format!("FAIL  {}", trust::RETIREMENT_PRACTICE)),
            "{out}"
        );
        assert!(out.contains(why), "{out}");
        assert!(
            server::start(&Config::load(&config).unwrap())
                .await
                .is_err()
        );
    }

    // Two days after istiod stopped: the old root goes; old leaves are no
    // longer trusted, castellan's still are.
    let stopped = castellan::clock::date(SystemTime::now() - Duration::from_secs(2 * 86_400));
    std::fs::write(&config, base + &external(Some(stopped))).unwrap();
    let (code, out) = check(&config);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("removed   `CN=istiod self-signed`") && out.contains("retired"),
        "{out}"
    );
    let running = server::start(&Config::load(&config).unwrap())
        .await
        .unwrap();
    let chain = send_at(&running, &files.tokens, &ent_copy.pem).await;
    let bundle = chain.last().unwrap();
    assert!(
        !bundle.contains(old.pem.trim()),
        "the old root is no longer handed out"
    );
    assert!(
        !verifies(&old_leaf, bundle),
        "an old leaf is no longer trusted"
    );
    assert!(verifies(&chain[..chain.len() - 1], bundle));
    running.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_root_rotation_with_short_lifetimes() {
    // Leaves live 5 s and the record lags by at most 2 × 1 s: a root may go
    // 7 s after castellan last signed under it. The listener serves from
    // files, so its certificate is not among what castellan issues.
    let aux = tempfile::tempdir().unwrap();
    let r1 = Ca::root("Root One", KeyAlg::EcP256);
    let r1_copy = crate::mesh::clone_ca(&r1);
    let r2 = Ca::root("Root Two", KeyAlg::EcP256);
    let roots_pem = format!("{}{}", r1.pem, r2.pem);
    let tls = TestCa::serving_files(&r1, &aux.path().join("tls"));
    let mut setup = setup(
        r1,
        aux.path(),
        &[&r1_copy, &r2],
        "soak_secs = 3\nrecord_interval_secs = 1\nmax_unrecorded_secs = 2\n",
    );
    setup.tls = Some(tls);
    setup.issuance = "default_ttl_secs = 5\nmin_ttl_secs = 1\nmax_ttl_secs = 5\n".into();
    let ca = TestCa::start_with(setup).await;
    assert!(
        leaf_issuer(&ca, &roots_pem)
            .await
            .contains("Test Intermediate")
    );

    // Prepare → activate: the new intermediate waits for its root's soak.
    let i2 = r2.intermediate("Intermediate Two", KeyAlg::EcP256, |_| {});
    pki::write_cacerts(&ca.ca_dir(), &i2, &[&i2, &r2], &roots_pem);
    let swapped = Instant::now();
    assert!(
        eventually(Duration::from_secs(5), async || {
            ca.metric("castellan_signer_reload_refused_count").await >= 1.0
        })
        .await
    );
    assert!(
        eventually(Duration::from_secs(15), async || {
            leaf_issuer(&ca, &roots_pem)
                .await
                .contains("Intermediate Two")
        })
        .await
    );
    let activated = Instant::now();
    assert!(
        activated - swapped >= Duration::from_secs(2),
        "held for the soak"
    );

    // Retire: restart with Root Two alone; refused until Root One's last
    // leaf has expired, then served.
    let TestCa { running, dir, .. } = ca;
    running.kill();
    std::fs::write(aux.path().join("roots.pem"), &r2.pem).unwrap();
    let config = dir.path().join("castellan.toml");
    let (code, out) = check(&config);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("FAIL  {}", trust::RETIREMENT_PRACTICE)),
        "{out}"
    );
    assert!(
        server::start(&Config::load(&config).unwrap())
            .await
            .is_err()
    );
    let mut passed = false;
    for _ in 0..30 {
        if check(&config).0 == 0 {
            passed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(passed, "{}", check(&config).1);
    assert!(
        activated.elapsed() >= Duration::from_secs(5),
        "not before Root One's last leaf expired"
    );
    let running = server::start(&Config::load(&config).unwrap())
        .await
        .unwrap();
    running.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_soak_shorter_than_a_renewal_cycle_is_refused_unless_waived() {
    let aux = tempfile::tempdir().unwrap();
    let r1 = Ca::root("Root One", KeyAlg::EcP256);
    let r1_copy = crate::mesh::clone_ca(&r1);
    let (_files, config) = files(r1, aux.path(), &[&r1_copy], "soak_secs = 0\n").await;
    let (code, out) = check(&config);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("FAIL  {}", trust::SOAK_PRACTICE)) && out.contains("43200"),
        "{out}"
    );
    assert!(
        server::start(&Config::load(&config).unwrap())
            .await
            .is_err()
    );

    let text = std::fs::read_to_string(&config).unwrap() + "force = true\n";
    std::fs::write(&config, text).unwrap();
    let (code, out) = check(&config);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!("WAIVED  {}", trust::SOAK_PRACTICE))
            && out.contains("WAIVED by trust.force"),
        "{out}"
    );
}
