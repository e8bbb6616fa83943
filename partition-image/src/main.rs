//! `keystead-partition`: one HSM partition, or a whole local pool.

use clap::{Parser, Subcommand};
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
        /// Partition configuration (JSON).
        #[arg(long, env = "KEYSTEAD_CONFIG")]
        config: PathBuf,
    },
    /// Run a whole pool on this machine: loopback ports, a generated CA and token issuer.
    Local {
        /// Data directory of the local pool; running again with the same directory resumes it.
        #[arg(long, default_value = "./keystead-local")]
        dir: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { .. } | Command::Local { .. } => {
            anyhow::bail!("the partition server is not implemented yet (issues 3 and 4)")
        }
    }
}
