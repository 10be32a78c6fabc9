//! The trust record is never silently empty and never silently stale: a
//! missing, corrupt or unwritable record stops `serve` and fails `check`
//! alike, naming the file and the fix; `castellan trust init` is the one way
//! it comes to exist; a serving castellan that cannot write it stops issuing
//! after `trust.max_unrecorded_secs` and resumes once it can; a record
//! removed under a serving castellan is written back from its copy.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use castellan::config::Config;
use serde_json::Value;
use tonic::Code;

use crate::support::{Files, Setup, TestCa, csr, eventually, id};

fn trust(aux: &Path, extra: &str) -> String {
    format!(
        "[trust]\nstate_file = \"{}\"\nrecord_interval_secs = 1\n{extra}",
        aux.join("state.json").display()
    )
}

fn castellan(args: &[&str], config: &Path) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_castellan"))
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// `serve` (the binary, which exits when it refuses) and `check` refuse
/// alike, with exit code 2 and every needle in both messages.
fn both_refuse(config: &Path, needles: &[&str]) {
    for command in ["serve", "check"] {
        let (code, out) = castellan(&[command], config);
        assert_eq!(code, 2, "{command}: {out}");
        for n in needles {
            assert!(out.contains(n), "{command} lacks `{n}`: {out}");
        }
    }
}

fn files(aux: &Path, extra: &str) -> (Files, PathBuf) {
    let files = Files::write(Setup {
        extra: trust(aux, extra),
        ..Setup::default()
    });
    let config = files.config.clone();
    (files, config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_record_is_created_only_by_trust_init() {
    let aux = tempfile::tempdir().unwrap();
    let (_files, config) = files(aux.path(), "");
    let state = aux.path().join("state.json");
    both_refuse(
        &config,
        &["state.json", "does not exist", "castellan trust init"],
    );
    let (code, out) = castellan(&["revoke", "--identity", &id("a", "b")], &config);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("castellan trust init"), "{out}");
    assert!(!state.exists(), "nothing made one by the way");

    let (code, out) = castellan(&["trust", "init"], &config);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("created") && out.contains("state.json"),
        "{out}"
    );
    let created: Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    assert!(created["created"].is_u64(), "{created}");
    let (code, out) = castellan(&["check"], &config);
    assert_eq!(code, 0, "{out}");

    // A record with something in it is never replaced by a second init.
    let (code, out) = castellan(&["revoke", "--identity", &id("a", "b")], &config);
    assert_eq!(code, 0, "{out}");
    let (code, out) = castellan(&["trust", "init"], &config);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("exists"), "{out}");
    let kept: Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    assert!(kept["denied"][id("a", "b")].is_object(), "{kept}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_or_unwritable_record_stops_serve_and_check_alike() {
    let aux = tempfile::tempdir().unwrap();
    let (_files, config) = files(aux.path(), "");
    let state = aux.path().join("state.json");
    std::fs::write(&state, "{\"roots\": [").unwrap();
    both_refuse(&config, &["state.json", "not castellan's trust record"]);
    assert_eq!(std::fs::read_to_string(&state).unwrap(), "{\"roots\": [");

    // Readable but not writable: the lock beside it cannot be taken (a
    // folder in its place; permissions would not stop root).
    std::fs::write(&state, "{}").unwrap();
    let lock = aux.path().join("state.json.lock");
    std::fs::create_dir(&lock).unwrap();
    both_refuse(&config, &["state.json", "state.json.lock"]);
    std::fs::remove_dir(&lock).unwrap();
    let (code, out) = castellan(&["check"], &config);
    assert_eq!(code, 0, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issuance_stops_while_the_record_cannot_be_written_and_resumes() {
    let aux = tempfile::tempdir().unwrap();
    let ca = TestCa::start_with(Setup {
        extra: trust(aux.path(), "max_unrecorded_secs = 2\n"),
        ..Setup::default()
    })
    .await;
    let issue = async || {
        let (_, csr) = csr::ztunnel(&id("apps", "web"));
        ca.send(&csr, "apps", "web", 3600)
            .await
            .map(|_| ())
            .map_err(|s| s.code())
    };
    assert_eq!(issue().await, Ok(()));
    assert_eq!(ca.readyz().await, 200);

    // The lock file castellan made replaced by a folder (castellan may
    // make the file again between the two steps: until it sticks).
    let lock = aux.path().join("state.json.lock");
    while !lock.is_dir() {
        let _ = std::fs::remove_file(&lock);
        let _ = std::fs::create_dir(&lock);
    }
    assert!(
        eventually(Duration::from_secs(10), async || {
            issue().await == Err(Code::Unavailable) && ca.readyz().await == 503
        })
        .await,
        "stops issuing once the record lags by more than 2 s"
    );
    assert!(
        ca.metric_with(
            "citadel_server_csr_sign_err_count",
            &[("error", "trust_record_unwritten")]
        )
        .await
            >= 1.0
    );

    std::fs::remove_dir(&lock).unwrap();
    assert!(
        eventually(Duration::from_secs(10), async || {
            issue().await.is_ok() && ca.readyz().await == 200
        })
        .await,
        "resumes once it is written again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_removed_under_a_serving_castellan_is_written_back_whole() {
    let aux = tempfile::tempdir().unwrap();
    let ca = TestCa::start_with(Setup {
        extra: trust(aux.path(), ""),
        ..Setup::default()
    })
    .await;
    let config = ca.dir.path().join("castellan.toml");
    let (code, out) = castellan(&["revoke", "--identity", &id("apps", "gone")], &config);
    assert_eq!(code, 0, "{out}");
    let state = aux.path().join("state.json");
    let read = || -> Value {
        std::fs::read(&state)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null)
    };
    // Once this replica has read the revocation, the file goes.
    let (_, csr) = csr::ztunnel(&id("apps", "gone"));
    assert!(
        eventually(Duration::from_secs(10), async || {
            ca.send(&csr, "apps", "gone", 3600)
                .await
                .map_err(|s| s.code())
                == Err(Code::PermissionDenied)
        })
        .await
    );
    std::fs::remove_file(&state).unwrap();
    assert!(
        eventually(Duration::from_secs(10), async || {
            let r = read();
            r["denied"][id("apps", "gone")].is_object() && r["roots"].is_object()
        })
        .await,
        "written back with the revocation and the roots: {}",
        read()
    );
    assert!(Config::load(&config).is_ok());
}
