//! `castellan bench`: drives CreateCertificate over many HTTP/2 connections
//! and streams with pre-made CSRs and tokens, and measures in the same run
//! what this machine's crypto allows, so the two figures can be compared.

mod ceiling;
pub mod load;

use std::{path::PathBuf, process::ExitCode, time::Duration};

use super::{KeyType, token::TokenIssuer};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The CA, e.g. https://localhost:15012.
    #[arg(long)]
    addr: String,
    /// Root certificate to trust.
    #[arg(long)]
    root: PathBuf,
    /// PKCS#8 key of a token issuer the CA trusts (the demo's token-signing-key.pem).
    #[arg(long)]
    token_key: PathBuf,
    #[arg(long, default_value = super::demo::DEMO_ISSUER)]
    issuer: String,
    /// Key type of the workloads' CSRs.
    #[arg(long, value_enum, default_value_t = KeyType::EcP256)]
    key_type: KeyType,
    /// Key type of the CA, for the crypto ceiling.
    #[arg(long, value_enum, default_value_t = KeyType::EcP256)]
    ca_key_type: KeyType,
    /// HTTP/2 connections.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Requests in flight at once, spread over the connections.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Distinct workload identities (one token and one CSR each).
    #[arg(long, default_value_t = 64)]
    identities: usize,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    #[arg(long, default_value_t = 2)]
    warmup_seconds: u64,
    /// The CA's signing material (a `cacerts` directory), to also time
    /// castellan's request pipeline in this process, without the network.
    #[arg(long)]
    ca_dir: Option<PathBuf>,
    /// Report this process's memory (the CA's pid, when on this machine).
    #[arg(long)]
    server_pid: Option<u32>,
    /// Only measure the crypto ceiling, and print it as `floor_us_per_cert=`
    /// (one CSR verification and one signature on one core) and
    /// `handshake_floor_us=` (a new TLS connection's server-side public-key
    /// crypto), for scripts/bench-h2load.sh and scripts/bench-storm.sh.
    #[arg(long)]
    ceiling_only: bool,
}

pub(super) async fn run(args: Args) -> ExitCode {
    match bench(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("castellan bench: {e}");
            ExitCode::FAILURE
        }
    }
}

// Long: the benchmark's stages in the order they print (ceiling, pipeline, load, memory).
async fn bench(args: Args) -> Result<(), String> {
    let root = std::fs::read(&args.root).map_err(|e| format!("{}: {e}", args.root.display()))?;
    let key =
        std::fs::read(&args.token_key).map_err(|e| format!("{}: {e}", args.token_key.display()))?;
    let tokens = TokenIssuer::from_pkcs8_pem(&args.issuer, &key).map_err(|e| e.to_string())?;
    let threads = std::thread::available_parallelism().map_or(1, usize::from);

    println!(
        "castellan bench: {} CSRs, {} CA key, {threads} cores",
        name(args.key_type),
        name(args.ca_key_type)
    );
    let work = load::Work::prepare(&tokens, args.key_type, args.identities).await?;

    let ceiling = ceiling::measure(
        &work.csrs[0],
        args.ca_key_type,
        threads,
        Duration::from_secs(2),
    )
    .await?;
    println!(
        "crypto ceiling: {:.0} issuances/s on {threads} cores ({:.0}/s per core): CSR verify {:.0}/s + leaf sign {:.0}/s per core",
        ceiling.issuances_all_cores,
        ceiling.issuances_per_core,
        ceiling.verify_per_core,
        ceiling.sign_per_core
    );
    println!(
        "TLS handshake crypto (X25519 + ECDSA P-256 signature): {:.0}/s per core",
        ceiling.handshakes_per_core
    );
    if args.ceiling_only {
        println!("floor_us_per_cert={:.2}", 1e6 / ceiling.issuances_per_core);
        println!(
            "handshake_floor_us={:.2}",
            1e6 / ceiling.handshakes_per_core
        );
        return Ok(());
    }

    if let Some(dir) = &args.ca_dir {
        let rate = ceiling::pipeline(dir, &work.csrs, Duration::from_secs(2)).await?;
        println!(
            "castellan pipeline (CSR checks, policy, build, sign, PEM; no network): {rate:.0}/s on one core ({:.0}% of the per-core ceiling)",
            100.0 * rate / ceiling.issuances_per_core
        );
    }
    let rss_idle = args.server_pid.and_then(|p| rss_kib(p, "VmRSS"));
    let cpu_before = args.server_pid.and_then(cpu_seconds);
    let plan = load::Plan {
        addr: args.addr.clone(),
        root,
        connections: args.connections.max(1),
        concurrency: args.concurrency.max(1),
        warmup: Duration::from_secs(args.warmup_seconds),
        duration: Duration::from_secs(args.seconds),
    };
    let result = load::run(&plan, &work).await?;
    println!(
        "load: {} connections x {} streams, {} identities, {} s",
        plan.connections, plan.concurrency, args.identities, args.seconds
    );
    println!(
        "  {:.0} requests/s ({} ok, {} failed); latency p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        result.rps(),
        result.ok,
        result.failed,
        result.percentile(50.0),
        result.percentile(90.0),
        result.percentile(99.0),
        result.percentile(100.0)
    );
    println!(
        "  {:.0}% of the {threads}-core crypto ceiling",
        100.0 * result.rps() / ceiling.issuances_all_cores
    );
    if let (Some(before), Some(after)) = (cpu_before, args.server_pid.and_then(cpu_seconds)) {
        // Counts warm-up too, so divide by every request answered, not just measured ones.
        let secs = after - before;
        let total = args.seconds + args.warmup_seconds;
        let per_request_us = secs / (result.rps() * total as f64) * 1e6;
        let ceiling_us = 1e6 / ceiling.issuances_per_core;
        println!(
            "server CPU: {:.2} cores busy, {per_request_us:.0} µs per request; the crypto alone is {ceiling_us:.0} µs ({:.0}% of the server's CPU)",
            secs / total as f64,
            100.0 * ceiling_us / per_request_us
        );
    }
    if let Some(pid) = args.server_pid {
        let kib = |k: Option<u64>| {
            k.map_or_else(
                || "?".to_owned(),
                |v| format!("{:.1} MiB", v as f64 / 1024.0),
            )
        };
        println!(
            "server memory: idle {}, after load {}, peak {}",
            kib(rss_idle),
            kib(rss_kib(pid, "VmRSS")),
            kib(rss_kib(pid, "VmHWM"))
        );
    }
    if let Some(e) = &result.first_error {
        println!("  first error: {e}");
    }
    Ok(())
}

fn name(k: KeyType) -> &'static str {
    match k {
        KeyType::EcP256 => "P-256",
        KeyType::Rsa2048 => "RSA-2048",
    }
}

/// User plus system CPU seconds used by a process so far.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are 14 and 15.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// A field of /proc/PID/status, in KiB.
fn rss_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}
