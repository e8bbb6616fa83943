//! `kubectl hsm sd ...`: the security-domain ceremony.

use clap::Subcommand;

#[derive(Subcommand, Debug)]
pub enum SdCommand {
    /// Generate a custodian key pair and certificate.
    Keygen,
}

pub async fn run(cmd: SdCommand) -> anyhow::Result<()> {
    anyhow::bail!("`kubectl hsm sd {cmd:?}` is not implemented yet")
}
