//! Tests of the Raft storage on disk (log store and state machine together): openraft's own
//! storage suite, snapshots built and installed, and what survives a restart.

use super::log_store::LogStore;
use super::state_machine::StateMachine;
use super::{Member, TypeConfig};
use crate::state::{Command, KeyRecord};
use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine, StorageHelper};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{
    AnyError, CommittedLeaderId, Entry, EntryPayload, LogId, Membership, RaftLogReader,
    RaftSnapshotBuilder, StorageError, StorageIOError, StoredMembership, Vote,
};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

type NodeId = u64;

pub(super) fn log_id(term: u64, index: u64) -> LogId<NodeId> {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

pub(super) fn members() -> Membership<NodeId, Member> {
    let nodes: BTreeMap<NodeId, Member> = (1..=3)
        .map(|id| {
            let m = Member {
                name: format!("p{id}"),
                url: format!("https://p{id}:8443"),
            };
            (id, m)
        })
        .collect();
    Membership::new(vec![nodes.keys().copied().collect::<BTreeSet<_>>()], nodes)
}

/// The membership entry at `index`.
pub(super) fn membership_entry(term: u64, index: u64) -> Entry<TypeConfig> {
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Membership(members()),
    }
}

/// An entry whose command creates the key `key-<index>`.
pub(super) fn key_entry(term: u64, index: u64) -> Entry<TypeConfig> {
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Normal(Command::RestoreKey {
            key: KeyRecord {
                name: format!("key-{index}"),
                versions: imbl::Vector::new(),
                rotation_policy: None,
            },
        }),
    }
}

/// Entry 1 is the membership, entries 2..=`last` create keys.
pub(super) fn entries(term: u64, last: u64) -> Vec<Entry<TypeConfig>> {
    std::iter::once(membership_entry(term, 1))
        .chain((2..=last).map(|i| key_entry(term, i)))
        .collect()
}

pub(super) fn key_names(sm: &StateMachine) -> Vec<String> {
    let state = sm.shared.state.read().unwrap_or_else(|p| p.into_inner());
    state.keys.keys().cloned().collect()
}

pub(super) fn open_both(dir: &Path) -> (LogStore, StateMachine) {
    let log = LogStore::open(dir).expect("open the log store");
    let sm = StateMachine::open(dir.to_path_buf()).expect("open the state machine");
    (log, sm)
}

/// Builds a log store and a state machine in a fresh temporary directory (removed when the
/// guard is dropped).
struct OnDisk;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for OnDisk {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<NodeId>> {
        let fail = |e: String| StorageError::from(StorageIOError::write(AnyError::error(e)));
        let tmp = tempfile::tempdir().map_err(|e| fail(format!("temp dir: {e}")))?;
        let dir = tmp.path().join("raft");
        let log = LogStore::open(&dir).map_err(|e| fail(format!("{e:#}")))?;
        let sm = StateMachine::open(dir).map_err(|e| fail(format!("{e:#}")))?;
        Ok((tmp, log, sm))
    }
}

#[test]
fn openraft_storage_suite_passes_on_disk() {
    if let Err(e) = Suite::test_all(OnDisk) {
        panic!("openraft's storage suite failed: {e}");
    }
}

#[tokio::test]
async fn vote_log_committed_purge_and_snapshot_survive_a_restart() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().join("raft");
    let written = entries(2, 8);
    let vote = Vote::new_committed(2, 1);
    let snapshot = {
        let (mut log, mut sm) = open_both(&dir);
        log.save_vote(&vote).await.expect("save the vote");
        log.blocking_append(written.clone()).await.expect("append");
        log.save_committed(Some(log_id(2, 7)))
            .await
            .expect("save committed");
        sm.apply(written[..5].to_vec()).await.expect("apply 1..=5");
        let snapshot = sm
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .expect("build a snapshot");
        assert_eq!(snapshot.meta.last_log_id, Some(log_id(2, 5)));
        log.purge(log_id(2, 3)).await.expect("purge up to 3");
        // Applied in memory only: the state machine is rebuilt from the snapshot and the log.
        sm.apply(written[5..7].to_vec()).await.expect("apply 6..=7");
        snapshot
    };

    let (mut log, mut sm) = open_both(&dir);
    // The same term and candidate, no longer committed: a partition never takes up
    // leadership again from its disk (log_store.rs, `LogStore::open`).
    assert_eq!(log.read_vote().await.expect("vote"), Some(Vote::new(2, 1)));
    assert!(vote.committed);
    assert_eq!(
        log.read_committed().await.expect("committed"),
        Some(log_id(2, 7))
    );
    let state = log.get_log_state().await.expect("log state");
    assert_eq!(state.last_purged_log_id, Some(log_id(2, 3)));
    assert_eq!(state.last_log_id, Some(log_id(2, 8)));
    assert_eq!(
        log.try_get_log_entries(..).await.expect("entries"),
        written[3..].to_vec(),
        "entries 4..=8 are kept"
    );
    let membership = StoredMembership::new(Some(log_id(2, 1)), members());
    assert_eq!(
        sm.applied_state().await.expect("applied"),
        (Some(log_id(2, 5)), membership.clone()),
        "the state machine starts from the snapshot"
    );
    assert_eq!(key_names(&sm), ["key-2", "key-3", "key-4", "key-5"]);
    let current = sm
        .get_current_snapshot()
        .await
        .expect("read the snapshot")
        .expect("a snapshot");
    assert_eq!(current.meta, snapshot.meta);

    // What openraft does at start: re-apply the committed entries after the snapshot.
    let initial = StorageHelper::new(&mut log, &mut sm)
        .get_initial_state()
        .await
        .expect("initial state");
    assert_eq!(
        initial.vote_ref(),
        &Vote::new(2, 1),
        "never restored as a committed leader"
    );
    assert_eq!(
        sm.applied_state().await.expect("applied"),
        (Some(log_id(2, 7)), membership)
    );
    assert_eq!(
        key_names(&sm),
        ["key-2", "key-3", "key-4", "key-5", "key-6", "key-7"],
        "committed entries are applied, the uncommitted one (8) is not"
    );
}

#[tokio::test]
async fn an_installed_snapshot_replaces_the_state_and_survives_a_restart() {
    let leader_tmp = tempfile::tempdir().expect("temp dir");
    let follower_tmp = tempfile::tempdir().expect("temp dir");
    let follower_dir = follower_tmp.path().join("raft");

    let (_, mut leader) = open_both(&leader_tmp.path().join("raft"));
    leader
        .apply(entries(3, 6))
        .await
        .expect("apply on the leader");
    let built = leader
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .expect("build a snapshot");

    let (_, mut follower) = open_both(&follower_dir);
    // A stale state of an older term, replaced by the snapshot.
    follower
        .apply(vec![
            membership_entry(1, 1),
            key_entry(1, 2),
            key_entry(1, 40),
        ])
        .await
        .expect("apply on the follower");
    let mut received = follower
        .begin_receiving_snapshot()
        .await
        .expect("begin receiving");
    *received = *built.snapshot;
    follower
        .install_snapshot(&built.meta, received)
        .await
        .expect("install the snapshot");

    let want_keys = ["key-2", "key-3", "key-4", "key-5", "key-6"];
    let want_applied = (
        Some(log_id(3, 6)),
        StoredMembership::new(Some(log_id(3, 1)), members()),
    );
    assert_eq!(key_names(&follower), want_keys);
    assert_eq!(
        follower.applied_state().await.expect("applied"),
        want_applied
    );
    let current = follower
        .get_current_snapshot()
        .await
        .expect("read the snapshot")
        .expect("a snapshot");
    assert_eq!(current.meta, built.meta);
    drop(follower);

    let (_, mut reopened) = open_both(&follower_dir);
    assert_eq!(key_names(&reopened), want_keys);
    assert_eq!(
        reopened.applied_state().await.expect("applied"),
        want_applied
    );
    let current = reopened
        .get_current_snapshot()
        .await
        .expect("read the snapshot")
        .expect("a snapshot");
    assert_eq!(current.meta, built.meta);
}
