//! `keystead-partition local --dir DIR`: a whole pool on this machine.
//!
//! The runner generates (once) a CA, a token issuer, each partition's TLS certificate,
//! sealing key and configuration under `DIR`, starts one `keystead-partition serve` process
//! per partition on loopback, waits until they answer, writes `DIR/pool.json`, and stops
//! them cleanly on Ctrl-C (SIGINT) or SIGTERM. Running it again resumes the same pool.

use crate::auth::LocalIssuer;
use crate::config::{
    AuditSettings, AuthSettings, IssuerSettings, PartitionConfig, PeerSettings, SealMode,
    SealSettings, TlsFiles,
};
use crate::pki;
use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Principal of the administrator token the runner writes.
pub const ADMIN_SUBJECT: &str = "local-admin";
/// How long tokens minted by the runner stay valid.
pub const TOKEN_TTL: Duration = Duration::from_secs(12 * 3600);

/// `DIR/pool.json`: how clients and tools find the pool.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PoolFile {
    pub endpoints: Vec<String>,
    pub ca_file: PathBuf,
    pub admin_token_file: PathBuf,
    pub issuer: String,
    /// Where the local issuer's key lives (for `kubectl hsm token`).
    pub issuer_dir: PathBuf,
    pub audience: String,
}

impl PoolFile {
    pub fn load(path: &Path) -> anyhow::Result<PoolFile> {
        let text = std::fs::read_to_string(path).with_context(|| {
            format!(
                "cannot read {} (start a pool with `keystead-partition local --dir DIR`)",
                path.display()
            )
        })?;
        serde_json::from_str(&text)
            .with_context(|| format!("{} is not a pool file", path.display()))
    }
}

pub struct LocalOptions {
    pub dir: PathBuf,
    pub partitions: usize,
    pub pool_name: String,
}

fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut f = crate::store::restricted_create(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}

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
        let issuer_dir = dir.join("issuer");
        std::fs::create_dir_all(&issuer_dir)?;
        let issuer = LocalIssuer::load_or_create(&issuer_dir, &issuer_url(pool_name))?;
        let jwks_file = issuer_dir.join("jwks.json");
        std::fs::write(&jwks_file, serde_json::to_vec_pretty(&issuer.jwks())?)?;
        let secrets = dir.join("secrets");
        std::fs::create_dir_all(&secrets)?;
        Ok(LocalPki {
            dir,
            pool_name: pool_name.to_string(),
            ca,
            ca_file,
            issuer,
            jwks_file,
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
                    audience: Some(local_audience(&self.pool_name)),
                    authority: "https://login.keystead.local/keystead".into(),
                    issuers: vec![IssuerSettings {
                        issuer: issuer_url(&self.pool_name),
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
    let pki = LocalPki::open_or_create(&opts.dir, &opts.pool_name)?;
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
        let (cfg_path, cfg) = pki.partition(&format!("p{i}"), port, &peers)?;
        endpoints.push(cfg.public_url.clone());
        configs.push(cfg_path);
        // The configurations of a resumed pool keep the audience they were created with.
        audience.get_or_insert_with(|| cfg.audience());
    }
    let audience = audience.unwrap_or_else(|| local_audience(&opts.pool_name));
    let token_file = pki.dir.join("admin.token");
    let token = pki.issuer.issue(ADMIN_SUBJECT, &audience, TOKEN_TTL)?;
    write_private(&token_file, token.as_bytes())?;
    let pool = PoolFile {
        endpoints,
        ca_file: pki.ca_file.clone(),
        admin_token_file: token_file,
        issuer: issuer_url(&opts.pool_name),
        issuer_dir: pki.dir.join("issuer"),
        audience,
    };
    std::fs::write(pki.dir.join("pool.json"), serde_json::to_vec_pretty(&pool)?)?;
    Ok((configs, pool))
}

/// Wait until every endpoint answers `/healthz` over TLS, or the deadline passes.
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

/// Run the pool until Ctrl-C / SIGTERM.
pub async fn run(opts: LocalOptions) -> anyhow::Result<()> {
    // Signals are handled from the start: a stop while the partitions are starting is clean too.
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let (configs, pool) = prepare(&opts)?;
    let exe = std::env::current_exe()?;
    let mut children = Vec::new();
    for cfg in &configs {
        let child = tokio::process::Command::new(&exe)
            .arg("serve")
            .arg("--config")
            .arg(cfg)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start a partition with {}", cfg.display()))?;
        children.push(child);
    }
    let ready = tokio::select! {
        r = wait_ready(&pool, Duration::from_secs(60)) => Some(r),
        _ = sigint.recv() => None,
        _ = sigterm.recv() => None,
    };
    match ready {
        Some(Ok(())) => {
            announce(&opts, &pool)?;
            let mut exited = None;
            tokio::select! {
                _ = sigint.recv() => {},
                _ = sigterm.recv() => {},
                r = children[0].wait() => { exited = Some(r); },
            }
            if let Some(r) = exited {
                eprintln!("a partition exited unexpectedly ({r:?}); stopping the pool");
            }
            stop_all(&mut children).await;
            println!("Keystead local pool stopped.");
            Ok(())
        }
        Some(Err(e)) => {
            stop_all(&mut children).await;
            Err(e)
        }
        None => {
            stop_all(&mut children).await;
            println!("Keystead local pool stopped.");
            Ok(())
        }
    }
}

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
    println!("Next steps (security-domain ceremony, then keys):");
    println!(
        "  kubectl hsm sd keygen --name custodian1 --out-dir custodians   # ×3: custodian1..3"
    );
    println!(
        "  kubectl hsm sd download --pool {} --cert custodians/custodian1.cer --cert custodians/custodian2.cer --cert custodians/custodian3.cer --quorum 2 --out sd.json",
        dir.join("pool.json").display()
    );
    println!(
        "  kubectl hsm key create --pool {} --name k1 --kty EC --curve P-256",
        dir.join("pool.json").display()
    );
    println!("Stop with Ctrl-C; run the same command again to resume this pool.");

    Ok(())
}

async fn stop_all(children: &mut [tokio::process::Child]) {
    for c in children.iter_mut() {
        if let Some(pid) = c.id() {
            // Ask each partition to stop cleanly (it may already have the terminal's SIGINT).
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
    }
    for c in children.iter_mut() {
        match tokio::time::timeout(Duration::from_secs(10), c.wait()).await {
            Ok(_) => {}
            Err(_) => {
                let _ = c.kill().await;
            }
        }
    }
}
