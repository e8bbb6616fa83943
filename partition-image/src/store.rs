//! Durable application of commands: an fsync'd command log plus snapshots in the partition's
//! data directory. Holds only what [`PoolState`] holds: wrapped key material and metadata.
//!
//! [`Store`] is what handlers use: either this single-partition log (a pool of one partition,
//! no peers configured) or the Raft group of a replicated pool (`crate::replica`), which
//! commits the same [`Command`]s through Raft before they reach [`PoolState::apply`].

use crate::state::{Command, Outcome, PoolState, StateError};
use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};

const SNAPSHOT_EVERY: u64 = 10_000;

/// A change of this partition's state, as the keyring learns of it (to drop unwrapped key
/// material that the state no longer holds).
#[derive(Debug, Clone, Copy)]
pub enum StateChange<'a> {
    /// A command was applied (committed, on every partition) with this outcome.
    Applied(&'a Command, &'a Outcome),
    /// The whole state was replaced (a snapshot installed from a peer).
    Replaced,
}

/// Called on every [`StateChange`], while the state's write lock is held (so a reader that
/// holds the read lock sees the state and the hook's effect together).
pub type ChangeHook = Box<dyn Fn(StateChange<'_>) + Send + Sync>;

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
}

/// The single-partition state and its durable log.
pub struct SingleStore {
    dir: PathBuf,
    state: RwLock<PoolState>,
    log: Mutex<Log>,
    on_change: std::sync::OnceLock<ChangeHook>,
}

impl std::fmt::Debug for SingleStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SingleStore")
            .field("dir", &self.dir)
            .finish()
    }
}

/// The partition's state: a single-partition log or the pool's Raft group.
pub struct Store {
    backend: Backend,
}

enum Backend {
    Single(Box<SingleStore>),
    Raft(Arc<crate::replica::Replica>),
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.backend {
            Backend::Single(s) => s.fmt(f),
            Backend::Raft(r) => r.fmt(f),
        }
    }
}

impl Store {
    /// Open (or create) a single-partition store in `dir`.
    pub fn open(dir: &Path) -> anyhow::Result<Arc<Store>> {
        Ok(Arc::new(Store {
            backend: Backend::Single(Box::new(SingleStore::open(dir)?)),
        }))
    }

    /// A store backed by the pool's Raft group.
    pub fn replicated(replica: Arc<crate::replica::Replica>) -> Arc<Store> {
        Arc::new(Store {
            backend: Backend::Raft(replica),
        })
    }

    /// Register the hook told of every state change from now on (once; later calls are
    /// ignored). The keyring uses it to evict key material on every partition.
    pub fn on_change(&self, hook: ChangeHook) {
        let _ = match &self.backend {
            Backend::Single(s) => s.on_change.set(hook),
            Backend::Raft(r) => r.sm.on_change.set(hook),
        };
    }

    /// The Raft member, in a replicated pool.
    pub fn replica(&self) -> Option<&Arc<crate::replica::Replica>> {
        match &self.backend {
            Backend::Single(_) => None,
            Backend::Raft(r) => Some(r),
        }
    }

    /// Read the current state (call [`Store::read_barrier`] first to see every committed
    /// change in a replicated pool).
    pub fn read(&self) -> RwLockReadGuard<'_, PoolState> {
        match &self.backend {
            Backend::Single(s) => s.read(),
            Backend::Raft(r) => r.sm.state.read().unwrap_or_else(|p| p.into_inner()),
        }
    }

    /// Index of the last applied command.
    pub fn applied_index(&self) -> u64 {
        match &self.backend {
            Backend::Single(s) => s.applied_index(),
            Backend::Raft(r) => r.sm.applied().map(|l| l.index).unwrap_or(0),
        }
    }

    /// Commit a command (through the leader in a replicated pool) and apply it.
    pub async fn propose(&self, cmd: Command) -> Result<Outcome, ProposeError> {
        match &self.backend {
            Backend::Single(s) => s.propose(cmd),
            Backend::Raft(r) => r.propose(cmd).await,
        }
    }

    /// Commit a command on a single-partition store (synchronous; used at bootstrap).
    pub fn propose_single(&self, cmd: Command) -> Result<Outcome, ProposeError> {
        match &self.backend {
            Backend::Single(s) => s.propose(cmd),
            Backend::Raft(_) => Err(ProposeError::Storage(
                "a replicated store commits asynchronously".into(),
            )),
        }
    }

    /// The read-index barrier alone (without waiting for the pool to be bootstrapped).
    pub async fn read_barrier_raw(&self) -> Result<(), ProposeError> {
        match &self.backend {
            Backend::Single(_) => Ok(()),
            Backend::Raft(r) => r.read_barrier().await,
        }
    }

    /// Wait until this partition's state includes every change committed before the call
    /// (read-index through the leader), and until the pool is bootstrapped.
    pub async fn read_barrier(&self) -> Result<(), ProposeError> {
        let Backend::Raft(r) = &self.backend else {
            return Ok(());
        };
        r.read_barrier().await?;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !self.read().bootstrapped {
            if std::time::Instant::now() >= deadline {
                return Err(ProposeError::Storage(
                    "the pool is not bootstrapped yet; its partitions are still forming the group"
                        .into(),
                ));
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            r.read_barrier().await?;
        }
        Ok(())
    }
}

/// Errors of a proposal: refused by the state machine, or not durable.
#[derive(Debug, thiserror::Error)]
pub enum ProposeError {
    #[error(transparent)]
    Refused(#[from] StateError),
    #[error("the change could not be made durable: {0}")]
    Storage(String),
    /// The change may or may not have been committed (the leader was lost mid-way).
    #[error("the outcome of the change is unknown: {0}")]
    Uncertain(String),
}

fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = restricted_create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(parent) = path.parent() {
        File::open(parent)?.sync_all()?;
    }
    Ok(())
}

/// Create (truncate) a file readable only by its owner.
pub fn restricted_create(path: &Path) -> std::io::Result<File> {
    let mut o = OpenOptions::new();
    o.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    o.open(path)
}

fn open_log(path: &Path) -> std::io::Result<File> {
    let mut o = OpenOptions::new();
    o.append(true).create(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    o.open(path)
}

impl SingleStore {
    /// Open (or create) the store in `dir`, replaying the snapshot and the log.
    pub fn open(dir: &Path) -> anyhow::Result<SingleStore> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the data directory {}", dir.display()))?;
        let snap_path = dir.join("snapshot.json");
        let (mut state, mut index) = if snap_path.exists() {
            let snap: Snapshot = serde_json::from_slice(&std::fs::read(&snap_path)?)
                .with_context(|| format!("snapshot {} is corrupt", snap_path.display()))?;
            (snap.state, snap.index)
        } else {
            (PoolState::default(), 0)
        };
        let log_path = dir.join("commands.log");
        let mut since_snapshot = 0;
        if log_path.exists() {
            let reader = BufReader::new(File::open(&log_path)?);
            let lines: Vec<String> = reader.lines().collect::<Result<_, _>>()?;
            let last = lines.len();
            for (i, line) in lines.into_iter().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                let entry: LogEntry = match serde_json::from_str(&line) {
                    Ok(e) => e,
                    // A torn final line is a write that was never acknowledged.
                    Err(_) if i + 1 == last => break,
                    Err(e) => anyhow::bail!(
                        "command log {} is corrupt at line {}: {e}",
                        log_path.display(),
                        i + 1
                    ),
                };
                if entry.index <= index {
                    continue;
                }
                // Refusals were refused when first applied too; replay is deterministic.
                let _ = state.apply(&entry.cmd);
                index = entry.index;
                since_snapshot += 1;
            }
        }
        let file = open_log(&log_path)?;
        Ok(SingleStore {
            dir: dir.to_path_buf(),
            state: RwLock::new(state),
            log: Mutex::new(Log {
                file,
                index,
                since_snapshot,
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
        log.file
            .write_all(&line)
            .and_then(|_| log.file.sync_data())
            .map_err(|e| ProposeError::Storage(e.to_string()))?;
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
