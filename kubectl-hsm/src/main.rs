//! `kubectl hsm`: the Keystead kubectl plugin.

use clap::{Parser, Subcommand};

mod audit;
mod backup;
mod client;
mod keys;
mod members;
mod region;
mod role;
mod sd;
mod sd_online;

#[derive(Parser, Debug)]
#[command(
    name = "kubectl-hsm",
    bin_name = "kubectl hsm",
    version,
    about = "Keystead kubectl plugin: security-domain ceremony, keys, roles, audit, membership"
)]
struct Cli {
    #[command(flatten)]
    pool: client::PoolArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Security-domain ceremony (custodian keys, download, transfer blob, upload).
    #[command(subcommand)]
    Sd(sd::SdCommand),
    /// Key operations against a pool.
    #[command(subcommand)]
    Key(keys::KeyCommand),
    /// Local RBAC: role assignments.
    #[command(subcommand)]
    Role(role::RoleCommand),
    /// Audit log tools.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Full backup and restore (start, status, list, verify, restore).
    #[command(subcommand)]
    Backup(backup::BackupCommand),
    /// Print a bearer token for a principal of a local pool (signed by its local issuer).
    Token {
        /// Principal (token subject).
        #[arg(long)]
        subject: String,
        /// Lifetime in minutes.
        #[arg(long, default_value_t = 60)]
        ttl_minutes: u64,
    },
    /// Show the pool's status (activation, domain fingerprint, keys, applied index).
    Status,
    /// Raft membership of a replicated pool: list, add, remove, replace partitions.
    #[command(subcommand)]
    Members(members::MembersCommand),
    /// Region replication: this pool's role, its primary or replica regions, lag.
    #[command(subcommand)]
    Region(region::RegionCommand),
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    quiet_broken_pipe();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Sd(cmd) => sd::run(&cli.pool, cmd).await,
        Command::Key(cmd) => keys::run(&cli.pool, cmd).await,
        Command::Role(cmd) => role::run(&cli.pool, cmd).await,
        Command::Audit(cmd) => audit::run(cmd, cli.pool.output).await,
        Command::Backup(cmd) => backup::run(&cli.pool, cmd).await,
        Command::Token {
            subject,
            ttl_minutes,
        } => token(&cli.pool, &subject, ttl_minutes),
        Command::Status => status(&cli.pool).await,
        Command::Members(cmd) => members::run(&cli.pool, cmd).await,
        Command::Region(cmd) => region::run(&cli.pool, cmd).await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn token(pool: &client::PoolArgs, subject: &str, ttl_minutes: u64) -> anyhow::Result<()> {
    use anyhow::Context;
    let path = pool
        .pool
        .as_ref()
        .context("`kubectl hsm token` works with a local pool: pass --pool DIR/pool.json")?;
    let p = keystead_core::pool_file::PoolFile::load(path)?;
    let issuer =
        keystead_core::local_issuer::LocalIssuer::load_or_create(&p.issuer_dir, &p.issuer)?;
    let t = issuer.issue(
        subject,
        &p.audience,
        std::time::Duration::from_secs(ttl_minutes * 60),
    )?;
    println!("{t}");
    Ok(())
}

async fn status(pool: &client::PoolArgs) -> anyhow::Result<()> {
    let c = pool.client()?;
    let s: keystead_core::status::PoolStatus = c
        .call::<serde_json::Value, _>(reqwest::Method::GET, "/admin/status", None)
        .await?;
    let v = serde_json::to_value(&s)?;
    if pool.output == client::Output::Json {
        return client::print_json(&v);
    }
    for (k, val) in v.as_object().into_iter().flatten() {
        println!(
            "{k:<28}{}",
            val.as_str()
                .map(str::to_string)
                .unwrap_or_else(|| val.to_string())
        );
    }
    Ok(())
}

/// `kubectl hsm ... | head` closes stdout early; Rust ignores SIGPIPE, so `println!` then
/// panics. Exit quietly with the shell's SIGPIPE status (141) instead, like other CLIs.
fn quiet_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if msg.contains("failed printing to stdout") && msg.contains("Broken pipe") {
            std::process::exit(141);
        }
        default(info);
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64url_values_may_start_with_a_hyphen() {
        // 1 in 64 signatures, digests or ciphertexts starts with '-'.
        let cli = Cli::try_parse_from([
            "kubectl-hsm",
            "key",
            "verify",
            "k1",
            "--alg",
            "ES256",
            "--digest",
            "-d1g",
            "--signature",
            "-hCl2yPF",
        ])
        .unwrap();
        let Command::Key(keys::KeyCommand::Verify {
            signature, digest, ..
        }) = cli.command
        else {
            panic!("not a verify: {:?}", cli.command);
        };
        assert_eq!(
            (signature.as_str(), digest.as_deref()),
            ("-hCl2yPF", Some("-d1g"))
        );
        let cli = Cli::try_parse_from([
            "kubectl-hsm",
            "key",
            "decrypt",
            "k1",
            "--alg",
            "A256GCM",
            "--value",
            "-v",
            "--iv",
            "-i",
            "--tag",
            "-t",
            "--aad",
            "-a",
        ])
        .unwrap();
        let Command::Key(keys::KeyCommand::Decrypt(a)) = cli.command else {
            panic!("not a decrypt");
        };
        assert_eq!(
            (
                a.value.as_str(),
                a.iv.as_deref(),
                a.tag.as_deref(),
                a.aad.as_deref()
            ),
            ("-v", Some("-i"), Some("-t"), Some("-a"))
        );
    }
}
