//! `check`, `trust init` and the shared-key rule over every issuer.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_and_trust_init_cover_every_issuer_and_a_copied_key_is_refused() {
    let files = crate::support::Files::write(crate::support::Setup {
        init_trust: false,
        ..Default::default()
    });
    let dir = files.dir.path();
    let payments = Ca::root("Payments Root", KeyAlg::EcP256);
    let mut text = std::fs::read_to_string(&files.config).unwrap();
    text.push_str(&format!(
        "[trust]\nstate_file = \"{}\"\n{}[issuers.trust]\nstate_file = \"{}\"\n",
        dir.join("state.json").display(),
        file_issuer(dir, "payments", &payments, "namespaces = [\"payments\"]"),
        dir.join("payments-state.json").display(),
    ));
    std::fs::write(&files.config, &text).unwrap();
    let castellan = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_castellan"))
            .args(args)
            .arg("--config")
            .arg(&files.config)
            .output()
            .unwrap()
    };
    let out = castellan(&["trust", "init"]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains("state.json") && said.contains("payments-state.json"),
        "{said}"
    );
    assert!(dir.join("payments-state.json").exists());

    let out = castellan(&["check"]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains("ISSUER default  serves every namespace no other issuer is bound to"),
        "{said}"
    );
    assert!(
        said.contains("ISSUER payments  namespaces payments"),
        "{said}"
    );
    assert!(said.contains("CA    CN=payments Intermediate 1"), "{said}");
    assert_eq!(said.matches("ROOTS ").count(), 2, "{said}");

    // The same key under another name (a copy of the main issuer's files):
    // the configuration cannot tell, the keys can.
    let copy = dir.join("copy");
    std::fs::create_dir_all(&copy).unwrap();
    for f in std::fs::read_dir(dir.join("ca")).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), copy.join(f.file_name())).unwrap();
    }
    text.push_str(&format!(
        "[[issuers]]\nname = \"twin\"\nnamespaces = [\"twin\"]\n[issuers.signer]\ntype = \"file\"\ndir = \"{}\"\n",
        copy.display()
    ));
    std::fs::write(&files.config, &text).unwrap();
    let config = castellan::config::Config::load(&files.config).unwrap();
    let e = castellan::server::start(&config)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("issuers \"default\" and \"twin\" sign with the same key"),
        "{e}"
    );
}
