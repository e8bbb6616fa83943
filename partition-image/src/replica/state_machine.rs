//! The replicated state machine: [`PoolState`] plus the last applied log id and membership.
//!
//! Snapshots are the serialized state (wrapped key material only), written atomically to
//! `dataDir/raft/snapshot.json`. The outcome of each applied command is kept in memory for a
//! while so that the partition that proposed it (possibly a follower, via the leader) can
//! answer its client with exactly what the state machine produced.

use super::{Member, TypeConfig};
use crate::state::{Command, Outcome, PoolState, StateError};
use crate::store::StateChange;
use openraft::storage::{RaftStateMachine, Snapshot, SnapshotMeta};
use openraft::{
    AnyError, Entry, EntryPayload, LogId, RaftSnapshotBuilder, StorageError, StorageIOError,
    StoredMembership,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{Cursor, Write};
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

/// What the rest of the partition shares with the state machine.
pub struct Shared {
    pub state: RwLock<PoolState>,
    applied: Mutex<Applied>,
    outcomes: Mutex<BTreeMap<u64, Result<Outcome, StateError>>>,
    /// Signalled whenever the activation state changes (the keyring fetches the domain).
    pub activation_changed: tokio::sync::Notify,
    /// Told of every applied command and installed snapshot (the keyring evicts material).
    pub on_change: std::sync::OnceLock<crate::store::ChangeHook>,
    dir: PathBuf,
    snapshots_built: Mutex<u64>,
}

impl Shared {
    /// Take the outcome of the command at `index` (once).
    pub fn take_outcome(&self, index: u64) -> Option<Result<Outcome, StateError>> {
        self.outcomes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&index)
    }

    pub fn applied(&self) -> Option<LogId<NodeId>> {
        self.applied.lock().unwrap_or_else(|p| p.into_inner()).0
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
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("snapshot.json");
        let (state, applied) = if path.exists() {
            let snap: SnapshotFile = serde_json::from_slice(&std::fs::read(&path)?)
                .map_err(|e| anyhow::anyhow!("the snapshot {} is corrupt: {e}; move the partition's data directory away to let it heal from its peers", path.display()))?;
            (
                snap.state,
                (snap.meta.last_log_id, snap.meta.last_membership),
            )
        } else {
            (PoolState::default(), (None, StoredMembership::default()))
        };
        Ok(StateMachine {
            shared: Arc::new(Shared {
                state: RwLock::new(state),
                applied: Mutex::new(applied),
                outcomes: Mutex::new(BTreeMap::new()),
                activation_changed: tokio::sync::Notify::new(),
                on_change: std::sync::OnceLock::new(),
                dir,
                snapshots_built: Mutex::new(0),
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

    fn persist(&self, snap: &SnapshotFile) -> std::io::Result<Vec<u8>> {
        let bytes = serde_json::to_vec(snap)?;
        let path = self.shared.dir.join("snapshot.json");
        let tmp = self.shared.dir.join("snapshot.json.tmp");
        {
            let mut f = crate::store::restricted_create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(&self.shared.dir)?.sync_all()?;
        Ok(bytes)
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let snap = self.current_snapshot_file();
        let bytes = self.persist(&snap).map_err(sm_err)?;
        Ok(Snapshot {
            meta: snap.meta,
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
                            Command::Activate { .. } | Command::BeginRecovery { .. }
                        ) {
                            activation_changed = true;
                        }
                        let r = state.apply(cmd);
                        if let (Ok(outcome), Some(hook)) = (&r, self.shared.on_change.get()) {
                            hook(StateChange::Applied(cmd, outcome));
                        }
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
        self.persist(&file).map_err(sm_err)?;
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
        let file: SnapshotFile = serde_json::from_slice(&bytes).map_err(sm_err)?;
        Ok(Some(Snapshot {
            meta: file.meta,
            snapshot: Box::new(Cursor::new(bytes)),
        }))
    }
}
