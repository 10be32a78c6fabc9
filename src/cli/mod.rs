//! The `castellan` command line: serve, check, revoke, demo, request, bench.

// The load generator, the demo PKI and the token issuer serve the CLI; the
// tests and benchmarks reach them with the `testing` feature, so they are
// not part of castellan's library API.
#[cfg(feature = "testing")]
pub mod bench;
#[cfg(not(feature = "testing"))]
#[allow(unreachable_pub, dead_code)]
mod bench;
mod check;
mod demo;
#[cfg(feature = "testing")]
pub mod pki;
#[cfg(not(feature = "testing"))]
#[allow(unreachable_pub)]
mod pki;
pub mod request;
mod revoke;
#[cfg(feature = "testing")]
pub mod token;
#[cfg(not(feature = "testing"))]
#[allow(unreachable_pub, dead_code)]
mod token;
mod trust;

use std::{io::Write as _, net::SocketAddr, path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand, ValueEnum};

use crate::config::{Config, LogFormat};

/// castellan: an external certificate authority for Istio.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve Istio's CreateCertificate API as configured.
    Serve {
        #[arg(long, env = "CASTELLAN_CONFIG")]
        config: PathBuf,
    },
    /// Check the configuration and the signing CA against the practices
    /// castellan enforces; print the evidence; exit non-zero on a failure.
    Check {
        #[arg(long, env = "CASTELLAN_CONFIG")]
        config: PathBuf,
    },
    /// Revoke a leaf by serial, or refuse an identity new certificates and
    /// revoke its leaves, in the trust record every replica reads.
    Revoke(revoke::Args),
    /// The trust record: `castellan trust init` creates it on a first install.
    #[command(subcommand)]
    Trust(trust::Command),
    /// Create a throwaway offline root, intermediate and token issuer in DIR
    /// and serve a real CA with them: nothing to install, no cluster needed.
    Demo {
        #[arg(long, default_value = "castellan-demo")]
        dir: PathBuf,
        #[arg(long, default_value = "127.0.0.1:15012")]
        listen: SocketAddr,
        /// `/healthz`, `/readyz`, `/metrics` (loopback, like the CA itself).
        #[arg(long, default_value = "127.0.0.1:15014")]
        metrics_listen: SocketAddr,
        /// Key type of the demo root and intermediate.
        #[arg(long, value_enum, default_value_t = KeyType::EcP256)]
        ca_key_type: KeyType,
        /// Also accept this cluster's service-account tokens, checked with
        /// TokenReview (castellan's account needs `create tokenreviews`).
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
    },
    /// Ask a CA for a certificate the way istio-agent does, verify it, save it.
    Request(request::Args),
    /// Mint a demo token for another identity with the key `castellan demo`
    /// left in DIR; prints it.
    Token {
        #[arg(long, default_value = "castellan-demo")]
        dir: PathBuf,
        #[arg(long)]
        namespace: String,
        #[arg(long)]
        service_account: String,
        /// Lifetime of the token.
        #[arg(long, default_value_t = 3600)]
        ttl_secs: u64,
    },
    /// Load-test a CA and measure this machine's crypto ceiling in the same run.
    Bench(bench::Args),
}

/// Key types for generated keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum KeyType {
    #[value(name = "ec-p256")]
    EcP256,
    #[value(name = "rsa-2048")]
    Rsa2048,
}

// === impl Cli ===

impl Cli {
    /// Runs the chosen command.
    pub fn run(self) -> ExitCode {
        let runtime = match tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("castellan: cannot start the runtime: {e}");
                return ExitCode::FAILURE;
            }
        };
        // Before anything builds a TLS client: every command runs on the
        // same provider, and a FIPS build on nothing but the FIPS module.
        if let Err(e) = crate::server::crypto_ready() {
            return fail(&e, EXIT_UNUSABLE);
        }
        runtime.block_on(self.dispatch())
    }

    async fn dispatch(self) -> ExitCode {
        match self.command {
            Command::Serve { config } => {
                let config = match Config::load(&config) {
                    Ok(c) => c,
                    Err(e) => return fail(&e, EXIT_UNUSABLE),
                };
                let logging = init_logging(config.log.format);
                let outcome = crate::server::run(&config).await;
                // Every line logged is out before the last word.
                drop(logging);
                match outcome {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => fail(&e, exit_code(&e)),
                }
            }
            Command::Check { config } => check::run(&config).await,
            Command::Revoke(args) => revoke::run(args).await,
            Command::Trust(command) => trust::run(command).await,
            Command::Demo {
                dir,
                listen,
                metrics_listen,
                ca_key_type,
                kubeconfig,
            } => {
                let logging = init_logging(LogFormat::Text);
                let options = demo::Options {
                    listen,
                    metrics_listen,
                    key_type: ca_key_type,
                    kubeconfig,
                };
                let code = demo::run(&dir, &options).await;
                drop(logging);
                code
            }
            Command::Request(args) => request::run(args).await,
            Command::Token {
                dir,
                namespace,
                service_account,
                ttl_secs,
            } => match demo::mint(&dir, &namespace, &service_account, ttl_secs) {
                Ok(token) => {
                    println!("{token}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!(
                        "castellan token: {e} (run `castellan demo --dir {}` first)",
                        dir.display()
                    );
                    ExitCode::from(EXIT_UNUSABLE)
                }
            },
            Command::Bench(args) => bench::run(args).await,
        }
    }
}

/// Logs to stderr; `RUST_LOG` overrides the default `info` level.
///
/// Lines are formatted where they are logged and written to stderr by a
/// thread of their own, as many as have queued up in one write: a request
/// costs no system call for its log line (measured in BENCHMARKS.md). At most
/// [`QUEUED_LOG_LINES`] wait; beyond that, logging waits for the sink rather
/// than drop lines. Lines still queued are written when the returned guard
/// is dropped.
pub fn init_logging(format: LogFormat) -> tracing_appender::non_blocking::WorkerGuard {
    let from_env = std::env::var("RUST_LOG").ok();
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // kube-rs logs every failed HTTP exchange at ERROR; castellan logs the
    // outcome of each request once, with its reason. Asking for kube_client
    // in RUST_LOG brings them back.
    if !from_env.is_some_and(|f| f.contains("kube_client"))
        && let Ok(quiet) = "kube_client::client::builder=off".parse()
    {
        filter = filter.add_directive(quiet);
    }
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .buffered_lines_limit(QUEUED_LOG_LINES)
        .thread_name("castellan-log")
        .finish(std::io::BufWriter::new(std::io::stderr()));
    // A log sink that went away (a closed pipe) loses lines; it must not
    // take requests down: the writing thread drops failed writes, and
    // tracing-subscriber's own reports of them (eprintln!, which panics on
    // that same closed stderr) are off.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .log_internal_errors(false)
        .with_writer(writer);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    guard
}

/// Log lines formatted but not yet written, at most: a burst of 4,096
/// requests is logged without waiting; the queue's slots cost 128 KiB of
/// memory (16,384 cost 0.5 MiB of idle RSS).
pub const QUEUED_LOG_LINES: usize = 4 * 1024;

/// An enforced practice failed: the material is readable but unfit.
pub const EXIT_PRACTICE: u8 = 1;
/// The configuration, or something it names (a file, a back end, an
/// address), cannot be used.
pub const EXIT_UNUSABLE: u8 = 2;

/// The exit code for a server that could not start or stopped failing:
/// the same scheme as `castellan check`.
fn exit_code(e: &crate::server::Error) -> u8 {
    use crate::server::Error as S;
    match e {
        S::Authority(crate::authority::Error::Ca(crate::ca::Error::Practice(_)))
        | S::Issuer {
            source: crate::authority::Error::Ca(crate::ca::Error::Practice(_)),
            ..
        } => EXIT_PRACTICE,
        // A server that failed while running.
        S::Transport(_) | S::Task(_) | S::WorkerLost => EXIT_PRACTICE,
        S::Authority(_)
        | S::Issuer { .. }
        | S::SharedKey { .. }
        | S::NoIssuer
        | S::Issue(_)
        | S::Authn(_)
        | S::Io { .. }
        | S::Tls(_)
        | S::Pem { .. }
        | S::NoCertificate { .. }
        | S::ServingKey(_)
        | S::KeyGeneration(_)
        | S::Workers(_)
        | S::Metrics(_)
        | S::Fips(_)
        | S::Mesh(_) => EXIT_UNUSABLE,
    }
}

fn fail(e: &dyn std::fmt::Display, code: u8) -> ExitCode {
    // Not eprintln!: a closed stderr must not turn the exit code into a panic's.
    let _ = writeln!(std::io::stderr(), "castellan: {e}");
    ExitCode::from(code)
}
