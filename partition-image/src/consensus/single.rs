//! The single-partition store of a pool of one: an fsync'd command log plus snapshots in the
//! partition's data directory. Holds only what [`PoolState`] holds: wrapped key material and
//! metadata.
//!
//! `commands.log` holds one JSON record per line, each fsync'd before its command is
//! acknowledged. A record is complete once its line, newline included, is on disk. A crash in
//! the middle of a write leaves an incomplete last record, which was never acknowledged: open
//! cuts the file back to the end of the last complete record (and fsyncs it) before anything
//! is appended, so the next record is not glued onto the fragment. A damaged record with
//! complete records after it is not a cut-off write: open refuses it, naming the file, the
//! byte offset and what to do. A failed write is cut off the file at once; if even that
//! fails, every later write is refused until the partition restarts.

use super::ProposeError;
use crate::fsutil::{create_dir_durably, restricted_append as open_log, write_atomically};
use crate::state::{ChangeHook, Command, Outcome, PoolState, StateChange};
use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock, RwLockReadGuard};

const SNAPSHOT_EVERY: u64 = 10_000;

#[derive(Serialize, Deserialize)]
struct LogEntry {
    index: u64,
    cmd: Command,
}

#[derive(Serialize, Deserialize)]
struct Snapshot {
    index: u64,
    state: PoolState,
}

struct Log {
    file: File,
    index: u64,
    since_snapshot: u64,
    /// Bytes of complete records in `commands.log`: where the next record starts.
    len: u64,
    /// Set when a failed write could not be cut off the file: what is on disk is unknown.
    failed: Option<String>,
}

impl Log {
    /// Append `record` (one line) to `commands.log` at `path` and fsync it.
    ///
    /// A failed write or fsync is cut off the file (back to the last complete record,
    /// fsync'd): the change was not committed and the answer says it is safe to retry. When
    /// even that fails, what is on disk is unknown: the change may reappear at the next
    /// start, so the answer says so, and every later write is refused until the partition
    /// restarts (the next record must not be glued onto a fragment).
    fn append(&mut self, path: &Path, record: &[u8]) -> Result<(), ProposeError> {
        if let Some(f) = &self.failed {
            return Err(ProposeError::Storage(format!(
                "an earlier write to the command log {} failed and could not be undone ({f}); restart the partition to reopen the log",
                path.display()
            )));
        }
        let Err(e) = self
            .file
            .write_all(record)
            .and_then(|()| self.file.sync_data())
        else {
            self.len += record.len() as u64;
            crate::fsutil::note_durable(path, &self.file);
            return Ok(());
        };
        match self
            .file
            .set_len(self.len)
            .and_then(|()| self.file.sync_all())
        {
            Ok(()) => Err(ProposeError::Storage(format!(
                "cannot write the command log {}: {e}",
                path.display()
            ))),
            Err(cut) => {
                self.failed = Some(format!("{e}; then cutting it back failed: {cut}"));
                Err(ProposeError::Uncertain(format!(
                    "writing the command log {} failed ({e}) and the incomplete record could not be cut off ({cut}); restart the partition",
                    path.display()
                )))
            }
        }
    }
}

/// The single-partition state and its durable log.
pub struct SingleStore {
    dir: PathBuf,
    state: RwLock<PoolState>,
    log: Mutex<Log>,
    pub(super) on_change: std::sync::OnceLock<ChangeHook>,
}

impl std::fmt::Debug for SingleStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SingleStore")
            .field("dir", &self.dir)
            .finish()
    }
}

/// What replaying `commands.log` found.
struct Replayed {
    state: PoolState,
    index: u64,
    since_snapshot: u64,
    /// Bytes of complete records: everything after them is a write cut off by a crash.
    complete_len: usize,
}

/// Replay the records of `commands.log` (`bytes`, read from `path`) over the snapshot's
/// `state` at `index`.
///
/// The last line may be incomplete (no newline, or not a whole record): it is left out of
/// `complete_len`. A record that cannot be read anywhere before it is an error.
fn replay(path: &Path, bytes: &[u8], state: PoolState, index: u64) -> anyhow::Result<Replayed> {
    let mut r = Replayed {
        state,
        index,
        since_snapshot: 0,
        complete_len: 0,
    };
    let applied = crate::jsonl::read_complete(bytes, |entry: LogEntry, _| {
        if entry.index > r.index {
            // Refusals were refused when first applied too; replay is deterministic.
            let _ = r.state.apply(&entry.cmd);
            r.index = entry.index;
            r.since_snapshot += 1;
        }
    });
    r.complete_len = applied.map_err(|d| {
        anyhow::anyhow!(
            "the command log {path} is damaged at byte {start} (line {line}): {e}. \
             Complete records follow it, so it is not a write cut off by a crash, and \
             skipping it could lose acknowledged changes: the partition will not start \
             on it. Keep a copy of the file for diagnosis, then either restore the pool \
             from a backup, or accept losing every change from this record on by \
             cutting the file there (`truncate -s {start} {path}`)",
            path = path.display(),
            start = d.byte,
            line = d.line,
            e = d.error
        )
    })?;
    Ok(r)
}

impl SingleStore {
    /// Open (or create) the store in `dir`, replaying the snapshot and the log.
    ///
    /// An incomplete last record of the log (a write cut off by a crash) is cut off the
    /// file, durably, before anything is appended.
    pub fn open(dir: &Path) -> anyhow::Result<SingleStore> {
        create_dir_durably(dir)?;
        let snap_path = dir.join("snapshot.json");
        let (state, index) = if snap_path.exists() {
            let snap: Snapshot = serde_json::from_slice(&std::fs::read(&snap_path)?)
                .with_context(|| format!("snapshot {} is corrupt", snap_path.display()))?;
            (snap.state, snap.index)
        } else {
            (PoolState::default(), 0)
        };
        let log_path = dir.join("commands.log");
        let (bytes, existed) = crate::jsonl::read_log(&log_path, "the command log")?;
        let replayed = replay(&log_path, &bytes, state, index)?;
        let file = open_log(&log_path)
            .with_context(|| format!("cannot open the command log {}", log_path.display()))?;
        crate::jsonl::settle_log(
            &file,
            &log_path,
            "the command log",
            replayed.complete_len,
            bytes.len(),
            existed,
        )?;
        // `complete_len` is at most the file's length, which fits in u64.
        let len = u64::try_from(replayed.complete_len).unwrap_or(u64::MAX);
        Ok(SingleStore {
            dir: dir.to_path_buf(),
            state: RwLock::new(replayed.state),
            log: Mutex::new(Log {
                file,
                index: replayed.index,
                since_snapshot: replayed.since_snapshot,
                len,
                failed: None,
            }),
            on_change: std::sync::OnceLock::new(),
        })
    }

    /// Read the current state.
    pub fn read(&self) -> RwLockReadGuard<'_, PoolState> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Index of the last applied command.
    pub fn applied_index(&self) -> u64 {
        self.log.lock().map(|l| l.index).unwrap_or(0)
    }

    /// Apply a command durably: validated against a copy of the state first (so a refusal
    /// never reaches the log), then written and fsync'd, then applied.
    pub fn propose(&self, cmd: Command) -> Result<Outcome, ProposeError> {
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
        // Validate against a copy of the state, unless the command's refusal is decided
        // without applying it (a copy per staged-restore command would make a restore
        // quadratic in the pool's size).
        let trial = match state.precheck(&cmd) {
            Some(r) => {
                r?;
                None
            }
            None => {
                let mut t = state.clone();
                let outcome = t.apply(&cmd)?;
                Some((t, outcome))
            }
        };
        let entry = LogEntry {
            // The index is read back from disk at start-up: a corrupt one must not panic here.
            index: log.index.checked_add(1).ok_or_else(|| {
                ProposeError::Storage("the command log's index is at its maximum".to_owned())
            })?,
            cmd,
        };
        let mut line =
            serde_json::to_vec(&entry).map_err(|e| ProposeError::Storage(e.to_string()))?;
        line.push(b'\n');
        log.append(&self.dir.join("commands.log"), &line)?;
        log.index = entry.index;
        log.since_snapshot += 1;
        let outcome = match trial {
            Some((t, outcome)) => {
                *state = t;
                outcome
            }
            // Prechecked: applying cannot be refused.
            None => state
                .apply(&entry.cmd)
                .map_err(|e| ProposeError::Storage(format!("a prechecked command failed: {e}")))?,
        };
        if let Some(hook) = self.on_change.get() {
            hook(StateChange::Applied(&entry.cmd, &outcome));
        }
        if log.since_snapshot >= SNAPSHOT_EVERY {
            let snap = Snapshot {
                index: log.index,
                state: state.clone(),
            };
            drop(state);
            if let Ok(file) = self.write_snapshot(&snap) {
                log.file = file;
                log.since_snapshot = 0;
                log.len = 0;
            }
        }
        Ok(outcome)
    }

    /// Write a snapshot, then start a fresh log (entries up to the snapshot index are
    /// redundant; replay skips them anyway should the swap be interrupted).
    fn write_snapshot(&self, snap: &Snapshot) -> anyhow::Result<File> {
        let bytes = serde_json::to_vec(snap)?;
        write_atomically(&self.dir.join("snapshot.json"), &bytes)?;
        let log_path = self.dir.join("commands.log");
        write_atomically(&log_path, b"")?;
        Ok(open_log(&log_path)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::KeyRecord;

    /// A command that creates the key `name` (names with non-ASCII characters make some cuts
    /// fall inside a multi-byte character).
    fn restore(name: &str) -> Command {
        Command::RestoreKey {
            key: KeyRecord {
                name: name.into(),
                versions: imbl::Vector::new(),
                rotation_policy: None,
            },
        }
    }

    fn names(store: &SingleStore) -> Vec<String> {
        store.read().keys.keys().cloned().collect()
    }

    /// A store in `dir` holding one key per name, and the bytes of its command log.
    fn write_store(dir: &Path, names: &[String]) -> Vec<u8> {
        let store = SingleStore::open(dir).expect("open a new store");
        for n in names {
            store.propose(restore(n)).expect("propose");
        }
        std::fs::read(dir.join("commands.log")).expect("read commands.log")
    }

    /// Reopen the store in `dir`, commit `new` and reopen again: the state must hold `kept`
    /// and `new`, at the right index.
    fn commit_across_restarts(dir: &Path, kept: &[String], new: &str) -> Result<(), String> {
        let store =
            SingleStore::open(dir).map_err(|e| format!("the first reopen failed: {e:#}"))?;
        store
            .propose(restore(new))
            .map_err(|e| format!("committing after the first reopen failed: {e}"))?;
        drop(store);
        let store =
            SingleStore::open(dir).map_err(|e| format!("the second reopen failed: {e:#}"))?;
        let mut want = kept.to_vec();
        want.push(new.to_string());
        want.sort();
        let got = names(&store);
        if got != want {
            return Err(format!(
                "after the second reopen the store holds {got:?}, expected {want:?}"
            ));
        }
        let index = store.applied_index();
        if index != kept.len() as u64 + 1 {
            return Err(format!(
                "after the second reopen the applied index is {index}, expected {}",
                kept.len() + 1
            ));
        }
        Ok(())
    }

    #[test]
    fn a_command_committed_after_a_torn_last_record_survives_the_next_restart() {
        const N: usize = 4;
        let written: Vec<String> = (1..=N).map(|i| format!("clé-{i}-€")).collect();
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = tmp.path().join("data");
        let intact = write_store(&dir, &written);
        let path = dir.join("commands.log");
        let cuts = crate::jsonl::tearing::cuts_in_last_record(&intact);
        let kept = &written[..N - 1];
        let mut failures = Vec::new();
        for cut in cuts.clone() {
            std::fs::write(&path, &intact[..cut]).expect("tear commands.log");
            if let Err(e) = commit_across_restarts(&dir, kept, "après-la-coupure") {
                failures.push(format!("cut at byte {cut}: {e}"));
            }
        }
        crate::jsonl::tearing::assert_no_lost_cuts(&failures, &cuts);
    }

    #[test]
    fn a_damaged_record_before_the_last_is_refused_naming_the_file_and_offset() {
        let written: Vec<String> = (1..=4).map(|i| format!("key-{i}")).collect();
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = tmp.path().join("data");
        let intact = write_store(&dir, &written);
        let second = intact
            .iter()
            .position(|&b| b == b'\n')
            .expect("a first line")
            + 1;
        let third = second
            + intact[second..]
                .iter()
                .position(|&b| b == b'\n')
                .expect("a second line");
        let path = dir.join("commands.log");
        // A byte of the second record overwritten; the same record cut short.
        let mut garbled = intact.clone();
        garbled[second + 5] = 0;
        let cut = [&intact[..second + 10], &intact[third..]].concat();
        for damaged in [garbled, cut] {
            std::fs::write(&path, &damaged).expect("damage commands.log");
            let err = format!(
                "{:#}",
                SingleStore::open(&dir).expect_err("a damaged record in the middle is refused")
            );
            assert!(err.contains(&path.display().to_string()), "{err}");
            assert!(err.contains(&format!("at byte {second} (line 2)")), "{err}");
            assert!(err.contains(&format!("truncate -s {second}")), "{err}");
            assert_eq!(
                std::fs::read(&path).expect("read commands.log"),
                damaged,
                "a refused log is left as it is"
            );
        }
    }

    #[test]
    fn a_damaged_last_line_is_a_cut_off_write_and_is_removed() {
        let written: Vec<String> = (1..=3).map(|i| format!("key-{i}")).collect();
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = tmp.path().join("data");
        let intact = write_store(&dir, &written);
        let path = dir.join("commands.log");
        // Zeros where the last write was not persisted, but its newline was.
        let mut damaged = intact.clone();
        damaged.extend_from_slice(&[0; 40]);
        damaged.push(b'\n');
        std::fs::write(&path, &damaged).expect("damage commands.log");
        let store = SingleStore::open(&dir).expect("open");
        assert_eq!(names(&store), written);
        assert_eq!(
            std::fs::read(&path).expect("read commands.log"),
            intact,
            "the file is cut back to its complete records"
        );
    }

    #[test]
    fn a_write_after_a_failed_write_that_could_not_be_undone_is_refused() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = tmp.path().join("data");
        let store = SingleStore::open(&dir).expect("open");
        store.log.lock().expect("log").failed = Some("No space left on device".into());
        let err = store
            .propose(restore("k"))
            .expect_err("refused")
            .to_string();
        assert!(err.contains("restart the partition"), "{err}");
        assert!(names(&store).is_empty());
        assert!(
            std::fs::read(dir.join("commands.log"))
                .expect("read commands.log")
                .is_empty()
        );
    }
}
