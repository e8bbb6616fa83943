//! A primary region's write lease (docs/regions.md "Write lease"): with `writeLeaseMs` in
//! its region configuration, a primary that accepts regions refuses changes of keys and
//! RBAC when no replica region has polled it for that long — so a primary cut off from
//! every region stops taking writes that a failover would discard. A region's poll reaches
//! one partition; each partition learns the others' freshest poll from their peer state.

use crate::consensus::region::WriteLease;
use crate::state::PoolState;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The lease of one partition.
#[derive(Debug)]
pub struct Lease {
    pub ttl: Duration,
    /// When this partition started (no poll seen before it: the lease starts expired).
    started: Instant,
    /// The freshest poll of any region, here or at another partition of the pool.
    contact: Mutex<Option<Instant>>,
}

impl Lease {
    pub fn new(ttl: Duration) -> Lease {
        Lease {
            ttl,
            started: Instant::now(),
            contact: Mutex::new(None),
        }
    }

    /// A region polled (this partition, now; or another one, `ago`).
    ///
    /// (Arming — the first poll at an epoch — is committed by the feed handler.)
    pub fn touch(&self, ago: Duration) {
        let Some(at) = Instant::now().checked_sub(ago) else {
            return;
        };
        let mut c = self.contact.lock().unwrap_or_else(|p| p.into_inner());
        if c.is_none_or(|t| t < at) {
            *c = Some(at);
        }
    }

    /// The freshest poll of any region known here.
    pub fn contact(&self) -> Option<Instant> {
        *self.contact.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Whether a region has polled this primary at its epoch (the lease applies).
pub fn armed(st: &PoolState) -> bool {
    st.region.lease_armed_epoch != 0 && st.region.lease_armed_epoch == st.region.epoch()
}

impl WriteLease for Lease {
    fn refusal(&self, st: &PoolState) -> Option<String> {
        // Only a primary (not demoted) that accepts regions runs the lease, once a region
        // has polled it at its epoch (a region promoted by a failover, whose only region was
        // the lost primary, takes writes until a region follows it).
        if st.region.replica.is_some()
            || st.region.demoted.is_some()
            || st.region.accepted.is_empty()
            || !armed(st)
        {
            return None;
        }
        let since = match self.contact() {
            Some(t) if t.elapsed() <= self.ttl => return None,
            Some(t) => format!("the last poll was {} ms ago", t.elapsed().as_millis()),
            None => format!(
                "none has polled since this partition started {} s ago",
                self.started.elapsed().as_secs()
            ),
        };
        Some(format!(
            "this primary region takes no changes now: no replica region has polled it within its write lease of {} ms ({since}). The lease keeps a primary cut off from every region from taking writes a failover would discard; writes resume as soon as a region polls again, and reads and cryptographic operations continue (docs/regions.md, Write lease)",
            self.ttl.as_millis()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::AcceptedRegionRecord;

    fn primary_with_a_region() -> PoolState {
        let mut st = PoolState::default();
        st.region.lease_armed_epoch = 1;
        st.region.accepted.insert(
            "west".into(),
            AcceptedRegionRecord {
                ca_pem: String::new(),
                added: 0,
            },
        );
        st
    }

    #[test]
    fn the_lease_refuses_only_a_primary_with_regions_not_polled_within_it() {
        let lease = Lease::new(Duration::from_secs(3));
        let st = primary_with_a_region();
        let why = lease.refusal(&st).expect("never polled: refused");
        assert!(why.contains("none has polled"), "{why}");
        lease.touch(Duration::from_millis(100));
        assert!(lease.refusal(&st).is_none(), "polled 100 ms ago");
        // An older report from a peer does not move the contact back.
        lease.touch(Duration::from_secs(10));
        assert!(lease.refusal(&st).is_none());
        let stale = Lease::new(Duration::from_secs(3));
        stale.touch(Duration::from_secs(4));
        let why = stale.refusal(&st).expect("polled 4 s ago: refused");
        assert!(why.contains("the last poll was"), "{why}");
        // Without regions there is nothing to lose in a failover.
        assert!(stale.refusal(&PoolState::default()).is_none());
        // Not armed (no region polled at this epoch: a primary just promoted by a failover).
        let mut unarmed = primary_with_a_region();
        unarmed.region.lease_armed_epoch = 0;
        assert!(stale.refusal(&unarmed).is_none());
        unarmed.region.epoch = 2;
        unarmed.region.lease_armed_epoch = 1;
        assert!(stale.refusal(&unarmed).is_none(), "armed at an older epoch");
    }
}
