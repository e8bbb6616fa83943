//! `keystead-partition local --dir DIR`: a whole pool on this machine.
//!
//! The runner generates (once) a CA, a token issuer, each partition's TLS certificate,
//! sealing key and configuration under `DIR`, starts one `keystead-partition serve` process
//! per partition on loopback, waits until they answer, writes `DIR/pool.json`, restarts a
//! partition that exits (with back-off) while the others keep serving, and stops them
//! cleanly on Ctrl-C (SIGINT) or SIGTERM. Running it again resumes the same pool.

use crate::auth::LocalIssuer;
use crate::config::{
    AuditSettings, AuthSettings, IssuerSettings, PartitionConfig, PeerSettings, ReadConsistency,
    SealMode, SealSettings, TlsFiles,
};
use crate::pki;
use anyhow::Context;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Principal of the administrator token the runner writes.
pub const ADMIN_SUBJECT: &str = "local-admin";
/// How long tokens minted by the runner stay valid.
pub const TOKEN_TTL: Duration = Duration::from_secs(12 * 3600);

pub use keystead_core::pool_file::PoolFile;

pub struct LocalOptions {
    pub dir: PathBuf,
    pub partitions: usize,
    pub pool_name: String,
    /// The pool file of a running local pool this pool extends as a replica region.
    pub extend: Option<PathBuf>,
    /// Set every partition's `readConsistency` (kept in its configuration: a resumed pool
    /// keeps what it has unless this is given).
    pub read_consistency: Option<ReadConsistency>,
}

mod extend;
pub use extend::{REGION_CONFIG, name_region_on_primary, primary_of};

use crate::fsutil::write_private;

/// A free loopback TCP port (for a new partition).
pub fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

fn issuer_url(pool: &str) -> String {
    format!("https://issuer.keystead.local/{pool}")
}

/// The audience of a new local pool: a Keystead resource of its own (its partitions have
/// different URLs, and a token must work on all of them). A pool created earlier keeps the
/// audience in its configuration.
pub fn local_audience(pool: &str) -> String {
    format!("https://hsm.keystead.local/{pool}")
}

/// The pool-wide material of a local pool directory: its CA, its token issuer (and the
/// issuer's JWKS file the partitions trust) and the secrets directory.
pub struct LocalPki {
    pub dir: PathBuf,
    pub pool_name: String,
    ca: pki::CaMaterial,
    pub ca_file: PathBuf,
    pub issuer: LocalIssuer,
    jwks_file: PathBuf,
    issuer_dir: PathBuf,
    /// The issuer URL and audience the partitions trust (a replica region's are its
    /// primary's: one principal is the same principal in every region).
    issuer_url: String,
    audience: String,
    secrets: PathBuf,
}

impl std::fmt::Debug for LocalPki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalPki")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl LocalPki {
    /// Load the pool directory's CA and issuer, creating them the first time.
    pub fn open_or_create(dir: &Path, pool_name: &str) -> anyhow::Result<LocalPki> {
        Self::open_with_issuer(dir, pool_name, None)
    }

    /// [`LocalPki::open_or_create`]; with `primary`, the token issuer and audience are the
    /// primary pool's (a replica region), the CA still this pool's own.
    pub fn open_with_issuer(
        dir: &Path,
        pool_name: &str,
        primary: Option<&PoolFile>,
    ) -> anyhow::Result<LocalPki> {
        let dir = std::path::absolute(dir)?;
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create the pool directory {}", dir.display()))?;
        let ca_file = dir.join("ca.pem");
        let ca_key = dir.join("ca-key.pem");
        let ca = if ca_file.exists() {
            pki::CaMaterial {
                cert_pem: std::fs::read_to_string(&ca_file)?,
                key_pem: std::fs::read_to_string(&ca_key)?,
            }
        } else {
            let ca = pki::generate_ca(&format!("Keystead local pool {pool_name}"), 3650)?;
            write_private(&ca_key, ca.key_pem.as_bytes())?;
            std::fs::write(&ca_file, &ca.cert_pem)?;
            ca
        };
        let (issuer_dir, issuer_url, audience) = match primary {
            Some(p) => (p.issuer_dir.clone(), p.issuer.clone(), p.audience.clone()),
            None => (
                dir.join("issuer"),
                issuer_url(pool_name),
                local_audience(pool_name),
            ),
        };
        std::fs::create_dir_all(&issuer_dir)?;
        let issuer = LocalIssuer::load_or_create(&issuer_dir, &issuer_url)?;
        let jwks_file = issuer_dir.join("jwks.json");
        if primary.is_none() {
            std::fs::write(&jwks_file, serde_json::to_vec_pretty(&issuer.jwks())?)?;
        }
        let secrets = dir.join("secrets");
        std::fs::create_dir_all(&secrets)?;
        Ok(LocalPki {
            dir,
            pool_name: pool_name.to_string(),
            ca,
            ca_file,
            issuer,
            jwks_file,
            issuer_dir,
            issuer_url,
            audience,
            secrets,
        })
    }

    /// The configuration of partition `name` (`DIR/<name>/config.json`): loaded if it
    /// exists, otherwise created with a new certificate of the pool CA (common name
    /// `name`), a new sealing key, HTTPS on `127.0.0.1:port` and the given `peers`. Its
    /// workload token (`partition:<name>`) is renewed either way.
    pub fn partition(
        &self,
        name: &str,
        port: u16,
        peers: &[PeerSettings],
    ) -> anyhow::Result<(PathBuf, PartitionConfig)> {
        let pdir = self.dir.join(name);
        std::fs::create_dir_all(&pdir)?;
        let cfg_path = pdir.join("config.json");
        let cfg = if cfg_path.exists() {
            PartitionConfig::load(&cfg_path)?
        } else {
            let leaf = pki::issue_leaf(
                &self.ca,
                name,
                &["localhost".to_string()],
                &["127.0.0.1".parse()?],
                3650,
            )?;
            std::fs::write(pdir.join("tls.crt"), &leaf.cert_pem)?;
            write_private(&pdir.join("tls.key"), leaf.key_pem.as_bytes())?;
            let sealing = self.secrets.join(format!("sealing-{name}.key"));
            let mut key = zeroize::Zeroizing::new([0u8; 32]);
            aws_lc_rs::rand::fill(key.as_mut_slice())
                .map_err(|_| anyhow::anyhow!("no randomness"))?;
            write_private(&sealing, key.as_slice())?;
            let cfg = PartitionConfig {
                pool_name: self.pool_name.clone(),
                partition_id: name.to_string(),
                listen: format!("127.0.0.1:{port}"),
                public_url: format!("https://127.0.0.1:{port}"),
                data_dir: pdir.join("data"),
                tls: TlsFiles {
                    cert_file: pdir.join("tls.crt"),
                    key_file: pdir.join("tls.key"),
                    ca_file: self.ca_file.clone(),
                },
                auth: AuthSettings {
                    audience: Some(self.audience.clone()),
                    authority: "https://login.keystead.local/keystead".into(),
                    issuers: vec![IssuerSettings {
                        issuer: self.issuer_url.clone(),
                        audiences: vec![],
                        // The pool's only issuer: no prefix (`partition:<id>` and
                        // `local-admin` are its principals).
                        principal_prefix: None,
                        jwks_file: Some(self.jwks_file.clone()),
                        ca_file: None,
                        bearer_token_file: None,
                    }],
                },
                initial_administrators: vec![ADMIN_SUBJECT.to_string()],
                soft_delete_retention_days: 90,
                purge_protection: false,
                seal: SealSettings {
                    mode: SealMode::SealingKeyFile,
                    key_file: Some(sealing),
                },
                audit: AuditSettings {
                    file: None,
                    stdout: false,
                },
                peers: peers.to_vec(),
                peer_token_file: if peers.is_empty() {
                    None
                } else {
                    Some(pdir.join("peer.token"))
                },
                peer_service_account: None,
                host_addresses: Default::default(),
                // A local pool runs as its user: backups may go wherever the user may write.
                backup_filesystem_root: Some("/".into()),
                backup_claims: Default::default(),
                // Development pool: backups may go to emulators on loopback.
                backup_loopback_endpoints: true,
                security_domain_redownload: Default::default(),
                limits: Default::default(),
                read_consistency: Default::default(),
            };
            std::fs::write(&cfg_path, serde_json::to_vec_pretty(&cfg)?)?;
            cfg
        };
        if let Some(f) = &cfg.peer_token_file {
            // The partition's workload identity, renewed on every start.
            let t = self.issuer.issue(
                &format!("partition:{}", cfg.partition_id),
                &cfg.audience(),
                TOKEN_TTL,
            )?;
            write_private(f, t.as_bytes())?;
        }
        Ok((cfg_path, cfg))
    }
}

/// Create or load the pool's files; returns the configuration path of each partition.
pub fn prepare(opts: &LocalOptions) -> anyhow::Result<(Vec<PathBuf>, PoolFile)> {
    let primary = opts
        .extend
        .as_deref()
        .map(PoolFile::load)
        .transpose()
        .context("--extend names no usable pool file")?;
    let pki = LocalPki::open_with_issuer(&opts.dir, &opts.pool_name, primary.as_ref())?;
    let mut configs = Vec::new();
    let mut endpoints = Vec::new();
    let mut audience = None;
    // Ports and peer list of a new pool (a resumed pool keeps its configurations).
    let ports: Vec<u16> = (0..opts.partitions)
        .map(|_| free_port())
        .collect::<anyhow::Result<_>>()?;
    let peers: Vec<PeerSettings> = if opts.partitions > 1 {
        ports
            .iter()
            .enumerate()
            .map(|(i, port)| PeerSettings {
                id: i as u64 + 1,
                name: format!("p{i}"),
                url: format!("https://127.0.0.1:{port}"),
            })
            .collect()
    } else {
        Vec::new()
    };
    for (i, &port) in ports.iter().enumerate() {
        let (cfg_path, mut cfg) = pki.partition(&format!("p{i}"), port, &peers)?;
        if let Some(r) = opts.read_consistency
            && cfg.read_consistency != r
        {
            cfg.read_consistency = r;
            std::fs::write(&cfg_path, serde_json::to_vec_pretty(&cfg)?)?;
        }
        endpoints.push(cfg.public_url.clone());
        configs.push(cfg_path);
        // The configurations of a resumed pool keep the audience they were created with.
        audience.get_or_insert_with(|| cfg.audience());
    }
    let audience = audience.unwrap_or_else(|| pki.audience.clone());
    let token_file = pki.dir.join("admin.token");
    let token = pki.issuer.issue(ADMIN_SUBJECT, &audience, TOKEN_TTL)?;
    write_private(&token_file, token.as_bytes())?;
    let pool = PoolFile {
        endpoints,
        ca_file: pki.ca_file.clone(),
        admin_token_file: token_file,
        issuer: pki.issuer_url.clone(),
        issuer_dir: pki.issuer_dir.clone(),
        audience,
        pool_name: Some(opts.pool_name.clone()),
    };
    if let Some(p) = &primary {
        extend::write_region_config(&pki.dir, &opts.pool_name, p)?;
    }
    std::fs::write(pki.dir.join("pool.json"), serde_json::to_vec_pretty(&pool)?)?;
    Ok((configs, pool))
}

/// Wait until every endpoint answers `/readyz` over TLS (caught up, and holding the domain
/// once the pool is activated), or the deadline passes.
pub async fn wait_ready(pool: &PoolFile, deadline: Duration) -> anyhow::Result<()> {
    let ca = std::fs::read(&pool.ca_file)?;
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca)?)
        .timeout(Duration::from_secs(2))
        .build()?;
    let start = Instant::now();
    for ep in &pool.endpoints {
        loop {
            let ok = client
                .get(format!("{ep}/readyz"))
                .send()
                .await
                .map(|r| r.status().is_success())
                .unwrap_or(false);
            if ok {
                break;
            }
            anyhow::ensure!(
                start.elapsed() < deadline,
                "partition {ep} did not become ready within {deadline:?}; see its log above"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

/// The first pause before a partition that exited is started again; doubled on every
/// further exit, up to [`RESTART_BACKOFF_MAX`].
pub const RESTART_BACKOFF_MIN: Duration = Duration::from_secs(1);
/// The longest pause between restarts of a partition that keeps exiting.
pub const RESTART_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A partition that ran this long before it exited is restarted after the shortest pause.
const RESTART_BACKOFF_RESET: Duration = Duration::from_secs(60);
/// How long a stopping partition has after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Run the pool until Ctrl-C / SIGTERM.
///
/// Each partition is supervised like a pod of a StatefulSet: if it exits (a crash, a
/// SIGKILL, the OOM killer) the others keep serving and it is started again after a pause
/// that doubles from [`RESTART_BACKOFF_MIN`] to [`RESTART_BACKOFF_MAX`] while it keeps
/// exiting. Only Ctrl-C or SIGTERM to the runner stop the pool.
pub async fn run(opts: LocalOptions) -> anyhow::Result<()> {
    // Signals are handled from the start: a stop while the partitions are starting is clean too.
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let (configs, pool) = prepare(&opts)?;
    // A replica region: named on its primary (with the primary's admin token) before its
    // partitions start and ask to join.
    let region_config = match &opts.extend {
        Some(primary_file) => {
            let primary = PoolFile::load(primary_file)?;
            let ca = std::fs::read_to_string(&pool.ca_file)?;
            name_region_on_primary(&primary, &opts.pool_name, &ca).await?;
            Some(opts.dir.join(REGION_CONFIG))
        }
        None => None,
    };
    let exe = std::env::current_exe()?;
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let supervisors: Vec<_> = configs
        .iter()
        .map(|cfg| {
            let name = cfg
                .parent()
                .and_then(|d| d.file_name())
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| cfg.display().to_string());
            tokio::spawn(supervise(
                name,
                exe.clone(),
                (cfg.clone(), region_config.clone()),
                stopping.clone(),
            ))
        })
        .collect();
    let ready = tokio::select! {
        r = wait_ready(&pool, Duration::from_secs(60)) => Some(r),
        _ = sigint.recv() => None,
        _ = sigterm.recv() => None,
    };
    let result = match ready {
        Some(Ok(())) => match announce(&opts, &pool) {
            Ok(()) => {
                tokio::select! {
                    _ = sigint.recv() => {},
                    _ = sigterm.recv() => {},
                }
                Ok(())
            }
            Err(e) => Err(e),
        },
        Some(Err(e)) => Err(e),
        None => Ok(()),
    };
    stop.send_replace(true);
    for s in supervisors {
        let _ = s.await;
    }
    if result.is_ok() {
        println!("Keystead local pool stopped.");
    }
    result
}

/// Run partition `name` from `cfg` until `stopping` turns true, starting it again (with
/// back-off) whenever it exits; on stop, SIGTERM it and wait [`STOP_GRACE`], then kill it.
async fn supervise(
    name: String,
    exe: PathBuf,
    (cfg, region_config): (PathBuf, Option<PathBuf>),
    mut stopping: tokio::sync::watch::Receiver<bool>,
) {
    let mut backoff = RESTART_BACKOFF_MIN;
    let mut restarts = 0u32;
    loop {
        let mut command = tokio::process::Command::new(&exe);
        command.arg("serve").arg("--config").arg(&cfg);
        if let Some(r) = &region_config {
            command.arg("--region-config").arg(r);
        }
        let spawned = command
            // Its own process group: a Ctrl-C in the terminal reaches only the runner, which
            // stops the partitions itself (and does not mistake their exit for a crash).
            .process_group(0)
            // Human-readable logs in a terminal, unless the caller asked for a format.
            .env(
                LOG_FORMAT_VAR,
                std::env::var(LOG_FORMAT_VAR).unwrap_or_else(|_| "text".into()),
            )
            .kill_on_drop(true)
            .spawn();
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => {
                eprintln!(
                    "cannot start partition {name} with {}: {e}; retrying in {}s",
                    cfg.display(),
                    backoff.as_secs()
                );
                if pause_or_stop(backoff, &mut stopping).await {
                    return;
                }
                backoff = (backoff * 2).min(RESTART_BACKOFF_MAX);
                continue;
            }
        };
        let pid = child.id().unwrap_or_default();
        if restarts > 0 {
            eprintln!("partition {name} restarted (pid {pid}; restart {restarts})");
        }
        let started = Instant::now();
        let status = tokio::select! {
            s = child.wait() => s,
            _ = stopped(&mut stopping) => {
                terminate(&mut child).await;
                return;
            }
        };
        if *stopping.borrow() {
            return;
        }
        if started.elapsed() >= RESTART_BACKOFF_RESET {
            backoff = RESTART_BACKOFF_MIN;
        }
        restarts += 1;
        let how = match status {
            Ok(s) => s.to_string(),
            Err(e) => format!("status unknown: {e}"),
        };
        eprintln!(
            "partition {name} (pid {pid}) exited unexpectedly ({how}); the other partitions keep serving; restarting {name} in {}s",
            backoff.as_secs()
        );
        if pause_or_stop(backoff, &mut stopping).await {
            return;
        }
        backoff = (backoff * 2).min(RESTART_BACKOFF_MAX);
    }
}

/// Wait `pause`; true if the pool is stopping (then return at once).
async fn pause_or_stop(pause: Duration, stopping: &mut tokio::sync::watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(pause) => {},
        _ = stopped(stopping) => {},
    }
    *stopping.borrow()
}

/// Resolves once the pool is stopping.
async fn stopped(stopping: &mut tokio::sync::watch::Receiver<bool>) {
    // An error means the sender is gone: the runner is ending, so treat it as a stop.
    let _ = stopping.wait_for(|s| *s).await;
}

/// Ask a partition to stop cleanly (SIGTERM); kill it if it has not within [`STOP_GRACE`].
async fn terminate(child: &mut tokio::process::Child) {
    if let Some(pid) = child.id() {
        let _ = tokio::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await;
    }
    if tokio::time::timeout(STOP_GRACE, child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
}

/// Environment variable choosing the log format of a partition: `json` (the default of
/// `serve`) or `text` (what the local runner gives its partitions unless it is set).
pub const LOG_FORMAT_VAR: &str = "KEYSTEAD_LOG_FORMAT";

/// What to do once a local pool runs, after `alias khsm="kubectl hsm --pool DIR/pool.json"`:
/// the ceremony, the role that key operations need, a first key. The README shows the same
/// lines (a test holds them equal), so printing and documentation cannot drift apart.
pub const NEXT_STEPS: &str = r#"for c in c1 c2 c3; do khsm sd keygen --name $c --out-dir custodians; done
khsm sd download --cert custodians/c1.cer --cert custodians/c2.cer --cert custodians/c3.cer --quorum 2 --out sd.json
khsm role assignment create --role "Managed HSM Crypto User" --principal local-admin
khsm key create k1 --kty EC --curve P-256"#;

fn announce(opts: &LocalOptions, pool: &PoolFile) -> anyhow::Result<()> {
    let dir = std::path::absolute(&opts.dir)?;
    println!(
        "Keystead local pool '{}' is running with {} partition(s):",
        opts.pool_name,
        pool.endpoints.len()
    );
    for ep in &pool.endpoints {
        println!("  {ep}");
    }
    println!("Pool file:        {}", dir.join("pool.json").display());
    println!("CA bundle:        {}", pool.ca_file.display());
    println!(
        "Admin token file: {} (principal '{ADMIN_SUBJECT}')",
        pool.admin_token_file.display()
    );
    println!();
    if let Some(primary) = &opts.extend {
        println!(
            "This pool is region '{}', a replica region of the pool of {}: it receives the primary's",
            opts.pool_name,
            primary.display()
        );
        println!(
            "security domain when it joins (no ceremony) and follows its changes; writes sent"
        );
        println!("here are forwarded to the primary. The primary's admin token works here too.");
        println!(
            "  kubectl hsm --pool {} region status",
            dir.join("pool.json").display()
        );
        println!("Stop with Ctrl-C; run the same command again to resume this pool.");
        return Ok(());
    }
    println!("Next steps (security-domain ceremony, a role for key operations, a first key):");
    println!(
        "  alias khsm=\"kubectl hsm --pool {}\"",
        dir.join("pool.json").display()
    );
    for line in NEXT_STEPS.lines() {
        println!("  {line}");
    }
    println!("Stop with Ctrl-C; run the same command again to resume this pool.");

    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_printed_next_steps_are_the_readmes() {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
            .expect("README.md");
        assert!(
            readme.contains(&format!("{NEXT_STEPS}\n```")),
            "README.md must show the runner's next steps (local::NEXT_STEPS) verbatim, right after the khsm alias:\n{NEXT_STEPS}"
        );
        assert!(NEXT_STEPS.contains(&format!("--principal {ADMIN_SUBJECT}")));
    }
}
