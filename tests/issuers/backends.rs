//! Issuers on different back ends in one castellan, and two HSM issuers
//! sharing one PKCS#11 module through its faults.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_an_hsm_and_a_vault_minted_issuer_serve_their_own_tenants() {
    castellan_testkit::require!(castellan_testkit::tools::Tool::SoftHsm);
    castellan_testkit::require!(castellan_testkit::tools::Tool::OpenBao);
    let _hsm = crate::support::hsm::exclusive().await;
    let dir = tempfile::tempdir().unwrap();

    // payments: a P-256 key in a SoftHSM token, certified by its own root.
    let label = format!("issuers-{}", std::process::id());
    crate::support::hsm::token_with_key(&label, "EC:prime256v1");
    let payments = Ca::root("Payments HSM Root", KeyAlg::EcP256);
    let hsm = crate::support::hsm::signer_files(&dir.path().join("hsm"), &label, &payments, "");

    // retail: intermediates minted by castellan, certified by OpenBao's
    // enterprise issuing CA under the retail root.
    let retail = Ca::root("Retail Root", KeyAlg::EcP256);
    let bao = crate::support::bao::Bao::start().await;
    bao.policy().await;
    bao.enterprise_issuer(&retail).await;
    let token = bao.token_file(dir.path(), "1h").await;
    let retail_roots = dir.path().join("retail-roots.pem");
    std::fs::write(&retail_roots, &retail.pem).unwrap();
    let mint = format!(
        "[signer]\ntype = \"vault\"\naddress = \"{}\"\ntimeout_secs = 3\n[signer.auth]\nmethod = \"token\"\ntoken_file = \"{}\"\n[signer.mint]\nmount = \"pki_ent\"\nttl_secs = 7200\n",
        bao.addr(),
        token.display()
    );
    let extra = format!(
        "[[issuers]]\nname = \"payments\"\nnamespaces = [\"payments\"]\n{}\
         [[issuers]]\nname = \"retail\"\nnamespaces = [\"retail\"]\n{}[issuers.ca]\nroots_file = \"{}\"\n",
        as_issuer_signer(&hsm),
        as_issuer_signer(&mint),
        retail_roots.display()
    );
    let ca = TestCa::start_with(crate::support::Setup {
        issuance: "max_ttl_secs = 3600\ndefault_ttl_secs = 3600\n".into(),
        extra,
        ..Default::default()
    })
    .await;
    let issue = async |ns: &str| {
        let (_, csr) = csr::istio_agent(&id(ns, "app"));
        ca.send(&csr, ns, "app", 3600).await.unwrap().cert_chain
    };
    let cases = [
        ("shop", &ca.root, "CN=Test Intermediate"),
        (
            "payments",
            &payments,
            &*format!("CN=HSM Intermediate {label}"),
        ),
        ("retail", &retail, "castellan"),
    ];
    for (ns, root, issuer) in cases {
        let chain = issue(ns).await;
        verify::assert_good(&chain, &root.der, ns);
        assert_eq!(roots_in(&chain), pki_certs(&root.pem), "{ns}");
        assert!(
            issuer_of(&chain).contains(issuer),
            "{ns}: {}",
            issuer_of(&chain)
        );
        for (other, other_root, _) in cases {
            if other != ns {
                assert!(
                    verify::webpki(&chain, &other_root.der).is_err(),
                    "a {ns} leaf verifies under {other}'s root"
                );
            }
        }
    }
    ca.close().await;
}

/// Two issuers with keys on one PKCS#11 module share its process-wide
/// state. While the token directory is gone both keys keep recovering (the
/// module finalised and initialised again), under load on both: no call of
/// one may be inside the module while the other finalises it (SoftHSM
/// crashes), and once the tokens are back both serve again, without
/// breaking each other's fresh sessions.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hsm_issuers_on_one_module_recover_together_under_load() {
    const TASKS: usize = 4;
    castellan_testkit::require!(castellan_testkit::tools::Tool::SoftHsm);
    let _hsm = crate::support::hsm::exclusive().await;
    let dir = tempfile::tempdir().unwrap();
    let mut extra = String::new();
    for name in ["north", "south"] {
        let label = format!("{name}-{}", std::process::id());
        crate::support::hsm::token_with_key(&label, "EC:prime256v1");
        let root = Ca::root(&format!("{name} root"), KeyAlg::EcP256);
        let signer = crate::support::hsm::signer_files(&dir.path().join(name), &label, &root, "");
        extra.push_str(&format!(
            "[[issuers]]\nname = \"{name}\"\nnamespaces = [\"{name}\"]\n{}",
            as_issuer_signer(&signer)
        ));
    }
    let ca = std::sync::Arc::new(
        TestCa::start_with(crate::support::Setup {
            issuance: "max_ttl_secs = 3600\ndefault_ttl_secs = 3600\n".into(),
            extra,
            ..Default::default()
        })
        .await,
    );
    let served = std::sync::Arc::new([(); 2].map(|()| std::sync::atomic::AtomicUsize::new(0)));
    let refused = std::sync::Arc::new([(); 2].map(|()| std::sync::atomic::AtomicUsize::new(0)));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for (i, ns) in ["north", "south"].into_iter().enumerate() {
        for _ in 0..TASKS {
            let (ca, stop, served, refused) =
                (ca.clone(), stop.clone(), served.clone(), refused.clone());
            tasks.push(tokio::spawn(async move {
                let (_, csr) = csr::istio_agent(&id(ns, "app"));
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    match ca.send(&csr, ns, "app", 3600).await {
                        Ok(_) => served[i].fetch_add(1, std::sync::atomic::Ordering::SeqCst),
                        Err(_) => refused[i].fetch_add(1, std::sync::atomic::Ordering::SeqCst),
                    };
                }
            }));
        }
    }
    let count = |of: &[std::sync::atomic::AtomicUsize; 2]| {
        of.each_ref()
            .map(|c| c.load(std::sync::atomic::Ordering::SeqCst))
    };
    assert!(
        eventually(Duration::from_secs(20), async || count(&served)
            .iter()
            .all(|&n| n >= 50))
        .await,
        "both issuers serve under load"
    );

    let away = crate::support::hsm::TokensAway::take();
    // The tokens stay away for a few of each key's recoveries (at most one a
    // second), every one of them under the other issuer's load.
    let gone = count(&refused);
    assert!(
        eventually(Duration::from_secs(20), async || count(&refused)
            .iter()
            .zip(gone)
            .all(|(&n, before)| n > before))
        .await,
        "both issuers notice the tokens are gone"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    away.restore();
    let back = count(&served);
    assert!(
        eventually(Duration::from_secs(20), async || count(&served)
            .iter()
            .zip(back)
            .all(|(&n, before)| n >= before + 50))
        .await,
        "both issuers serve again: served {:?}, refused {:?}",
        count(&served),
        count(&refused)
    );
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for task in tasks {
        task.await.unwrap();
    }
    // And nothing fails any more, one issuer after the other.
    for round in 0..20 {
        for ns in ["north", "south"] {
            let (_, csr) = csr::istio_agent(&id(ns, "app"));
            if let Err(s) = ca.send(&csr, ns, "app", 3600).await {
                panic!("{ns}, round {round}, after both recovered: {s:?}");
            }
        }
    }
    std::sync::Arc::into_inner(ca).unwrap().close().await;
}
