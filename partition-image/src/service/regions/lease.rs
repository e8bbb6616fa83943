//! The write lease across a pool (docs/regions.md "Write lease"): each partition of a
//! primary with a lease learns from its peers when a region last polled them (a region
//! polls one partition); and a forced promotion of a replica region waits until the lost
//! primary's lease has run out since any partition of the region last reached it.

use crate::service::app::App;
use crate::service::error::{Error, Kind};
use std::sync::Arc;
use std::time::Duration;

/// How often a partition with a lease asks its peers.
const REFRESH: Duration = Duration::from_millis(250);
/// What a failover adds to the primary's lease: a write the primary accepted just before
/// its lease ran out is committed within it (the commit deadline is far below a second),
/// and clocks that measure intervals may drift a little.
const LEASE_MARGIN: Duration = Duration::from_secs(2);
/// The longest a forced promotion call waits for the lease itself; beyond, it answers when
/// to try again.
const FAILOVER_WAIT: Duration = Duration::from_secs(30);

/// Run for the life of a partition with a write lease.
pub async fn run(app: Arc<App>) {
    let (Some(lease), Some(replica)) = (app.regions.lease.clone(), app.store.replica().cloned())
    else {
        return;
    };
    loop {
        let states = crate::service::members::probe(&app, &replica, None).await;
        for s in states.into_values().flatten() {
            if let Some(ms) = s.region_contact_ms {
                lease.touch(Duration::from_millis(ms));
            }
        }
        tokio::time::sleep(REFRESH).await;
    }
}

/// A forced promotion of a replica region whose primary runs a write lease of `lease_ms`:
/// wait until the lease (and a margin) has passed since any partition of this region last
/// reached the primary — from then on the old primary, if it still runs cut off from every
/// region, takes no more writes, so the promotion discards nothing it acknowledged later.
/// A partition of this region that does not answer may have reached the primary just now:
/// the wait then counts from now.
pub async fn wait_out_primary_lease(app: &App, lease_ms: u64) -> Result<(), Error> {
    let mut freshest: Option<u64> = app.regions.primary_contact_ms();
    let mut all_answered = true;
    if let Some(replica) = app.store.replica() {
        for s in crate::service::members::probe(app, replica, None)
            .await
            .into_values()
        {
            match s {
                Ok(s) => {
                    if let Some(ms) = s.primary_contact_ms {
                        freshest = Some(freshest.map_or(ms, |f| f.min(ms)));
                    }
                }
                Err(_) => all_answered = false,
            }
        }
    }
    let since = match (all_answered, freshest) {
        (true, Some(ms)) => Duration::from_millis(ms),
        // Unknown (a partition did not answer, or none reached the primary since it
        // started): count from now.
        _ => Duration::ZERO,
    };
    let needed = Duration::from_millis(lease_ms) + LEASE_MARGIN;
    let Some(left) = needed.checked_sub(since).filter(|l| !l.is_zero()) else {
        return Ok(());
    };
    if left > FAILOVER_WAIT {
        return Err(Error::new(
            Kind::Unavailable,
            "RegionLeaseNotExpired",
            format!(
                "the primary runs a write lease of {lease_ms} ms and this region reached it {} ms ago: it may still take writes for {} s more. Promote again after that (a promotion now could discard writes it acknowledges meanwhile)",
                since.as_millis(),
                left.as_secs() + 1
            ),
        ));
    }
    tracing::warn!(
        wait_ms = left.as_millis() as u64,
        lease_ms,
        "failover: waiting out the old primary's write lease before promoting"
    );
    tokio::time::sleep(left).await;
    Ok(())
}
