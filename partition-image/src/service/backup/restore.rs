//! Reading a backup back into the pool: check a folder against the domain, restore it
//! whole (staged in bounded commands, committed as one) or restore one key.

use super::*;

/// The records of one key read from a backup (a selective restore).
#[derive(Debug, Default)]
struct Contents {
    keys: Vec<KeyRecord>,
    deleted: Vec<DeletedKey>,
}

/// The manifest of `folder`, checked against this pool: its domain, its MAC, its folder
/// name, and (`full`) that it is a full backup.
async fn checked_manifest(
    u: &Unsealed,
    dest: &Destination,
    folder: &str,
    full: bool,
) -> Result<Manifest, BackupError> {
    let m = read_manifest(dest, folder).await?;
    let pool_fp = u.fingerprint();
    if m.body.domain_fingerprint != pool_fp {
        return Err(BackupError::DomainMismatch {
            backup: m.body.domain_fingerprint.clone(),
            pool: pool_fp,
        });
    }
    format::verify_manifest(u.backup_key(), &m)?;
    if let (true, Some(k)) = (full, &m.body.key_name) {
        return Err(BackupError::Invalid(format!(
            "the backup {} holds only the key '{k}'; restore it with a selective restore (PUT /keys/{k}/restore); nothing was changed",
            dest.folder_url(folder)
        )));
    }
    if m.body.folder != folder {
        return Err(BackupError::Invalid(format!(
            "the manifest was written for folder '{}', not '{folder}': backup folders cannot be renamed",
            m.body.folder
        )));
    }
    Ok(m)
}

/// Chunk `i` of a checked manifest, verified (size, digest, AEAD bound to folder and
/// position) and decoded.
async fn read_chunk(
    u: &Unsealed,
    dest: &Destination,
    m: &Manifest,
    i: usize,
) -> Result<Vec<Record>, BackupError> {
    let c = &m.body.chunks[i];
    let bytes = get_bytes(dest, &m.body.folder, &c.name, format::MAX_CHUNK_BYTES).await?;
    Ok(format::open_chunk(
        u.backup_key(),
        &m.body.folder,
        i,
        c,
        &bytes,
    )?)
}

/// Records counted while reading a backup.
#[derive(Default)]
struct Counts {
    keys: u64,
    deleted: u64,
    rbac: bool,
}

impl Counts {
    fn add(&mut self, r: &Record) {
        match r {
            Record::Settings(_) => {}
            Record::Rbac(_) => self.rbac = true,
            Record::Key(_) => self.keys += 1,
            Record::DeletedKey(_) => self.deleted += 1,
        }
    }

    /// The totals a full backup's manifest promises.
    fn check(&self, m: &Manifest) -> Result<(), BackupError> {
        if self.keys != m.body.key_count || self.deleted != m.body.deleted_key_count || !self.rbac {
            return Err(FormatError::Chunk {
                name: "(all)".into(),
                reason: "the records do not match the manifest's counts".into(),
            }
            .into());
        }
        Ok(())
    }
}

/// Read a backup, checking domain, MAC, digests and AEAD, keeping only the records of the
/// key `only` (a selective restore).
async fn read_backup(
    u: &Unsealed,
    dest: &Destination,
    folder: &str,
    only: &str,
) -> Result<Contents, BackupError> {
    let m = checked_manifest(u, dest, folder, false).await?;
    let mut out = Contents::default();
    for i in 0..m.body.chunks.len() {
        for r in read_chunk(u, dest, &m, i).await? {
            match r {
                Record::Key(k) if k.name == only => out.keys.push(k),
                Record::DeletedKey(d) if d.key.name == only => out.deleted.push(d),
                _ => {}
            }
        }
    }
    Ok(out)
}

/// Verify a full backup against this pool's domain without changing anything: manifest,
/// every chunk and the totals, one chunk in memory at a time.
pub async fn check_backup(
    app: &Arc<App>,
    dest: &Destination,
    folder: &str,
) -> Result<Manifest, BackupError> {
    let u = unsealed(app)?;
    let m = checked_manifest(&u, dest, folder, true).await?;
    let mut counts = Counts::default();
    for i in 0..m.body.chunks.len() {
        read_chunk(&u, dest, &m, i)
            .await?
            .iter()
            .for_each(|r| counts.add(r));
    }
    counts.check(&m)?;
    Ok(m)
}

/// What a full restore did.
#[derive(Debug)]
pub struct RestoreReport {
    pub restore_point: String,
    pub keys: usize,
    pub deleted: usize,
}

/// Restore `folder` of `dest` over the whole pool: all or nothing.
pub async fn restore_full(
    app: &Arc<App>,
    dest: &Destination,
    folder: &str,
) -> Result<RestoreReport, BackupError> {
    // 1. The whole backup verifies before anything is written (one chunk at a time).
    let m = check_backup(app, dest, folder).await?;
    // 2. The restore point.
    let rp = write_backup(app, dest, true).await.map_err(|e| {
        BackupError::Invalid(format!(
            "the restore point could not be written, so nothing was restored: {e}"
        ))
    })?;
    // 3. Staged from a second read, chunk by chunk (each verified again: the store may
    // have changed), committed at once.
    // Every partition drops its cached key material as it applies the commit.
    propose_restore(app, dest, &m).await?;
    Ok(RestoreReport {
        restore_point: dest.folder_url(&rp.body.folder),
        keys: m.body.key_count as usize,
        deleted: m.body.deleted_key_count as usize,
    })
}

/// The most serialized record bytes one replicated restore command carries, however large
/// the backup: an append request of up to 64 of them must reach a follower, be parsed and
/// made durable within openraft's append timeout (one heartbeat interval, 150 ms), and
/// stay far below a peer request's size limit (docs/backup.md).
pub(crate) const STAGE_BYTES: usize = 16 * 1024;

/// Stage commands proposed at once during a full restore.
const STAGES_IN_FLIGHT: usize = 32;

/// Split `items` into runs of at most `budget` bytes of JSON (a larger item goes alone;
/// `None`: one run).
pub(crate) fn stages<T: serde::Serialize>(
    items: Vec<T>,
    budget: Option<usize>,
) -> Result<Vec<Vec<T>>, BackupError> {
    let Some(budget) = budget else {
        return Ok(if items.is_empty() {
            vec![]
        } else {
            vec![items]
        });
    };
    let mut out: Vec<Vec<T>> = Vec::new();
    let mut size = 0;
    for item in items {
        let n = serde_json::to_vec(&item)
            .map_err(|e| BackupError::Internal(e.to_string()))?
            .len();
        match out.last_mut() {
            Some(run) if size + n <= budget => {
                run.push(item);
                size += n;
            }
            _ => {
                out.push(vec![item]);
                size = n;
            }
        }
    }
    Ok(out)
}

/// Times a staging command whose outcome is unknown (the leader did not confirm it in time:
/// a loaded or changing leader) is proposed again before the restore gives up.
const STAGE_ATTEMPTS: u32 = 4;

/// Propose `RestoreBegin` (before any stage) or a `RestoreStage`, again when its outcome is
/// unknown: both are safe to repeat (a begin of the same id starts the same empty staging; a
/// stage applied twice stages the same records twice, and the commit counts and keeps each
/// name once).
async fn propose_stage(
    app: &App,
    cmd: Command,
) -> Result<crate::state::Outcome, crate::consensus::ProposeError> {
    let mut attempt = 1;
    loop {
        match app.store.propose(cmd.clone()).await {
            Err(crate::consensus::ProposeError::Uncertain(why)) if attempt < STAGE_ATTEMPTS => {
                tracing::warn!(attempt, reason = %why, "a restore stage has an unknown outcome; proposing it again");
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// Replace the pool's keys, soft-deleted keys and RBAC with the backup of manifest `m`
/// (checked), all or nothing: its records are read again chunk by chunk and staged in
/// bounded commands (`RestoreBegin`, `RestoreStage`…), then one `RestoreCommit` holding the
/// manifest's counts. A failure before the commit drops the staged records
/// (`RestoreAbort`) and changes nothing.
async fn propose_restore(app: &App, dest: &Destination, m: &Manifest) -> Result<(), BackupError> {
    use futures::{StreamExt, TryStreamExt};
    let u = unsealed(app)?;
    let id = uuid::Uuid::new_v4().simple().to_string();
    // Bounded stages only where commands travel between partitions; a pool of one stages
    // a chunk at a time (each command costs an fsync).
    let budget = app.store.replica().is_some().then_some(STAGE_BYTES);
    let staged = async {
        propose_stage(app, Command::RestoreBegin { id: id.clone() }).await?;
        let mut counts = Counts::default();
        for i in 0..m.body.chunks.len() {
            let (mut keys, mut deleted, mut rbac) = (Vec::new(), Vec::new(), None);
            for r in read_chunk(&u, dest, m, i).await? {
                counts.add(&r);
                match r {
                    Record::Settings(_) => {}
                    Record::Rbac(x) => rbac = Some(Box::new(x)),
                    Record::Key(k) => keys.push(k),
                    Record::DeletedKey(d) => deleted.push(d),
                }
            }
            let first = rbac.map(|rbac| Command::RestoreStage {
                id: id.clone(),
                keys: vec![],
                deleted: vec![],
                rbac: Some(rbac),
            });
            // Stages commute (the commit builds maps from them): several in flight at
            // once let the Raft group batch them into fewer appends and fsyncs.
            let commands = stages(keys, budget)?
                .into_iter()
                .map(|run| (run, vec![]))
                .chain(
                    stages(deleted, budget)?
                        .into_iter()
                        .map(|run| (vec![], run)),
                )
                .map(|(keys, deleted)| Command::RestoreStage {
                    id: id.clone(),
                    keys,
                    deleted,
                    rbac: None,
                });
            futures::stream::iter(first.into_iter().chain(commands))
                .map(|cmd| propose_stage(app, cmd))
                .buffer_unordered(STAGES_IN_FLIGHT)
                .try_for_each(|_| async { Ok(()) })
                .await?;
        }
        counts.check(m)
    }
    .await;
    if let Err(e) = staged {
        // Best effort: a staged restore left behind is dropped by the next one anyway.
        let _ = app.store.propose(Command::RestoreAbort { id }).await;
        return Err(e);
    }
    match app
        .store
        .propose(Command::RestoreCommit {
            id: id.clone(),
            key_count: m.body.key_count,
            deleted_count: m.body.deleted_key_count,
        })
        .await
    {
        Ok(_) => Ok(()),
        Err(crate::consensus::ProposeError::Uncertain(msg)) => {
            Err(BackupError::CommitUncertain(msg))
        }
        Err(e) => {
            let _ = app.store.propose(Command::RestoreAbort { id }).await;
            Err(BackupError::Commit(e.to_string()))
        }
    }
}

/// Restore one key (all its versions) from `folder`; the key must not exist in the pool.
pub async fn restore_key(
    app: &Arc<App>,
    dest: &Destination,
    folder: &str,
    name: &str,
) -> Result<KeyRecord, BackupError> {
    let u = unsealed(app)?;
    let c = read_backup(&u, dest, folder, name).await?;
    let rec = c
        .keys
        .into_iter()
        .next()
        .or_else(|| c.deleted.into_iter().next().map(|d| d.key))
        .ok_or_else(|| BackupError::KeyNotInBackup(dest.folder_url(folder), name.to_string()))?;
    for v in &rec.versions {
        app.keyring
            .unwrap_uncached(&rec.name, &v.version, &v.wrapped)
            .map_err(|e| BackupError::Invalid(format!("{e}; nothing was restored")))?;
    }
    app.store
        .propose(Command::RestoreKey { key: rec.clone() })
        .await
        .map_err(|e| BackupError::Commit(e.to_string()))?;
    Ok(rec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restore_stages_stay_within_their_byte_budget() {
        // Items of half a stage: two fit in a stage, the third starts the next.
        let item = "x".repeat(STAGE_BYTES / 2 - 100);
        let runs = stages(vec![item.clone(); 5], Some(STAGE_BYTES)).unwrap();
        assert_eq!(runs.iter().map(Vec::len).collect::<Vec<_>>(), [2, 2, 1]);
        // An item larger than a stage goes alone; nothing is lost or reordered.
        let big = "y".repeat(STAGE_BYTES + 1);
        let runs = stages(
            vec!["a".to_string(), big.clone(), "b".to_string()],
            Some(STAGE_BYTES),
        )
        .unwrap();
        assert_eq!(
            runs,
            vec![vec!["a".to_string()], vec![big], vec!["b".to_string()]]
        );
        assert!(
            stages(Vec::<String>::new(), Some(STAGE_BYTES))
                .unwrap()
                .is_empty()
        );
        assert_eq!(stages(vec![1, 2, 3], None).unwrap(), vec![vec![1, 2, 3]]);
        assert!(stages(Vec::<u8>::new(), None).unwrap().is_empty());
    }
}
