//! `castellan revoke`: revoke a leaf by serial, or refuse an identity new
//! certificates (and revoke the leaves replicas remember issuing to it), in
//! the trust record every replica reads; `--lift` ends an identity's denial.
//! Every run says what it changed, or that nothing did.

use std::{path::PathBuf, process::ExitCode};

use crate::{
    clock::date,
    clock::{Clock, at},
    config::Config,
    profile::Serial,
    trust::{self, Denied, Reason, Revoked, Store, TrustRules, TrustState},
};

#[derive(Debug, clap::Args)]
pub(super) struct Args {
    #[arg(long, env = "CASTELLAN_CONFIG")]
    config: PathBuf,
    /// A leaf's serial number, hex (as castellan logs it, or as
    /// `openssl x509 -serial` prints it).
    #[arg(
        long,
        conflicts_with = "identity",
        required_unless_present = "identity"
    )]
    serial: Option<String>,
    /// A SPIFFE ID: refused new certificates from now on; the leaves
    /// replicas issued to it are revoked.
    #[arg(long)]
    identity: Option<String>,
    #[arg(long, value_enum, default_value_t = Reason::Unspecified)]
    reason: Reason,
    /// Ends the denial of --identity (its revoked leaves stay revoked). A
    /// revoked serial cannot be lifted.
    #[arg(long)]
    lift: bool,
    /// Revoke a serial castellan's check digits do not vouch for: a leaf
    /// castellan issued before its serials carried them (castellan 0.1).
    #[arg(long, requires = "serial")]
    force: bool,
    /// The issuer whose record to write, with `[[issuers]]` (`default` is
    /// the main one). Unset: the issuer bound to --identity's namespace;
    /// required for --serial when there are several.
    #[arg(long)]
    issuer: Option<String>,
}

pub(super) async fn run(args: Args) -> ExitCode {
    match revoke(&args).await {
        Ok(message) => {
            println!("{message}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("castellan revoke: {e}");
            ExitCode::from(super::EXIT_UNUSABLE)
        }
    }
}

async fn revoke(args: &Args) -> Result<String, String> {
    let config = issuer_config(Config::load(&args.config).map_err(|e| e.to_string())?, args)?;
    let clock = Clock::system();
    let Some((store, rules)) = trust::open(&config, clock.clone())
        .await
        .map_err(|e| e.to_string())?
    else {
        return Err(format!(
            "{}: no [trust] section: revocations are kept in the trust record \
             (trust.state_configmap or trust.state_file)",
            args.config.display()
        ));
    };
    let caps = config.signer.capabilities();
    match (&args.serial, &args.identity) {
        (Some(serial), _) => {
            let serial = normalize(serial)?;
            if args.lift {
                return Err(format!(
                    "--serial {serial} --lift: a revocation is final (castellan does not use \
                     certificateHold). If the wrong leaf was revoked, its workload gets a new \
                     certificate when it renews: restart its pods to renew at once"
                ));
            }
            if !caps.signs_own_crl() {
                return Err(format!(
                    "the signer ({}) issues its leaves and keeps their CRL itself; castellan \
                     publishes that CRL as the back end signs it: revoke the leaf in Vault \
                     (`vault write <mount>/revoke serial_number={serial}`, or with \
                     `certificate=` for a role with no_store)",
                    caps.name()
                ));
            }
            by_serial(&store, &rules, &clock, &serial, args).await
        }
        (None, Some(identity)) => {
            let id = spiffe::SpiffeId::new(identity)
                .map_err(|e| format!("--identity {identity}: not a SPIFFE ID ({e})"))?;
            if id.trust_domain().to_string() != config.trust_domain.to_string() {
                return Err(format!(
                    "--identity {identity}: not in this CA's trust domain {}",
                    config.trust_domain
                ));
            }
            by_identity(&store, &rules, &clock, &id.to_string(), args, caps).await
        }
        (None, None) => Err("give --serial or --identity".into()),
    }
}

/// The configuration of the issuer whose record the revocation goes to.
fn issuer_config(config: Config, args: &Args) -> Result<Config, String> {
    let units = config.units();
    let names = || {
        units
            .iter()
            .map(|u| format!("`{}`", u.name))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let chosen = match (&args.issuer, &args.identity) {
        (Some(name), _) => units
            .iter()
            .find(|u| &u.name == name)
            .ok_or_else(|| format!("--issuer {name}: no such issuer (there are {})", names()))?,
        (None, _) if units.len() == 1 => &units[0],
        (None, Some(identity)) => {
            let namespace = spiffe::SpiffeId::new(identity)
                .ok()
                .and_then(|id| crate::tenancy::namespace_of(&id).map(str::to_owned))
                .ok_or_else(|| format!("--identity {identity}: not a workload identity"))?;
            units
                .iter()
                .find(|u| {
                    u.binding
                        .as_ref()
                        .is_some_and(|b| b.namespaces.contains(&namespace))
                })
                .or_else(|| units.first().filter(|u| u.binding.is_none()))
                .ok_or_else(|| {
                    format!("--identity {identity}: namespace `{namespace}` is bound to no issuer")
                })?
        }
        (None, None) => {
            return Err(format!(
                "--serial with several issuers: say whose leaf it is with --issuer (one of {}; \
                 castellan logs issuer= with each leaf's serial)",
                names()
            ));
        }
    };
    Ok(chosen.config.clone())
}

async fn by_serial(
    store: &Store,
    rules: &TrustRules,
    clock: &Clock,
    serial: &str,
    args: &Args,
) -> Result<String, String> {
    let castellans = trust::serial_bytes(serial).is_some_and(|b| Serial::is_castellans(&b));
    if !castellans && !args.force {
        return Err(format!(
            "--serial {serial}: not a serial castellan issued — every serial castellan writes \
             ends in check digits, and these do not match. Check it for a typo (castellan logs \
             each leaf's serial; `openssl x509 -noout -serial -in leaf.pem` prints it). A leaf \
             castellan issued before check digits (castellan 0.1) has none: revoke it with \
             --force"
        ));
    }
    if let Some(r) = rules.state.load().revoked.get(serial) {
        return Ok(format!(
            "serial {serial} was already revoked at {} ({:?}); nothing changed",
            date(at(r.at)),
            r.reason
        ));
    }
    let now = clock.unix();
    let mut change = TrustState::default();
    change.revoked.insert(
        serial.to_owned(),
        Revoked {
            reason: args.reason,
            at: now,
            // No leaf castellan issued lives longer from now.
            until: now.saturating_add(rules.leaf_life.as_secs()),
            identity: None,
        },
    );
    let merged = store.merge(&change, now).await.map_err(|e| e.to_string())?;
    let stands = merged.revoked.get(serial).map_or(now, |r| r.at);
    Ok(format!(
        "revoked serial {serial} ({:?}) at {}{}, in {}; every replica lists it in its CRL within \
         {} s",
        args.reason,
        date(at(stands)),
        if castellans {
            ""
        } else {
            " (forced: not checked against castellan's check digits)"
        },
        store.describe(),
        rules.interval.as_secs()
    ))
}

async fn by_identity(
    store: &Store,
    rules: &TrustRules,
    clock: &Clock,
    id: &str,
    args: &Args,
    caps: castellan_signer::Capabilities,
) -> Result<String, String> {
    let now = clock.unix();
    let denied_now = rules.state.load().denied.get(id).cloned();
    let active = denied_now.as_ref().is_some_and(Denied::active);
    if args.lift && !active {
        return Ok(format!("{id} is not refused; nothing changed"));
    }
    if !args.lift && active {
        let since = denied_now.map_or(now, |d| d.at);
        return Ok(format!(
            "{id} has been refused since {}; nothing changed",
            date(at(since))
        ));
    }
    let mut change = TrustState::default();
    change.denied.insert(
        id.to_owned(),
        Denied {
            reason: args.reason,
            at: if args.lift { 0 } else { now },
            lifted: args.lift.then_some(now),
        },
    );
    store.merge(&change, now).await.map_err(|e| e.to_string())?;
    let within = rules.interval.as_secs();
    Ok(if args.lift {
        format!("{id} may get certificates again (its revoked leaves stay revoked)")
    } else if !caps.signs_own_crl() {
        format!(
            "{id} is refused new certificates (PERMISSION_DENIED) by every replica within \
             {within} s; its leaves are Vault's: revoke them in Vault"
        )
    } else {
        format!(
            "{id} is refused new certificates (PERMISSION_DENIED) by every replica within \
             {within} s; the leaves they issued to it are revoked"
        )
    })
}

/// The serial as the record keys it, refusing what no certificate has.
fn normalize(serial: &str) -> Result<String, String> {
    let hex: String = serial.chars().filter(|c| *c != ':').collect();
    if hex.is_empty() || hex.len() > 40 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(format!(
            "--serial {serial}: a certificate serial is up to 20 bytes of hex"
        ));
    }
    Ok(trust::normalize_serial(&hex))
}

#[cfg(test)]
mod tests {
    #[test]
    fn serials_are_normalized_and_bounded() {
        assert_eq!(super::normalize("00:AB:cd").unwrap(), "abcd");
        assert_eq!(super::normalize("0abc").unwrap(), "abc");
        assert!(super::normalize("xyz").is_err());
        assert!(super::normalize(&"a".repeat(41)).is_err());
        assert!(super::normalize("é").is_err());
    }
}
