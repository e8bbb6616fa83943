//! The replicated state machine: [`PoolState`] plus the last applied log id and membership.
//!
//! Snapshots are the serialized state (wrapped key material only), written atomically to
//! `dataDir/raft/snapshot.json` (temp file, fsync, rename, directory fsync), one writer at a
//! time: a snapshot built here never replaces a newer one installed from the leader meanwhile
//! (openraft builds snapshots in a task of their own). The outcome of each applied command is kept in memory for a
//! while so that the partition that proposed it (possibly a follower, via the leader) can
//! answer its client with exactly what the state machine produced.

use super::{Member, TypeConfig};
use crate::state::StateChange;
use crate::state::{Command, Outcome, PoolState, StateError};
use anyhow::Context;
use openraft::storage::{RaftStateMachine, Snapshot, SnapshotMeta};
use openraft::{
    AnyError, Entry, EntryPayload, LogId, RaftSnapshotBuilder, StorageError, StorageIOError,
    StoredMembership,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Cursor;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

type NodeId = u64;
/// Last applied log id and the membership as of it.
type Applied = (Option<LogId<NodeId>>, StoredMembership<NodeId, Member>);

/// Outcomes kept for proposers to pick up.
const OUTCOMES_KEPT: usize = 4096;

#[derive(Serialize, Deserialize, Clone)]
struct SnapshotFile {
    meta: SnapshotMeta<NodeId, Member>,
    state: PoolState,
}

/// A snapshot file read for its meta only (the state is skipped, not built in memory).
#[derive(Deserialize)]
struct SnapshotMetaOnly {
    meta: SnapshotMeta<NodeId, Member>,
}

/// What the rest of the partition shares with the state machine.
pub struct Shared {
    pub state: RwLock<PoolState>,
    applied: Mutex<Applied>,
    outcomes: Mutex<BTreeMap<u64, Result<Outcome, StateError>>>,
    /// Outcomes of a replica region's primary entries, by primary index (for the partition
    /// that forwarded the write to the primary).
    region_outcomes: Mutex<BTreeMap<u64, Result<Outcome, StateError>>>,
    /// The primary index this replica region has applied (docs/regions.md).
    pub region_applied: tokio::sync::watch::Sender<u64>,
    /// Signalled whenever the activation state changes (the keyring fetches the domain).
    pub activation_changed: tokio::sync::Notify,
    /// Told of every applied command and installed snapshot (the keyring evicts material).
    pub on_change: std::sync::OnceLock<crate::state::ChangeHook>,
    dir: PathBuf,
    snapshots_built: Mutex<u64>,
    /// The last log id of `snapshot.json` (`None`: no snapshot, or one of an empty log),
    /// locked while the file is replaced.
    on_disk: Mutex<Option<LogId<NodeId>>>,
    /// Bytes of the last snapshot written or installed (sets the snapshot cadence:
    /// `raft::snapshot_threshold`).
    snapshot_bytes: std::sync::atomic::AtomicU64,
}

impl Shared {
    /// Take the outcome of the command at `index` (once).
    pub fn take_outcome(&self, index: u64) -> Option<Result<Outcome, StateError>> {
        self.outcomes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&index)
    }

    /// Take the outcome of the primary entry at `primary_index` (once).
    pub fn take_region_outcome(&self, primary_index: u64) -> Option<Result<Outcome, StateError>> {
        self.region_outcomes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&primary_index)
    }

    pub fn applied(&self) -> Option<LogId<NodeId>> {
        self.applied.lock().unwrap_or_else(|p| p.into_inner()).0
    }

    /// Bytes of the last snapshot written or installed (0: none yet).
    pub fn snapshot_bytes(&self) -> u64 {
        self.snapshot_bytes
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Replace `snapshot.json` with `snap` and return its bytes. A built snapshot
    /// (`installed` false) older than the one on disk is not written: a newer one was
    /// installed while it was being built.
    fn persist(&self, snap: &SnapshotFile, installed: bool) -> std::io::Result<Vec<u8>> {
        let bytes = serde_json::to_vec(snap)?;
        let mut on_disk = self.on_disk.lock().unwrap_or_else(|p| p.into_inner());
        if !installed && snap.meta.last_log_id < *on_disk {
            return Ok(bytes);
        }
        let path = self.dir.join("snapshot.json");
        crate::fsutil::write_atomically(&path, &bytes)?;
        *on_disk = snap.meta.last_log_id;
        self.snapshot_bytes
            .store(bytes.len() as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(bytes)
    }
}

#[derive(Clone)]
pub struct StateMachine {
    pub shared: Arc<Shared>,
}

impl std::fmt::Debug for StateMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StateMachine")
    }
}

fn sm_err(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageError::from(StorageIOError::write_state_machine(AnyError::new(&e)))
}

impl StateMachine {
    /// Open the state machine from the last snapshot in `dir` (`dataDir/raft`), if any.
    pub fn open(dir: PathBuf) -> anyhow::Result<StateMachine> {
        crate::fsutil::create_dir_durably(&dir)?;
        let path = dir.join("snapshot.json");
        let mut snapshot_bytes = 0;
        let (state, applied) = match std::fs::read(&path) {
            Ok(bytes) => {
                snapshot_bytes = bytes.len() as u64;
                let snap: SnapshotFile = serde_json::from_slice(&bytes).with_context(|| {
                    format!(
                        "the snapshot {} is damaged; move the partition's data directory away: the partition starts empty and copies the state from its peers",
                        path.display()
                    )
                })?;
                (
                    snap.state,
                    (snap.meta.last_log_id, snap.meta.last_membership),
                )
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                (PoolState::default(), (None, StoredMembership::default()))
            }
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("cannot read the snapshot {}", path.display()));
            }
        };
        let on_disk = applied.0;
        let region_applied = tokio::sync::watch::Sender::new(state.region.applied_primary_index());
        Ok(StateMachine {
            shared: Arc::new(Shared {
                state: RwLock::new(state),
                applied: Mutex::new(applied),
                outcomes: Mutex::new(BTreeMap::new()),
                region_outcomes: Mutex::new(BTreeMap::new()),
                region_applied,
                activation_changed: tokio::sync::Notify::new(),
                on_change: std::sync::OnceLock::new(),
                dir,
                snapshots_built: Mutex::new(0),
                on_disk: Mutex::new(on_disk),
                snapshot_bytes: std::sync::atomic::AtomicU64::new(snapshot_bytes),
            }),
        })
    }

    fn current_snapshot_file(&self) -> SnapshotFile {
        // The state's read lock first, held while reading the applied id: `apply` holds the
        // write lock while it advances both, so the two always match (a snapshot whose state
        // is ahead of its log id would have entries applied twice after a restart).
        let (applied, state) = {
            let state = self.shared.state.read().unwrap_or_else(|p| p.into_inner());
            let applied = self
                .shared
                .applied
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            (applied, state.clone())
        };
        let n = {
            let mut n = self
                .shared
                .snapshots_built
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            *n += 1;
            *n
        };
        let snapshot_id = format!("{}-{}", applied.0.map(|l| l.index).unwrap_or(0), n);
        SnapshotFile {
            meta: SnapshotMeta {
                last_log_id: applied.0,
                last_membership: applied.1,
                snapshot_id,
            },
            state,
        }
    }
}

impl StateMachine {
    /// Tell waiting writers (`consensus::region`) the region position now applied.
    fn publish_region_applied(&self) {
        let now = self
            .shared
            .state
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .region
            .applied_primary_index();
        self.shared.region_applied.send_if_modified(|v| {
            let changed = *v != now;
            *v = now;
            changed
        });
    }

    /// After a region command: tell the keyring of each primary entry applied (it evicts
    /// material as for a local command) and keep the entries' outcomes for their proposers.
    /// Called with the state's write lock held (through `apply`).
    fn region_applied(&self, cmd: &Command, r: &Result<Outcome, StateError>) {
        match (cmd, r) {
            (Command::RegionApply { entries, .. }, Ok(Outcome::Region(results))) => {
                let mut outcomes = self
                    .shared
                    .region_outcomes
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                for (index, result) in results {
                    if let (Ok(o), Some(hook), Some(e)) = (
                        result,
                        self.shared.on_change.get(),
                        entries.iter().find(|e| e.index == *index),
                    ) {
                        hook(StateChange::Applied(&e.command, o));
                    }
                    outcomes.insert(*index, result.clone());
                }
                while outcomes.len() > OUTCOMES_KEPT {
                    outcomes.pop_first();
                }
            }
            (Command::RegionInstall { .. }, Ok(_)) => {
                if let Some(hook) = self.shared.on_change.get() {
                    hook(StateChange::Replaced);
                }
            }
            _ => {}
        }
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let snap = self.current_snapshot_file();
        // Serializing and writing the whole state takes a core for a while in a large pool:
        // on a background thread at a lower priority (requests keep being served).
        let shared = self.shared.clone();
        let (meta, bytes) = crate::background::run("raft-snapshot", move || {
            let bytes = shared.persist(&snap, false)?;
            Ok::<_, std::io::Error>((snap.meta, bytes))
        })
        .await
        .ok_or_else(|| sm_err(std::io::Error::other("the snapshot thread failed")))?
        .map_err(sm_err)?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, Member>), StorageError<NodeId>>
    {
        Ok(self
            .shared
            .applied
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone())
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<()>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut out = Vec::new();
        let mut activation_changed = false;
        {
            let mut state = self.shared.state.write().unwrap_or_else(|p| p.into_inner());
            let mut applied = self
                .shared
                .applied
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let mut outcomes = self
                .shared
                .outcomes
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            for entry in entries {
                match &entry.payload {
                    EntryPayload::Blank => {}
                    EntryPayload::Normal(cmd) => {
                        if matches!(
                            cmd,
                            Command::Activate { .. }
                                | Command::BeginRecovery { .. }
                                | Command::RegionJoined { .. }
                        ) {
                            activation_changed = true;
                        }
                        let r = state.apply(cmd);
                        if r.is_ok() {
                            state.region.note_committed(cmd, entry.log_id.index);
                        }
                        if let (Ok(outcome), Some(hook)) = (&r, self.shared.on_change.get()) {
                            hook(StateChange::Applied(cmd, outcome));
                        }
                        self.region_applied(cmd, &r);
                        outcomes.insert(entry.log_id.index, r);
                        while outcomes.len() > OUTCOMES_KEPT {
                            outcomes.pop_first();
                        }
                    }
                    EntryPayload::Membership(m) => {
                        // Members in the previous configuration and not in this one were
                        // removed: remember them (their ids are never reused, their peer
                        // requests are refused).
                        for (id, node) in applied.1.membership().nodes() {
                            if !m.nodes().any(|(n, _)| n == id) {
                                state.retired_members.insert(*id, node.name.clone());
                            }
                        }
                        applied.1 = StoredMembership::new(Some(entry.log_id), m.clone());
                    }
                }
                applied.0 = Some(entry.log_id);
                out.push(());
            }
        }
        if activation_changed {
            self.shared.activation_changed.notify_waiters();
        }
        self.publish_region_applied();
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, Member>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let file: SnapshotFile = serde_json::from_slice(snapshot.get_ref()).map_err(|e| {
            StorageError::from(StorageIOError::read_snapshot(
                Some(meta.signature()),
                AnyError::new(&e),
            ))
        })?;
        let file = SnapshotFile {
            meta: meta.clone(),
            state: file.state,
        };
        self.shared.persist(&file, true).map_err(sm_err)?;
        {
            let mut state = self.shared.state.write().unwrap_or_else(|p| p.into_inner());
            *state = file.state;
            if let Some(hook) = self.shared.on_change.get() {
                hook(StateChange::Replaced);
            }
            *self
                .shared
                .applied
                .lock()
                .unwrap_or_else(|p| p.into_inner()) =
                (meta.last_log_id, meta.last_membership.clone());
        }
        self.shared.activation_changed.notify_waiters();
        self.publish_region_applied();
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let path = self.shared.dir.join("snapshot.json");
        if !path.exists() {
            return Ok(None);
        }
        let bytes = std::fs::read(&path).map_err(sm_err)?;
        let file: SnapshotMetaOnly = serde_json::from_slice(&bytes).map_err(sm_err)?;
        Ok(Some(Snapshot {
            meta: file.meta,
            snapshot: Box::new(Cursor::new(bytes)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consensus::raft::storage_tests::{entries, key_names, log_id, open_both};

    #[tokio::test]
    async fn a_snapshot_built_before_an_install_never_replaces_it() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = tmp.path().join("raft");
        let (_, mut sm) = open_both(&dir);
        sm.apply(entries(1, 3)).await.expect("apply 1..=3");
        // openraft builds a snapshot in a task of its own: this one took the state at 3...
        let stale = sm.current_snapshot_file();
        // ...and a newer snapshot from the leader was installed before it was written.
        let leader_tmp = tempfile::tempdir().expect("temp dir");
        let (_, mut leader) = open_both(&leader_tmp.path().join("raft"));
        leader
            .apply(entries(2, 6))
            .await
            .expect("apply on the leader");
        let newer = leader
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .expect("build on the leader");
        sm.install_snapshot(&newer.meta, newer.snapshot)
            .await
            .expect("install");
        sm.shared
            .persist(&stale, false)
            .expect("write the stale snapshot");
        drop(sm);

        let (_, mut reopened) = open_both(&dir);
        assert_eq!(
            reopened.applied_state().await.expect("applied").0,
            Some(log_id(2, 6)),
            "the installed snapshot is still the one on disk"
        );
        assert_eq!(
            key_names(&reopened),
            ["key-2", "key-3", "key-4", "key-5", "key-6"]
        );
        let current = reopened
            .get_current_snapshot()
            .await
            .expect("read the snapshot")
            .expect("a snapshot");
        assert_eq!(current.meta, newer.meta);
    }
}
