//! `castellan check`: the evidence that the configured CA meets the practices,
//! printed one line each, for auditors and for CI.

use std::{path::Path, process::ExitCode, time::Duration};

use crate::{
    ca::{Rules, SigningCa, Source},
    config::Config,
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
        max_ttl: Duration::from_secs(config.issuance.max_ttl_secs),
        roots,
    };
    let loaded = match Source::from_config(&config.signer) {
        Ok(source) => source.load().await,
        Err(e) => Err(e),
    };
    let (signer, material) = match loaded {
        Ok(l) => l,
        Err(e) => return unusable(&e),
    };
    let ca = match SigningCa::assess(signer, material, &rules).await {
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
