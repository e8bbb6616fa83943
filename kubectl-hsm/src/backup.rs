//! `kubectl hsm backup ...`: full backup and restore of a pool.
//!
//! `start`, `status` and `restore` ask the pool (it reads and writes the store with the
//! credentials in the request); `list` and `verify` read the store from this machine, with
//! credentials from the flags or the environment (`AWS_*`, `AZURE_STORAGE_*`, `GOOGLE_*`).

use crate::client::{Client, Output, PoolArgs, print_json};
use anyhow::Context;
use clap::{Args, Subcommand};
use keystead_core::{backup_read as backup, store as dest};
use reqwest::Method;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Args, Debug, Clone)]
pub struct StoreArgs {
    /// File holding a SAS token for an Azure Blob container (never passed on the command line).
    #[arg(long)]
    pub sas_token_file: Option<PathBuf>,
    /// The pool uses its own credentials (workload identity / environment) for the store.
    #[arg(long)]
    pub use_managed_identity: bool,
    /// An object_store option KEY=VALUE (e.g. aws_endpoint=http://127.0.0.1:9000); repeatable.
    #[arg(long = "storage-option", value_name = "KEY=VALUE")]
    pub storage_options: Vec<String>,
}

impl StoreArgs {
    fn params(&self, uri: &str) -> anyhow::Result<dest::StorageParameters> {
        let token = match &self.sas_token_file {
            Some(f) => Some(
                std::fs::read_to_string(f)
                    .with_context(|| format!("cannot read the SAS token file {}", f.display()))?
                    .trim()
                    .to_string(),
            ),
            None => None,
        };
        let mut storage_options = std::collections::BTreeMap::new();
        for o in &self.storage_options {
            let (k, v) = o
                .split_once('=')
                .with_context(|| format!("--storage-option '{o}' is not KEY=VALUE"))?;
            storage_options.insert(k.trim().to_string(), v.to_string());
        }
        Ok(dest::StorageParameters {
            storage_resource_uri: uri.to_string(),
            token,
            use_managed_identity: Some(self.use_managed_identity),
            storage_options,
        })
    }

    fn json(&self, uri: &str) -> anyhow::Result<Value> {
        let p = self.params(uri)?;
        let mut v = json!({
            "storageResourceUri": p.storage_resource_uri,
            "useManagedIdentity": self.use_managed_identity,
        });
        if let Some(t) = p.token {
            v["token"] = json!(t);
        }
        if !p.storage_options.is_empty() {
            v["storageOptions"] = json!(p.storage_options);
        }
        Ok(v)
    }
}

#[derive(Subcommand, Debug)]
pub enum BackupCommand {
    /// Start a full backup into a store (https://ACCOUNT.blob.core.windows.net/CONTAINER,
    /// s3://BUCKET/PREFIX, gs://BUCKET/PREFIX or file:///PATH on the partition).
    Start {
        /// Where backup folders go.
        #[arg(long)]
        to: String,
        #[command(flatten)]
        store: StoreArgs,
        /// Wait for the job to finish and print the backup folder URL.
        #[arg(long)]
        wait: bool,
    },
    /// Show a backup or restore job.
    Status {
        job: String,
        /// The job is a restore (full or one key).
        #[arg(long)]
        restore: bool,
    },
    /// List the backups under a store location (read from this machine).
    List {
        from: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Check a backup folder's manifest and every chunk's size and SHA-256 (read from this
    /// machine); with --with-pool the pool also checks the MAC and decrypts every chunk.
    Verify {
        /// The backup folder URL (as printed by `start`).
        folder_url: String,
        #[command(flatten)]
        store: StoreArgs,
        /// Also have the pool verify that the backup decrypts under its security domain.
        #[arg(long)]
        with_pool: bool,
    },
    /// Restore a backup folder into the pool: all keys, soft-deleted keys and role
    /// assignments (a restore point is written first), or one key with --key.
    Restore {
        folder_url: String,
        /// Restore only this key, with all its versions (it must not exist in the pool).
        #[arg(long)]
        key: Option<String>,
        #[command(flatten)]
        store: StoreArgs,
        /// Wait for the job to finish.
        #[arg(long)]
        wait: bool,
    },
}

/// Open a store from this machine (`list`, `verify` without the pool).
fn open_here(params: &dest::StorageParameters) -> anyhow::Result<dest::Destination> {
    if dest::claim_of(&params.storage_resource_uri).is_some() {
        anyhow::bail!(
            "{} is a PersistentVolumeClaim inside the cluster, not readable from here; verify it through the pool (`kubectl hsm backup verify URL --with-pool`) or mount the claim and give its file:// path",
            params.storage_resource_uri.trim()
        );
    }
    dest::open(params, &dest::LocalPaths::anywhere()).map_err(anyhow::Error::msg)
}

async fn wait_job(c: &Client, pending: &str) -> anyhow::Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(3600);
    loop {
        let v: Value = c.call::<Value, _>(Method::GET, pending, None).await?;
        if v["status"] != "InProgress" {
            return Ok(v);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the job is still running after an hour; check it later with `kubectl hsm backup status`"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn report(out: Output, v: &Value) -> anyhow::Result<()> {
    if out == Output::Json {
        print_json(v)?;
    } else {
        for k in [
            "jobId",
            "status",
            "statusDetails",
            "azureStorageBlobContainerUri",
        ] {
            if let Some(s) = v[k].as_str() {
                println!("{k:<30}{s}");
            }
        }
    }
    if v["status"] == "Failed" {
        anyhow::bail!(
            "{} ({})",
            v["error"]["message"].as_str().unwrap_or("the job failed"),
            v["error"]["code"].as_str().unwrap_or("Failed")
        );
    }
    Ok(())
}

async fn submit(
    pool: &PoolArgs,
    method: Method,
    path: &str,
    body: Value,
    wait: bool,
    pending_prefix: &str,
) -> anyhow::Result<()> {
    let c = pool.client()?;
    let v: Value = c.call(method, path, Some(&body)).await?;
    let job = v["jobId"]
        .as_str()
        .context("the pool answered without a jobId")?;
    let v = if wait {
        wait_job(&c, &format!("{pending_prefix}/{job}/pending")).await?
    } else {
        v
    };
    report(pool.output, &v)
}

pub async fn run(pool: &PoolArgs, cmd: BackupCommand) -> anyhow::Result<()> {
    match cmd {
        BackupCommand::Start { to, store, wait } => {
            submit(
                pool,
                Method::POST,
                "/backup",
                store.json(&to)?,
                wait,
                "/backup",
            )
            .await
        }
        BackupCommand::Status { job, restore } => {
            let c = pool.client()?;
            let kind = if restore { "restore" } else { "backup" };
            let v: Value = c
                .call::<Value, _>(Method::GET, &format!("/{kind}/{job}/pending"), None)
                .await?;
            report(pool.output, &v)
        }
        BackupCommand::List { from, store } => {
            let d = open_here(&store.params(&from)?)?;
            let listed = backup::list_backups(&d).await?;
            if pool.output == Output::Json {
                let v: Vec<Value> = listed
                    .iter()
                    .map(|l| match &l.manifest {
                        Ok(m) => json!({"folder": l.folder, "url": d.folder_url(&l.folder), "manifest": m.body}),
                        Err(e) => json!({"folder": l.folder, "url": d.folder_url(&l.folder), "error": e.to_string()}),
                    })
                    .collect();
                return print_json(&v);
            }
            println!(
                "{:<48} {:<22} {:>8} {:>8}  DOMAIN",
                "FOLDER", "CREATED", "KEYS", "DELETED"
            );
            for l in &listed {
                match &l.manifest {
                    Ok(m) => {
                        let created = time::OffsetDateTime::from_unix_timestamp(m.body.created)
                            .ok()
                            .and_then(|t| {
                                t.format(&time::format_description::well_known::Rfc3339)
                                    .ok()
                            })
                            .unwrap_or_default();
                        println!(
                            "{:<48} {:<22} {:>8} {:>8}  {}",
                            l.folder,
                            created,
                            m.body.key_count,
                            m.body.deleted_key_count,
                            m.body.domain_fingerprint
                        );
                    }
                    Err(e) => println!("{:<48} (unreadable: {e})", l.folder),
                }
            }
            Ok(())
        }
        BackupCommand::Verify {
            folder_url,
            store,
            with_pool,
        } => {
            let (parent, folder) = dest::split_folder(&folder_url).map_err(anyhow::Error::msg)?;
            if with_pool && dest::claim_of(&parent).is_some() {
                // Only the pool reaches the claim; it checks the digests too.
                let body =
                    json!({"sasTokenParameters": store.json(&parent)?, "folderToRestore": folder});
                return submit(pool, Method::PUT, "/prerestore", body, true, "/restore").await;
            }
            let d = open_here(&store.params(&parent)?)?;
            let m = backup::verify_digests(&d, &folder).await?;
            let total: u64 = m.body.chunks.iter().map(|c| c.size).sum();
            if pool.output == Output::Text {
                println!(
                    "manifest and {} chunks ({total} bytes) match their SHA-256 digests: {} keys, {} deleted keys, domain {}",
                    m.body.chunks.len(),
                    m.body.key_count,
                    m.body.deleted_key_count,
                    m.body.domain_fingerprint
                );
            }
            if !with_pool {
                if pool.output == Output::Json {
                    print_json(&json!({"digests": "ok", "manifest": m.body}))?;
                } else {
                    println!(
                        "(the manifest MAC and the chunks' encryption are checked with --with-pool)"
                    );
                }
                return Ok(());
            }
            let body =
                json!({"sasTokenParameters": store.json(&parent)?, "folderToRestore": folder});
            submit(pool, Method::PUT, "/prerestore", body, true, "/restore").await
        }
        BackupCommand::Restore {
            folder_url,
            key,
            store,
            wait,
        } => {
            let (parent, folder) = dest::split_folder(&folder_url).map_err(anyhow::Error::msg)?;
            let sas = store.json(&parent)?;
            match key {
                Some(name) => {
                    let body = json!({"sasTokenParameters": sas, "folder": folder});
                    submit(
                        pool,
                        Method::PUT,
                        &format!("/keys/{name}/restore"),
                        body,
                        wait,
                        "/restore",
                    )
                    .await
                }
                None => {
                    let body = json!({"sasTokenParameters": sas, "folderToRestore": folder});
                    submit(pool, Method::PUT, "/restore", body, wait, "/restore").await
                }
            }
        }
    }
}
