//! The configuration file: the examples in deploy/ load, and every mistake
//! is reported with the key at fault.

use std::path::Path;

use castellan::config::{Config, OverMaxTtl};

const MINIMAL: &str = r#"
[server.tls]
dns_names = ["localhost"]
[signer]
type = "file"
dir = "/ca"
[[authn]]
type = "jwt"
issuers = ["https://issuer"]
jwks_file = "/jwks.json"
"#;

fn parse(text: &str) -> Result<Config, String> {
    Config::parse(text, Path::new("test.toml")).map_err(|e| e.to_string())
}

#[test]
fn every_example_in_deploy_loads() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/config");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            Config::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            n += 1;
        }
    }
    assert!(n >= 2, "examples found: {n}");
}

#[test]
fn defaults_are_istio_compatible() {
    let c = parse(MINIMAL).unwrap();
    assert_eq!(c.trust_domain.to_string(), "cluster.local");
    assert_eq!(c.server.listen.port(), 15012);
    assert_eq!(c.issuance.default_ttl_secs, 86400);
    assert_eq!(c.issuance.over_max_ttl, OverMaxTtl::Clamp);
    assert_eq!(c.issuance.not_before_skew_secs, 120);
    let castellan::config::Authn::Jwt(jwt) = &c.authn[0] else {
        panic!("a jwt authenticator")
    };
    assert_eq!(jwt.audiences, ["istio-ca"]);
}

#[test]
fn mistakes_name_the_key() {
    let cases: Vec<(String, &[&str])> = vec![
        (MINIMAL.replace("[server.tls]", "[server.tls]\nlisen = 1"), &["unknown field", "lisen"]),
        (format!("{MINIMAL}\n[issuance]\nmax_ttl_secs = 0"), &["issuance.max_ttl_secs"]),
        (format!("{MINIMAL}\n[issuance]\ndefault_ttl_secs = 90000"), &["issuance.default_ttl_secs"]),
        (format!("{MINIMAL}\n[issuance]\nover_max_ttl = \"shrug\""), &["over_max_ttl", "clamp", "reject"]),
        (format!("{MINIMAL}\n[issuance]\nmax_ttl_secs = -5"), &["max_ttl_secs"]),
        (MINIMAL.replace("type = \"file\"", "type = \"hsm\""), &["signer.type", "hsm", "file"]),
        // A wrong value inside a typed section names its key, in words.
        (MINIMAL.replace("dir = \"/ca\"", "dir = \"/ca\"\nchain_file = 5"), &["signer.chain_file"]),
        (MINIMAL.replace("jwks_file = \"/jwks.json\"", "jwks_file = \"/jwks.json\"\njwks_refresh_secs = -5"), &["authn.jwks_refresh_secs", "whole number"]),
        (MINIMAL.replace("jwks_file = \"/jwks.json\"", "jwks_file = \"/jwks.json\"\njwks_refersh_secs = 5"), &["authn.jwks_refersh_secs", "unknown field"]),
        (MINIMAL.replace("[server.tls]", "[server]\nlisten = \"localhost:15012\"\n[server.tls]"), &["localhost:15012", "IP address", "0.0.0.0:15012"]),
        (MINIMAL.replace("[signer]\ntype = \"file\"\ndir = \"/ca\"", "[signer]\ntype = \"pkcs11\"\nmodule = \"/m.so\"\ntoken_label = \"t\"\nkey_label = \"k\"\npin_file = \"/p\"\ncert_file = \"/c\"\npool_size = 0"), &["test.toml", "pool_size"]),
        (MINIMAL.replace("[signer]\ntype = \"file\"\ndir = \"/ca\"", ""), &["signer"]),
        (MINIMAL.replace("dns_names = [\"localhost\"]", ""), &["server.tls.dns_names"]),
        (format!("trust_domain = \"Not A Domain!\"\n{MINIMAL}"), &["trust domain", "Not A Domain!"]),
        (MINIMAL.replace("[[authn]]\ntype = \"jwt\"\nissuers = [\"https://issuer\"]\njwks_file = \"/jwks.json\"", ""), &["authn", "[[authn]]"]),
        (MINIMAL.replace("jwks_file = \"/jwks.json\"", ""), &["jwks_file", "jwks_url"]),
        (MINIMAL.replace("jwks_file = \"/jwks.json\"", "jwks_url = \"http://example.com/jwks\""), &["authn.jwks_url", "https"]),
        (MINIMAL.replace("issuers = [\"https://issuer\"]", "issuers = []"), &["authn.issuers"]),
        (MINIMAL.replace("dns_names = [\"localhost\"]", "cert_file = \"/x\""), &["server.tls.cert_file", "key_file"]),
        (format!("{MINIMAL}\n[server]\nmax_in_flight = 0"), &["server.max_in_flight"]),
        (format!("{MINIMAL}\n[server]\nworkers = 0"), &["server.workers", "between 1 and 1024", "one per core"]),
        // The token's key as the issuing CA: its certificate is a file, the
        // lifetime within bounds and twice the longest leaf.
        (MINIMAL.replace("[signer]\ntype = \"file\"\ndir = \"/ca\"", "[ca]\nroots_file = \"/r\"\n[signer]\ntype = \"pkcs11\"\nmodule = \"/m.so\"\ntoken_label = \"t\"\nkey_label = \"k\"\npin_file = \"/p\"\ncert_label = \"c\"\n[signer.mint]\nttl_secs = 3600"), &["signer.pkcs11", "[signer.mint]", "cert_file"]),
        (MINIMAL.replace("[signer]\ntype = \"file\"\ndir = \"/ca\"", "[ca]\nroots_file = \"/r\"\n[signer]\ntype = \"pkcs11\"\nmodule = \"/m.so\"\ntoken_label = \"t\"\nkey_label = \"k\"\npin_file = \"/p\"\ncert_file = \"/c\"\n[signer.mint]\nttl_secs = 5"), &["mint.ttl_secs", "between 10 and 2592000"]),
        (MINIMAL.replace("[signer]\ntype = \"file\"\ndir = \"/ca\"", "[ca]\nroots_file = \"/r\"\n[signer]\ntype = \"pkcs11\"\nmodule = \"/m.so\"\ntoken_label = \"t\"\nkey_label = \"k\"\npin_file = \"/p\"\ncert_file = \"/c\"\n[signer.mint]\nttl_secs = 3600\nkey_type = \"rsa\""), &["key_type", "ec-p256"]),
        (MINIMAL.replace("[signer]\ntype = \"file\"\ndir = \"/ca\"", "[ca]\nroots_file = \"/r\"\n[signer]\ntype = \"pkcs11\"\nmodule = \"/m.so\"\ntoken_label = \"t\"\nkey_label = \"k\"\npin_file = \"/p\"\ncert_file = \"/c\"\n[signer.mint]\nttl_secs = 1300") + "\n[issuance]\nmax_ttl_secs = 3600\ndefault_ttl_secs = 3600", &["signer.mint.ttl_secs", "1300"]),
    ];
    for (text, needles) in cases {
        let err = parse(&text).expect_err(&text);
        for n in needles {
            assert!(err.contains(n), "`{err}` lacks `{n}` for\n{text}");
        }
    }
}

#[test]
fn missing_file_is_named() {
    let err = Config::load(Path::new("/nonexistent/castellan.toml"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("/nonexistent/castellan.toml"), "{err}");
}

/// Paths in a config file are relative to the file's folder, wherever
/// castellan is started from.
#[test]
fn relative_paths_are_relative_to_the_config_file() {
    let files = crate::support::Files::write(crate::support::Setup::default());
    let dir = files.dir.path();
    let text = std::fs::read_to_string(&files.config)
        .unwrap()
        .replace(&format!("{}/", dir.display()), "");
    assert!(
        text.contains("dir = \"ca\"") && text.contains("jwks_file = \"jwks.json\""),
        "{text}"
    );
    std::fs::write(&files.config, text).unwrap();
    let parsed = Config::load(&files.config).unwrap();
    let castellan::config::Signer::File(signer) = &parsed.signer else {
        panic!("file signer");
    };
    assert_eq!(signer.dir.as_deref(), Some(dir.join("ca").as_path()));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_castellan"))
        .args(["check", "--config"])
        .arg(&files.config)
        .current_dir("/")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn mint_mode_mistakes_name_the_key() {
    let mint = |ca: &str, issuance: &str, modes: &str| {
        format!(
            r#"
[server.tls]
dns_names = ["localhost"]
[issuance]
max_ttl_secs = 3600
default_ttl_secs = 3600
{issuance}
[ca]
{ca}
[signer]
type = "vault"
address = "http://127.0.0.1:8200"
[signer.auth]
method = "token"
{modes}
[[authn]]
type = "jwt"
issuers = ["https://issuer"]
jwks_file = "/jwks.json"
"#
        )
    };
    let roots = "roots_file = \"/roots.pem\"";
    let ok = "[signer.mint]\nmount = \"pki_ent\"\nttl_secs = 7200";
    parse(&mint(roots, "", ok)).unwrap();
    let cases: Vec<(String, &[&str])> = vec![
        (mint("", "", ok), &["ca.roots_file", "[signer.mint]"]),
        (
            mint(roots, "", &ok.replace("7200", "7000")),
            &[
                "signer.mint.ttl_secs",
                "7000",
                "twice issuance.max_ttl_secs",
                "7200",
            ],
        ),
        (
            mint(roots, "", &ok.replace("7200", "5")),
            &["signer.mint.ttl_secs", "between 10"],
        ),
        (
            mint(
                roots,
                "max_ttl_secs = 60\ndefault_ttl_secs = 60\nmin_ttl_secs = 60",
                &ok.replace("7200", "600"),
            )
            .replacen("max_ttl_secs = 3600\ndefault_ttl_secs = 3600\n", "", 1),
            &[
                "signer.mint.ttl_secs",
                "own TLS certificates",
                "1200",
                "server.tls.cert_file",
            ],
        ),
        (
            mint(
                roots,
                "",
                &format!("{ok}\n[signer.transit]\nkey = \"k\"\ncert_file = \"/c\""),
            ),
            &["exactly one of [signer.pki]", "[signer.mint]"],
        ),
        (
            mint(
                roots,
                "",
                &ok.replace("ttl_secs = 7200", "ttl_secs = 7200\nkey_type = \"rsa\""),
            ),
            &["key_type", "ec-p256"],
        ),
    ];
    for (text, needles) in cases {
        let err = parse(&text).expect_err(&text);
        for n in needles {
            assert!(err.contains(n), "`{err}` lacks `{n}` for\n{text}");
        }
    }
    // A key store's mistakes name the key store's section, and only it.
    let store = "[signer.mint.pkcs11]\nmodule = \"/m.so\"\ntoken_label = \"t\"";
    for (extra, needles) in [
        ("", &["signer.mint.pkcs11", "pin_file", "pin_env"][..]),
        (
            "pin_env = \"PIN\"\npool_size = 0",
            &["signer.mint.pkcs11", "pool_size"],
        ),
        (
            "pin_env = \"PIN\"\nlabel_prefix = \"\"",
            &["signer.mint.pkcs11", "label_prefix"],
        ),
    ] {
        let text = mint(roots, "", &format!("{ok}\n{store}\n{extra}"));
        let err = parse(&text).expect_err(&text);
        for n in needles {
            assert!(err.contains(n), "`{err}` lacks `{n}` for\n{text}");
        }
        assert!(!err.contains("signer.pkcs11:"), "{err}");
    }
    parse(&mint(
        roots,
        "",
        &format!("{ok}\n{store}\npin_env = \"PIN\""),
    ))
    .unwrap();
}

#[test]
fn the_default_mint_lifetime_fits_the_default_leaves() {
    let text = MINIMAL
        .replace(
            "[signer]\ntype = \"file\"\ndir = \"/ca\"",
            "[ca]\nroots_file = \"/r.pem\"\n[signer]\ntype = \"vault\"\n[signer.auth]\nmethod = \"token\"\n[signer.mint]\nmount = \"pki\"",
        );
    let c = parse(&text).unwrap();
    let castellan::config::Signer::Vault(v) = &c.signer else {
        panic!("vault")
    };
    let mint = v.vault.mint.as_ref().unwrap();
    assert_eq!(mint.ttl_secs, 2 * c.issuance.max_ttl_secs);
    assert_eq!(mint.key_type, castellan_vault::MintKey::EcP256);
}

/// `[[issuers]]` entry text: a file signer in `dir`, then `more` lines.
fn issuer(name: &str, dir: &str, more: &str) -> String {
    format!(
        "[[issuers]]\nname = \"{name}\"\n{more}\n[issuers.signer]\ntype = \"file\"\ndir = \"{dir}\"\n"
    )
}

#[test]
fn several_issuers_are_read_and_each_binding_decides_its_namespaces() {
    let c = parse(&format!(
        "{MINIMAL}{}{}",
        issuer(
            "payments",
            "/pay",
            "namespaces = [\"payments\", \"pci\"]\ncert_signers = [\"clusterissuers.istio.io/payments\"]"
        ),
        issuer("edge", "/edge", "namespaces = [\"istio-ingress\"]\ntrusts = [\"payments\", \"default\"]"),
    ))
    .unwrap();
    let units = c.units();
    let names: Vec<&str> = units.iter().map(|u| u.name.as_str()).collect();
    assert_eq!(names, ["default", "payments", "edge"]);
    assert!(
        units[0].binding.is_none(),
        "the main issuer serves the rest"
    );
    assert_eq!(
        units[2].binding.as_ref().unwrap().trusts,
        ["payments", "default"]
    );
    // Each issuer starts from its own signer; istiod's certificate is the main one's.
    assert!(
        matches!(&units[1].config.signer, castellan::config::Signer::File(f) if f.dir.as_deref() == Some(Path::new("/pay")))
    );
}

#[test]
fn issuer_mistakes_are_refused_with_the_keys_named() {
    let cases = [
        (
            format!(
                "{}{}",
                issuer("a", "/a", "namespaces = [\"shop\"]"),
                issuer("b", "/b", "namespaces = [\"shop\"]")
            ),
            "namespace \"shop\" is bound to both \"a\" and \"b\"",
        ),
        (
            issuer("a", "/a", ""),
            "`issuers.namespaces` is empty for issuer \"a\": no workload could reach it",
        ),
        (
            format!(
                "{}{}",
                issuer("a", "/a", "namespaces = [\"x\"]\ntrusts = [\"b\"]"),
                issuer("b", "/b", "namespaces = [\"y\"]\ntrusts = [\"a\"]")
            ),
            "`issuers.trusts` loop a → b → a",
        ),
        (
            issuer("a", "/a", "namespaces = [\"x\"]\ntrusts = [\"a\"]"),
            "`issuers.trusts` loop a → a",
        ),
        (
            issuer("a", "/a", "namespaces = [\"x\"]\ntrusts = [\"nobody\"]"),
            "issuer \"a\" trusts \"nobody\", which is not an issuer",
        ),
        (
            issuer("a", "/ca", "namespaces = [\"x\"]"),
            "issuers \"default\" and \"a\" share the signing key file /ca",
        ),
        (
            issuer("default", "/a", "namespaces = [\"x\"]"),
            "\"default\" names two issuers",
        ),
        (
            issuer("Pay Ments", "/a", "namespaces = [\"x\"]"),
            "\"Pay Ments\" is not a name",
        ),
        (
            issuer(
                "a",
                "/a",
                "namespaces = [\"x\"]\ncert_signers = [\"a/b/c\"]",
            ),
            "\"a/b/c\" is neither a bare name nor `<domain>/<name>`",
        ),
        (
            format!(
                "{}[issuers.trust]\nstate_file = \"/state.json\"\n{}[issuers.trust]\nstate_file = \"/state.json\"\n",
                issuer("a", "/a", "namespaces = [\"x\"]"),
                issuer("b", "/b", "namespaces = [\"y\"]")
            ),
            "issuers \"a\" and \"b\" share trust.state_file /state.json",
        ),
        (
            format!(
                "{}[issuers.signer.nonsense]\n",
                issuer("a", "/a", "namespaces = [\"x\"]")
            ),
            "nonsense",
        ),
        (
            issuer("a", "/a", "namespaces = [\"x\"]\nbinding = 1"),
            "unknown field `binding`",
        ),
        (
            issuer("a", "/a", "namespace_labels = { tenant = \"a\" }"),
            "issuer \"a\": binding by label needs a [kubernetes] section",
        ),
        (
            issuer("a", "/a", "namespaces = [\"x\"]\nbundle_name = \"a-roots\""),
            "issuer \"a\": a bundle name of its own needs [kubernetes.trust_bundle]",
        ),
        (
            "[binding]\ntrusts = [\"x\"]\n".to_owned(),
            "`binding.trusts` names other issuers, and no [[issuers]] is configured",
        ),
    ];
    for (text, expected) in cases {
        let e = parse(&format!("{MINIMAL}{text}")).unwrap_err();
        assert!(e.contains(expected), "{text}\n→ {e}\nexpected: {expected}");
    }
    // One issuer's own sections are judged as the main one's, and named.
    let e = parse(&format!(
        "{MINIMAL}[[issuers]]\nname = \"hsm\"\nnamespaces = [\"x\"]\n[issuers.signer]\ntype = \"pkcs11\"\nmodule = \"/m.so\"\ntoken_label = \"t\"\nkey_label = \"k\"\npin_env = \"P\"\npool_size = 0\ncert_file = \"/c.pem\"\n"
    ))
    .unwrap_err();
    assert!(
        e.contains("[[issuers]] name = \"hsm\": signer.pkcs11: `pool_size` must be at least 1"),
        "{e}"
    );
}
