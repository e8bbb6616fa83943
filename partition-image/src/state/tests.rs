//! Unit tests of PoolState::apply: every command, its refusals, and determinism.

use super::*;

fn key(name: &str) -> KeyRecord {
    KeyRecord {
        name: name.into(),
        versions: imbl::Vector::new(),
        rotation_policy: None,
    }
}

fn stage(id: &str, keys: &[&str], rbac: bool) -> Command {
    Command::RestoreStage {
        id: id.into(),
        keys: keys.iter().map(|k| key(k)).collect(),
        deleted: vec![],
        rbac: rbac.then(|| Box::new(RbacState::default())),
    }
}

fn commit(id: &str, keys: u64) -> Command {
    Command::RestoreCommit {
        id: id.into(),
        key_count: keys,
        deleted_count: 0,
    }
}

#[test]
fn a_staged_restore_is_invisible_until_its_commit_and_all_or_nothing() {
    let mut s = PoolState::default();
    s.keys.insert("old".into(), key("old"));
    let before = s.clone();
    s.apply(&Command::RestoreBegin { id: "r1".into() }).unwrap();
    s.apply(&stage("r1", &["a", "b"], true)).unwrap();
    s.apply(&stage("r1", &["c"], false)).unwrap();
    assert_eq!(s.keys, before.keys, "staged records are not visible");
    // Counts that do not match the staged records: refused, nothing changes.
    let e = s.apply(&commit("r1", 4)).unwrap_err();
    assert!(
        matches!(e, StateError::RestoreIncomplete { keys: 3, .. }),
        "{e}"
    );
    assert_eq!(s.keys, before.keys);
    s.apply(&commit("r1", 3)).unwrap();
    assert_eq!(s.keys.keys().collect::<Vec<_>>(), ["a", "b", "c"]);
    assert!(s.restore_staging.is_none());
    // Committed once: a second commit finds nothing staged.
    assert!(matches!(
        s.apply(&commit("r1", 3)),
        Err(StateError::RestoreNotStaged(_))
    ));
}

#[test]
fn a_stage_applied_twice_commits_each_record_once_and_duplicate_names_are_refused() {
    // A stage proposed again after an unknown outcome, which had landed: the same records
    // staged twice. The commit counts names, keeps one record each, and succeeds.
    let mut s = PoolState::default();
    s.apply(&Command::RestoreBegin { id: "r1".into() }).unwrap();
    s.apply(&stage("r1", &["a", "b"], true)).unwrap();
    s.apply(&stage("r1", &["a", "b"], true)).unwrap();
    s.apply(&stage("r1", &["c"], false)).unwrap();
    s.apply(&commit("r1", 3)).unwrap();
    assert_eq!(s.keys.keys().collect::<Vec<_>>(), ["a", "b", "c"]);
    // A backup that names one key twice (its manifest counts two records) does not commit:
    // two records, one name.
    let mut s = PoolState::default();
    s.keys.insert("old".into(), key("old"));
    let before = s.clone();
    s.apply(&Command::RestoreBegin { id: "r2".into() }).unwrap();
    s.apply(&stage("r2", &["a", "a"], true)).unwrap();
    let e = s.apply(&commit("r2", 2)).unwrap_err();
    assert!(
        matches!(e, StateError::RestoreIncomplete { keys: 1, .. }),
        "{e}"
    );
    assert_eq!(s.keys, before.keys);
}

#[test]
fn a_newer_restore_or_an_abort_drops_the_staged_one() {
    let mut s = PoolState::default();
    s.keys.insert("old".into(), key("old"));
    s.apply(&Command::RestoreBegin { id: "r1".into() }).unwrap();
    s.apply(&stage("r1", &["a"], true)).unwrap();
    s.apply(&Command::RestoreBegin { id: "r2".into() }).unwrap();
    assert!(matches!(
        s.apply(&stage("r1", &["b"], false)),
        Err(StateError::RestoreNotStaged(_))
    ));
    assert!(matches!(
        s.apply(&commit("r1", 1)),
        Err(StateError::RestoreNotStaged(_))
    ));
    // Without the RBAC state a restore does not commit.
    s.apply(&stage("r2", &["x"], false)).unwrap();
    assert!(matches!(
        s.apply(&commit("r2", 1)),
        Err(StateError::RestoreIncomplete { .. })
    ));
    // An abort of another id changes nothing; its own drops it.
    s.apply(&Command::RestoreAbort { id: "r1".into() }).unwrap();
    assert!(s.restore_staging.is_some());
    s.apply(&Command::RestoreAbort { id: "r2".into() }).unwrap();
    assert!(s.restore_staging.is_none());
    assert_eq!(s.keys.keys().collect::<Vec<_>>(), ["old"]);
    // The staging travels in snapshots (serialized state), and is absent when empty.
    s.apply(&Command::RestoreBegin { id: "r3".into() }).unwrap();
    let json = serde_json::to_string(&s).unwrap();
    let back: PoolState = serde_json::from_str(&json).unwrap();
    assert_eq!(back, s);
    s.apply(&Command::RestoreAbort { id: "r3".into() }).unwrap();
    assert!(
        !serde_json::to_string(&s)
            .unwrap()
            .contains("restoreStaging")
    );
}
