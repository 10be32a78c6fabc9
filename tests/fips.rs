//! Which cryptographic module castellan runs on and says it runs on, in the
//! default build and in the FIPS build (`--features fips`; scripts/test.sh
//! runs these, the listener's TLS tests and the issuance tests in that
//! build too): `castellan check`, `/metrics`, the TLS provider every client
//! takes, and no other crypto implementation among the dependencies.

use std::process::Command;

use castellan::fips;

use crate::support::{Files, Setup, TestCa};

/// The module version docs/security.md names for each build.
const FIPS_MODULE: &str = "4.2.0";
const DEFAULT_MODULE: &str = "5.12.0";

#[test]
fn no_other_crypto_implementation_is_a_dependency() {
    for krate in [
        "ring",
        "openssl-sys",
        "openssl",
        "boring-sys",
        "mbedtls-sys",
    ] {
        let mut cmd = Command::new(env!("CARGO"));
        cmd.current_dir(env!("CARGO_MANIFEST_DIR")).args([
            "tree",
            "--offline",
            "--locked",
            "-e",
            "normal",
            "-i",
            krate,
        ]);
        if fips::BUILD {
            cmd.args(["--features", "fips"]);
        }
        let out = cmd.output().unwrap();
        let tree = String::from_utf8_lossy(&out.stdout);
        assert!(
            tree.trim().is_empty(),
            "{krate} is in castellan's dependencies:\n{tree}"
        );
    }
}

#[tokio::test]
async fn check_and_metrics_name_the_module_and_its_mode() {
    let module = fips::module();
    assert_eq!(module.fips_mode, fips::BUILD);
    assert_eq!(
        (module.name, module.version),
        if fips::BUILD {
            ("AWS-LC FIPS", FIPS_MODULE)
        } else {
            ("AWS-LC", DEFAULT_MODULE)
        }
    );

    let files = Files::write(Setup::default());
    let out = crate::one_truth::run(&["check"], &files.config);
    let text = crate::one_truth::text(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    let line = format!(
        "CRYPTO {} {} (FIPS mode: {}",
        module.name,
        module.version,
        if fips::BUILD {
            "on), the FIPS build"
        } else {
            "off)"
        }
    );
    assert!(text.contains(&line), "{line} not in\n{text}");

    let ca = TestCa::start().await;
    assert_eq!(
        ca.metric("castellan_fips_mode").await,
        f64::from(u8::from(fips::BUILD))
    );
    assert_eq!(
        ca.metric_with(
            "castellan_crypto_module_info",
            &[("module", module.name), ("version", module.version)]
        )
        .await,
        1.0
    );
}

/// The Vault, Kubernetes and JWKS clients build their TLS configurations
/// from the process's default provider (reqwest's and kube's own code):
/// castellan makes that its own, FIPS in the FIPS build.
#[tokio::test]
async fn every_tls_client_takes_castellans_provider() {
    let _ca = TestCa::start().await;
    let provider = rustls::crypto::CryptoProvider::get_default().unwrap();
    assert_eq!(provider.fips(), fips::BUILD);
    let groups: Vec<_> = provider.kx_groups.iter().map(|g| g.name()).collect();
    if fips::BUILD {
        assert_eq!(
            groups,
            [rustls::NamedGroup::secp256r1, rustls::NamedGroup::secp384r1]
        );
        assert!(provider.cipher_suites.iter().all(|s| s.fips()));
    } else {
        assert_eq!(groups[0], rustls::NamedGroup::X25519MLKEM768);
    }
}
