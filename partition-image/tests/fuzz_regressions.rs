//! Inputs that made a fuzz target panic, kept in `fuzz/regressions/<target>/` and replayed
//! here through the same entry points as the targets (scripts/fuzz.sh also replays them
//! with the fuzz binaries). Each one must now give a result or a clean error.

use std::path::{Path, PathBuf};

use keystead_partition::consensus::raft::log_store::LogStore;
use keystead_partition::consensus::raft::state_machine::StateMachine;
use keystead_partition::consensus::single::SingleStore;
use keystead_partition::state::{Command, PoolState};

fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/regressions")
        .join(target);
    let mut out: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no kept inputs in {}", dir.display());
    out
}

/// `fuzz_targets/state_apply.rs`: commands as JSON lines applied to one state.
#[test]
fn state_apply_regressions() {
    for (path, data) in inputs("state_apply") {
        let mut state = PoolState::default();
        for line in data.split(|b| *b == b'\n') {
            if let Ok(cmd) = serde_json::from_slice::<Command>(line) {
                let before = state.clone();
                if state.apply(&cmd).is_err() {
                    assert_eq!(state, before, "{}", path.display());
                }
            }
        }
    }
}

/// `fuzz_targets/backup_manifest.rs`: a manifest that parses gives a summary (chunk sizes
/// summing past u64 made it overflow).
#[test]
fn backup_manifest_regressions() {
    for (path, data) in inputs("backup_manifest") {
        if let Ok(m) = keystead_partition::backup::format::parse_manifest(&data) {
            let summary = keystead_partition::backup::summary(&m);
            assert!(summary.is_ok(), "{}: {summary:?}", path.display());
        }
    }
}

/// A soft-delete at the end of time is scheduled for purge at the end of time (it used to
/// overflow: a panic in debug builds, a purge date in the past in release builds).
#[test]
fn a_soft_delete_purge_date_saturates() {
    let data = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fuzz/regressions/state_apply/delete-key-purge-date-overflow"),
    )
    .unwrap();
    let mut state = PoolState::default();
    for line in data.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        state.apply(&serde_json::from_slice(line).unwrap()).unwrap();
    }
    let d = state
        .deleted
        .values()
        .next()
        .expect("the key is soft-deleted");
    assert_eq!(d.scheduled_purge_date, i64::MAX);
}

/// `fuzz_targets/raft_disk.rs`: a mode byte, then a file of the data directory.
#[test]
fn raft_disk_regressions() {
    for (path, data) in inputs("raft_disk") {
        let (mode, body) = data.split_first().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        match mode % 5 {
            0 | 1 => {
                let name = if mode % 5 == 0 {
                    "log.jsonl"
                } else {
                    "vote.json"
                };
                std::fs::write(d.join(name), body).unwrap();
                let _ = LogStore::open(d);
            }
            2 => {
                std::fs::write(d.join("snapshot.json"), body).unwrap();
                let _ = StateMachine::open(d.to_path_buf());
            }
            m => {
                let name = if m == 3 {
                    "commands.log"
                } else {
                    "snapshot.json"
                };
                std::fs::write(d.join(name), body).unwrap();
                let _ = SingleStore::open(d);
            }
        }
        eprintln!("replayed {}", path.display());
    }
}
