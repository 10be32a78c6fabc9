//! Mint mode against a real OpenBao: castellan generates its own
//! intermediate key, the enterprise issuing CA in OpenBao certifies it, and
//! castellan signs leaves with it and replaces it at half life — under
//! load, with OpenBao sealed across a rotation, and with OpenBao returning
//! an intermediate that chains elsewhere.

use std::{
    path::Path,
    process::Command,
    sync::Arc,
    time::{Duration, Instant},
};

use serde_json::json;
use tonic::Code;

use rustls_pki_types::pem::PemObject;

use crate::support::{
    Files, Setup, TestCa,
    bao::Bao,
    csr, eventually, hsm,
    pki::{Ca, KeyAlg},
    verify,
};

/// The `[signer]` section for mint mode with a token from `bao`.
async fn signer(bao: &Bao, dir: &Path, ttl_secs: u64) -> String {
    let token = bao.token_file(dir, "1h").await;
    format!(
        "[signer]\ntype = \"vault\"\naddress = \"{}\"\ntimeout_secs = 3\n[signer.auth]\nmethod = \"token\"\ntoken_file = \"{}\"\n[signer.mint]\nmount = \"pki_ent\"\nttl_secs = {ttl_secs}\n",
        bao.addr(),
        token.display()
    )
}

/// An OpenBao with the enterprise issuing CA under `root`, and a policy.
async fn vault(root: &Ca) -> Bao {
    let bao = Bao::start().await;
    bao.policy().await;
    bao.enterprise_issuer(root).await;
    bao
}

fn setup(root: Ca, roots_file: &Path, signer: String, issuance: &str) -> Setup {
    Setup {
        tls: None,
        ca: format!(
            "reload_interval_secs = 1\nroots_file = \"{}\"\n",
            roots_file.display()
        ),
        signer: Some(signer),
        root: Some(root),
        issuance: issuance.into(),
        ..Setup::default()
    }
}

/// castellan in mint mode under `root`, intermediates living `ttl_secs`.
async fn start(bao: &Bao, root: Ca, dir: &Path, ttl_secs: u64, issuance: &str) -> TestCa {
    let roots = dir.join("roots.pem");
    std::fs::write(&roots, &root.pem).unwrap();
    let signer = signer(bao, dir, ttl_secs).await;
    let mut setup = setup(root, &roots, signer, issuance);
    // Intermediates of seconds leave no room for castellan's own serving
    // certificate (600 s at least): the listener's comes from files then.
    if ttl_secs < 1200 {
        setup.tls = Some(TestCa::serving_files(
            setup.root.as_ref().unwrap(),
            &dir.join("tls"),
        ));
    }
    TestCa::start_with(setup).await
}

/// One certificate for `default/app`: the chain, or the status.
async fn issue(ca: &TestCa, ttl: i64) -> Result<Vec<String>, tonic::Status> {
    let (_, csr) = csr::ztunnel(&crate::support::id("default", "app"));
    ca.send(&csr, "default", "app", ttl)
        .await
        .map(|r| r.cert_chain)
}

fn openssl_text(pem: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.pem");
    std::fs::write(&path, pem).unwrap();
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_intermediate_minted_at_start_signs_leaves_that_verify_to_the_root() {
    let root = Ca::root("Enterprise Root", KeyAlg::EcP256);
    castellan_testkit::require!(castellan_testkit::tools::Tool::OpenBao);
    let bao = vault(&root).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = start(
        &bao,
        root,
        dir.path(),
        7200,
        "max_ttl_secs = 3600\ndefault_ttl_secs = 3600\n",
    )
    .await;

    let chain = issue(&ca, 3600).await.unwrap();
    assert_eq!(
        chain.len(),
        4,
        "leaf, castellan's intermediate, the enterprise CA, the root"
    );
    verify::assert_good(&chain, &ca.root.der, "a leaf of the minted intermediate");
    let minted = openssl_text(&chain[1]);
    for needle in [
        "CA:TRUE, pathlen:0",
        "Certificate Sign, CRL Sign",
        "URI:spiffe://cluster.local",
        "Subject: CN = castellan cluster.local",
        "Issuer: CN = Enterprise Issuing CA",
    ] {
        assert!(minted.contains(needle), "{needle} not in\n{minted}");
    }
    assert!(openssl_text(&chain[2]).contains("Subject: CN = Enterprise Issuing CA"));

    // Rotation is planned at half life, and published.
    let next = ca.metric("castellan_ca_next_rotation_timestamp").await;
    let expiry = ca
        .metric("citadel_server_cert_chain_expiry_timestamp")
        .await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        (next - (now + 3600.0)).abs() < 120.0 && (expiry - (now + 7200.0)).abs() < 120.0,
        "next rotation {next}, expiry {expiry}, now {now}"
    );
    assert_eq!(
        ca.metric_with("castellan_ca_rotations_count", &[("result", "rotated")])
            .await,
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_the_minted_intermediate_and_the_next_rotation() {
    let root = Ca::root("Enterprise Root", KeyAlg::EcP256);
    castellan_testkit::require!(castellan_testkit::tools::Tool::OpenBao);
    let bao = vault(&root).await;
    let dir = tempfile::tempdir().unwrap();
    let roots = dir.path().join("roots.pem");
    std::fs::write(&roots, &root.pem).unwrap();
    let signer = signer(&bao, dir.path(), 7200).await;
    let files = Files::write(setup(
        root,
        &roots,
        signer,
        "max_ttl_secs = 3600\ndefault_ttl_secs = 3600\n",
    ));
    let out = crate::one_truth::run(&["check"], &files.config);
    let text = crate::one_truth::text(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    for needle in [
        "CA    CN=castellan cluster.local",
        "(in 2.0 h)",
        "rotates by itself: the next intermediate is minted at",
        "PASS  rooted in the configured enterprise root(s)",
    ] {
        assert!(text.contains(needle), "{needle} not in\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_under_load_fails_no_request_and_every_leaf_verifies() {
    let root = Ca::root("Enterprise Root", KeyAlg::EcP256);
    castellan_testkit::require!(castellan_testkit::tools::Tool::OpenBao);
    let bao = vault(&root).await;
    let dir = tempfile::tempdir().unwrap();
    // Intermediates of 20 s, leaves of up to 10 s: a rotation every ~10 s.
    let ca = Arc::new(
        start(
            &bao,
            root,
            dir.path(),
            20,
            "max_ttl_secs = 10\ndefault_ttl_secs = 10\nmin_ttl_secs = 1\n",
        )
        .await,
    );
    let until = Instant::now() + Duration::from_secs(34);
    let mut workers = Vec::new();
    for _ in 0..4 {
        let ca = Arc::clone(&ca);
        workers.push(tokio::spawn(async move {
            // Each leaf is verified on arrival: they live seconds.
            let mut intermediates = Vec::new();
            let mut n = 0;
            while Instant::now() < until {
                let chain = match issue(&ca, 10).await {
                    Ok(chain) => chain,
                    Err(status) => panic!("a request failed during rotation: {status:?}"),
                };
                if let Err(e) = verify::webpki(&chain, &ca.root.der) {
                    panic!("a leaf does not verify under the chain it came with: {e}");
                }
                if intermediates.last() != Some(&chain[1]) {
                    verify::assert_good(&chain, &ca.root.der, "a leaf of a new intermediate");
                    intermediates.push(chain[1].clone());
                }
                n += 1;
            }
            (n, intermediates)
        }));
    }
    let (mut total, mut intermediates, mut last) = (0, Vec::new(), Vec::new());
    for w in workers {
        let (n, seen) = w.await.unwrap();
        total += n;
        last.push(seen.last().cloned().unwrap());
        for i in seen {
            if !intermediates.contains(&i) {
                intermediates.push(i);
            }
        }
    }
    assert!(total > 100, "only {total} certificates");
    assert!(
        intermediates.len() >= 3,
        "{} intermediates in 34 s of 20 s intermediates",
        intermediates.len()
    );
    // Every worker ended on the same, newest intermediate.
    assert!(
        last.iter().all(|l| l == &last[0]),
        "workers ended on different intermediates"
    );
    assert_eq!(&last[0], intermediates.last().unwrap(), "not the newest");
    ca.assert_rotated_cleanly(2.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_across_a_rotation_it_keeps_serving_never_past_expiry_and_recovers() {
    let root = Ca::root("Enterprise Root", KeyAlg::EcP256);
    castellan_testkit::require!(castellan_testkit::tools::Tool::OpenBao);
    let bao = vault(&root).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = start(
        &bao,
        root,
        dir.path(),
        20,
        "max_ttl_secs = 8\ndefault_ttl_secs = 8\nmin_ttl_secs = 4\n",
    )
    .await;
    let first = issue(&ca, 8).await.unwrap();
    bao.seal().await;

    // Past the due time: the first intermediate still serves.
    assert!(
        eventually(Duration::from_secs(20), async || {
            ca.metric_with("castellan_ca_rotations_count", &[("result", "unavailable")])
                .await
                >= 2.0
        })
        .await,
        "no failed rotation attempt counted while sealed"
    );
    let during = issue(&ca, 8).await.unwrap();
    assert_eq!(during[1], first[1], "still the first intermediate");
    verify::assert_good(&during, &ca.root.der, "a leaf while Vault is sealed");

    // Near its end (less than min_ttl_secs left) castellan stops issuing
    // with it and says so, rather than hand out what would expire.
    assert!(
        eventually(Duration::from_secs(20), async || ca.readyz().await == 503).await,
        "readiness did not fail near the intermediate's end"
    );
    let status = issue(&ca, 8).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");

    bao.unseal().await;
    assert!(
        eventually(Duration::from_secs(20), async || {
            matches!(issue(&ca, 8).await, Ok(c) if c[1] != first[1])
        })
        .await,
        "no new intermediate after unseal"
    );
    let after = issue(&ca, 8).await.unwrap();
    verify::assert_good(&after, &ca.root.der, "a leaf after recovery");
    assert_eq!(ca.readyz().await, 200);
    assert!(
        ca.metric_with("castellan_ca_rotations_count", &[("result", "rotated")])
            .await
            >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_intermediate_that_chains_elsewhere_is_refused_and_retried() {
    let root = Ca::root("Enterprise Root", KeyAlg::EcP256);
    castellan_testkit::require!(castellan_testkit::tools::Tool::OpenBao);
    let bao = vault(&root).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = start(
        &bao,
        root,
        dir.path(),
        20,
        "max_ttl_secs = 8\ndefault_ttl_secs = 8\nmin_ttl_secs = 1\n",
    )
    .await;
    let first = issue(&ca, 8).await.unwrap();

    // Someone makes another root the mount's default issuer: what Vault
    // signs next chains to it, not to the enterprise root.
    let issuers = bao
        .api(reqwest::Method::GET, "pki_ent/config/issuers", None)
        .await;
    let enterprise = issuers["data"]["default"].as_str().unwrap().to_owned();
    bao.post(
        "pki_ent/root/generate/internal",
        json!({"common_name": "Rogue Root", "issuer_name": "rogue", "key_type": "ec", "key_bits": 256, "ttl": "8760h"}),
    )
    .await;
    bao.post("pki_ent/config/issuers", json!({"default": "rogue"}))
        .await;

    assert!(
        eventually(Duration::from_secs(20), async || {
            ca.metric_with("castellan_ca_rotations_count", &[("result", "refused")])
                .await
                >= 1.0
        })
        .await,
        "the foreign intermediate was not refused"
    );
    assert!(ca.metric("castellan_signer_reload_refused_count").await >= 1.0);
    let during = issue(&ca, 8).await.unwrap();
    assert_eq!(during[1], first[1], "the refused intermediate never served");

    bao.post("pki_ent/config/issuers", json!({"default": enterprise}))
        .await;
    assert!(
        eventually(Duration::from_secs(15), async || {
            matches!(issue(&ca, 8).await, Ok(c) if c[1] != first[1])
        })
        .await,
        "no new intermediate once the enterprise issuer is back"
    );
    let after = issue(&ca, 8).await.unwrap();
    verify::assert_good(&after, &ca.root.der, "a leaf after the retry");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_and_serve_refuse_a_minted_intermediate_outside_the_roots() {
    let root = Ca::root("Enterprise Root", KeyAlg::EcP256);
    castellan_testkit::require!(castellan_testkit::tools::Tool::OpenBao);
    let bao = vault(&root).await;
    let dir = tempfile::tempdir().unwrap();
    let other = dir.path().join("other-root.pem");
    std::fs::write(&other, Ca::root("Another Root", KeyAlg::EcP256).pem).unwrap();
    let signer = signer(&bao, dir.path(), 7200).await;
    let files = Files::write(setup(
        root,
        &other,
        signer,
        "max_ttl_secs = 3600\ndefault_ttl_secs = 3600\n",
    ));
    let (check, _) =
        crate::one_truth::both(&files, 1, "rooted in the configured enterprise root(s)");
    assert!(
        check.contains("FAIL  rooted in the configured enterprise root(s)"),
        "{check}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_intermediate_vault_cut_short_is_refused() {
    let root = Ca::root("Enterprise Root", KeyAlg::EcP256);
    castellan_testkit::require!(castellan_testkit::tools::Tool::OpenBao);
    let bao = vault(&root).await;
    // The mount cannot certify for as long as castellan asks: by half, and
    // by a tenth — either way a leaf of the full hour issued just before
    // the rotation (at half the intermediate's life) would be cut short.
    for max in ["1h", "6480s"] {
        bao.post("sys/mounts/pki_ent/tune", json!({"max_lease_ttl": max}))
            .await;
        let dir = tempfile::tempdir().unwrap();
        let roots = dir.path().join("roots.pem");
        std::fs::write(&roots, &root.pem).unwrap();
        let signer = signer(&bao, dir.path(), 7200).await;
        let files = Files::write(setup(
            root.duplicate(),
            &roots,
            signer,
            "max_ttl_secs = 3600\ndefault_ttl_secs = 3600\n",
        ));
        let out = crate::one_truth::run(&["serve"], &files.config);
        let text = crate::one_truth::text(&out);
        assert_ne!(out.status.code(), Some(0), "{max}: {text}");
        assert!(
            text.contains("refusing the intermediate Vault signed")
                && text.contains("Vault cut it")
                && text.contains("7200 s"),
            "{max}: {text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_replica_mints_its_own_intermediate_under_the_same_root() {
    let root = Ca::root("Enterprise Root", KeyAlg::EcP256);
    castellan_testkit::require!(castellan_testkit::tools::Tool::OpenBao);
    let bao = vault(&root).await;
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let issuance = "max_ttl_secs = 3600\ndefault_ttl_secs = 3600\n";
    let again = root.duplicate();
    let one = start(&bao, root, d1.path(), 7200, issuance).await;
    let two = start(&bao, again, d2.path(), 7200, issuance).await;
    let (a, b) = (
        issue(&one, 3600).await.unwrap(),
        issue(&two, 3600).await.unwrap(),
    );
    assert_ne!(a[1], b[1], "the replicas share an intermediate");
    assert_eq!(a[2..], b[2..], "the enterprise CA and the root differ");
    verify::assert_good(&a, &one.root.der, "replica one");
    verify::assert_good(&b, &one.root.der, "replica two, under the same root");
}

/// castellan's minted keys on the token `token`: label, sensitive and for
/// signing only (no decrypt, unwrap or derive), extractable, and the public
/// point of the key's public half.
fn minted_keys(token: &str) -> Vec<(String, bool, bool, Vec<u8>)> {
    use cryptoki::{
        object::{Attribute, AttributeType, ObjectClass},
        session::UserType,
        types::AuthPin,
    };
    use der::Decode;
    let (ctx, slot) = hsm::slot(token);
    let session = ctx.open_ro_session(slot).unwrap();
    let _ = session.login(UserType::User, Some(&AuthPin::new(hsm::PIN.into())));
    let mut keys = Vec::new();
    for key in session
        .find_objects(&[Attribute::Class(ObjectClass::PRIVATE_KEY)])
        .unwrap()
    {
        let attrs = session
            .get_attributes(
                key,
                &[
                    AttributeType::Label,
                    AttributeType::Sensitive,
                    AttributeType::Extractable,
                    AttributeType::Decrypt,
                    AttributeType::Unwrap,
                    AttributeType::Derive,
                ],
            )
            .unwrap();
        let (mut label, mut sensitive, mut extractable) = (String::new(), false, true);
        let mut other_use = false;
        for a in attrs {
            match a {
                Attribute::Label(l) => label = String::from_utf8(l).unwrap(),
                Attribute::Sensitive(s) => sensitive = s,
                Attribute::Extractable(e) => extractable = e,
                Attribute::Decrypt(u) | Attribute::Unwrap(u) | Attribute::Derive(u) => {
                    other_use |= u;
                }
                _ => {}
            }
        }
        let sensitive = sensitive && !other_use;
        if !label.starts_with("castellan-mint-") {
            continue;
        }
        let public = session
            .find_objects(&[
                Attribute::Class(ObjectClass::PUBLIC_KEY),
                Attribute::Label(label.clone().into_bytes()),
            ])
            .unwrap();
        let point = match session
            .get_attributes(public[0], &[AttributeType::EcPoint])
            .unwrap()
            .pop()
        {
            Some(Attribute::EcPoint(p)) => der::asn1::OctetString::from_der(&p)
                .map(|o| o.as_bytes().to_vec())
                .unwrap_or(p),
            other => panic!("no EC point: {other:?}"),
        };
        keys.push((label, sensitive, extractable, point));
    }
    keys
}

/// The public point an intermediate (PEM) certifies.
fn certified_point(pem: &str) -> Vec<u8> {
    use der::Decode;
    let der = rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
    let cert = x509_cert::Certificate::from_der(&der).unwrap();
    cert.tbs_certificate()
        .subject_public_key_info()
        .subject_public_key
        .raw_bytes()
        .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_minted_in_the_hsm_sign_rotate_and_are_destroyed() {
    castellan_testkit::require!(castellan_testkit::tools::Tool::SoftHsm);
    let _hsm = hsm::exclusive().await;
    // Token labels are what castellan finds a token by: one of its own.
    let token = &format!(
        "mint-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_micros()
    );
    hsm::empty_token(token);
    // A key a replica that died left behind, long ago by its label, and
    // one a live replica minted a minute ago (younger than ttl + 1 h: it
    // may still sign, and must be left alone).
    let unix_now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let alive = format!("castellan-mint-{}-alive", unix_now - 60);
    for (label, id) in [("castellan-mint-1000-dead", "99"), (alive.as_str(), "98")] {
        let out = Command::new("pkcs11-tool")
            .arg("--module")
            .arg(hsm::module())
            .args(["--token-label", token, "--login", "--pin", hsm::PIN])
            .args(["--keypairgen", "--key-type", "EC:prime256v1", "--id", id])
            .args(["--label", label, "--usage-sign"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(minted_keys(token).len(), 2);
    let ours = |token: &str| {
        let (alive_keys, ours): (Vec<_>, Vec<_>) =
            minted_keys(token).into_iter().partition(|k| k.0 == alive);
        assert_eq!(alive_keys.len(), 1, "the live replica's key is kept");
        ours
    };

    let root = Ca::root("Enterprise Root", KeyAlg::EcP256);
    castellan_testkit::require!(castellan_testkit::tools::Tool::OpenBao);
    let bao = vault(&root).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pin"), hsm::PIN).unwrap();
    let roots = dir.path().join("roots.pem");
    std::fs::write(&roots, &root.pem).unwrap();
    let signer = format!(
        "{}[signer.mint.pkcs11]\nmodule = \"{}\"\ntoken_label = \"{token}\"\npin_file = \"{}\"\npool_size = 2\n",
        signer(&bao, dir.path(), 20).await,
        hsm::module().display(),
        dir.path().join("pin").display()
    );
    let mut setup = setup(
        root,
        &roots,
        signer,
        "max_ttl_secs = 8\ndefault_ttl_secs = 8\nmin_ttl_secs = 1\n",
    );
    setup.tls = Some(TestCa::serving_files(
        setup.root.as_ref().unwrap(),
        &dir.path().join("tls"),
    ));
    let ca = TestCa::start_with(setup).await;

    let first = issue(&ca, 8).await.unwrap();
    verify::assert_good(&first, &ca.root.der, "a leaf of an HSM-held minted key");
    // The dead replica's key is gone; the one left beside the live
    // replica's is the intermediate's, and it cannot leave the token.
    let keys = ours(token);
    assert_eq!(keys.len(), 1, "{keys:?}");
    let (label, sensitive, extractable, point) = &keys[0];
    assert!(
        label != "castellan-mint-1000-dead" && *sensitive && !*extractable,
        "{label}"
    );
    assert_eq!(*point, certified_point(&first[1]));

    // After a rotation the new intermediate's key is on the token and the
    // old one is destroyed once nothing signs with it.
    assert!(
        eventually(Duration::from_secs(25), async || {
            matches!(issue(&ca, 8).await, Ok(c) if c[1] != first[1])
        })
        .await,
        "no rotation"
    );
    let now = issue(&ca, 8).await.unwrap();
    verify::assert_good(&now, &ca.root.der, "a leaf after rotation");
    assert!(
        eventually(Duration::from_secs(10), async || {
            let keys = ours(token);
            keys.len() == 1 && keys[0].3 == certified_point(&now[1])
        })
        .await,
        "the token holds {:?}",
        minted_keys(token).iter().map(|k| &k.0).collect::<Vec<_>>()
    );
    ca.close().await;
}
