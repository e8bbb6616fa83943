//! Leader leases for reads (opt-in: `readConsistency: lease`; docs/replication.md).
//!
//! By default every read waits for a read-index round: the leader confirms with a quorum
//! that it still leads (a heartbeat to every follower) before it answers. With leases, a
//! confirmation also buys time: openraft's followers refuse to vote for
//! `election_timeout_max` (1,200 ms) after the last heartbeat they accepted from their
//! leader, so for that long after a confirmation *was sent* no other leader can be elected
//! and commit anything. Until [`LEASE`] after the start of its last confirmation, the
//! leader takes its Raft core's current commit index as the read index — for its own
//! reads and its followers' read-index questions — without a round. (Not its applied
//! index: a follower may apply a committed entry before the leader does, and a read there
//! may see it; the first long fault run with leases found exactly that stale read.)
//!
//! What it relies on, beyond the read-index rounds: that the partitions' clocks measure
//! intervals at about the same rate (the margin is a quarter of the followers' lease), and
//! that a restarted partition does not vote before a follower's lease would have run out
//! ([`Leases::holds_back_votes`]; openraft keeps the lease in memory only). The leader
//! counts time with `CLOCK_BOOTTIME`, which keeps running while a machine is suspended.

use openraft::LogId;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

type NodeId = u64;

/// What the Raft core holds at the moment it answers (not the metrics, which are published
/// after the fact).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leadership {
    pub leading: bool,
    pub term: u64,
    /// The commit index: no entry after it can have been applied anywhere.
    pub committed: u64,
    pub membership: Option<LogId<NodeId>>,
}

/// Ask the Raft core (a message to its task, no network).
pub async fn leadership(raft: &super::Raft) -> Option<Leadership> {
    raft.with_raft_state(|st| Leadership {
        leading: st.server_state == openraft::ServerState::Leader,
        term: st.vote_ref().leader_id().get_term(),
        committed: st.committed.map_or(0, |l| l.index),
        membership: *st.membership_state.effective().log_id(),
    })
    .await
    .ok()
}

/// How long a confirmation started at `t` lets the leader read alone: three quarters of
/// openraft's follower lease (`election_timeout_max`, [`FOLLOWER_LEASE`]).
pub const LEASE: Duration = Duration::from_millis(900);

/// openraft's follower lease: `election_timeout_max` of the Raft configuration.
pub const FOLLOWER_LEASE: Duration = Duration::from_millis(1200);

/// Time since boot, suspended time included (`CLOCK_BOOTTIME`).
pub fn now() -> Duration {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
    Duration::new(
        u64::try_from(ts.tv_sec).unwrap_or(0),
        u32::try_from(ts.tv_nsec).unwrap_or(0),
    )
}

/// A leadership confirmed by a quorum: for `term`, under the membership of `membership`,
/// at commit index `index`, good until `until` ([`now`]).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Grant {
    term: u64,
    membership: Option<LogId<NodeId>>,
    index: u64,
    until: Duration,
}

/// This partition's lease, when it leads (none when leases are off).
pub struct Leases {
    enabled: bool,
    started: Instant,
    grant: Mutex<Option<Grant>>,
    /// Reads (here, or followers' read-index questions) answered under the lease.
    served: AtomicU64,
}

impl Leases {
    pub fn new(enabled: bool) -> Self {
        Leases {
            enabled,
            started: Instant::now(),
            grant: Mutex::new(None),
            served: AtomicU64::new(0),
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Grant>> {
        self.grant.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A quorum confirmed this partition's leadership of `term` (under `membership`), with
    /// commit index `index`, in a round whose heartbeats were sent after `sent` ([`now`]).
    pub fn confirmed(
        &self,
        term: u64,
        membership: Option<LogId<NodeId>>,
        index: u64,
        sent: Duration,
    ) {
        if !self.enabled {
            return;
        }
        let until = sent + LEASE;
        let mut g = self.lock();
        let newer = match &*g {
            None => true,
            Some(old) => (term, until) > (old.term, old.until),
        };
        if newer {
            let index = match &*g {
                Some(old) if old.term == term => index.max(old.index),
                _ => index,
            };
            *g = Some(Grant {
                term,
                membership,
                index,
                until,
            });
        }
    }

    /// The index a read must have applied, when a lease for this leadership (`term`, under
    /// `membership`) holds now; `None`: confirm with a round.
    pub fn read_index(&self, term: u64, membership: Option<&LogId<NodeId>>) -> Option<u64> {
        if !self.enabled {
            return None;
        }
        let g = self.lock();
        let g = g.as_ref()?;
        let holds = g.term == term && g.membership.as_ref() == membership && now() < g.until;
        if holds {
            self.served.fetch_add(1, Ordering::Relaxed);
        }
        holds.then_some(g.index)
    }

    /// Reads answered under the lease since this partition started.
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    /// Whether this partition refuses to vote yet: for [`FOLLOWER_LEASE`] after it started,
    /// because before it stopped it may have accepted a heartbeat whose lease a leader still
    /// reads under, and openraft forgets leases across restarts.
    pub fn holds_back_votes(&self) -> bool {
        self.enabled && self.started.elapsed() < FOLLOWER_LEASE
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::CommittedLeaderId;

    fn log_id(index: u64) -> Option<LogId<NodeId>> {
        Some(LogId::new(CommittedLeaderId::new(1, 1), index))
    }

    #[test]
    fn a_lease_holds_for_its_term_and_membership_until_it_runs_out() {
        let l = Leases::new(true);
        assert_eq!(
            l.read_index(3, log_id(1).as_ref()),
            None,
            "no confirmation yet"
        );
        l.confirmed(3, log_id(1), 40, now());
        assert_eq!(l.read_index(3, log_id(1).as_ref()), Some(40));
        assert_eq!(l.served(), 1);
        assert_eq!(l.read_index(4, log_id(1).as_ref()), None, "another term");
        assert_eq!(
            l.read_index(3, log_id(9).as_ref()),
            None,
            "another membership"
        );
        // Confirmed long ago: run out.
        l.confirmed(
            5,
            log_id(1),
            50,
            now().saturating_sub(LEASE + Duration::from_millis(1)),
        );
        assert_eq!(l.read_index(5, log_id(1).as_ref()), None);
        // A later confirmation of the same term never lowers the index.
        let l = Leases::new(true);
        l.confirmed(3, log_id(1), 40, now());
        l.confirmed(3, log_id(1), 35, now() + Duration::from_millis(5));
        assert_eq!(l.read_index(3, log_id(1).as_ref()), Some(40));
        // An older confirmation does not replace a newer one.
        l.confirmed(
            3,
            log_id(1),
            99,
            now().saturating_sub(Duration::from_millis(500)),
        );
        assert_eq!(l.read_index(3, log_id(1).as_ref()), Some(40));
    }

    #[test]
    fn without_leases_nothing_is_granted_and_votes_are_not_held_back() {
        let l = Leases::new(false);
        l.confirmed(3, log_id(1), 40, now());
        assert_eq!(l.read_index(3, log_id(1).as_ref()), None);
        assert!(!l.holds_back_votes());
        let l = Leases::new(true);
        assert!(
            l.holds_back_votes(),
            "a partition just started holds back its vote"
        );
    }

    #[test]
    fn the_lease_leaves_a_quarter_of_the_followers_lease_as_margin() {
        assert!(LEASE * 4 <= FOLLOWER_LEASE * 3);
    }
}
