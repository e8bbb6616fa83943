//! A partition of a replicated pool: its Raft member starts first, then, in the
//! background, the group forms (or is joined), a new pool is bootstrapped, and the domain is
//! obtained from the sealed copy on disk or from a healthy peer.

use super::app::{App, bootstrap_command};
use super::sd::fetch_domain;
use crate::config::PartitionConfig;
use crate::consensus::raft::Replica;
use crate::consensus::{ProposeError, Store};
use crate::region::Regions;
use keystead_core::region::RegionConfig;
use std::sync::Arc;

impl App {
    /// Open a partition of a replicated pool: start its Raft member, then (in the
    /// background) form or join the group, bootstrap a new pool, and obtain the domain from
    /// the sealed copy on disk or from a healthy peer. Serve the router right after this.
    pub async fn open_replicated(cfg: PartitionConfig) -> anyhow::Result<Arc<App>> {
        Self::open_in_region(cfg, None).await
    }

    /// [`App::open_replicated`] with a region configuration (docs/regions.md): a replica
    /// region forwards its writes to the primary and follows the primary's changes.
    pub async fn open_in_region(
        cfg: PartitionConfig,
        region: Option<RegionConfig>,
    ) -> anyhow::Result<Arc<App>> {
        let regions = Regions::new(region, &cfg)?;
        let replica = Replica::start(&cfg).await?;
        let store = Store::replicated(replica);
        // A replica region forwards its writes from the first request on.
        regions.reconcile(&store);
        if let Some(lease) = &regions.lease {
            store.set_write_lease(lease.clone());
        }
        let app = App::with_store(cfg, store, regions)?;
        let weak = Arc::downgrade(&app);
        app.store.set_router(Box::new(move || {
            if let Some(app) = weak.upgrade() {
                app.regions.reconcile(&app.store);
            }
        }));
        let a = app.clone();
        tokio::spawn(async move { a.replication_tasks().await });
        // Every partition of a replicated pool: idle until it follows a primary region
        // (configured, or after a switchover).
        tokio::spawn(super::regions::follow::run(app.clone()));
        tokio::spawn(super::regions::lease::run(app.clone()));
        Ok(app)
    }

    async fn replication_tasks(self: Arc<Self>) {
        // Bootstrap a new pool once the group has a leader (duplicates are refused).
        loop {
            if self.store.read_barrier_raw().await.is_ok() {
                if self.store.read().bootstrapped {
                    break;
                }
                match self.store.propose(bootstrap_command(&self.cfg)).await {
                    Ok(_) | Err(ProposeError::Refused(_)) => break,
                    Err(e) => tracing::debug!(error = %e, "bootstrap not committed yet"),
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        // Obtain the domain whenever the pool is activated and this partition lacks it.
        let Some(replica) = self.store.replica().cloned() else {
            return;
        };
        loop {
            let notified = replica.sm.activation_changed.notified();
            if self.store.read().is_activated() && !self.keyring.is_unsealed() {
                if let Err(e) = self.unseal_from_disk() {
                    tracing::warn!(error = %e, "the sealed domain on disk is unusable");
                }
                if !self.keyring.is_unsealed() {
                    match fetch_domain(&self).await {
                        Ok(true) => {}
                        Ok(false) => tracing::info!(
                            "no peer could hand over the security domain yet; retrying"
                        ),
                        Err(e) => {
                            tracing::warn!(error = %e, "fetching the security domain failed; retrying")
                        }
                    }
                }
            }
            tokio::select! {
                _ = notified => {},
                _ = tokio::time::sleep(std::time::Duration::from_secs(2)) => {},
            }
        }
    }
}
