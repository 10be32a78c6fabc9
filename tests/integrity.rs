//! The integrity guarantee against real back ends changed behind castellan's
//! back: every response is checked by independent verifiers, no bad leaf is
//! ever returned, castellan turns unavailable (or refuses, for a leaf outside
//! the profile) while the back end is wrong, and recovers without a restart
//! once it is right.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::json;
use tonic::Code;

use crate::{
    support::{
        Setup, TestCa,
        bao::Bao,
        csr, eventually, hsm, http_get, id,
        pki::{Ca, KeyAlg},
        verify,
    },
    vault::{pki_ca, transit_ca},
};

/// One request; an issued chain must pass both verifiers (openssl too when
/// `strict`, which costs a process).
async fn attempt(ca: &TestCa, strict: bool) -> Result<(), Code> {
    let (_, csr) = csr::ztunnel(&id("integrity", "w"));
    match ca.send(&csr, "integrity", "w", 600).await {
        Ok(resp) => {
            if let Err(e) = verify::webpki(&resp.cert_chain, &ca.root.der) {
                panic!("castellan returned a leaf that does not verify: {e}");
            }
            if strict {
                verify::assert_good(&resp.cert_chain, &ca.root.der, "response");
            }
            Ok(())
        }
        Err(status) => Err(status.code()),
    }
}

async fn readyz(ca: &TestCa) -> u16 {
    http_get(&format!("{}/readyz", ca.metrics_url())).await.0
}

async fn metric(ca: &TestCa, name: &str) -> f64 {
    let (_, text) = http_get(&format!("{}/metrics", ca.metrics_url())).await;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// Requests sent back to back until stopped; each answer counted, every
/// issued chain verified (a bad one panics the task, failing the test).
struct Traffic {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    unavailable: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Traffic {
    fn start(ca: &Arc<TestCa>) -> Self {
        let (stop, ok, unavailable) = (Arc::default(), Arc::default(), Arc::default());
        let task = tokio::spawn({
            let (ca, stop, ok, unavailable): (
                Arc<TestCa>,
                Arc<AtomicBool>,
                Arc<AtomicUsize>,
                Arc<AtomicUsize>,
            ) = (
                Arc::clone(ca),
                Arc::clone(&stop),
                Arc::clone(&ok),
                Arc::clone(&unavailable),
            );
            async move {
                while !stop.load(Ordering::SeqCst) {
                    match attempt(&ca, false).await {
                        Ok(()) => ok.fetch_add(1, Ordering::SeqCst),
                        Err(Code::Unavailable) => unavailable.fetch_add(1, Ordering::SeqCst),
                        Err(other) => panic!("unexpected {other:?}"),
                    };
                }
            }
        });
        Self {
            stop,
            ok,
            unavailable,
            task,
        }
    }

    async fn until_unavailable(&self, limit: Duration) -> bool {
        let seen = Arc::clone(&self.unavailable);
        eventually(limit, async || seen.load(Ordering::SeqCst) > 0).await
    }

    /// Stops and returns (issued, unavailable); a panic in the task (a bad
    /// leaf) fails here.
    async fn finish(self) -> (usize, usize) {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.expect("every issued chain verified");
        (
            self.ok.load(Ordering::SeqCst),
            self.unavailable.load(Ordering::SeqCst),
        )
    }
}

fn unique(prefix: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hsm_key_replaced_in_place_is_never_used_and_its_return_is_noticed() {
    castellan_testkit::require!(castellan_testkit::tools::Tool::SoftHsm);
    let _hsm = hsm::exclusive().await;
    let label = unique("swap");
    let files = tempfile::tempdir().unwrap();
    hsm::empty_token(&label);
    let certified = hsm::ExternalKey::generate(files.path(), "certified");
    hsm::import_key(&label, &certified);
    hsm::rescan();
    let root = Ca::root("HSM Test Root", KeyAlg::EcP256);
    let signer = hsm::signer_files(files.path(), &label, &root, "");
    let ca = Arc::new(
        TestCa::start_with(Setup {
            signer: Some(signer),
            root: Some(root),
            ..Setup::default()
        })
        .await,
    );
    attempt(&ca, true).await.unwrap();

    // Without traffic: the background probe notices.
    hsm::delete_key(&label);
    hsm::import_key(
        &label,
        &hsm::ExternalKey::generate(files.path(), "impostor"),
    );
    assert!(
        eventually(Duration::from_secs(15), async || readyz(&ca).await == 503).await,
        "a replaced key turns /readyz 503 without traffic"
    );
    for _ in 0..5 {
        assert_eq!(attempt(&ca, false).await, Err(Code::Unavailable));
    }
    assert!(metric(&ca, "castellan_signer_key_mismatch_count").await >= 1.0);
    assert_eq!(metric(&ca, "castellan_signer_healthy").await, 0.0);

    // The certified key is put back: castellan finds it by label and id.
    hsm::delete_key(&label);
    hsm::import_key(&label, &certified);
    assert!(
        eventually(Duration::from_secs(15), async || attempt(&ca, false)
            .await
            .is_ok())
        .await,
        "recovers without a restart once the certified key is back"
    );
    attempt(&ca, true).await.unwrap();
    assert!(eventually(Duration::from_secs(5), async || readyz(&ca).await == 200).await);

    // Under traffic: the swap is caught on the first request that meets it.
    let traffic = Traffic::start(&ca);
    assert!(
        eventually(Duration::from_secs(5), async || {
            traffic.ok.load(Ordering::SeqCst) > 10
        })
        .await
    );
    hsm::delete_key(&label);
    hsm::import_key(
        &label,
        &hsm::ExternalKey::generate(files.path(), "impostor2"),
    );
    assert!(traffic.until_unavailable(Duration::from_secs(15)).await);
    let (ok, unavailable) = traffic.finish().await;
    assert!(
        ok > 10 && unavailable > 0,
        "{ok} issued, {unavailable} refused"
    );
    assert_eq!(readyz(&ca).await, 503);
    let Ok(ca) = Arc::try_unwrap(ca) else {
        panic!("the traffic has returned its handle")
    };
    ca.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transit_key_recreated_is_caught_and_rotation_keeps_the_pinned_version() {
    castellan_testkit::require!(castellan_testkit::tools::Tool::OpenBao);
    let bao = Bao::start().await;
    bao.policy().await;
    let dir = tempfile::tempdir().unwrap();
    let token = bao.token_file(dir.path(), "1h").await;
    let auth = format!("method = \"token\"\ntoken_file = \"{}\"", token.display());
    let ca = Arc::new(transit_ca(&bao, "ecdsa-p256", &auth, dir.path(), "").await);
    attempt(&ca, true).await.unwrap();

    // A rotated key keeps signing with the version the certificate names.
    bao.post("transit/keys/castellan/rotate", json!({})).await;
    for _ in 0..10 {
        attempt(&ca, false).await.unwrap();
    }
    attempt(&ca, true).await.unwrap();

    // Deleted and recreated under the same name: v1 is another key.
    let traffic = Traffic::start(&ca);
    assert!(
        eventually(Duration::from_secs(5), async || {
            traffic.ok.load(Ordering::SeqCst) > 5
        })
        .await
    );
    bao.post(
        "transit/keys/castellan/config",
        json!({"deletion_allowed": true}),
    )
    .await;
    bao.api(reqwest::Method::DELETE, "transit/keys/castellan", None)
        .await;
    bao.post("transit/keys/castellan", json!({"type": "ecdsa-p256"}))
        .await;
    assert!(traffic.until_unavailable(Duration::from_secs(15)).await);
    let (ok, unavailable) = traffic.finish().await;
    assert!(
        ok > 5 && unavailable > 0,
        "{ok} issued, {unavailable} refused"
    );
    assert_eq!(readyz(&ca).await, 503);
    assert!(metric(&ca, "castellan_signer_key_mismatch_count").await >= 1.0);

    // Made right: the new key is certified and the certificate replaced.
    let key = bao
        .api(reqwest::Method::GET, "transit/keys/castellan", None)
        .await;
    let pem = key["data"]["keys"]["1"]["public_key"].as_str().unwrap();
    let (_, spki) = der::pem::decode_vec(pem.as_bytes()).unwrap();
    std::fs::write(
        dir.path().join("transit-int.pem"),
        ca.root
            .certify_public_key("Transit Intermediate, recertified", spki),
    )
    .unwrap();
    assert!(
        eventually(Duration::from_secs(15), async || attempt(&ca, false)
            .await
            .is_ok())
        .await,
        "recovers without a restart once the certificate matches the key"
    );
    attempt(&ca, true).await.unwrap();
    assert!(eventually(Duration::from_secs(5), async || readyz(&ca).await == 200).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_transit_turns_unready_without_traffic_and_fails_fast() {
    castellan_testkit::require!(castellan_testkit::tools::Tool::OpenBao);
    let bao = Bao::start().await;
    bao.policy().await;
    let dir = tempfile::tempdir().unwrap();
    let token = bao.token_file(dir.path(), "1h").await;
    let auth = format!("method = \"token\"\ntoken_file = \"{}\"", token.display());
    let ca = transit_ca(&bao, "ecdsa-p256", &auth, dir.path(), "").await;
    attempt(&ca, true).await.unwrap();

    bao.seal().await;
    let sealed = Instant::now();
    assert!(
        eventually(Duration::from_secs(5), async || readyz(&ca).await == 503).await,
        "no request was sent: the probe alone notices"
    );
    assert!(sealed.elapsed() < Duration::from_secs(5));
    let asked = Instant::now();
    assert_eq!(attempt(&ca, false).await, Err(Code::Unavailable));
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "known unhealthy: refused at once, not after Vault's timeout ({:?})",
        asked.elapsed()
    );

    bao.unseal().await;
    assert!(eventually(Duration::from_secs(10), async || readyz(&ca).await == 200).await);
    attempt(&ca, true).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_role_drift_is_refused_and_fixing_the_role_recovers() {
    castellan_testkit::require!(castellan_testkit::tools::Tool::OpenBao);
    let bao = Bao::start().await;
    bao.policy().await;
    let dir = tempfile::tempdir().unwrap();
    let root = Ca::root("Offline Root", KeyAlg::EcP256);
    bao.pki(&root, json!({})).await;
    let token = bao.token_file(dir.path(), "1h").await;
    let auth = format!("method = \"token\"\ntoken_file = \"{}\"", token.display());
    let ca = pki_ca(&bao, root, dir.path(), &auth).await;
    attempt(&ca, true).await.unwrap();

    let drifts = [
        (
            "keyCertSign in a leaf",
            json!({"key_usage": ["DigitalSignature", "CertSign"]}),
            json!({"key_usage": ["DigitalSignature"]}),
        ),
        (
            "keyAgreement in a leaf",
            json!({"key_usage": ["DigitalSignature", "KeyAgreement"]}),
            json!({"key_usage": ["DigitalSignature"]}),
        ),
        (
            "no basicConstraints",
            json!({"basic_constraints_valid_for_non_ca": false}),
            json!({"basic_constraints_valid_for_non_ca": true}),
        ),
        (
            "no serverAuth",
            json!({"server_flag": false}),
            json!({"server_flag": true}),
        ),
        (
            "no clientAuth",
            json!({"client_flag": false}),
            json!({"client_flag": true}),
        ),
        (
            "an extra EKU",
            json!({"code_signing_flag": true}),
            json!({"code_signing_flag": false}),
        ),
    ];
    for (what, edit, fix) in drifts {
        let refused = metric(&ca, "castellan_signer_leaf_refused_count").await;
        bao.patch("pki_int/roles/spiffe", edit).await;
        for _ in 0..3 {
            assert_eq!(attempt(&ca, false).await, Err(Code::Internal), "{what}");
        }
        assert!(
            metric(&ca, "castellan_signer_leaf_refused_count").await >= refused + 3.0,
            "{what}: counted"
        );
        bao.patch("pki_int/roles/spiffe", fix).await;
        attempt(&ca, true)
            .await
            .unwrap_or_else(|c| panic!("{what}: fixed role, still {c:?}"));
    }
}
