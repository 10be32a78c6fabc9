//! `castellan check`: the evidence that the configured CA meets the practices,
//! printed one line each, for auditors and for CI.

use std::{path::Path, process::ExitCode};

use crate::{
    authn,
    ca::{self, SigningCa},
    clock::Clock,
    config::Config,
    metrics::Metrics,
    server,
};

/// Prints every practice as PASS, FAIL or WAIVED. Exit codes, shared with
/// `serve`: 0 when everything passes, 1 when an enforced practice fails,
/// 2 when the configuration or something it names cannot be used.
pub(super) async fn run(path: &Path) -> ExitCode {
    let judged = match judge(path).await {
        Ok(judged) => judged,
        Err(code) => return code,
    };
    report(path, &judged);
    let failed = judged
        .issuers
        .iter()
        .any(|i| i.ca.assessment().first_failure().is_some());
    if !failed {
        if judged
            .issuers
            .iter()
            .all(|i| i.ca.assessment().all_passed())
        {
            println!("all practices pass");
        } else {
            println!("enforced practices pass; some are waived (see above)");
        }
        ExitCode::SUCCESS
    } else {
        println!("some practices fail: `castellan serve` refuses this configuration");
        ExitCode::from(super::EXIT_PRACTICE)
    }
}

/// What `check` found, to report.
struct Judged {
    module: crate::fips::Module,
    config: Config,
    /// Every issuer, the main one first.
    issuers: Vec<JudgedIssuer>,
    notes: Vec<String>,
    clock: Clock,
}

/// One issuer's CA, judged as `serve` judges it when its unit starts.
struct JudgedIssuer {
    name: String,
    binding: Option<crate::config::Binding>,
    rules: ca::Rules,
    ca: SigningCa,
    self_rotating: bool,
}

/// Everything `serve` builds before serving, built the same way and
/// judged; what cannot be used ends `check` with its exit code.
// Long: what serve builds before serving, in serve's order, each step with its exit on failure.
async fn judge(path: &Path) -> Result<Judged, ExitCode> {
    let module = match server::crypto_ready() {
        Ok(m) => m,
        Err(e) => return Err(unusable(&e)),
    };
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => return Err(unusable(&e)),
    };
    let clock = Clock::system();
    let mut issuers = Vec::new();
    for unit in config.units() {
        let judged = judge_issuer(&unit.config, &clock).await.map_err(|e| {
            if unit.name == crate::config::MAIN_ISSUER {
                unusable(&e)
            } else {
                unusable(&format!("issuer \"{}\": {e}", unit.name))
            }
        })?;
        issuers.push(JudgedIssuer {
            name: unit.name,
            binding: unit.binding,
            rules: judged.0,
            ca: judged.1,
            self_rotating: judged.2,
        });
    }
    let keys = issuers.iter().map(|i| (i.name.as_str(), i.ca.public_key()));
    if let Some((first, second)) = crate::tenancy::shared_key(keys) {
        return Err(unusable(&server::Error::SharedKey { first, second }));
    }
    // What else `serve` builds before serving: the authenticators (JWKS
    // files, kubeconfigs) and the listeners.
    let metrics = match Metrics::new() {
        Ok(m) => m,
        Err(e) => return Err(unusable(&e)),
    };
    if let Err(e) = authn::Chain::from_config(
        &config.authn,
        &config.authn_cache,
        &config.trust_domain,
        &metrics,
        &clock,
    )
    .await
    {
        return Err(unusable(&e));
    }
    let notes = match server::check_listeners(&config).await {
        Ok(notes) => notes,
        Err(e) => return Err(unusable(&e)),
    };
    Ok(Judged {
        module,
        config,
        issuers,
        notes,
        clock,
    })
}

/// One issuer's rules, record and CA, as its unit loads them.
async fn judge_issuer(
    config: &Config,
    clock: &Clock,
) -> Result<(ca::Rules, SigningCa, bool), Box<dyn std::error::Error>> {
    let counters = Metrics::new()?.ca_counters();
    let mut rules = crate::authority::rules(config, counters, clock.clone())?;
    // The record is read and proven writable, never written: check changes
    // nothing, and fails where serve would.
    rules.trust = crate::trust::open_writable(config, clock.clone())
        .await?
        .map(|(_, rules)| rules);
    let source = ca::source(config);
    let loaded = source.load().await?;
    let ca = SigningCa::assess(loaded.backend, loaded.material, &rules).await?;
    Ok((rules, ca, source.self_rotating()))
}

/// Every practice with its evidence, then what else was checked.
// Long: the report's sections in the order they are printed.
fn report(path: &Path, judged: &Judged) {
    let Judged {
        module,
        config,
        issuers,
        notes,
        clock,
    } = judged;
    println!("castellan check: {}", path.display());
    let several = issuers.len() > 1;
    for issuer in issuers {
        if several {
            println!(
                "ISSUER {}  {}",
                issuer.name,
                describe(issuer.binding.as_ref())
            );
        }
        report_issuer(issuer, clock);
    }
    println!(
        "PASS  what serve builds besides the CA\n      {} authenticator(s) load; listeners {} and {}",
        config.authn.len(),
        config.server.listen,
        config
            .server
            .metrics_listen
            .map_or_else(|| "-".to_owned(), |a| a.to_string())
    );
    for note in notes {
        println!("NOTE  {note}");
    }
    println!(
        "CRYPTO {module}{}",
        if crate::fips::BUILD {
            ", the FIPS build"
        } else {
            ""
        }
    );
}
/// What a binding decides, in a line.
fn describe(binding: Option<&crate::config::Binding>) -> String {
    let Some(b) = binding else {
        return "serves every namespace no other issuer is bound to".to_owned();
    };
    let mut line = format!("namespaces {}", b.namespaces.join(", "));
    if !b.cert_signers.is_empty() {
        line.push_str(&format!("; CertSigner {}", b.cert_signers.join(", ")));
    }
    if !b.trusts.is_empty() {
        line.push_str(&format!("; also trusts {}", b.trusts.join(", ")));
    }
    line
}

/// One issuer's practices, CA and record.
fn report_issuer(issuer: &JudgedIssuer, clock: &Clock) {
    let JudgedIssuer {
        rules,
        ca,
        self_rotating,
        ..
    } = issuer;
    for p in &ca.assessment().practices {
        let verdict = match (p.passed, p.enforced) {
            (true, _) => "PASS",
            (false, true) => "FAIL",
            (false, false) => "WAIVED",
        };
        println!("{verdict}  {}\n      {}", p.name, p.evidence);
    }
    for line in signing_lines(ca, *self_rotating, clock.now()) {
        println!("{line}");
    }
    if let Some(trust) = &rules.trust {
        println!("ROOTS {} (soak {} s)", trust.store, trust.soak.as_secs());
        for line in crate::trust::status(trust, ca.root_names(), ca.active_roots(), clock.now()) {
            println!("      {line}");
        }
        let signing = ca
            .chain()
            .first()
            .map(crate::trust::fingerprint)
            .unwrap_or_default();
        let generations = crate::trust::generations(trust, &signing, clock.now());
        if !generations.is_empty() {
            println!(
                "GENERATIONS {} (signing CAs whose leaves may live)",
                trust.store
            );
            for line in generations {
                println!("      {line}");
            }
        }
    }
}

/// The signing certificate, its remaining life and, for a back end that
/// mints its own, when the next one is minted.
fn signing_lines(ca: &SigningCa, self_rotating: bool, now: std::time::SystemTime) -> Vec<String> {
    let facts = ca.facts();
    let left = facts.not_after.duration_since(now).unwrap_or_default();
    let mut lines = vec![
        format!("CA    {}", facts.subject),
        format!(
            "      expires {} (in {:.1} h)",
            crate::clock::date(facts.not_after),
            left.as_secs_f64() / 3600.0
        ),
    ];
    if ca.not_after() < facts.not_after {
        lines.push(format!(
            "      the chain ends earlier, at {} (in {:.1} h), when `{}` above it expires: \
             leaves are cut to it and castellan stops issuing issuance.min_ttl_secs before",
            crate::clock::date(ca.not_after()),
            ca.not_after()
                .duration_since(now)
                .unwrap_or_default()
                .as_secs_f64()
                / 3600.0,
            ca.limit().subject
        ));
    }
    if self_rotating {
        lines.push(format!(
            "      rotates by itself: the next intermediate is minted at {} (half life); this \
             one was minted only for this check, `serve` mints its own",
            crate::clock::date(ca::rotation_due(facts))
        ));
    }
    lines
}

fn unusable(e: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("castellan check: {e}");
    ExitCode::from(super::EXIT_UNUSABLE)
}
