//! The `castellan` binary.

use clap::Parser;

fn main() -> std::process::ExitCode {
    castellan::cli::Cli::parse().run()
}
