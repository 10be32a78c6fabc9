//! A real SoftHSM2 token per test: created with `softhsm2-util`, keys made
//! with `pkcs11-tool`, the intermediate certificate issued by a test root for
//! the key the token holds. `scripts/test.sh` installs SoftHSM and exports
//! `SOFTHSM2_CONF` (a token directory of its own) before the tests run.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
};

use cryptoki::{
    context::{CInitializeArgs, CInitializeFlags, Pkcs11},
    object::{Attribute, AttributeType, ObjectClass},
    session::UserType,
    types::AuthPin,
};
use der::{
    Decode, Encode,
    asn1::{BitString, Null, ObjectIdentifier, OctetString, UintRef},
};
use spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};

use crate::pki::Ca;

pub const PIN: &str = "4711";
const SO_PIN: &str = "12345678";

/// SoftHSM keeps one state per process: tests that use it take turns.
pub async fn exclusive() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: OnceLock<tokio::sync::Mutex<()>> = OnceLock::new();
    LOCK.get_or_init(|| tokio::sync::Mutex::new(()))
        .lock()
        .await
}

/// The PKCS#11 module, as `scripts/test.sh` found it.
pub fn module() -> PathBuf {
    let from_env = std::env::var_os("CASTELLAN_TEST_PKCS11_MODULE").map(PathBuf::from);
    let path = from_env.unwrap_or_else(|| PathBuf::from("/usr/lib/softhsm/libsofthsm2.so"));
    assert!(
        path.exists() && std::env::var_os("SOFTHSM2_CONF").is_some(),
        "SoftHSM is not set up: run the tests with scripts/test.sh (it installs softhsm2 and exports SOFTHSM2_CONF)"
    );
    path
}

/// The token directory of `SOFTHSM2_CONF`.
pub fn token_dir() -> PathBuf {
    let conf = std::fs::read_to_string(std::env::var_os("SOFTHSM2_CONF").unwrap()).unwrap();
    let line = conf
        .lines()
        .find(|l| l.trim_start().starts_with("directories.tokendir"))
        .unwrap();
    PathBuf::from(line.split_once('=').unwrap().1.trim())
}

/// Every token gone from SoftHSM's directory (moved aside) until
/// [`TokensAway::restore`], or until dropped — an assertion failing while
/// they are away must not take them from the other tests.
#[derive(Debug)]
pub struct TokensAway {
    tokens: PathBuf,
    away: PathBuf,
    restored: bool,
}

impl TokensAway {
    /// Moves the token directory aside.
    pub fn take() -> Self {
        let tokens = token_dir();
        let away = tokens.with_extension("away");
        std::fs::rename(&tokens, &away).unwrap();
        Self {
            tokens,
            away,
            restored: false,
        }
    }

    /// Puts the tokens back.
    pub fn restore(mut self) {
        std::fs::rename(&self.away, &self.tokens).unwrap();
        self.restored = true;
    }
}

impl Drop for TokensAway {
    fn drop(&mut self) {
        if !self.restored {
            let _ = std::fs::rename(&self.away, &self.tokens);
        }
    }
}

/// Makes the module in this process forget what it knew, so tokens created
/// since are seen (SoftHSM scans its directory only at C_Initialize).
pub fn rescan() {
    if let Ok(ctx) = Pkcs11::new(module()) {
        let _ = ctx.finalize();
    }
}

fn run(cmd: &mut Command) -> String {
    let mut out = cmd
        .output()
        .expect("softhsm2-util and pkcs11-tool are installed by scripts/test.sh");
    // SoftHSM's file store can hide a token from another process for the
    // instant its files are rewritten (castellan's own process included).
    for _ in 0..5 {
        if out.status.success()
            || !String::from_utf8_lossy(&out.stderr).contains("No slot with token")
        {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        out = cmd.output().unwrap();
    }
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A new token with one key pair; `key_type` as pkcs11-tool spells it
/// (`EC:prime256v1`, `EC:secp384r1`, `rsa:2048`).
pub fn token_with_key(label: &str, key_type: &str) {
    run(Command::new("softhsm2-util").args([
        "--init-token",
        "--free",
        "--label",
        label,
        "--so-pin",
        SO_PIN,
        "--pin",
        PIN,
    ]));
    run(Command::new("pkcs11-tool")
        .arg("--module")
        .arg(module())
        .args([
            "--token-label",
            label,
            "--login",
            "--pin",
            PIN,
            "--keypairgen",
            "--key-type",
            key_type,
        ])
        .args(["--label", "ca-key", "--id", "01", "--usage-sign"]));
    rescan();
}

/// This process's handle on the module (initialised if nobody has) and the
/// slot of the token labelled `label`.
pub fn slot(label: &str) -> (Pkcs11, cryptoki::slot::Slot) {
    let ctx = Pkcs11::new(module()).unwrap();
    let _ = ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK));
    let slot = ctx
        .get_slots_with_token()
        .unwrap()
        .into_iter()
        .find(|s| ctx.get_token_info(*s).unwrap().label().trim() == label)
        .unwrap();
    (ctx, slot)
}

/// The SubjectPublicKeyInfo of the token's key, read through PKCS#11.
pub fn public_key(label: &str) -> Vec<u8> {
    let (ctx, slot) = slot(label);
    let session = ctx.open_ro_session(slot).unwrap();
    session
        .login(UserType::User, Some(&AuthPin::new(PIN.into())))
        .unwrap();
    let key = session
        .find_objects(&[
            Attribute::Class(ObjectClass::PUBLIC_KEY),
            Attribute::Label(b"ca-key".to_vec()),
        ])
        .unwrap()[0];
    let attrs = session
        .get_attributes(
            key,
            &[
                AttributeType::EcParams,
                AttributeType::EcPoint,
                AttributeType::Modulus,
                AttributeType::PublicExponent,
            ],
        )
        .unwrap();
    let (mut params, mut point, mut n, mut e) = (None, None, None, None);
    for a in attrs {
        match a {
            Attribute::EcParams(p) => params = Some(p),
            Attribute::EcPoint(p) => point = Some(p),
            Attribute::Modulus(m) => n = Some(m),
            Attribute::PublicExponent(x) => e = Some(x),
            _ => {}
        }
    }
    let spki = match (params, point, n, e) {
        (Some(params), Some(point), ..) => SubjectPublicKeyInfoOwned {
            algorithm: AlgorithmIdentifierOwned {
                oid: ObjectIdentifier::new_unwrap("1.2.840.10045.2.1"),
                parameters: Some(der::asn1::Any::from_der(&params).unwrap()),
            },
            subject_public_key: BitString::from_bytes(
                OctetString::from_der(&point).unwrap().as_bytes(),
            )
            .unwrap(),
        },
        (_, _, Some(n), Some(e)) => {
            #[derive(der::Sequence)]
            struct Rsa<'a> {
                n: UintRef<'a>,
                e: UintRef<'a>,
            }
            let key = Rsa {
                n: UintRef::new(&n).unwrap(),
                e: UintRef::new(&e).unwrap(),
            }
            .to_der()
            .unwrap();
            SubjectPublicKeyInfoOwned {
                algorithm: AlgorithmIdentifierOwned {
                    oid: ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1"),
                    parameters: Some(Null.into()),
                },
                subject_public_key: BitString::from_bytes(&key).unwrap(),
            }
        }
        _ => panic!("no public key on token {label}"),
    };
    // Leave no login behind: castellan must log in with its own PIN.
    session.logout().unwrap();
    drop(session);
    ctx.finalize().unwrap();
    spki.to_der().unwrap()
}

/// Files for a PKCS#11 signer: the intermediate for the token's key, issued
/// by `root`; the PIN file. Returns the `[signer]` TOML.
pub fn signer_files(dir: &Path, label: &str, root: &Ca, extra: &str) -> String {
    let cert = root.certify_public_key(&format!("HSM Intermediate {label}"), public_key(label));
    files(dir, label, root, &cert, extra)
}

/// Files for a PKCS#11 signer whose token key is an issuing CA (path
/// length 1) under `root`, certifying the intermediates castellan mints
/// (`extra` holds `[signer.mint]`). Returns the `[signer]` TOML.
pub fn issuing_ca_files(dir: &Path, label: &str, root: &Ca, extra: &str) -> String {
    let cert = root.certify_ca_key(&format!("HSM Issuing CA {label}"), public_key(label), 1);
    files(dir, label, root, &cert, extra)
}

fn files(dir: &Path, label: &str, root: &Ca, cert: &str, extra: &str) -> String {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("int.pem"), cert).unwrap();
    std::fs::write(dir.join("root.pem"), &root.pem).unwrap();
    std::fs::write(dir.join("pin"), format!("{PIN}\n")).unwrap();
    format!(
        "[signer]\ntype = \"pkcs11\"\nmodule = \"{module}\"\ntoken_label = \"{label}\"\nkey_label = \"ca-key\"\npin_file = \"{pin}\"\ncert_file = \"{cert}\"\nroot_file = \"{root}\"\n{extra}\n",
        module = module().display(),
        pin = dir.join("pin").display(),
        cert = dir.join("int.pem").display(),
        root = dir.join("root.pem").display(),
    )
}

/// A P-256 key pair made outside the token, to import (and import again):
/// the PKCS#8 and SubjectPublicKeyInfo DER files, and the SPKI bytes.
pub struct ExternalKey {
    pub private: PathBuf,
    pub public: PathBuf,
    pub spki: Vec<u8>,
}

impl ExternalKey {
    pub fn generate(dir: &Path, name: &str) -> Self {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let (private, public) = (
            dir.join(format!("{name}.p8.der")),
            dir.join(format!("{name}.spki.der")),
        );
        std::fs::write(&private, key.serialize_der()).unwrap();
        let spki = rcgen::PublicKeyData::subject_public_key_info(&key);
        std::fs::write(&public, &spki).unwrap();
        Self {
            private,
            public,
            spki,
        }
    }
}

/// An empty token labelled `label`.
pub fn empty_token(label: &str) {
    run(Command::new("softhsm2-util").args([
        "--init-token",
        "--free",
        "--label",
        label,
        "--so-pin",
        SO_PIN,
        "--pin",
        PIN,
    ]));
    rescan();
}

fn tool(label: &str) -> Command {
    let mut cmd = Command::new("pkcs11-tool");
    cmd.arg("--module")
        .arg(module())
        .args(["--token-label", label, "--login", "--pin", PIN]);
    cmd
}

/// Imports `key` as the `ca-key` / id 01 pair, from another process, as an
/// operator (or an attacker) would.
pub fn import_key(label: &str, key: &ExternalKey) {
    run(tool(label).arg("--write-object").arg(&key.private).args([
        "--type",
        "privkey",
        "--id",
        "01",
        "--label",
        "ca-key",
        "--usage-sign",
    ]));
    run(tool(label)
        .arg("--write-object")
        .arg(&key.public)
        .args(["--type", "pubkey", "--id", "01", "--label", "ca-key"]));
}

/// Deletes the `ca-key` / id 01 pair, from another process.
pub fn delete_key(label: &str) {
    for kind in ["privkey", "pubkey"] {
        run(tool(label).args(["--delete-object", "--type", kind, "--id", "01"]));
    }
}
