//! One running partition: configuration, state, keyring, authentication and audit.

use super::error::Error;
use crate::audit::{AuditSink, AuditSinkConfig};
use crate::auth::{AuthConfig, IssuerConfig, JwksSource, TokenValidator};
use crate::config::{PartitionConfig, SealMode};
use crate::consensus::Store;
use crate::keyring::Keyring;
use crate::state::{Activation, Command, Settings};
use anyhow::Context;
use keystead_core::sd::{DomainSecret, ExchangeKey};
use std::path::PathBuf;
use std::sync::Arc;
use zeroize::Zeroizing;

pub struct App {
    pub cfg: PartitionConfig,
    pub store: Arc<Store>,
    /// Also held by the store's change hook, which evicts key material on apply.
    pub keyring: Arc<Keyring>,
    /// RSA key generation, off the request workers and bounded (`limits`).
    pub keygen: crate::keygen::KeyGenerator,
    pub validator: TokenValidator,
    pub audit: AuditSink,
    /// Serialises the security-domain ceremony steps.
    pub sd_lock: tokio::sync::Mutex<()>,
    /// The one-time exchange key of a pending recovery (memory only).
    pub exchange: tokio::sync::Mutex<Option<ExchangeKey>>,
    pub upload_status: tokio::sync::Mutex<Option<(String, String)>>,
    /// Backup and restore jobs started on this partition.
    pub jobs: super::backup::job::Jobs,
    /// Region replication (docs/regions.md).
    pub regions: crate::region::Regions,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("partition", &self.cfg.partition_id)
            .finish_non_exhaustive()
    }
}

fn auth_config(cfg: &PartitionConfig) -> AuthConfig {
    AuthConfig {
        audience: cfg.audience(),
        issuers: cfg
            .auth
            .issuers
            .iter()
            .map(|i| IssuerConfig {
                issuer: i.issuer.clone(),
                audiences: i.audiences.clone(),
                principal_prefix: i.principal_prefix.clone(),
                jwks: match &i.jwks_file {
                    Some(f) => JwksSource::File(f.clone()),
                    None => JwksSource::Discovery {
                        ca_file: i.ca_file.clone(),
                        bearer_token_file: i.bearer_token_file.clone(),
                    },
                },
            })
            .collect(),
        leeway_secs: 60,
    }
}

pub(super) fn bootstrap_command(cfg: &PartitionConfig) -> Command {
    Command::Bootstrap {
        settings: Settings {
            pool_name: cfg.pool_name.clone(),
            pool_id: uuid::Uuid::new_v4().to_string(),
            soft_delete_retention_days: cfg.soft_delete_retention_days,
            purge_protection: cfg.purge_protection,
        },
        administrators: cfg.initial_administrators.clone(),
    }
}

impl App {
    /// Open the partition's data directory, bootstrap a new pool, unseal a sealed domain.
    pub fn open(cfg: PartitionConfig) -> anyhow::Result<Arc<App>> {
        anyhow::ensure!(
            cfg.peers.is_empty(),
            "this partition has peers: open it with App::open_replicated"
        );
        let store = Store::open(&cfg.data_dir.join("state"))?;
        if !store.read().bootstrapped {
            store
                .propose_single(bootstrap_command(&cfg))
                .map_err(|e| anyhow::anyhow!("cannot bootstrap the pool: {e}"))?;
        }
        let app = Self::with_store(cfg, store, Default::default())?;
        app.unseal_from_disk()?;
        Ok(app)
    }

    pub(super) fn with_store(
        cfg: PartitionConfig,
        store: Arc<Store>,
        regions: crate::region::Regions,
    ) -> anyhow::Result<Arc<App>> {
        let signer = match crate::audit::CheckpointSigner::from_pem_file(
            &cfg.partition_id,
            &cfg.tls.key_file,
        ) {
            Ok(s) => Some(Arc::new(s)),
            Err(e) => {
                tracing::warn!(error = %e, "audit checkpoints are not signed");
                None
            }
        };
        let audit = AuditSink::open(&AuditSinkConfig {
            path: cfg.audit_file(),
            stdout: cfg.audit.stdout,
            signer,
        })
        .context("cannot open the audit log")?;
        let keyring = Arc::new(Keyring::default());
        {
            let keyring = keyring.clone();
            store.on_change(Box::new(move |change| keyring.forget(change)));
        }
        let app = Arc::new(App {
            validator: TokenValidator::new(auth_config(&cfg)),
            store,
            keyring,
            keygen: crate::keygen::KeyGenerator::new(cfg.limits.key_generations()),
            audit,
            sd_lock: Default::default(),
            exchange: Default::default(),
            upload_status: Default::default(),
            jobs: Default::default(),
            regions,
            cfg,
        });
        Ok(app)
    }

    fn sealed_path(&self) -> PathBuf {
        self.cfg.data_dir.join("domain.sealed")
    }

    fn sealing_key(&self) -> anyhow::Result<Option<Zeroizing<[u8; 32]>>> {
        if self.cfg.seal.mode != SealMode::SealingKeyFile {
            return Ok(None);
        }
        let path = self
            .cfg
            .seal
            .key_file
            .as_ref()
            .context("seal.keyFile is not set")?;
        let bytes = Zeroizing::new(
            std::fs::read(path)
                .with_context(|| format!("cannot read the sealing key {}", path.display()))?,
        );
        let key: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
            anyhow::anyhow!(
                "the sealing key {} must be exactly 32 bytes, it has {}",
                path.display(),
                bytes.len()
            )
        })?;
        Ok(Some(Zeroizing::new(key)))
    }

    pub(super) fn unseal_from_disk(&self) -> anyhow::Result<()> {
        let Activation::Activated { fingerprint, .. } = self.store.read().activation.clone() else {
            return Ok(());
        };
        let Some(key) = self.sealing_key()? else {
            tracing::warn!(
                "the pool is activated but seal mode is memoryOnly: this partition waits for the domain from a peer or an upload"
            );
            return Ok(());
        };
        let path = self.sealed_path();
        if !path.exists() {
            tracing::warn!(path = %path.display(), "no sealed domain on disk; this partition waits for the domain from a peer or an upload");
            return Ok(());
        }
        let sealed = std::fs::read(&path)?;
        let secret = DomainSecret::from_sealed_bytes(&sealed, &key).map_err(|e| {
            anyhow::anyhow!(
                "the sealed domain {} does not open with the sealing key: {e}",
                path.display()
            )
        })?;
        anyhow::ensure!(
            secret.fingerprint() == fingerprint,
            "the sealed domain on disk ({}) is not the pool's domain ({fingerprint})",
            secret.fingerprint()
        );
        self.keyring.install(secret);
        tracing::info!(fingerprint = %fingerprint, "security domain unsealed from disk");
        Ok(())
    }

    /// Hold a domain received from a peer: seal it to disk (if configured), then keep it in
    /// memory.
    /// Drop the domain from memory and from this partition's disk (a region its primary
    /// removed: what stays of its state is key material no one can unwrap any more).
    pub fn shred_domain(&self) {
        self.keyring.shred();
        match std::fs::remove_file(self.sealed_path()) {
            Ok(()) => tracing::warn!(
                "the sealed security domain was deleted from this partition (the region was removed by its primary)"
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::error!(error = %e, "cannot delete the sealed security domain of a removed region")
            }
        }
    }

    pub fn install_domain(&self, secret: DomainSecret) -> anyhow::Result<()> {
        self.seal_to_disk(&secret)
            .map_err(|e| anyhow::anyhow!("{}", e.message))?;
        self.keyring.install(secret);
        Ok(())
    }

    fn seal_to_disk(&self, secret: &DomainSecret) -> Result<(), Error> {
        if let Some(key) = self
            .sealing_key()
            .map_err(|e| Error::internal(e.to_string()))?
        {
            let sealed = secret.to_sealed_bytes(&key);
            crate::fsutil::write_atomically(&self.sealed_path(), &sealed)
                .map_err(|e| Error::internal(format!("cannot seal the domain to disk: {e}")))?;
        }
        Ok(())
    }

    /// Commit activation by `secret`: seal it to disk first (if configured), then commit,
    /// then hold it in memory.
    pub async fn activate(&self, secret: DomainSecret) -> Result<(), Error> {
        let fingerprint = secret.fingerprint();
        self.seal_to_disk(&secret)?;
        self.store
            .propose(Command::Activate {
                domain_id: secret.metadata().domain_id.clone(),
                fingerprint,
                now: super::now(),
            })
            .await?;
        self.keyring.install(secret);
        Ok(())
    }
}
