//! `keystead-partition`: one HSM partition, or a whole local pool.

use clap::{Parser, Subcommand};
use keystead_partition::{config::PartitionConfig, http::server, local, service::app::App};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "keystead-partition",
    version,
    about = "Keystead HSM partition: the Azure Key Vault-compatible keys and security-domain API"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve one partition from a configuration file (what runs in a pod).
    Serve {
        /// Partition configuration (JSON, see docs/local-pool.md).
        #[arg(long, env = "KEYSTEAD_CONFIG")]
        config: PathBuf,
        /// Region configuration (JSON, docs/regions.md): this region's name and, for a
        /// replica region, its primary.
        #[arg(long, env = "KEYSTEAD_REGION_CONFIG")]
        region_config: Option<PathBuf>,
    },
    /// Run a whole pool on this machine: loopback ports, a generated CA and token issuer.
    Local {
        /// Data directory of the local pool; running again with the same directory resumes it.
        #[arg(long, default_value = "./keystead-local")]
        dir: PathBuf,
        /// Name of the pool.
        #[arg(long, default_value = "local")]
        name: String,
        /// Run this pool as a replica region of the running local pool whose pool file this
        /// is (docs/regions.md); the pool's name is then its region name.
        #[arg(long, value_name = "PRIMARY/pool.json")]
        extend: Option<PathBuf>,
        /// How reads are made linearizable (docs/replication.md): `read-index` (the
        /// default of a new pool) or `lease` (opt-in leader leases); kept in the pool's
        /// configurations.
        #[arg(long, value_enum)]
        read_consistency: Option<ReadConsistencyArg>,
    },
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum ReadConsistencyArg {
    ReadIndex,
    Lease,
}

impl ReadConsistencyArg {
    fn into_config(self) -> keystead_partition::config::ReadConsistency {
        match self {
            Self::ReadIndex => keystead_partition::config::ReadConsistency::ReadIndex,
            Self::Lease => keystead_partition::config::ReadConsistency::Lease,
        }
    }
}

fn init_tracing() {
    // Operational logs go to stderr, as JSON unless KEYSTEAD_LOG_FORMAT=text (the local
    // runner's default for its partitions); audit records have their own sink.
    // The filter: KEYSTEAD_LOG, else RUST_LOG, else the default (keystead_core::log).
    let default = "info,openraft=warn";
    let filter = tracing_subscriber::EnvFilter::try_new(keystead_core::log::log_filter(default))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::env::var(local::LOG_FORMAT_VAR).is_ok_and(|f| f == "text") {
        // Colours only on a terminal (not in a file the logs are redirected to).
        fmt.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    } else {
        fmt.json().init();
    }
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
    tracing::info!("shutting down");
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve {
            config,
            region_config,
        } => {
            init_tracing();
            serve(config, region_config).await
        }
        Command::Local {
            dir,
            name,
            extend,
            read_consistency,
        } => {
            local::run(local::LocalOptions {
                dir,
                partitions: 3,
                pool_name: name,
                extend,
                read_consistency: read_consistency.map(ReadConsistencyArg::into_config),
            })
            .await
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve(config: PathBuf, region_config: Option<PathBuf>) -> anyhow::Result<()> {
    let cfg = PartitionConfig::load(&config)?;
    let region = region_config
        .map(|p| keystead_core::region::RegionConfig::load(&p))
        .transpose()?;
    let listener = server::bind(&cfg.listen)?;
    let app = match (cfg.peers.is_empty(), region) {
        (true, None) => App::open(cfg)?,
        (true, Some(_)) => anyhow::bail!(
            "a region needs a replicated pool: --region-config is only for partitions with peers"
        ),
        (false, region) => App::open_in_region(cfg, region).await?,
    };
    tracing::info!(listen = %app.cfg.listen, partition = %app.cfg.partition_id, "partition serving");
    server::serve(app, listener, shutdown_signal()).await
}
