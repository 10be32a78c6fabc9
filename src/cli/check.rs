//! `castellan check`: the evidence that the configured CA meets the practices,
//! printed one line each, for auditors and for CI.

use std::{path::Path, process::ExitCode, time::Duration};

use crate::{
    ca::{self, Rules, SigningCa},
    config::Config,
    metrics::Metrics,
    server::read_roots,
};

/// Prints every practice as PASS or FAIL; exits 1 on any failure, 2 when the
/// configuration or material cannot even be read.
pub(super) async fn run(path: &Path) -> ExitCode {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => return unusable(&e),
    };
    let roots = match config.ca.roots_file.as_deref().map(read_roots).transpose() {
        Ok(r) => r,
        Err(e) => return unusable(&e),
    };
    let rules = Rules {
        trust_domain: config.trust_domain.clone(),
        default_ttl: Duration::from_secs(config.issuance.default_ttl_secs),
        min_ttl: Duration::from_secs(config.issuance.min_ttl_secs),
        max_ttl: Duration::from_secs(config.issuance.max_ttl_secs),
        roots,
        counters: match Metrics::new() {
            Ok(m) => m.ca_counters(),
            Err(e) => return unusable(&e),
        },
    };
    let loaded = match ca::source(&config.signer).load().await {
        Ok(l) => l,
        Err(e) => return unusable(&e),
    };
    let ca = match SigningCa::assess(loaded.backend, loaded.material, &rules).await {
        Ok(ca) => ca,
        Err(e) => return unusable(&e),
    };
    println!("castellan check: {}", path.display());
    for p in &ca.assessment().practices {
        let verdict = if p.passed { "PASS" } else { "FAIL" };
        println!("{verdict}  {}\n      {}", p.name, p.evidence);
    }
    if ca.assessment().all_passed() {
        println!("all practices pass");
        ExitCode::SUCCESS
    } else {
        println!("some practices fail");
        ExitCode::FAILURE
    }
}

fn unusable(e: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("castellan check: {e}");
    ExitCode::from(2)
}
