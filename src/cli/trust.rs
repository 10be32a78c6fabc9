//! `castellan trust init`: the one way a trust record comes to exist.
//! castellan never starts from an empty record by itself — a record that
//! vanished would otherwise silently forget every revocation and reset both
//! rotation guards — so a first install creates it here, explicitly.

use std::{path::PathBuf, process::ExitCode};

use crate::{clock::Clock, config::Config, trust};

#[derive(Debug, clap::Subcommand)]
pub(super) enum Command {
    /// Create the configured trust record (trust.state_file or
    /// trust.state_configmap), empty, unless it exists; never changes one
    /// that does.
    Init {
        #[arg(long, env = "CASTELLAN_CONFIG")]
        config: PathBuf,
    },
}

pub(super) async fn run(command: Command) -> ExitCode {
    let Command::Init { config } = command;
    match init(&config).await {
        Ok(message) => {
            println!("{message}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("castellan trust init: {e}");
            ExitCode::from(super::EXIT_UNUSABLE)
        }
    }
}

async fn init(path: &std::path::Path) -> Result<String, String> {
    let config = Config::load(path).map_err(|e| e.to_string())?;
    let mut said = Vec::new();
    for unit in config.units() {
        let named = |e: String| {
            if unit.name == crate::config::MAIN_ISSUER {
                e
            } else {
                format!("issuer \"{}\": {e}", unit.name)
            }
        };
        let Some(store) = trust::store(&unit.config)
            .await
            .map_err(|e| named(e.to_string()))?
        else {
            continue;
        };
        let created = store
            .init(Clock::system().unix())
            .await
            .map_err(|e| named(e.to_string()))?;
        said.push(if created {
            format!("created {}, empty", store.describe())
        } else {
            format!("{} exists; left as it is", store.describe())
        });
    }
    if said.is_empty() {
        return Err(format!(
            "{}: no [trust] section, so there is no record to create",
            path.display()
        ));
    }
    Ok(said.join("\n"))
}
