//! `kubectl hsm`: the Keystead kubectl plugin.

use clap::{Parser, Subcommand};

mod audit;
mod sd;

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
    #[command(subcommand)]
    Sd(sd::SdCommand),
    /// Audit log tools.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Sd(cmd) => sd::run(cmd).await,
        Command::Audit(cmd) => audit::run(cmd).await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
