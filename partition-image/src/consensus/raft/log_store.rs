//! The Raft log, vote and committed marker on disk under `dataDir/raft/`.
//!
//! `log.jsonl` is an append-only file of operations, one JSON record per line: append an
//! entry, truncate from an index, purge up to a log id (each batch fsync'd before it is
//! acknowledged), and the committed marker (written without an fsync of its own: it becomes
//! durable with the next fsync'd batch, and a lost marker only means fewer entries are
//! re-applied at start). `vote.json` is replaced atomically. Entries carry
//! [`Command`](crate::state::Command)s, which hold only wrapped key material. On open the
//! operations are replayed into memory; after a purge the file is rewritten with the
//! remaining entries.
//!
//! A record is complete once its line, newline included, is on disk. A crash in the middle of
//! a write leaves an incomplete last record, which was never acknowledged: open cuts the file
//! back to the end of the last complete record (and fsyncs it) before anything is appended.
//! A damaged record with complete records after it is not a cut-off write: open refuses it.
//! After a failed write or fsync the file's content is unknown, so the store refuses every
//! later write until the partition restarts (openraft stops on the error anyway).

use super::TypeConfig;
use anyhow::Context;
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{AnyError, Entry, LogId, RaftLogReader, StorageError, StorageIOError, Vote};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::File;
use std::io::Write;
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

type NodeId = u64;

#[derive(Serialize, Deserialize)]
enum Op {
    #[serde(rename = "a")]
    Append(Entry<TypeConfig>),
    #[serde(rename = "t")]
    Truncate(u64),
    #[serde(rename = "p")]
    Purge(LogId<NodeId>),
    #[serde(rename = "c")]
    Commit(LogId<NodeId>),
}

/// [`Op::Append`] of a borrowed entry (the same record on disk, without copying the entry).
#[derive(Serialize)]
enum AppendRef<'a> {
    #[serde(rename = "a")]
    Append(&'a Entry<TypeConfig>),
}

struct Inner {
    dir: PathBuf,
    file: File,
    entries: BTreeMap<u64, Entry<TypeConfig>>,
    /// Bytes of each entry's record as appended here (not known for entries replayed at
    /// open): what a purge moves into the region tail is counted without serializing it
    /// again — on the Raft core's task, a large purge did that for every entry.
    sizes: BTreeMap<u64, usize>,
    last_purged: Option<LogId<NodeId>>,
    committed: Option<LogId<NodeId>>,
    vote: Option<Vote<NodeId>>,
    /// Set when a write to `log.jsonl` failed: what is on disk is unknown from then on.
    failed: Option<String>,
    /// Entries purged from the log (after a snapshot), kept in memory only for replica
    /// regions' feeds ([`LogStore::entries_after`]), at most [`REGION_TAIL_BYTES`] of them.
    /// A region behind the log by less than this resumes from it instead of re-reading a
    /// snapshot — which, under sustained writes, could take longer than the log lasts.
    tail: BTreeMap<u64, (Entry<TypeConfig>, usize)>,
    tail_bytes: usize,
}

/// Serialized bytes of purged entries kept for replica regions (in memory, per partition).
pub const REGION_TAIL_BYTES: usize = 16 * 1024 * 1024;

/// The log store (cheap to clone; clones share the same log).
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Mutex<Inner>>,
}

impl Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogStore")
    }
}

fn io_err(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageError::from(StorageIOError::write_logs(AnyError::new(&e)))
}

use crate::fsutil::restricted_append as open_append;

use crate::fsutil::{create_dir_durably, note_durable, write_atomically};

/// What replaying `log.jsonl` found.
#[derive(Default)]
struct Replayed {
    entries: BTreeMap<u64, Entry<TypeConfig>>,
    /// Each entry's record length in the file (what appending it wrote).
    sizes: BTreeMap<u64, usize>,
    last_purged: Option<LogId<NodeId>>,
    committed: Option<LogId<NodeId>>,
    /// Bytes of complete records: everything after them is a write cut off by a crash.
    complete_len: usize,
}

/// Replay the operations of `log.jsonl` (`bytes`, read from `path`).
///
/// The last line may be incomplete (no newline, or not a whole record): it is left out of
/// `complete_len`. A record that cannot be read anywhere before it is an error.
fn replay(path: &Path, bytes: &[u8]) -> anyhow::Result<Replayed> {
    let mut r = Replayed::default();
    let read = crate::jsonl::read_complete(bytes, |op: Op, len| {
        match op {
            Op::Append(e) => {
                r.sizes.insert(e.log_id.index, len);
                r.entries.insert(e.log_id.index, e);
            }
            Op::Truncate(since) => {
                r.entries.split_off(&since);
                r.sizes.split_off(&since);
            }
            Op::Purge(id) => {
                // A purge up to the last possible index (a corrupt line) empties the log.
                (r.entries, r.sizes) = match id.index.checked_add(1) {
                    Some(first_kept) => (
                        r.entries.split_off(&first_kept),
                        r.sizes.split_off(&first_kept),
                    ),
                    None => (BTreeMap::new(), BTreeMap::new()),
                };
                r.last_purged = Some(id);
            }
            Op::Commit(id) => r.committed = Some(id),
        }
    });
    r.complete_len = read.map_err(|d| {
        anyhow::anyhow!(
            "the Raft log {} is damaged at byte {} (line {}): {}. Complete \
             records follow it, so it is not a write cut off by a crash, and skipping it \
             could lose acknowledged entries: the partition will not start on it. Keep a \
             copy of the file for diagnosis, then move the partition's data directory \
             away: the partition starts empty and copies the log from its peers (while \
             the other partitions of the pool form a majority)",
            path.display(),
            d.byte,
            d.line,
            d.error
        )
    })?;
    Ok(r)
}

impl LogStore {
    /// Open (or create) the log in `dir` (`dataDir/raft`).
    ///
    /// An incomplete last record (a write cut off by a crash) is cut off the file, durably,
    /// before anything is appended.
    pub fn open(dir: &Path) -> anyhow::Result<LogStore> {
        create_dir_durably(dir)?;
        let path = dir.join("log.jsonl");
        let (bytes, existed) = crate::jsonl::read_log(&path, "the Raft log")?;
        let replayed = replay(&path, &bytes)?;
        let file = open_append(&path)
            .with_context(|| format!("cannot open the Raft log {}", path.display()))?;
        crate::jsonl::settle_log(
            &file,
            &path,
            "the Raft log",
            replayed.complete_len,
            bytes.len(),
            existed,
        )?;
        let vote_path = dir.join("vote.json");
        let vote: Option<Vote<NodeId>> = match std::fs::read(&vote_path) {
            Ok(b) => Some(serde_json::from_slice(&b).with_context(|| {
                format!(
                    "the Raft vote {} is damaged; move the partition's data directory away: the partition starts empty and copies the log from its peers",
                    vote_path.display()
                )
            })?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("cannot read the Raft vote {}", vote_path.display()))
            }
        };
        // A partition never takes up leadership again from its disk. openraft restores a node
        // whose stored vote is its own *committed* vote as the leader of that term at once,
        // and such a leader answers read-index requests with the commit index it finds on
        // disk — which may lag what it had acknowledged before it stopped (the committed
        // marker is written lazily; a power loss drops its unsynced tail): stale reads, found
        // by the long fault run (docs/reliability.md). Loaded uncommitted, the vote still
        // binds the term (no second vote in it), and the partition must win a new election,
        // whose no-op entry every read then waits for.
        let vote = vote.map(|v| Vote {
            committed: false,
            ..v
        });
        let inner = Inner {
            dir: dir.to_path_buf(),
            file,
            entries: replayed.entries,
            sizes: replayed.sizes,
            last_purged: replayed.last_purged,
            committed: replayed.committed,
            vote,
            failed: None,
            tail: BTreeMap::new(),
            tail_bytes: 0,
        };
        Ok(LogStore {
            inner: Arc::new(Mutex::new(inner)),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The entries after `after` up to `upto` (at most `max`), for a replica region's feed;
    /// `None` when the log was purged past `after` (the region needs a snapshot).
    pub fn entries_after(
        &self,
        after: u64,
        upto: u64,
        max: usize,
    ) -> Option<Vec<Entry<TypeConfig>>> {
        let i = self.lock();
        let purged_past = i.last_purged.is_some_and(|p| p.index > after);
        // Purged past `after`: served from the kept tail if it still reaches back that far.
        if purged_past && !i.tail.contains_key(&(after + 1)) {
            return None;
        }
        if after >= upto {
            return Some(Vec::new());
        }
        let from_tail = i.tail.range(after + 1..=upto).map(|(_, (e, _))| e.clone());
        let from_log = i.entries.range(after + 1..=upto).map(|(_, e)| e.clone());
        Some(from_tail.chain(from_log).take(max).collect())
    }

    /// Every entry still kept (the tail kept past a purge, then the log) up to `upto`, in
    /// order: what a region re-pointed after a failover lists of its own past.
    pub fn kept_entries(&self, upto: u64) -> Vec<Entry<TypeConfig>> {
        let i = self.lock();
        let from_tail = i.tail.range(..=upto).map(|(_, (e, _))| e.clone());
        let from_log = i.entries.range(..=upto).map(|(_, e)| e.clone());
        from_tail.chain(from_log).collect()
    }

    /// Whether nothing was ever logged or voted here (a fresh or wiped partition).
    pub fn is_pristine(&self) -> bool {
        let i = self.lock();
        i.entries.is_empty() && i.last_purged.is_none() && i.vote.is_none()
    }
}

impl Inner {
    /// Refuse writes once one failed (what is on disk is unknown then).
    fn usable(&self) -> std::io::Result<()> {
        match &self.failed {
            None => Ok(()),
            Some(f) => Err(std::io::Error::other(format!(
                "an earlier write to the Raft log {} failed ({f}); restart the partition to reopen the log",
                self.dir.join("log.jsonl").display()
            ))),
        }
    }

    /// Append `ops` to `log.jsonl`, fsync'd when `sync`, and return each one's record length.
    /// A failure poisons the store.
    fn write_ops<T: Serialize>(&mut self, ops: &[T], sync: bool) -> std::io::Result<Vec<usize>> {
        self.usable()?;
        let mut buf = Vec::new();
        let mut lengths = Vec::with_capacity(ops.len());
        for op in ops {
            let start = buf.len();
            serde_json::to_writer(&mut buf, op)?;
            buf.push(b'\n');
            lengths.push(buf.len() - start);
        }
        let res = self
            .file
            .write_all(&buf)
            .and_then(|()| if sync { self.file.sync_data() } else { Ok(()) });
        match &res {
            Err(e) => self.failed = Some(e.to_string()),
            Ok(()) if sync => note_durable(&self.dir.join("log.jsonl"), &self.file),
            Ok(()) => {}
        }
        res.map(|()| lengths)
    }

    /// Rewrite the file with what remains (after a purge). A failure poisons the store: the
    /// file handle may no longer be the file at `log.jsonl`.
    fn compact(&mut self) -> std::io::Result<()> {
        self.usable()?;
        let res = self.rewrite();
        if let Err(e) = &res {
            self.failed = Some(e.to_string());
        }
        res
    }

    fn rewrite(&mut self) -> std::io::Result<()> {
        let path = self.dir.join("log.jsonl");
        let mut buf = Vec::new();
        let head = [
            self.last_purged.map(Op::Purge),
            self.committed.map(Op::Commit),
        ];
        for op in head.iter().flatten() {
            serde_json::to_writer(&mut buf, op)?;
            buf.push(b'\n');
        }
        for e in self.entries.values() {
            serde_json::to_writer(&mut buf, &AppendRef::Append(e))?;
            buf.push(b'\n');
        }
        write_atomically(&path, &buf)?;
        self.file = open_append(&path)?;
        note_durable(&path, &self.file);
        Ok(())
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        let i = self.lock();
        Ok(i.entries.range(range).map(|(_, e)| e.clone()).collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let i = self.lock();
        let last = i
            .entries
            .values()
            .next_back()
            .map(|e| e.log_id)
            .or(i.last_purged);
        Ok(LogState {
            last_purged_log_id: i.last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        let mut i = self.lock();
        let path = i.dir.join("vote.json");
        let bytes = serde_json::to_vec(vote).map_err(io_err)?;
        write_atomically(&path, &bytes)
            .map_err(|e| StorageError::from(StorageIOError::write_vote(AnyError::new(&e))))?;
        i.vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        Ok(self.lock().vote)
    }

    /// Record the committed log id. Not fsync'd here: the entries it covers are already
    /// durable, and the marker becomes durable with the next fsync'd write.
    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError<NodeId>> {
        let mut i = self.lock();
        if committed == i.committed {
            return Ok(());
        }
        if let Some(c) = committed {
            i.write_ops(&[Op::Commit(c)], false).map_err(io_err)?;
        }
        i.committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        Ok(self.lock().committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut i = self.lock();
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        let ops: Vec<AppendRef<'_>> = entries.iter().map(AppendRef::Append).collect();
        let res = i.write_ops(&ops, true);
        drop(ops);
        let res = res.map(|lengths| {
            for (e, n) in entries.into_iter().zip(lengths) {
                i.sizes.insert(e.log_id.index, n);
                i.entries.insert(e.log_id.index, e);
            }
        });
        let out = match &res {
            Ok(()) => Ok(()),
            Err(e) => Err(io_err(std::io::Error::new(e.kind(), e.to_string()))),
        };
        callback.log_io_completed(res);
        out
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let mut i = self.lock();
        i.write_ops(&[Op::Truncate(log_id.index)], true)
            .map_err(io_err)?;
        i.entries.split_off(&log_id.index);
        i.sizes.split_off(&log_id.index);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let mut i = self.lock();
        let kept = i.entries.split_off(&(log_id.index + 1));
        let purged = std::mem::replace(&mut i.entries, kept);
        let kept_sizes = i.sizes.split_off(&(log_id.index + 1));
        let sizes = std::mem::replace(&mut i.sizes, kept_sizes);
        // The tail stays one contiguous run ending where the log now starts; anything else
        // (a snapshot installed over a gap) starts it afresh, or empties it.
        let first = purged.first_key_value().map(|(&k, _)| k);
        let contiguous = first.is_some_and(|f| {
            purged.len() as u64 == log_id.index + 1 - f
                && purged
                    .last_key_value()
                    .is_some_and(|(&l, _)| l == log_id.index)
        });
        let continues = i
            .tail
            .last_key_value()
            .is_none_or(|(&l, _)| Some(l + 1) == first);
        if !contiguous || !continues {
            i.tail.clear();
            i.tail_bytes = 0;
        }
        for (index, e) in purged.into_iter().filter(|_| contiguous) {
            // Every entry is sized when appended or replayed; a missing size is a bug,
            // counted as the serialized entry rather than nothing.
            let n = sizes
                .get(&index)
                .copied()
                .unwrap_or_else(|| serde_json::to_vec(&e).map_or(0, |v| v.len()));
            i.tail_bytes += n;
            i.tail.insert(index, (e, n));
        }
        while i.tail_bytes > REGION_TAIL_BYTES {
            let Some((_, (_, n))) = i.tail.pop_first() else {
                break;
            };
            i.tail_bytes -= n;
        }
        i.last_purged = Some(log_id);
        i.compact().map_err(io_err)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Command;
    use openraft::storage::RaftLogStorageExt;
    use openraft::{CommittedLeaderId, EntryPayload};

    /// A normal entry whose command names a key with non-ASCII characters, so that some cuts
    /// fall inside a multi-byte character.
    fn entry(term: u64, index: u64, name: &str) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
            payload: EntryPayload::Normal(Command::DeleteKey {
                name: name.into(),
                now: index as i64,
            }),
        }
    }

    async fn all_entries(log: &mut LogStore) -> Vec<Entry<TypeConfig>> {
        log.try_get_log_entries(..).await.expect("read the log")
    }

    /// Reopen the log in `dir`, append `new` (fsync'd) and reopen again: the log must hold
    /// `kept` followed by `new`.
    async fn append_across_restarts(
        dir: &Path,
        kept: &[Entry<TypeConfig>],
        new: &Entry<TypeConfig>,
    ) -> Result<(), String> {
        let mut log = LogStore::open(dir).map_err(|e| format!("the first reopen failed: {e:#}"))?;
        log.blocking_append([new.clone()])
            .await
            .map_err(|e| format!("appending after the first reopen failed: {e}"))?;
        drop(log);
        let mut log =
            LogStore::open(dir).map_err(|e| format!("the second reopen failed: {e:#}"))?;
        let got = all_entries(&mut log).await;
        let mut want = kept.to_vec();
        want.push(new.clone());
        if got != want {
            let ids = |v: &[Entry<TypeConfig>]| {
                v.iter().map(|e| e.log_id.to_string()).collect::<Vec<_>>()
            };
            return Err(format!(
                "after the second reopen the log holds {:?}, expected {:?}",
                ids(&got),
                ids(&want)
            ));
        }
        Ok(())
    }

    async fn write_log(dir: &Path, entries: &[Entry<TypeConfig>]) -> Vec<u8> {
        let mut log = LogStore::open(dir).expect("open a new log");
        for e in entries {
            log.blocking_append([e.clone()]).await.expect("append");
        }
        std::fs::read(dir.join("log.jsonl")).expect("read log.jsonl")
    }

    #[tokio::test]
    async fn a_region_feed_reads_purged_entries_from_the_kept_tail_and_never_across_a_gap() {
        use openraft::storage::RaftLogStorage;
        let dir = tempfile::tempdir().unwrap();
        let mut log = LogStore::open(dir.path()).unwrap();
        for i in 1..=10 {
            log.blocking_append([entry(1, i, &format!("k{i}"))])
                .await
                .unwrap();
        }
        let ids = |v: Option<Vec<Entry<TypeConfig>>>| {
            v.map(|v| v.iter().map(|e| e.log_id.index).collect::<Vec<_>>())
        };
        log.purge(LogId::new(CommittedLeaderId::new(1, 1), 5))
            .await
            .unwrap();
        // Purged from the log, still served to a region from the tail, in order, bounded.
        assert_eq!(ids(log.entries_after(2, 10, 100)), Some((3..=10).collect()));
        assert_eq!(ids(log.entries_after(0, 10, 4)), Some(vec![1, 2, 3, 4]));
        assert_eq!(ids(log.entries_after(7, 10, 100)), Some(vec![8, 9, 10]));
        // A purge past what this log holds (a snapshot installed over a gap): the tail goes,
        // a region behind it needs a snapshot — never entries after a hole.
        log.purge(LogId::new(CommittedLeaderId::new(1, 1), 20))
            .await
            .unwrap();
        assert_eq!(ids(log.entries_after(2, 30, 100)), None);
        assert_eq!(ids(log.entries_after(12, 30, 100)), None);
        assert_eq!(ids(log.entries_after(20, 30, 100)), Some(vec![]));
    }

    #[tokio::test]
    async fn entries_replayed_at_open_are_sized_as_when_appended() {
        use openraft::storage::RaftLogStorage;
        let tmp = tempfile::tempdir().unwrap();
        let written: Vec<_> = (1..=8).map(|i| entry(1, i, &format!("clé-{i}"))).collect();
        let mut log = LogStore::open(tmp.path()).unwrap();
        for e in &written {
            log.blocking_append([e.clone()]).await.unwrap();
        }
        let appended = log.lock().sizes.clone();
        // The record lengths, newline included, are what the file holds.
        let file_len = std::fs::metadata(tmp.path().join("log.jsonl"))
            .unwrap()
            .len();
        assert_eq!(appended.values().sum::<usize>() as u64, file_len);
        drop(log);
        // Truncated at 7 and purged up to 3, reopened: the replay drops the same sizes.
        let mut log = LogStore::open(tmp.path()).unwrap();
        log.truncate(LogId::new(CommittedLeaderId::new(1, 1), 7))
            .await
            .unwrap();
        drop(log);
        let mut log = LogStore::open(tmp.path()).unwrap();
        let want: BTreeMap<u64, usize> = appended.range(..7).map(|(&k, &v)| (k, v)).collect();
        assert_eq!(log.lock().sizes, want);
        log.purge(LogId::new(CommittedLeaderId::new(1, 1), 3))
            .await
            .unwrap();
        assert_eq!(
            log.lock().tail_bytes,
            appended.range(..=3).map(|(_, v)| v).sum::<usize>(),
            "the kept tail is sized from the replayed lengths"
        );
        drop(log);
        let log = LogStore::open(tmp.path()).unwrap();
        let want: BTreeMap<u64, usize> = appended.range(4..7).map(|(&k, &v)| (k, v)).collect();
        assert_eq!(log.lock().sizes, want, "sizes after a purge and a rewrite");
    }

    #[tokio::test]
    async fn a_damaged_record_before_the_last_is_refused_naming_the_file_and_offset() {
        let written: Vec<_> = (1..=4).map(|i| entry(1, i, &format!("key-{i}"))).collect();
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = tmp.path().join("raft");
        let intact = write_log(&dir, &written).await;
        let second = intact
            .iter()
            .position(|&b| b == b'\n')
            .expect("a first line")
            + 1;
        let path = dir.join("log.jsonl");
        // A byte of the second record overwritten; the same record cut short.
        let mut garbled = intact.clone();
        garbled[second + 5] = 0;
        let third = second
            + intact[second..]
                .iter()
                .position(|&b| b == b'\n')
                .expect("a second line");
        let cut = [&intact[..second + 10], &intact[third..]].concat();
        for damaged in [garbled, cut] {
            std::fs::write(&path, &damaged).expect("damage log.jsonl");
            let err = format!(
                "{:#}",
                LogStore::open(&dir).expect_err("a damaged record in the middle is refused")
            );
            assert!(err.contains(&path.display().to_string()), "{err}");
            assert!(err.contains(&format!("at byte {second} (line 2)")), "{err}");
            assert!(
                err.contains("move the partition's data directory away"),
                "{err}"
            );
            assert_eq!(
                std::fs::read(&path).expect("read log.jsonl"),
                damaged,
                "a refused log is left as it is"
            );
        }
    }

    #[tokio::test]
    async fn a_damaged_last_line_is_a_cut_off_write_and_is_removed() {
        let written: Vec<_> = (1..=3).map(|i| entry(1, i, &format!("key-{i}"))).collect();
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = tmp.path().join("raft");
        let intact = write_log(&dir, &written).await;
        let path = dir.join("log.jsonl");
        // Zeros where the last write was not persisted, but its newline was.
        let mut damaged = intact.clone();
        damaged.extend_from_slice(&[0; 40]);
        damaged.push(b'\n');
        std::fs::write(&path, &damaged).expect("damage log.jsonl");
        let mut log = LogStore::open(&dir).expect("open");
        assert_eq!(all_entries(&mut log).await, written);
        assert_eq!(
            std::fs::read(&path).expect("read log.jsonl"),
            intact,
            "the file is cut back to its complete records"
        );
    }

    #[tokio::test]
    async fn a_write_after_a_failed_write_is_refused() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = tmp.path().join("raft");
        let mut log = LogStore::open(&dir).expect("open");
        log.lock().failed = Some("No space left on device".into());
        let err = log
            .blocking_append([entry(1, 1, "k")])
            .await
            .expect_err("refused")
            .to_string();
        assert!(err.contains("restart the partition"), "{err}");
        assert!(all_entries(&mut log).await.is_empty());
    }

    #[tokio::test]
    async fn an_entry_appended_after_a_torn_last_record_survives_the_next_restart() {
        const N: u64 = 4;
        let written: Vec<_> = (1..=N)
            .map(|i| entry(1, i, &format!("clé-{i}-€")))
            .collect();
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = tmp.path().join("raft");
        {
            let mut log = LogStore::open(&dir).expect("open a new log");
            for e in &written {
                log.blocking_append([e.clone()]).await.expect("append");
            }
        }
        let path = dir.join("log.jsonl");
        let intact = std::fs::read(&path).expect("read log.jsonl");
        let cuts = crate::jsonl::tearing::cuts_in_last_record(&intact);
        // The leader's entry at the torn index (a new term, as after an election).
        let replacement = entry(2, N, "après-la-coupure");
        let kept = &written[..written.len() - 1];
        let mut failures = Vec::new();
        for cut in cuts.clone() {
            std::fs::write(&path, &intact[..cut]).expect("tear log.jsonl");
            if let Err(e) = append_across_restarts(&dir, kept, &replacement).await {
                failures.push(format!("cut at byte {cut}: {e}"));
            }
        }
        crate::jsonl::tearing::assert_no_lost_cuts(&failures, &cuts);
    }
}
