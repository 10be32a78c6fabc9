//! `castellan revoke`: revoke a leaf by serial, or refuse an identity new
//! certificates (and revoke the leaves replicas remember issuing to it), in
//! the trust record every replica reads; `--lift` ends an identity's denial.

use std::{
    path::PathBuf,
    process::ExitCode,
    time::{SystemTime, UNIX_EPOCH},
};

use crate::{
    config::Config,
    trust::{self, Denied, Reason, Revoked, TrustState},
};

#[derive(Debug, clap::Args)]
pub(super) struct Args {
    #[arg(long, env = "CASTELLAN_CONFIG")]
    config: PathBuf,
    /// A leaf's serial number, hex (as castellan logs it).
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
    /// Ends the denial of --identity (its revoked leaves stay revoked).
    #[arg(long, requires = "identity")]
    lift: bool,
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
    let config = Config::load(&args.config).map_err(|e| e.to_string())?;
    let Some((store, rules)) = trust::open(&config).await.map_err(|e| e.to_string())? else {
        return Err(format!(
            "{}: no [trust] section: revocations are kept in the trust record \
             (trust.state_configmap or trust.state_file)",
            args.config.display()
        ));
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut change = TrustState::default();
    let vault_pki = matches!(&config.signer, crate::config::Signer::Vault(v) if v.pki.is_some());
    let message = match (&args.serial, &args.identity) {
        (Some(serial), _) if vault_pki => {
            let serial = normalize(serial)?;
            return Err(format!(
                "the signer is Vault PKI, whose CRL castellan publishes as Vault signs it: revoke \
                 the leaf in Vault (`vault write <mount>/revoke serial_number={serial}`, or with \
                 `certificate=` for a role with no_store)"
            ));
        }
        (Some(serial), _) => {
            let serial = normalize(serial)?;
            change.revoked.insert(
                serial.clone(),
                Revoked {
                    reason: args.reason,
                    at: now,
                    // No leaf castellan issued lives longer from now.
                    until: now.saturating_add(rules.leaf_life.as_secs()),
                    identity: None,
                },
            );
            format!(
                "revoked serial {serial} ({}); every replica lists it in its CRL within {} s",
                store.describe(),
                rules.interval.as_secs()
            )
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
            let denied = Denied {
                reason: args.reason,
                at: if args.lift { 0 } else { now },
                lifted: args.lift.then_some(now),
            };
            change.denied.insert(id.to_string(), denied);
            if args.lift {
                format!("{id} may get certificates again (its revoked leaves stay revoked)")
            } else if vault_pki {
                format!(
                    "{id} is refused new certificates (PERMISSION_DENIED) by every replica \
                     within {} s; its leaves are Vault's: revoke them in Vault",
                    rules.interval.as_secs()
                )
            } else {
                format!(
                    "{id} is refused new certificates (PERMISSION_DENIED) by every replica \
                     within {} s; the leaves they issued to it are revoked",
                    rules.interval.as_secs()
                )
            }
        }
        (None, None) => return Err("give --serial or --identity".into()),
    };
    store.merge(&change).await.map_err(|e| e.to_string())?;
    Ok(message)
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
