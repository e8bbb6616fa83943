//! `kubectl hsm audit ...`: audit-log tools.

use clap::Subcommand;

#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// Verify the hash chain of an audit log file.
    Verify,
}

pub async fn run(cmd: AuditCommand) -> anyhow::Result<()> {
    anyhow::bail!("`kubectl hsm audit {cmd:?}` is not implemented yet")
}
