//! The consensus layer: how a [`Command`] becomes durable and reaches [`PoolState::apply`].
//!
//! [`Store`] is what the services use: either the single-partition log of a pool of one
//! ([`single`], no peers configured) or the Raft group of a replicated pool ([`raft`]), which
//! commits the same commands before they are applied on every partition. Nothing here knows
//! HTTP or the services above it.

pub mod raft;
pub mod region;
pub mod single;

use crate::state::{ChangeHook, Command, Outcome, PoolState, StateError};
use single::SingleStore;
use std::path::Path;
use std::sync::{Arc, RwLockReadGuard};

/// The partition's state: a single-partition log or the pool's Raft group.
pub struct Store {
    backend: Backend,
    /// Set in a replica region: where region-replicated commands go.
    forwarder: std::sync::RwLock<Option<Arc<dyn region::PrimaryForwarder>>>,
    /// Set on a partition with a region write lease: refuses a primary's changes while no
    /// region has polled it for the lease.
    lease: std::sync::RwLock<Option<Arc<dyn region::WriteLease>>>,
    /// Set in a pool with region configuration: brings the forwarder up to date with the
    /// region state before a change of keys or RBAC.
    router: std::sync::OnceLock<region::Router>,
}

enum Backend {
    Single(Box<SingleStore>),
    Raft(Arc<raft::Replica>),
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.backend {
            Backend::Single(s) => s.fmt(f),
            Backend::Raft(r) => r.fmt(f),
        }
    }
}

impl Store {
    /// Open (or create) a single-partition store in `dir`.
    pub fn open(dir: &Path) -> anyhow::Result<Arc<Store>> {
        Ok(Arc::new(Store {
            backend: Backend::Single(Box::new(SingleStore::open(dir)?)),
            forwarder: Default::default(),
            lease: Default::default(),
            router: Default::default(),
        }))
    }

    /// A store backed by the pool's Raft group.
    pub fn replicated(replica: Arc<raft::Replica>) -> Arc<Store> {
        Arc::new(Store {
            backend: Backend::Raft(replica),
            forwarder: Default::default(),
            lease: Default::default(),
            router: Default::default(),
        })
    }

    /// Register the hook told of every state change from now on (once; later calls are
    /// ignored). The keyring uses it to evict key material on every partition.
    pub fn on_change(&self, hook: ChangeHook) {
        let _ = match &self.backend {
            Backend::Single(s) => s.on_change.set(hook),
            Backend::Raft(r) => r.sm.on_change.set(hook),
        };
    }

    /// The Raft member, in a replicated pool.
    pub fn replica(&self) -> Option<&Arc<raft::Replica>> {
        match &self.backend {
            Backend::Single(_) => None,
            Backend::Raft(r) => Some(r),
        }
    }

    /// Read the current state (call [`Store::read_barrier`] first to see every committed
    /// change in a replicated pool).
    pub fn read(&self) -> RwLockReadGuard<'_, PoolState> {
        match &self.backend {
            Backend::Single(s) => s.read(),
            Backend::Raft(r) => r.sm.state.read().unwrap_or_else(|p| p.into_inner()),
        }
    }

    /// Index of the last applied command.
    pub fn applied_index(&self) -> u64 {
        match &self.backend {
            Backend::Single(s) => s.applied_index(),
            Backend::Raft(r) => r.sm.applied().map(|l| l.index).unwrap_or(0),
        }
    }

    /// Commit a command (through the leader in a replicated pool; through the primary
    /// region for a change of keys or RBAC in a replica region) and apply it.
    pub async fn propose(&self, cmd: Command) -> Result<Outcome, ProposeError> {
        if cmd.is_region_replicated()
            && let Some(route) = self.router.get()
        {
            route();
        }
        if let Some(f) = self.forwarder_for(&cmd) {
            return self.propose_in_region(f.as_ref(), cmd).await;
        }
        if let Some(why) = self.lease_refusal(&cmd) {
            return Err(ProposeError::LeaseExpired(why));
        }
        self.propose_local(cmd).await
    }

    /// Commit a command through this pool's own group, whatever its region role (the
    /// region follower applies the primary's changes with it).
    pub async fn propose_local(&self, cmd: Command) -> Result<Outcome, ProposeError> {
        match &self.backend {
            Backend::Single(s) => s.propose(cmd),
            Backend::Raft(r) => r.propose(cmd).await,
        }
    }

    /// Commit a command on a single-partition store (synchronous; used at bootstrap).
    pub fn propose_single(&self, cmd: Command) -> Result<Outcome, ProposeError> {
        match &self.backend {
            Backend::Single(s) => s.propose(cmd),
            Backend::Raft(_) => Err(ProposeError::Storage(
                "a replicated store commits asynchronously".into(),
            )),
        }
    }

    /// The read-index barrier alone (without waiting for the pool to be bootstrapped).
    pub async fn read_barrier_raw(&self) -> Result<(), ProposeError> {
        match &self.backend {
            Backend::Single(_) => Ok(()),
            Backend::Raft(r) => r.read_barrier().await,
        }
    }

    /// Wait until this partition's state includes every change committed before the call
    /// (read-index through the leader), and until the pool is bootstrapped.
    pub async fn read_barrier(&self) -> Result<(), ProposeError> {
        let Backend::Raft(r) = &self.backend else {
            return Ok(());
        };
        r.read_barrier().await?;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !self.read().bootstrapped {
            if std::time::Instant::now() >= deadline {
                return Err(ProposeError::Storage(
                    "the pool is not bootstrapped yet; its partitions are still forming the group"
                        .into(),
                ));
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            r.read_barrier().await?;
        }
        Ok(())
    }
}

/// Errors of a proposal: refused by the state machine, or not durable.
#[derive(Debug, thiserror::Error)]
pub enum ProposeError {
    #[error(transparent)]
    Refused(#[from] StateError),
    #[error("the change could not be made durable: {0}")]
    Storage(String),
    /// The change may or may not have been committed (the leader was lost mid-way).
    #[error("the outcome of the change is unknown: {0}")]
    Uncertain(String),
    /// A replica region could not reach its primary region (nothing was changed).
    #[error("{0}")]
    PrimaryUnreachable(String),
    /// A primary region's write lease ran out (nothing was changed).
    #[error("{0}")]
    LeaseExpired(String),
}
