//! `kubectl hsm`: the Keystead kubectl plugin.

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "kubectl-hsm",
    bin_name = "kubectl hsm",
    version,
    about = "Keystead kubectl plugin: security-domain ceremony, keys, backup and restore"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Security-domain ceremony (custodian keys, download, transfer blob, upload).
    Sd,
    /// Key operations against a pool.
    Key,
    /// Print a bearer token for a principal of a local pool.
    Token,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    anyhow::bail!("`kubectl hsm {:?}` is not implemented yet", cli.command)
}
