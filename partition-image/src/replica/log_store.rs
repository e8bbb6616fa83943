//! The Raft log, vote and committed marker on disk under `dataDir/raft/`.
//!
//! `log.jsonl` is an append-only file of operations (append an entry, truncate from an index,
//! purge up to a log id), each line fsync'd before it is acknowledged; `vote.json` is
//! replaced atomically. Entries carry [`Command`](crate::state::Command)s, which hold only
//! wrapped key material. On open the operations are replayed into memory; after a purge the
//! file is rewritten with the remaining entries.

use super::TypeConfig;
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{AnyError, Entry, LogId, RaftLogReader, StorageError, StorageIOError, Vote};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
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
}

struct Inner {
    dir: PathBuf,
    file: File,
    entries: BTreeMap<u64, Entry<TypeConfig>>,
    last_purged: Option<LogId<NodeId>>,
    vote: Option<Vote<NodeId>>,
}

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

fn open_append(path: &Path) -> std::io::Result<File> {
    let mut o = std::fs::OpenOptions::new();
    o.append(true).create(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    o.open(path)
}

impl LogStore {
    /// Open (or create) the log in `dir` (`dataDir/raft`).
    pub fn open(dir: &Path) -> anyhow::Result<LogStore> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("log.jsonl");
        let mut entries = BTreeMap::new();
        let mut last_purged = None;
        if path.exists() {
            let lines: Vec<String> = BufReader::new(File::open(&path)?)
                .lines()
                .collect::<Result<_, _>>()?;
            let n = lines.len();
            for (i, line) in lines.into_iter().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                let op: Op = match serde_json::from_str(&line) {
                    Ok(op) => op,
                    // A torn last line was never acknowledged.
                    Err(_) if i + 1 == n => break,
                    Err(e) => anyhow::bail!(
                        "the Raft log {} is corrupt at line {}: {e}; move the partition's data directory away to let it heal from its peers",
                        path.display(),
                        i + 1
                    ),
                };
                match op {
                    Op::Append(e) => {
                        entries.insert(e.log_id.index, e);
                    }
                    Op::Truncate(since) => {
                        entries.split_off(&since);
                    }
                    Op::Purge(id) => {
                        // A purge up to the last possible index (a corrupt line) empties the log.
                        entries = match id.index.checked_add(1) {
                            Some(first_kept) => entries.split_off(&first_kept),
                            None => BTreeMap::new(),
                        };
                        last_purged = Some(id);
                    }
                }
            }
        }
        let vote_path = dir.join("vote.json");
        let vote = if vote_path.exists() {
            Some(serde_json::from_slice(&std::fs::read(&vote_path)?)?)
        } else {
            None
        };
        let inner = Inner {
            dir: dir.to_path_buf(),
            file: open_append(&path)?,
            entries,
            last_purged,
            vote,
        };
        Ok(LogStore {
            inner: Arc::new(Mutex::new(inner)),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether nothing was ever logged or voted here (a fresh or wiped partition).
    pub fn is_pristine(&self) -> bool {
        let i = self.lock();
        i.entries.is_empty() && i.last_purged.is_none() && i.vote.is_none()
    }
}

impl Inner {
    fn write_ops(&mut self, ops: &[Op]) -> std::io::Result<()> {
        let mut buf = Vec::new();
        for op in ops {
            serde_json::to_writer(&mut buf, op)?;
            buf.push(b'\n');
        }
        self.file.write_all(&buf)?;
        self.file.sync_data()
    }

    /// Rewrite the file with what remains (after a purge).
    fn compact(&mut self) -> std::io::Result<()> {
        let path = self.dir.join("log.jsonl");
        let tmp = self.dir.join("log.jsonl.tmp");
        let mut buf = Vec::new();
        if let Some(p) = self.last_purged {
            serde_json::to_writer(&mut buf, &Op::Purge(p))?;
            buf.push(b'\n');
        }
        for e in self.entries.values() {
            serde_json::to_writer(&mut buf, &Op::Append(e.clone()))?;
            buf.push(b'\n');
        }
        {
            let mut f = crate::store::restricted_create(&tmp)?;
            f.write_all(&buf)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &path)?;
        File::open(&self.dir)?.sync_all()?;
        self.file = open_append(&path)?;
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
        let tmp = i.dir.join("vote.json.tmp");
        let bytes = serde_json::to_vec(vote).map_err(io_err)?;
        (|| -> std::io::Result<()> {
            let mut f = crate::store::restricted_create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            File::open(&i.dir)?.sync_all()
        })()
        .map_err(|e| StorageError::from(StorageIOError::write_vote(AnyError::new(&e))))?;
        i.vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        Ok(self.lock().vote)
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
        let ops: Vec<Op> = entries.iter().cloned().map(Op::Append).collect();
        let res = i.write_ops(&ops);
        if res.is_ok() {
            for e in entries {
                i.entries.insert(e.log_id.index, e);
            }
        }
        let out = match &res {
            Ok(()) => Ok(()),
            Err(e) => Err(io_err(std::io::Error::new(e.kind(), e.to_string()))),
        };
        callback.log_io_completed(res);
        out
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let mut i = self.lock();
        i.write_ops(&[Op::Truncate(log_id.index)]).map_err(io_err)?;
        i.entries.split_off(&log_id.index);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let mut i = self.lock();
        i.entries = i.entries.split_off(&(log_id.index + 1));
        i.last_purged = Some(log_id);
        i.compact().map_err(io_err)?;
        Ok(())
    }
}
