//! A replica region's writes (docs/regions.md): a region-replicated command is forwarded to
//! the primary region, which commits it; this partition answers once its own region has
//! applied that primary index, with what its own state machine produced (read-your-writes).

use super::{ProposeError, Store};
use crate::state::{Command, Outcome, PoolState};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// How long a forwarded write waits for this region to apply it.
const APPLY_WAIT: Duration = Duration::from_secs(10);

/// The future of a forwarded write: the primary index it was committed at.
pub type Forwarded<'a> = Pin<Box<dyn Future<Output = Result<u64, ProposeError>> + Send + 'a>>;

/// Sends a command to the primary region (implemented by `region::link`).
pub trait PrimaryForwarder: Send + Sync {
    fn forward<'a>(&'a self, cmd: &'a Command) -> Forwarded<'a>;
}

/// Brings a store's forwarder up to date with the region state (set by the services, which
/// hold the region runtime): a write never goes to a primary the state has moved away from.
pub type Router = Box<dyn Fn() + Send + Sync>;

/// A primary region's write lease (implemented by `region::lease`; docs/regions.md "Write
/// lease"): why a change of keys or RBAC cannot be made now, if it cannot.
pub trait WriteLease: Send + Sync {
    fn refusal(&self, st: &PoolState) -> Option<String>;
}

impl Store {
    /// Route region-replicated commands to a primary region from now on (`None`: this pool
    /// is a primary and commits them itself). A write that races the switch is refused by
    /// the state machine's region fence, the same way on every partition.
    pub fn set_primary_forwarder(&self, f: Option<Arc<dyn PrimaryForwarder>>) {
        *self.forwarder.write().unwrap_or_else(|p| p.into_inner()) = f;
    }

    /// Route each change of keys or RBAC with `router` first (once; later calls are ignored).
    pub fn set_router(&self, router: Router) {
        let _ = self.router.set(router);
    }

    /// Run with a region write lease from now on.
    pub fn set_write_lease(&self, lease: Arc<dyn WriteLease>) {
        *self.lease.write().unwrap_or_else(|p| p.into_inner()) = Some(lease);
    }

    /// Why the write lease refuses `cmd` now (None: no lease, not a change of keys or RBAC,
    /// or the lease holds).
    pub fn lease_refusal(&self, cmd: &Command) -> Option<String> {
        if !cmd.is_region_replicated() {
            return None;
        }
        let lease = self
            .lease
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()?;
        lease.refusal(&self.read())
    }

    /// Whether `cmd` is to be forwarded to the primary region.
    pub(super) fn forwarder_for(&self, cmd: &Command) -> Option<Arc<dyn PrimaryForwarder>> {
        if !cmd.is_region_replicated() {
            return None;
        }
        self.forwarder
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Forward `cmd` to the primary and wait until this region has applied it.
    pub(super) async fn propose_in_region(
        &self,
        f: &dyn PrimaryForwarder,
        cmd: Command,
    ) -> Result<Outcome, ProposeError> {
        let index = f.forward(&cmd).await?;
        let Some(replica) = self.replica() else {
            return Err(ProposeError::Storage(
                "a replica region must be a replicated pool".into(),
            ));
        };
        let mut applied = replica.sm.region_applied.subscribe();
        let waited = tokio::time::timeout(APPLY_WAIT, applied.wait_for(|a| *a >= index)).await;
        if !matches!(waited, Ok(Ok(_))) {
            return Err(ProposeError::Uncertain(format!(
                "the primary region committed the change at its index {index}, but this region has not applied it within {}s (see the region lag in /admin/status)",
                APPLY_WAIT.as_secs()
            )));
        }
        match replica.sm.take_region_outcome(index) {
            Some(r) => r.map_err(ProposeError::Refused),
            None => Err(ProposeError::Uncertain(format!(
                "the primary region committed the change at its index {index} and this region has it, but caught up from a snapshot and kept no result; read the resource to see it"
            ))),
        }
    }
}
