//! castellan's own short-lived intermediates certified by an issuing CA
//! whose key is in an HSM (`[signer] type = "pkcs11"` with
//! `[signer.mint]`), against a real SoftHSM2 token: every leaf verifies up
//! to the enterprise root (openssl and webpki), the intermediate rotates at
//! half its life under load without one request failing, and a token that
//! signs with another key than the CA certificate's is refused.

use std::{collections::BTreeSet, time::Duration};

use crate::support::{
    Setup, TestCa, csr, eventually, hsm, id,
    pki::{Ca, KeyAlg},
    verify,
};

/// Leaves of seconds, so that intermediates of seconds may certify them.
const ISSUANCE: &str = "max_ttl_secs = 5\ndefault_ttl_secs = 5\nmin_ttl_secs = 1\n";

/// `[ca] roots_file`: the enterprise root every minted intermediate must
/// chain to (written beside the signer's files).
fn roots_file(dir: &std::path::Path) -> String {
    format!("roots_file = \"{}\"\n", dir.join("root.pem").display())
}

/// A castellan whose intermediates are certified by a fresh SoftHSM key
/// (the issuing CA, under `root`), minted to live `ttl_secs`.
async fn certified_by_hsm(ttl_secs: u64, root: &Ca) -> (TestCa, tempfile::TempDir) {
    let label = format!("issuing-{}-{ttl_secs}", std::process::id());
    hsm::token_with_key(&label, "EC:prime256v1");
    let files = tempfile::tempdir().unwrap();
    let signer = hsm::issuing_ca_files(
        files.path(),
        &label,
        root,
        &format!("[signer.mint]\nttl_secs = {ttl_secs}\n"),
    );
    let mut setup = Setup {
        signer: Some(signer),
        root: Some(root.duplicate()),
        issuance: ISSUANCE.into(),
        ca: roots_file(files.path()),
        ..Setup::default()
    };
    // Intermediates of seconds leave no room for castellan's own serving
    // certificate (600 s at least): the listener's comes from files then.
    if ttl_secs < 1200 {
        setup.tls = Some(TestCa::serving_files(root, &files.path().join("tls")));
    }
    (TestCa::start_with(setup).await, files)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_hsm_held_ca_key_certifies_castellans_own_intermediates() {
    castellan_testkit::require!(castellan_testkit::tools::Tool::SoftHsm);
    let _hsm = hsm::exclusive().await;
    let root = Ca::root("Enterprise Root", KeyAlg::EcP256);
    let (ca, _files) = certified_by_hsm(3600, &root).await;
    let (_, csr) = csr::istio_agent(&id("shop", "web"));
    let chain = ca.send(&csr, "shop", "web", 5).await.unwrap().cert_chain;
    verify::assert_good(&chain, &root.der, "leaf under the minted intermediate");
    let issuer = crate::support::issuer_of(&chain);
    assert!(issuer.contains("castellan cluster.local"), "{issuer}");
    // leaf, the minted intermediate, the HSM's issuing CA, the root.
    assert_eq!(chain.len(), 4, "{chain:?}");
    ca.close().await;
}

/// At half of each intermediate's life castellan mints the next one and the
/// token certifies it; requests keep flowing through every rotation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hsm_certified_intermediate_rotates_under_load_and_nothing_fails() {
    castellan_testkit::require!(castellan_testkit::tools::Tool::SoftHsm);
    let _hsm = hsm::exclusive().await;
    let root = Ca::root("Enterprise Root", KeyAlg::EcP256);
    let (ca, _files) = certified_by_hsm(10, &root).await;
    let (_, csr) = csr::istio_agent(&id("shop", "web"));
    let mut intermediates = BTreeSet::new();
    let mut issued = 0u32;
    let rotated = eventually(Duration::from_secs(40), async || {
        for _ in 0..20 {
            let chain = ca
                .send(&csr, "shop", "web", 5)
                .await
                .expect("no request fails across rotations")
                .cert_chain;
            if let Err(e) = verify::webpki(&chain, &root.der) {
                panic!("a leaf that does not verify: {e}");
            }
            issued += 1;
            intermediates.insert(chain[1].clone());
        }
        intermediates.len() >= 3
    })
    .await;
    assert!(
        rotated,
        "{} intermediates over {issued} certificates",
        intermediates.len()
    );
    let (_, csr) = csr::istio_agent(&id("shop", "web"));
    let chain = ca.send(&csr, "shop", "web", 5).await.unwrap().cert_chain;
    verify::assert_good(&chain, &root.der, "after the rotations");
    ca.assert_rotated_cleanly(2.0).await;
    ca.close().await;
}

/// The token signs what castellan asks with whatever key it finds under
/// the label: a CA certificate for another key means its signatures do not
/// verify under it, and castellan refuses to start, saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_key_the_ca_certificate_is_not_for_is_refused() {
    castellan_testkit::require!(castellan_testkit::tools::Tool::SoftHsm);
    let _hsm = hsm::exclusive().await;
    let root = Ca::root("Enterprise Root", KeyAlg::EcP256);
    let (label, other) = (
        format!("issuing-mine-{}", std::process::id()),
        format!("issuing-other-{}", std::process::id()),
    );
    hsm::token_with_key(&label, "EC:prime256v1");
    hsm::token_with_key(&other, "EC:prime256v1");
    let files = tempfile::tempdir().unwrap();
    // The CA certificate is the other token's key's; the signer uses ours.
    let signer = hsm::issuing_ca_files(
        files.path(),
        &other,
        &root,
        "[signer.mint]\nttl_secs = 3600\n",
    )
    .replace(
        &format!("token_label = \"{other}\""),
        &format!("token_label = \"{label}\""),
    );
    let config = crate::support::Files::write(Setup {
        signer: Some(signer),
        root: Some(root.duplicate()),
        issuance: ISSUANCE.into(),
        ca: roots_file(files.path()),
        ..Setup::default()
    });
    let config = castellan::config::Config::load(&config.config).unwrap();
    let err = castellan::server::start(&config)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("does not verify under the issuing CA's certificate"),
        "{err}"
    );
}

/// `castellan check` judges the certifier as serve does: it mints a probe
/// intermediate through the token and reports it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_mints_through_the_token_and_reports_the_rotation() {
    castellan_testkit::require!(castellan_testkit::tools::Tool::SoftHsm);
    let _hsm = hsm::exclusive().await;
    let root = Ca::root("Enterprise Root", KeyAlg::EcP256);
    let label = format!("issuing-check-{}", std::process::id());
    hsm::token_with_key(&label, "EC:prime256v1");
    let dir = tempfile::tempdir().unwrap();
    let signer = hsm::issuing_ca_files(
        dir.path(),
        &label,
        &root,
        "[signer.mint]\nttl_secs = 7200\n",
    );
    let files = crate::support::Files::write(Setup {
        signer: Some(signer),
        root: Some(root.duplicate()),
        issuance: "max_ttl_secs = 3600\ndefault_ttl_secs = 3600\n".into(),
        ca: roots_file(dir.path()),
        ..Setup::default()
    });
    let out = crate::one_truth::run(&["check"], &files.config);
    let text = crate::one_truth::text(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    for needle in [
        "CA    CN=castellan cluster.local",
        "rotates by itself: the next intermediate is minted at",
        "PASS  rooted in the configured enterprise root(s)",
    ] {
        assert!(text.contains(needle), "{needle} not in\n{text}");
    }
}
