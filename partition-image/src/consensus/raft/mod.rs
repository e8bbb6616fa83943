//! Replication: the partitions of a pool form one Raft group (openraft 0.9, storage v2).
//!
//! Every state change is a [`Command`] committed through the group before it reaches
//! [`PoolState::apply`](crate::state::PoolState::apply) on each partition. Any partition
//! accepts any request: writes are forwarded to the leader over the peer API
//! (`/internal/forward`); reads and cryptographic operations are served locally after a
//! read-index barrier (the leader confirms its leadership with a quorum and names its commit
//! index; the partition waits until it has applied at least that much). See
//! `docs/replication.md`.

pub mod client;
pub mod forward;
mod group;
pub mod lease;
pub mod log_store;
pub mod network;
pub mod read_index;
mod rounds;
pub mod state_machine;

pub use group::Group;

#[cfg(test)]
mod storage_tests;

use crate::config::{PartitionConfig, PeerSettings};
use crate::consensus::ProposeError;
use crate::state::{Command, Outcome};
use openraft::error::{ClientWriteError, RaftError};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Cursor;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A member of the group as Raft stores it: its partition name (the name in its pool-CA
/// certificate and its workload identity `partition:<name>`) and its peer URL.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    pub url: String,
}

openraft::declare_raft_types!(
    /// Raft types of a Keystead pool.
    pub TypeConfig:
        D = Command,
        R = (),
        Node = Member,
);

pub type Raft = openraft::Raft<TypeConfig>;

/// How long a write or a read barrier waits for a leader before giving up.
pub(crate) const LEADER_WAIT: Duration = Duration::from_secs(10);

/// A committed command's log index and what the state machine produced for it.
pub type Indexed = (u64, Result<Outcome, crate::state::StateError>);

/// Answer of the leader to a forwarded write.
#[derive(Serialize, Deserialize, Debug)]
pub struct ForwardReply {
    pub index: u64,
}

/// Answer of the leader to a read-index request.
#[derive(Serialize, Deserialize, Debug)]
pub struct ReadIndexReply {
    pub index: u64,
}

/// The Raft view in `/admin/status`.
pub use keystead_core::status::{MemberStatus, ReplicationStatus};

/// The running Raft member of this partition.
pub struct Replica {
    pub raft: Raft,
    /// The log (shared with the Raft core): a primary serves its regions' feed from it.
    pub log: log_store::LogStore,
    pub sm: Arc<state_machine::Shared>,
    pub id: u64,
    pub name: String,
    pub peers: Vec<PeerSettings>,
    pub client: Arc<client::PeerClient>,
    /// Set while a partition that started with an empty Raft directory (new or wiped) has
    /// not yet caught up with the leader's commit index: it neither votes nor campaigns, so
    /// it cannot help elect a leader that lacks a committed entry it has lost.
    pub recovering: std::sync::atomic::AtomicBool,
    /// `dataDir/raft/recovering`: present while recovering, so that a restart before the
    /// partition has caught up (its disk is no longer empty then) keeps it from voting.
    recovering_marker: std::path::PathBuf,
    /// While recovering: the lowest term of a leader whose replication this partition
    /// accepts, learnt from enough peers to include one that knows the current term (`None`:
    /// not learnt yet, nothing is accepted). See [`Replica::accepts_leader_term`].
    term_floor: std::sync::Mutex<Option<u64>>,
    /// Read-index rounds shared by concurrent reads (here or via the leader).
    reads: read_index::Batcher,
    /// The same, as the leader only (for followers' `/internal/read-index`).
    leader_reads: read_index::Batcher,
    /// Writes taken here while another partition leads, sent to it in shared requests.
    forwarder: forward::Forwarder,
    /// The leader's read lease (opt-in, `readConsistency: lease`).
    pub leases: Arc<lease::Leases>,
    /// Serialises membership changes on the leader.
    pub membership_lock: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica")
            .field("id", &self.id)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Where to reach member `id`: the configured URL if any, else the membership's.
pub(crate) fn member_url(peers: &[PeerSettings], id: u64, node: &Member) -> String {
    peers
        .iter()
        .find(|p| p.id == id)
        .map(|p| p.url.clone())
        .unwrap_or_else(|| node.url.clone())
}

/// Create `path` durably (the file and its directory entry).
fn write_marker(path: &std::path::Path) -> std::io::Result<()> {
    let f = std::fs::File::create(path)?;
    f.sync_all()?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Remove `path` durably (a missing file is fine).
fn remove_marker(path: &std::path::Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    }
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Entries applied since the last snapshot before the next one is built: at least
/// `SNAPSHOT_MIN_LOGS`, and one per [`SNAPSHOT_BYTES_PER_ENTRY`] of the last snapshot, so
/// that a snapshot's cost (the whole state serialized and written) spread over the writes
/// between two snapshots stays the same as the pool grows — in keys or in versions of its
/// keys (a fixed count made a pool of a million keys write a ~600 MB snapshot every 2,000
/// writes on every partition; a count of keys missed a pool of few keys with long
/// histories). The price: up to that many entries in the log (in memory, and replayed after
/// a restart).
///
/// Each member waits a little longer than the last (by a twentieth per member id, up to
/// 15 %): members
/// apply the same entries, and equal thresholds would make every partition of the pool
/// build its snapshot at the same moment, slowing the whole pool's writes at once instead
/// of one member's.
const SNAPSHOT_MIN_LOGS: u64 = 2000;

/// Snapshot bytes per entry of log kept between two snapshots: an entry is ~1 KiB, so a
/// snapshot writes at most ~4× what the log wrote since the last one, and the log holds at
/// most about a quarter of the state's bytes (at a million keys: ~134,000 entries, about
/// the keys/8 the restart time in docs/benchmarks.md was measured with).
const SNAPSHOT_BYTES_PER_ENTRY: u64 = 4 * 1024;

fn snapshot_threshold(snapshot_bytes: u64, member_id: u64) -> u64 {
    let base = SNAPSHOT_MIN_LOGS.max(snapshot_bytes / SNAPSHOT_BYTES_PER_ENTRY);
    base + base * (member_id % 4) / 20
}

#[cfg(test)]
mod snapshot_cadence_tests {
    use super::*;

    #[test]
    fn the_cadence_grows_with_the_snapshot_and_members_are_staggered() {
        // A small pool: the minimum, staggered by member.
        assert_eq!(snapshot_threshold(0, 0), 2000);
        assert_eq!(snapshot_threshold(100_000, 1), 2100);
        assert_eq!(snapshot_threshold(100_000, 3), 2300);
        // A ~550 MB snapshot (a million keys): one snapshot per ~134,000 entries.
        assert_eq!(snapshot_threshold(550_000_000, 0), 134_277);
        // Members 1..3 of a pool never share a threshold.
        let t: std::collections::BTreeSet<u64> = (1..=3)
            .map(|id| snapshot_threshold(50_000_000, id))
            .collect();
        assert_eq!(t.len(), 3);
    }
}

fn raft_config(cluster: &str) -> anyhow::Result<openraft::Config> {
    let cfg = openraft::Config {
        cluster_name: cluster.to_string(),
        heartbeat_interval: 150,
        election_timeout_min: 600,
        // Also the followers' lease, which lease reads rely on (lease::FOLLOWER_LEASE).
        election_timeout_max: lease::FOLLOWER_LEASE.as_millis() as u64,
        install_snapshot_timeout: 5000,
        // Snapshots are triggered by `Replica::snapshot_when_due`, at a cadence that grows
        // with the pool (`snapshot_threshold`).
        snapshot_policy: openraft::SnapshotPolicy::Never,
        max_in_snapshot_log_to_keep: 200,
        purge_batch_size: 100,
        // Entries per append request. openraft gives an append request one heartbeat
        // interval (150 ms) to be sent, parsed and made durable, so requests must stay
        // small: with a full restore's stage commands (<= 16 KiB of records each,
        // backup::STAGE_BYTES) one is <= ~1 MiB (and far below PEER_BODY_LIMIT).
        max_payload_entries: 64,
        ..Default::default()
    };
    Ok(cfg.validate()?)
}

impl Replica {
    /// Open the log and state machine in `dataDir/raft` and start the Raft member.
    pub async fn start(cfg: &PartitionConfig) -> anyhow::Result<Arc<Replica>> {
        let me = cfg
            .peers
            .iter()
            .find(|p| p.name == cfg.partition_id)
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "partition '{}' is not in its own peer list; add it to `peers` (every member, this one included)",
                    cfg.partition_id
                )
            })?
            .clone();
        let mut ids = BTreeSet::new();
        for p in &cfg.peers {
            anyhow::ensure!(
                ids.insert(p.id),
                "peer id {} appears twice in `peers`; give every member a distinct id",
                p.id
            );
        }
        let dir = cfg.data_dir.join("raft");
        let log = log_store::LogStore::open(&dir)?;
        let pristine = log.is_pristine();
        // An empty disk may have lost committed entries (a wiped partition of a live pool):
        // it must not vote until it has caught up, and that must survive a restart in the
        // middle of catching up — hence the marker, written before the Raft core starts.
        let recovering_marker = dir.join("recovering");
        if pristine {
            write_marker(&recovering_marker)?;
        }
        let recovering = pristine || recovering_marker.exists();
        let sm = state_machine::StateMachine::open(dir)?;
        let shared = sm.shared.clone();
        let client = Arc::new(client::PeerClient::new(cfg)?);
        let factory = network::NetworkFactory {
            client: client.clone(),
            urls: Arc::new(cfg.peers.iter().map(|p| (p.id, p.url.clone())).collect()),
        };
        let raft = openraft::Raft::new(
            me.id,
            Arc::new(raft_config(&cfg.pool_name)?),
            factory,
            log.clone(),
            sm,
        )
        .await
        .map_err(|e| anyhow::anyhow!("cannot start the Raft member: {e}"))?;
        let leases = Arc::new(lease::Leases::new(
            cfg.read_consistency == keystead_core::partition_config::ReadConsistency::Lease,
        ));
        let reads = read_index::Batcher::new(
            read_index::Mode::Any,
            raft.clone(),
            client.clone(),
            cfg.peers.clone(),
            leases.clone(),
        );
        let leader_reads = read_index::Batcher::new(
            read_index::Mode::LeaderOnly,
            raft.clone(),
            client.clone(),
            cfg.peers.clone(),
            leases.clone(),
        );
        let forwarder = forward::Forwarder::new(raft.clone(), client.clone(), cfg.peers.clone());
        let replica = Arc::new(Replica {
            raft,
            log,
            sm: shared,
            id: me.id,
            name: me.name,
            peers: cfg.peers.clone(),
            client,
            recovering: std::sync::atomic::AtomicBool::new(recovering),
            recovering_marker,
            term_floor: std::sync::Mutex::new(None),
            reads,
            leader_reads,
            forwarder,
            leases,
            membership_lock: tokio::sync::Mutex::new(()),
        });
        if recovering {
            replica.raft.runtime_config().elect(false);
            let r = replica.clone();
            tokio::spawn(async move { r.initialize_when_ready().await });
        }
        let weak = Arc::downgrade(&replica);
        tokio::spawn(async move { Replica::snapshot_when_due(weak).await });
        // A Raft core that stopped on a fatal error (storage failure, broken invariant)
        // cannot serve consistently: exit so the supervisor restarts the partition, which
        // then recovers from its disk or heals from its peers.
        let mut metrics = replica.raft.metrics();
        tokio::spawn(async move {
            while metrics.changed().await.is_ok() {
                if let Err(e) = &metrics.borrow().running_state
                    && !matches!(e, openraft::error::Fatal::Stopped)
                {
                    tracing::error!(error = %e, "the Raft member stopped on a fatal error; exiting so the partition is restarted");
                    std::process::exit(70);
                }
            }
        });
        Ok(replica)
    }

    /// Build a snapshot whenever [`snapshot_threshold`] entries were applied since the last
    /// one (looked at four times a second; ends with the replica).
    async fn snapshot_when_due(replica: std::sync::Weak<Replica>) {
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(r) = replica.upgrade() else { return };
            let (applied, snapshot) = {
                let m = r.raft.metrics();
                let m = m.borrow();
                (
                    m.last_applied.map_or(0, |l| l.index),
                    m.snapshot.map_or(0, |l| l.index),
                )
            };
            if applied.saturating_sub(snapshot) >= snapshot_threshold(r.sm.snapshot_bytes(), r.id)
                && let Err(e) = r.raft.trigger().snapshot().await
            {
                tracing::debug!(error = %e, "a snapshot could not be triggered");
            }
        }
    }

    /// The members other than this partition, as the group's status lists them.
    pub fn other_members(&self) -> Vec<MemberStatus> {
        let mut m = self.status().members;
        m.retain(|m| m.name != self.name);
        m
    }

    /// Where to reach member `id`: the configured URL if any, else the membership's.
    pub fn url_of(&self, id: u64, node: &Member) -> String {
        member_url(&self.peers, id, node)
    }

    fn configured_members(&self) -> BTreeMap<u64, Member> {
        self.peers
            .iter()
            .map(|p| {
                (
                    p.id,
                    Member {
                        name: p.name.clone(),
                        url: p.url.clone(),
                    },
                )
            })
            .collect()
    }

    /// Runs while recovering (an empty disk, or a restart before catching up). A partition
    /// votes again only once it has caught up with the leader's commit index — unless no
    /// peer holds anything beyond the initial membership entry (a new pool: nothing was ever
    /// committed, so nothing can have been lost, and the new members' votes elect the first
    /// leader). The member with the lowest id initializes a new group, only when every
    /// configured peer answers and none of them is part of a group yet; a wiped partition of
    /// an existing pool therefore never starts a second group: it waits to be replicated to
    /// (or added back) by the current leader.
    async fn initialize_when_ready(self: Arc<Self>) {
        let lowest = self.peers.iter().map(|p| p.id).min() == Some(self.id);
        // Peers whose terms must be known before replication is accepted: enough that they
        // include a member of every majority that can have elected a leader (this
        // partition's own lost vote may have been one of it).
        let majority = self.peers.len() / 2 + 1;
        let need = self.peers.len() - majority + 1;
        loop {
            let mut all_fresh = true;
            let mut all_answered = true;
            let mut existing = false;
            let mut answered = 0;
            let mut max_term = 0;
            for p in self.peers.iter().filter(|p| p.id != self.id) {
                match self
                    .client
                    .get::<client::PeerState>(&p.url, "/internal/state", Duration::from_secs(2))
                    .await
                {
                    Ok(s) => {
                        all_fresh &= !s.initialized;
                        // Beyond the initial membership entry: a group that has had a leader.
                        existing |= s.last_log_index >= 1;
                        answered += 1;
                        max_term = max_term.max(s.term);
                    }
                    Err(_) => {
                        all_fresh = false;
                        all_answered = false;
                    }
                }
            }
            if existing && answered >= need {
                self.raise_term_floor(max_term);
                break;
            }
            if existing {
                tokio::time::sleep(Duration::from_millis(300)).await;
                continue;
            }
            if all_answered {
                // A new pool: nothing was committed anywhere, nothing can have been lost.
                if all_fresh && lowest && !self.raft.is_initialized().await.unwrap_or(true) {
                    match self.raft.initialize(self.configured_members()).await {
                        Ok(()) => {
                            tracing::info!(
                                members = self.peers.len(),
                                "initialized a new Raft group"
                            );
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "could not initialize the Raft group");
                            tokio::time::sleep(Duration::from_millis(300)).await;
                            continue;
                        }
                    }
                }
                self.finish_recovery();
                return;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        // An existing group: catch up before voting again.
        while self.read_barrier().await.is_err() {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        self.finish_recovery();
        tracing::info!("caught up with the leader's commit index; voting again");
    }

    fn raise_term_floor(&self, term: u64) {
        let mut f = self.term_floor.lock().unwrap_or_else(|p| p.into_inner());
        *f = Some(f.map_or(term, |t| t.max(term)));
        tracing::info!(
            term_floor = term,
            "recovering: replication accepted from leaders of this term or later"
        );
    }

    /// Whether replication (append, snapshot) from a leader of `term` may be accepted. A
    /// partition that lost its disk lost its vote too: until it has caught up it would
    /// acknowledge any leader, and a leader that was deposed without knowing it (cut off,
    /// paused) could make it the second member of a majority for that old term and commit,
    /// or confirm reads, unseen by the real leader — an acknowledged write lost. So while
    /// recovering it first learns the current term from enough peers, and accepts only
    /// leaders of that term or later; once it has accepted a leader, openraft's own vote
    /// (saved on disk) refuses older ones. A new pool (nothing committed anywhere) has no
    /// floor to learn and accepts at once.
    pub fn accepts_leader_term(&self, term: u64) -> Result<(), String> {
        if !self.is_recovering() {
            return Ok(());
        }
        match *self.term_floor.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(floor) if term < floor => Err(format!(
                "recovering after an empty start: a leader of term {term} is older than the current term {floor}"
            )),
            Some(_) => Ok(()),
            None => Err(
                "recovering after an empty start: still learning the current term from the peers"
                    .into(),
            ),
        }
    }

    fn finish_recovery(&self) {
        if let Err(e) = remove_marker(&self.recovering_marker) {
            // Still recovering on disk: a restart would catch up again first (safe).
            tracing::warn!(error = %e, "cannot remove the recovering marker; not voting until it can be removed");
            return;
        }
        self.recovering
            .store(false, std::sync::atomic::Ordering::SeqCst);
        self.raft.runtime_config().elect(true);
    }

    /// Whether this partition is still catching up after starting with an empty disk.
    pub fn is_recovering(&self) -> bool {
        self.recovering.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Wait until this partition has applied at least `index`.
    async fn wait_applied(&self, index: u64, timeout: Duration) -> Result<(), ProposeError> {
        self.raft
            .wait(Some(timeout))
            .applied_index_at_least(Some(index), "replica")
            .await
            .map(|_| ())
            .map_err(|e| {
                ProposeError::Uncertain(format!(
                    "this partition has not applied index {index} yet: {e}"
                ))
            })
    }

    /// What the state machine produced for the command at `index` (applied here first).
    async fn outcome(&self, index: u64) -> Result<Indexed, ProposeError> {
        self.wait_applied(index, LEADER_WAIT).await?;
        match self.sm.take_outcome(index) {
            Some(r) => Ok((index, r)),
            None => Err(ProposeError::Uncertain(format!(
                "the change was committed at index {index} but this partition caught up from a snapshot and has not kept its result; read the resource to see it"
            ))),
        }
    }

    /// Commit `cmd` through the group (forwarded to the leader if needed) and return what
    /// the state machine produced.
    pub async fn propose(&self, cmd: Command) -> Result<Outcome, ProposeError> {
        let (_, r) = self.propose_indexed(cmd).await?;
        r.map_err(ProposeError::Refused)
    }

    /// [`Replica::propose`], with the log index the command was committed at (a command the
    /// state machine refused was committed all the same).
    pub async fn propose_indexed(&self, cmd: Command) -> Result<Indexed, ProposeError> {
        let deadline = Instant::now() + LEADER_WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let written =
                match tokio::time::timeout(left, self.raft.client_write(cmd.clone())).await {
                    Ok(w) => w,
                    Err(_) => {
                        return Err(ProposeError::Uncertain(
                            "this partition leads but could not reach a majority in time".into(),
                        ));
                    }
                };
            match written {
                Ok(resp) => return self.outcome(resp.log_id.index).await,
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {
                    // Bounded by what is left of the write's time (a round in flight
                    // that it queued behind counts too); once queued it may have been sent.
                    let left = deadline.saturating_duration_since(Instant::now());
                    let forwarded = tokio::time::timeout(left, self.forwarder.forward(&cmd))
                        .await
                        .unwrap_or_else(|_| {
                            forward::Forward::Uncertain(
                                "the leader did not confirm the forwarded change in time".into(),
                            )
                        });
                    match forwarded {
                        forward::Forward::Committed(index) => return self.outcome(index).await,
                        forward::Forward::Retry(why) => {
                            tracing::debug!(%why, "forward to the leader failed; retrying");
                        }
                        forward::Forward::Failed(why) => return Err(ProposeError::Storage(why)),
                        forward::Forward::Uncertain(why) => {
                            return Err(ProposeError::Uncertain(why));
                        }
                    }
                }
                // The Raft core stopped or failed (storage error, shutdown) after the
                // change was handed to it: it may already be in the log, replicated, and be
                // committed by the next leader. Not "safe to retry".
                Err(RaftError::Fatal(e)) => {
                    return Err(ProposeError::Uncertain(format!(
                        "this partition's Raft member failed while taking the change: {e}"
                    )));
                }
                Err(e) => {
                    return Err(ProposeError::Storage(format!(
                        "the Raft member refused the change: {e}"
                    )));
                }
            }
            if Instant::now() >= deadline {
                return Err(ProposeError::Storage(
                    "no leader could be reached: a majority of the pool's partitions must be up and connected".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The leader's side of a read-index request: confirm leadership with a quorum and
    /// return the index every read must wait for.
    pub async fn leader_read_index(&self) -> Result<u64, String> {
        if let Some(index) = self.lease_read_index().await {
            return Ok(index);
        }
        self.leader_reads.read_index().await
    }

    /// The index a read must wait for when this partition leads under a lease (lease reads
    /// on, a confirmation of the current term and membership recent enough): the core's
    /// commit index, taken before the lease is checked — while the lease holds no other
    /// leader exists, so nothing is committed anywhere beyond it.
    async fn lease_read_index(&self) -> Option<u64> {
        if !self.leases.enabled() {
            return None;
        }
        let now = lease::leadership(&self.raft).await?;
        if !now.leading {
            return None;
        }
        let confirmed = self.leases.read_index(now.term, now.membership.as_ref())?;
        Some(now.committed.max(confirmed))
    }

    /// Read barrier: after it returns, this partition's state includes every change that
    /// was committed before it was called.
    pub async fn read_barrier(&self) -> Result<(), ProposeError> {
        let deadline = Instant::now() + LEADER_WAIT;
        // The leader under a lease: the core's commit index, without a round.
        if let Some(index) = self.lease_read_index().await {
            return self.wait_applied(index, LEADER_WAIT).await.map_err(|_| {
                ProposeError::Storage(format!(
                    "this partition could not apply up to its commit index {index} in time"
                ))
            });
        }
        loop {
            let index = self.reads.read_index().await.ok();
            if let Some(index) = index {
                let left = deadline.saturating_duration_since(Instant::now());
                return self
                    .wait_applied(index, left.max(Duration::from_millis(100)))
                    .await
                    .map_err(|_| {
                        ProposeError::Storage(format!(
                            "this partition could not catch up to the leader's commit index {index} in time"
                        ))
                    });
            }
            if Instant::now() >= deadline {
                return Err(ProposeError::Storage(
                    "this partition cannot reach a leader: a majority of the pool's partitions must be up and connected to serve consistent reads".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// This partition's view of the group.
    pub fn status(&self) -> ReplicationStatus {
        let m = self.raft.metrics().borrow().clone();
        let role = format!("{:?}", m.state).to_lowercase();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let last = m.last_log_index.unwrap_or(0);
        let members = membership
            .nodes()
            .map(|(id, node)| {
                let matched = m
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(id))
                    .map(|l| l.map(|l| l.index).unwrap_or(0));
                MemberStatus {
                    node_id: *id,
                    name: node.name.clone(),
                    url: self.url_of(*id, node),
                    voter: voters.contains(id),
                    matched_index: matched,
                    lag: matched.map(|mi| last.saturating_sub(mi)),
                }
            })
            .collect();
        let applied = m.last_applied.map(|l| l.index).unwrap_or(0);
        // On the leader: the highest index a majority of voters has (the commit index);
        // elsewhere the applied index (a lower bound of it).
        let commit_index = match &m.replication {
            Some(rep) => {
                let mut v: Vec<u64> = voters
                    .iter()
                    .map(|id| match rep.get(id) {
                        Some(l) => l.map(|l| l.index).unwrap_or(0),
                        None if *id == self.id => last,
                        None => 0,
                    })
                    .collect();
                v.sort_unstable_by(|a, b| b.cmp(a));
                v.get(v.len() / 2).copied().unwrap_or(applied).max(applied)
            }
            None => applied,
        };
        let leader = m.current_leader.and_then(|l| {
            membership
                .nodes()
                .find(|(id, _)| **id == l)
                .map(|(_, n)| n.name.clone())
        });
        ReplicationStatus {
            node_id: self.id,
            name: self.name.clone(),
            role,
            term: m.current_term,
            leader,
            commit_index,
            applied_index: m.last_applied.map(|l| l.index).unwrap_or(0),
            last_log_index: last,
            snapshot_index: m.snapshot.map(|l| l.index).unwrap_or(0),
            recovering: self.is_recovering(),
            members,
        }
    }

    /// How this partition regards a peer named `name` (an authenticated pool partition).
    pub fn standing(&self, name: &str) -> Standing {
        let member = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .nodes()
            .any(|(_, n)| n.name == name);
        if member {
            return Standing::Member;
        }
        let retired = self
            .sm
            .state
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .retired_members
            .values()
            .any(|n| n == name);
        if retired {
            Standing::Retired
        } else {
            Standing::Other
        }
    }
}

/// How a partition regards an authenticated peer (pool-CA certificate and workload token of
/// the same name). See docs/replication.md (Peer authentication).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// In this partition's current membership (voter or learner): may do everything,
    /// including forwarding writes and receiving the domain.
    Member,
    /// Not (yet) in this partition's membership and never removed: a configured peer at
    /// bootstrap, a partition waiting to be added, or a member this partition has not heard
    /// of yet. May take part in Raft (elections, replication) and read the group's state.
    Other,
    /// Removed from the pool: refused.
    Retired,
}
