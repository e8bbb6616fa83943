//! `keystead-bench`: benchmarks of the keys data plane (not tests).
//!
//! - `load`: RS256/ES256 sign, RSA-OAEP-256 wrap and encrypt over HTTPS against a local
//!   pool, with N concurrent keep-alive clients;
//! - `raw`: the same operations with aws-lc-rs in process (the ceiling);
//! - `softhsm`: the same operations through PKCS#11 on SoftHSM2 (the usual baseline);
//! - `replication`: replicated creates, sign on one partition vs three, and the healing
//!   time of a wiped partition, on three partition processes run here;
//! - `regions`: a replica region's bootstrap time, the primary's write throughput with and
//!   without it, and the replication lag under sustained writes;
//! - `report`: a Markdown table with ratios from the JSON lines the others wrote;
//! - `calls`: a fixed number of requests of one operation, for instruction-count profiles.
//!
//! `scripts/bench.sh` runs them all; `docs/benchmarks.md` has the numbers.

mod calls;
mod load;
mod raw;
mod regions;
mod replication;
mod report;
mod runner;
mod scale;
mod softhsm;
mod stats;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use runner::Window;
use stats::{OpResult, parse_duration};
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "keystead-bench",
    about = "Benchmarks of the Keystead keys data plane"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// HTTPS load against a local pool (started here with --start, or already running).
    Load(LoadArgs),
    /// aws-lc-rs in process: the ceiling for the same operations.
    Raw(BaselineArgs),
    /// The replicated pool: creates, sign on 1 vs 3 partitions, healing of a wiped partition.
    Replication(ReplicationArgs),
    /// A replica region: bootstrap time, primary write throughput with and without it, lag.
    Regions(RegionsArgs),
    /// The replicated pool at growing key counts: memory per key, snapshot size, sign and
    /// get latency per size; restart, healing, backup and restore at the largest.
    Scale(ScaleArgs),
    /// SoftHSM2 through PKCS#11 (a temporary token is made when SOFTHSM2_CONF is unset).
    Softhsm(SofthsmArgs),
    /// Print a Markdown table with ratios from result files (JSON lines).
    Report {
        /// Result files written with --json.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// A fixed number of requests against a running pool, between two hook commands (for
    /// callgrind instruction counts: scripts/profile-request.sh).
    Calls(CallsArgs),
}

#[derive(Args, Debug)]
struct CallsArgs {
    /// The pool directory (holds pool.json); the pool must be running and activated.
    #[arg(long)]
    dir: PathBuf,
    /// One of es256-sign, rs256-sign, rsa-oaep-256-wrap, rsa-oaep-256-encrypt, get-key.
    #[arg(long, default_value = "es256-sign")]
    op: String,
    /// Concurrent keep-alive HTTPS clients (one connection each).
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Requests before `--before` runs (at least one per client).
    #[arg(long, default_value_t = 640)]
    warmup_requests: usize,
    /// Requests counted (sent between `--before` and `--after`).
    #[arg(long, default_value_t = 2000)]
    requests: usize,
    /// Shell command run once the warm-up is done.
    #[arg(long)]
    before: Option<String>,
    /// Shell command run once the counted requests are answered.
    #[arg(long)]
    after: Option<String>,
    /// Which partition of pool.json to send to (0 = the first; default: the Raft leader).
    #[arg(long)]
    partition: Option<usize>,
}

#[derive(Args, Debug, Clone)]
struct Timing {
    /// Warm-up per operation, not measured.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    warmup: Duration,
    /// Measured time per operation.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Append the results as JSON lines to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct LoadArgs {
    /// The pool directory (holds pool.json).
    #[arg(long)]
    dir: PathBuf,
    /// Start `BIN local --dir DIR` (BIN = target/release/keystead-partition) and stop it at the end.
    #[arg(long, value_name = "BIN")]
    start: Option<PathBuf>,
    /// Pin the started pool to these CPUs (`taskset -c LIST`), e.g. `1`.
    #[arg(long, value_name = "LIST", requires = "start")]
    server_cpus: Option<String>,
    /// `--read-consistency` of the started pool: `read-index` or `lease`.
    #[arg(long, requires = "start")]
    read_consistency: Option<String>,
    /// Concurrent keep-alive HTTPS clients (one connection each); a comma-separated list
    /// (e.g. `1,4,16,64,256`) measures each operation at each count, in that order.
    #[arg(long, value_delimiter = ',', default_values_t = [64])]
    clients: Vec<usize>,
    /// Worker threads of the load generator (it shares the machine with the pool).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// A label for this run's setup, kept in the results (e.g. "server pinned to CPU 1").
    #[arg(long)]
    label: Option<String>,
    /// Operations, comma-separated (default: all).
    #[arg(long, value_delimiter = ',', default_values_t = load::OPS.map(String::from))]
    ops: Vec<String>,
    #[command(flatten)]
    timing: Timing,
}

#[derive(Args, Debug)]
struct ReplicationArgs {
    #[command(flatten)]
    pool: PoolRunArgs,
    /// Keys in the pool when a partition is wiped for the healing measurement.
    #[arg(long, default_value_t = 5000)]
    heal_keys: usize,
    /// Write the healing figures (JSON) to this file.
    #[arg(long, value_name = "FILE")]
    heal_json: Option<PathBuf>,
    /// Also measure replicated creates at these fixed rates (per second, comma-separated;
    /// open loop: latency counts from when each create was due).
    #[arg(long, value_delimiter = ',')]
    create_rates: Vec<f64>,
}

/// What the benchmarks that start their own pools (replication, regions) share.
#[derive(Args, Debug)]
struct PoolRunArgs {
    /// A scratch directory for the pools (regions: the primary in A/, the region in B/); a
    /// previous run in it is removed.
    #[arg(long)]
    dir: PathBuf,
    /// The partition binary (default: keystead-partition next to this program).
    #[arg(long, value_name = "BIN")]
    bin: Option<PathBuf>,
    /// Concurrent keep-alive HTTPS clients (one connection each).
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Worker threads of the load generator.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    #[command(flatten)]
    timing: Timing,
}

impl PoolRunArgs {
    fn run_options(&self) -> anyhow::Result<replication::RunOptions> {
        Ok(replication::RunOptions {
            bin: self.bin.clone().unwrap_or_else(replication::default_bin),
            dir: std::path::absolute(&self.dir)?,
            clients: self.clients,
            threads: self.threads,
            warmup: self.timing.warmup,
            measure: self.timing.duration,
        })
    }
}

#[derive(Args, Debug)]
struct RegionsArgs {
    #[command(flatten)]
    pool: PoolRunArgs,
    /// Keys in the primary when the region joins (its bootstrap).
    #[arg(long, default_value_t = 100_000)]
    bootstrap_keys: usize,
    /// Also measure the lag with A taking creates at these fixed rates (per second,
    /// comma-separated; open loop).
    #[arg(long, value_delimiter = ',')]
    rates: Vec<f64>,
    /// Write the bootstrap and lag figures (JSON) to this file.
    #[arg(long, value_name = "FILE")]
    figures_json: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct ScaleArgs {
    #[command(flatten)]
    pool: PoolRunArgs,
    /// Pool sizes in keys, ascending, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [1_000usize, 100_000])]
    sizes: Vec<usize>,
    /// Share of RSA-2048 keys in the mix (the rest: EC P-256, EC P-384, AES-256 in turn).
    #[arg(long, default_value_t = 1.0)]
    rsa_percent: f64,
    /// Write the per-size rows and the recovery figures (JSON) to this file.
    #[arg(long, value_name = "FILE")]
    figures_json: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct BaselineArgs {
    /// Thread counts to run, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 2])]
    threads: Vec<usize>,
    #[command(flatten)]
    timing: Timing,
}

#[derive(Args, Debug)]
struct SofthsmArgs {
    /// The SoftHSM2 PKCS#11 module.
    #[arg(long, default_value = softhsm::DEFAULT_MODULE)]
    module: PathBuf,
    #[command(flatten)]
    base: BaselineArgs,
}

fn write_json(path: Option<&PathBuf>, rows: &[OpResult]) -> anyhow::Result<()> {
    let Some(path) = path else {
        return Ok(());
    };
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    for r in rows {
        writeln!(f, "{}", serde_json::to_string(r)?)?;
    }
    Ok(())
}

fn check_errors(rows: &[OpResult]) -> anyhow::Result<()> {
    let bad: Vec<String> = rows
        .iter()
        .filter(|r| r.errors > 0 || r.ops == 0)
        .map(|r| format!("{} {} ({} errors, {} ops)", r.source, r.op, r.errors, r.ops))
        .collect();
    anyhow::ensure!(
        bad.is_empty(),
        "these runs are not valid (errors or no operation): {}",
        bad.join("; ")
    );
    Ok(())
}

fn window(t: &Timing) -> Window {
    Window {
        warmup: t.warmup,
        measure: t.duration,
    }
}

/// SoftHSM2 reads its configuration path from the environment when the module is loaded.
/// Setting the environment of this process needs `unsafe` in Rust 2024, so without
/// `SOFTHSM2_CONF` this runs itself again with a temporary token directory.
fn softhsm(a: &SofthsmArgs) -> anyhow::Result<Vec<OpResult>> {
    if std::env::var_os(softhsm::CONF_ENV).is_none() {
        let tmp = tempfile::tempdir().context("cannot create a temporary directory")?;
        let conf = softhsm::write_config(tmp.path())?;
        let exe = std::env::current_exe().context("cannot find this program's path")?;
        let status = std::process::Command::new(exe)
            .args(std::env::args_os().skip(1))
            .env(softhsm::CONF_ENV, &conf)
            .status()
            .context("cannot run the SoftHSM2 benchmark")?;
        anyhow::ensure!(status.success(), "the SoftHSM2 benchmark failed ({status})");
        // The child printed and wrote its results.
        return Ok(Vec::new());
    }
    let rows = softhsm::run(&a.module, &a.base.threads, window(&a.base.timing))?;
    write_json(a.base.timing.json.as_ref(), &rows)?;
    Ok(rows)
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Raw(a) => {
            let rows = raw::run(&a.threads, window(&a.timing))?;
            write_json(a.timing.json.as_ref(), &rows)?;
            check_errors(&rows)
        }
        Cmd::Softhsm(a) => {
            let rows = softhsm(&a)?;
            check_errors_if_any(&rows)
        }
        Cmd::Load(a) => {
            anyhow::ensure!(a.threads > 0, "--threads must be at least 1");
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(a.threads)
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            let opts = load::LoadOptions {
                dir: std::path::absolute(&a.dir)?,
                start_with: a.start.clone(),
                server_cpus: a.server_cpus.clone(),
                clients: a.clients.clone(),
                read_consistency: a.read_consistency.clone(),
                threads: a.threads,
                warmup: a.timing.warmup,
                measure: a.timing.duration,
                ops: a.ops.clone(),
            };
            let mut rows = rt.block_on(load::run(&opts))?;
            for r in &mut rows {
                r.label.clone_from(&a.label);
            }
            write_json(a.timing.json.as_ref(), &rows)?;
            check_errors(&rows)
        }
        Cmd::Replication(a) => {
            let rt = runtime(a.pool.threads)?;
            let opts = replication::Options {
                run: a.pool.run_options()?,
                heal_keys: a.heal_keys,
                create_rates: a.create_rates.clone(),
            };
            let (rows, heal) = rt.block_on(replication::run(&opts))?;
            write_json(a.pool.timing.json.as_ref(), &rows)?;
            write_figures(a.heal_json.as_ref(), &heal)?;
            check_errors(&rows)
        }
        Cmd::Regions(a) => {
            let rt = runtime(a.pool.threads)?;
            let opts = regions::Options {
                run: a.pool.run_options()?,
                bootstrap_keys: a.bootstrap_keys,
                rates: a.rates.clone(),
            };
            let (rows, figures) = rt.block_on(regions::run(&opts))?;
            write_json(a.pool.timing.json.as_ref(), &rows)?;
            write_figures(a.figures_json.as_ref(), &figures)?;
            check_errors(&rows)
        }
        Cmd::Scale(a) => {
            let rt = runtime(a.pool.threads)?;
            let opts = scale::Options {
                run: a.pool.run_options()?,
                sizes: a.sizes.clone(),
                rsa_percent: a.rsa_percent,
            };
            let (rows, recovery) = rt.block_on(scale::run(&opts))?;
            let results: Vec<stats::OpResult> = rows
                .iter()
                .flat_map(|r| [r.sign.clone(), r.get.clone()])
                .collect();
            write_figures(
                a.figures_json.as_ref(),
                &serde_json::json!({"sizes": rows, "recovery": recovery}),
            )?;
            check_errors(&results)
        }
        Cmd::Calls(a) => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            rt.block_on(calls::run(&calls::CallOptions {
                dir: std::path::absolute(&a.dir)?,
                op: a.op,
                clients: a.clients,
                warmup_requests: a.warmup_requests,
                requests: a.requests,
                before: a.before,
                after: a.after,
                partition: a.partition,
            }))
        }
        Cmd::Report { files } => {
            let mut rows = Vec::new();
            for f in &files {
                rows.extend(report::read_rows(f)?);
            }
            print!("{}", report::markdown(&rows));
            Ok(())
        }
    }
}

/// A multi-threaded runtime with `threads` workers (the load generator's threads).
fn runtime(threads: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    anyhow::ensure!(threads > 0, "--threads must be at least 1");
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Figures that are not result rows, as pretty JSON, when a file was asked for.
fn write_figures(path: Option<&PathBuf>, figures: &impl serde::Serialize) -> anyhow::Result<()> {
    if let Some(p) = path {
        std::fs::write(p, serde_json::to_vec_pretty(figures)?)
            .with_context(|| format!("cannot write {}", p.display()))?;
    }
    Ok(())
}

fn check_errors_if_any(rows: &[OpResult]) -> anyhow::Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    check_errors(rows)
}
