//! `keystead-kms-plugin`: the command line of the KMS v2 plugin (docs/kms-plugin.md) — where
//! the pool is (`--pool-file`, or `--endpoint`/`--ca-file`/`--token-file`), which key wraps
//! the API server's DEKs, the socket to serve on and the time budget of one call.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use keystead_kms_plugin::plugin::Plugin;
use keystead_kms_plugin::pool::{PoolClient, PoolSettings};
use keystead_kms_plugin::serve;

#[derive(Parser, Debug)]
#[command(
    name = "keystead-kms-plugin",
    version,
    about = "Kubernetes KMS v2 plugin: wraps the API server's data-encryption keys with a key of a Keystead pool"
)]
struct Args {
    /// Unix socket to serve on; the EncryptionConfiguration's endpoint is unix://<this path>.
    #[arg(long, env = "KEYSTEAD_KMS_SOCKET")]
    socket: PathBuf,
    /// Name of the pool key (oct-HSM 256-bit: A256KW; RSA-HSM: RSA-OAEP-256).
    #[arg(long, env = "KEYSTEAD_KMS_KEY")]
    key: String,
    /// A pool key data was written under before the plugin moved to --key (repeat for
    /// several): Decrypt accepts its versions, Encrypt never uses it. Keep it until every
    /// resource was rewritten (docs/kms-plugin.md, "Moving to another key").
    #[arg(
        long = "decrypt-key",
        env = "KEYSTEAD_KMS_DECRYPT_KEYS",
        value_delimiter = ','
    )]
    decrypt_keys: Vec<String>,
    /// A local pool's pool.json (endpoints, CA, admin token); explicit flags override it.
    #[arg(long, env = "KEYSTEAD_POOL")]
    pool_file: Option<PathBuf>,
    /// A partition's base URL (repeat for each partition; tried in turn on failure).
    #[arg(
        long = "endpoint",
        env = "KEYSTEAD_KMS_ENDPOINTS",
        value_delimiter = ','
    )]
    endpoints: Vec<String>,
    /// The pool's CA bundle (PEM).
    #[arg(long, env = "KEYSTEAD_CA_FILE")]
    ca_file: Option<PathBuf>,
    /// The bearer token file, re-read when it changes (a projected service-account token).
    #[arg(long, env = "KEYSTEAD_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// Longest time one call may take in all, failover included; keep it under the
    /// EncryptionConfiguration's `timeout` (default 3s). A shorter grpc-timeout wins.
    #[arg(long, default_value = "2500ms", value_parser = parse_duration)]
    timeout: Duration,
    /// Longest wait for one partition before the next is tried.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    attempt_timeout: Duration,
}

/// `250ms`, `2s`, `1.5s`.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let err = || format!("{s:?} is not a duration like 250ms or 2s");
    let d = if let Some(ms) = s.strip_suffix("ms") {
        Duration::from_millis(ms.parse().map_err(|_| err())?)
    } else if let Some(secs) = s.strip_suffix('s') {
        Duration::try_from_secs_f64(secs.parse().map_err(|_| err())?).map_err(|_| err())?
    } else {
        return Err(err());
    };
    if d.is_zero() {
        return Err(format!("{s:?}: the duration must be positive"));
    }
    Ok(d)
}

fn settings(args: &Args) -> anyhow::Result<PoolSettings> {
    let pool = match &args.pool_file {
        Some(p) => Some(keystead_core::pool_file::PoolFile::load(p)?),
        None => None,
    };
    let endpoints = if args.endpoints.is_empty() {
        pool.as_ref()
            .map(|p| p.endpoints.clone())
            .unwrap_or_default()
    } else {
        args.endpoints.clone()
    };
    let ca_file = args
        .ca_file
        .clone()
        .or_else(|| pool.as_ref().map(|p| p.ca_file.clone()))
        .context("no CA bundle: pass --ca-file (or --pool-file)")?;
    let token_file = args
        .token_file
        .clone()
        .or_else(|| pool.as_ref().map(|p| p.admin_token_file.clone()))
        .context("no token: pass --token-file (or --pool-file)")?;
    Ok(PoolSettings {
        endpoints,
        ca_file,
        token_file,
        attempt_timeout: args.attempt_timeout.min(args.timeout),
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("KEYSTEAD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    let settings = settings(&args)?;
    let endpoints = settings.endpoints.join(", ");
    let pool = PoolClient::new(settings)?;
    let plugin = Plugin::new(
        pool,
        args.key.clone(),
        args.decrypt_keys.clone(),
        args.timeout,
    );
    let listener = serve::bind(&args.socket)?;
    tracing::info!(
        socket = %args.socket.display(),
        key = %args.key,
        decrypt_keys = ?args.decrypt_keys,
        endpoints = %endpoints,
        timeout = ?args.timeout,
        "serving KMS v2"
    );
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let shutdown = async move {
        tokio::select! {
            _ = sigterm.recv() => {},
            _ = tokio::signal::ctrl_c() => {},
        }
        tracing::info!("stopping");
    };
    serve::serve(plugin, listener, &args.socket, shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        for bad in ["", "1", "0s", "-1s", "xs", "1m"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
