//! Full backup and restore of a pool to an object store (filesystem, S3, Azure Blob, GCS).
//!
//! **Backup.** Under one read lock of the state, every record (settings, RBAC, keys,
//! soft-deleted keys) is serialized `RECORDS_PER_CHUNK` at a time, sealed under the
//! domain-derived backup key and written to an encrypted spool file in the partition's
//! data directory; the lock is then released and the chunks are uploaded one by one,
//! the manifest last. The backup is therefore an exact snapshot of the state at one
//! applied command index (recorded in the manifest), memory holds one chunk at a time,
//! reads keep being served during the snapshot, and writes wait only for the snapshot
//! (not the upload).
//!
//! **Restore.** The manifest's domain fingerprint must be the pool's; its MAC, every
//! chunk's size and SHA-256, and every chunk's AEAD are checked and the records decoded
//! before anything changes; a restore point (a backup marked `restore-point`) is written
//! to the same store; then one [`Command::RestoreAll`] replaces keys, soft-deleted keys
//! and RBAC at once. Settings stay those of the target pool (its spec). See docs/backup.md.

/// Backup stores: shared with the operator and `kubectl hsm` through keystead-core.
pub use keystead_core::backup_read::{Listed, ReadError, list_backups, verify_digests};
use keystead_core::backup_read::{get_bytes, read_manifest};
pub use keystead_core::store as dest;
pub mod format;
pub mod job;

use crate::keyring::Unsealed;
use crate::service::app::App;
use crate::state::{Command, DeletedKey, KeyRecord, PoolState};
use dest::Destination;
use format::{ChunkInfo, FormatError, Manifest, ManifestBody, Record};
use object_store::{ObjectStoreExt, PutPayload};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

/// Why a backup or restore failed. Messages never carry key material or tokens.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(
        "this partition does not hold the security domain; activate the pool (or upload its security domain) first"
    )]
    Sealed,
    #[error(
        "the backup belongs to security domain {backup}, but this pool holds security domain {pool}; a backup restores only into a pool with the same security domain (upload that domain into a new pool to recover it); nothing was changed"
    )]
    DomainMismatch { backup: String, pool: String },
    #[error(transparent)]
    Format(#[from] FormatError),
    #[error("the storage operation on {what} failed: {reason}")]
    Storage { what: String, reason: String },
    #[error("{0}")]
    Invalid(String),
    #[error("the backup folder {0} holds no key named '{1}'; nothing was restored")]
    KeyNotInBackup(String, String),
    #[error("the pool has no key named '{0}' (active or soft-deleted); nothing was backed up")]
    KeyNotInPool(String),
    #[error("the restore could not be committed: {0}; nothing was changed")]
    Commit(String),
    #[error(
        "the restore's final commit has an unknown outcome ({0}): the pool holds either its previous keys or the backup's; list its keys to see which, and restore again if needed"
    )]
    CommitUncertain(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl BackupError {
    /// Azure-style error code.
    pub fn code(&self) -> &'static str {
        match self {
            BackupError::Sealed => "PartitionSealed",
            BackupError::DomainMismatch { .. } => "SecurityDomainMismatch",
            BackupError::Format(_) => "BackupIntegrity",
            BackupError::Storage { .. } => "StorageError",
            BackupError::Invalid(_) => "BadParameter",
            BackupError::KeyNotInBackup(..) | BackupError::KeyNotInPool(_) => "KeyNotFound",
            BackupError::Commit(_) => "Conflict",
            BackupError::CommitUncertain(_) => "OutcomeUnknown",
            BackupError::Internal(_) => "InternalError",
        }
    }
}

impl From<ReadError> for BackupError {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::Format(f) => BackupError::Format(f),
            ReadError::Storage { what, reason } => BackupError::Storage { what, reason },
            ReadError::Invalid(m) => BackupError::Invalid(m),
        }
    }
}

impl From<crate::consensus::ProposeError> for BackupError {
    fn from(e: crate::consensus::ProposeError) -> Self {
        BackupError::Commit(e.to_string())
    }
}

fn storage(what: impl Into<String>, e: impl std::fmt::Display) -> BackupError {
    BackupError::Storage {
        what: what.into(),
        reason: e.to_string(),
    }
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// Folder name of a new backup: `<pool>-<UTC timestamp with ms>Z`,
/// `<pool>-restore-point-<…>Z` or, for a single-key backup, `<pool>-key-<name>-<…>Z`.
pub fn folder_name(pool: &str, restore_point: bool, key: Option<&str>) -> String {
    let t = time::OffsetDateTime::now_utc();
    let ts = format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    );
    let pool: String = pool
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    match (restore_point, key) {
        (true, _) => format!("{pool}-restore-point-{ts}"),
        (false, Some(k)) => format!("{pool}-key-{k}-{ts}"),
        (false, None) => format!("{pool}-{ts}"),
    }
}

/// Removes the spool directory when the backup ends, however it ends.
struct Spool(PathBuf);

impl Drop for Spool {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn unsealed(app: &App) -> Result<Arc<Unsealed>, BackupError> {
    app.keyring.unsealed().ok_or(BackupError::Sealed)
}

/// Snapshot the state into sealed chunk files in `spool` (blocking; holds the read lock).
fn snapshot_to_spool(
    app: &App,
    key: &[u8; 32],
    fingerprint: &str,
    folder: &str,
    spool: &std::path::Path,
    restore_point: bool,
    records_per_chunk: usize,
) -> Result<ManifestBody, BackupError> {
    std::fs::create_dir_all(spool).map_err(|e| storage("the local spool directory", e))?;
    let applied_index = app.store.applied_index();
    let state = app.store.read();
    let mut body = ManifestBody {
        key_count: state.keys.len() as u64,
        deleted_key_count: state.deleted.len() as u64,
        role_assignment_count: state.rbac.assignments.len() as u64,
        role_definition_count: state.rbac.definitions.len() as u64,
        restore_point,
        ..manifest_header(&state, folder, fingerprint, applied_index)
    };
    let mut batch: Vec<Record> = vec![
        Record::Settings(state.settings.clone()),
        Record::Rbac(state.rbac.clone()),
    ];
    let flush = |batch: &mut Vec<Record>, body: &mut ManifestBody| {
        spool_chunk(key, folder, spool, batch, body)
    };
    let per = records_per_chunk.max(1);
    for k in state.keys.values() {
        batch.push(Record::Key(k.clone()));
        if batch.len() >= per {
            flush(&mut batch, &mut body)?;
        }
    }
    for d in state.deleted.values() {
        batch.push(Record::DeletedKey(d.clone()));
        if batch.len() >= per {
            flush(&mut batch, &mut body)?;
        }
    }
    if !batch.is_empty() || body.chunks.is_empty() {
        flush(&mut batch, &mut body)?;
    }
    Ok(body)
}

/// Seal `batch` as the next chunk of `body` into the spool directory, and empty it.
fn spool_chunk(
    key: &[u8; 32],
    folder: &str,
    spool: &std::path::Path,
    batch: &mut Vec<Record>,
    body: &mut ManifestBody,
) -> Result<(), BackupError> {
    let index = body.chunks.len();
    let sealed = format::seal_chunk(key, folder, index, batch)?;
    let name = format::chunk_name(index);
    let path = spool.join(&name);
    let mut f =
        crate::fsutil::restricted_create(&path).map_err(|e| storage("the local spool", e))?;
    f.write_all(&sealed)
        .map_err(|e| storage("the local spool", e))?;
    body.chunks.push(ChunkInfo {
        name,
        size: sealed.len() as u64,
        sha256: format::sha256_hex(&sealed),
        records: batch.len() as u64,
    });
    batch.clear();
    Ok(())
}

/// The snapshot of a single-key backup: one chunk with the settings and the key (active,
/// else soft-deleted) with all its versions; no RBAC, so it can only be restored selectively.
fn snapshot_key(
    app: &App,
    key: &[u8; 32],
    fingerprint: &str,
    folder: &str,
    spool: &std::path::Path,
    name: &str,
) -> Result<ManifestBody, BackupError> {
    std::fs::create_dir_all(spool).map_err(|e| storage("the local spool directory", e))?;
    let applied_index = app.store.applied_index();
    let state = app.store.read();
    let record = match (state.keys.get(name), state.deleted.get(name)) {
        (Some(k), _) => Record::Key(k.clone()),
        (None, Some(d)) => Record::DeletedKey(d.clone()),
        (None, None) => return Err(BackupError::KeyNotInPool(name.to_string())),
    };
    let mut body = ManifestBody {
        key_count: u64::from(matches!(record, Record::Key(_))),
        deleted_key_count: u64::from(matches!(record, Record::DeletedKey(_))),
        key_name: Some(name.to_string()),
        ..manifest_header(&state, folder, fingerprint, applied_index)
    };
    let mut batch = vec![Record::Settings(state.settings.clone()), record];
    spool_chunk(key, folder, spool, &mut batch, &mut body)?;
    Ok(body)
}

/// A manifest of the pool as `state` is, with nothing counted yet (no chunk, not a restore
/// point, every key): the full and the single-key backup fill in what they hold.
fn manifest_header(
    state: &PoolState,
    folder: &str,
    fingerprint: &str,
    applied_index: u64,
) -> ManifestBody {
    ManifestBody {
        format: format::FORMAT.into(),
        version: format::VERSION,
        pool: state.settings.pool_name.clone(),
        pool_id: state.settings.pool_id.clone(),
        folder: folder.into(),
        domain_fingerprint: fingerprint.into(),
        created: now(),
        applied_index,
        key_count: 0,
        deleted_key_count: 0,
        role_assignment_count: 0,
        role_definition_count: 0,
        restore_point: false,
        chunks: vec![],
        key_name: None,
    }
}

/// Write a full backup of `app`'s pool into a new folder of `dest`; returns the manifest.
pub async fn write_backup(
    app: &Arc<App>,
    dest: &Destination,
    restore_point: bool,
) -> Result<Manifest, BackupError> {
    write_backup_with(app, dest, restore_point, format::RECORDS_PER_CHUNK, None).await
}

/// [`write_backup`] with a chosen chunk size (tests use small chunks), of the whole pool or
/// of the key `only` (all its versions, active or soft-deleted; such a backup restores only
/// selectively, `PUT /keys/{name}/restore`).
pub async fn write_backup_with(
    app: &Arc<App>,
    dest: &Destination,
    restore_point: bool,
    records_per_chunk: usize,
    only: Option<&str>,
) -> Result<Manifest, BackupError> {
    let folder = new_folder(app, restore_point, only);
    write_backup_to(app, dest, &folder, restore_point, records_per_chunk, only).await
}

/// The name of a new backup folder of `app`'s pool ([`folder_name`]).
pub fn new_folder(app: &App, restore_point: bool, only: Option<&str>) -> String {
    let pool = app.store.read().settings.pool_name.clone();
    folder_name(&pool, restore_point, only)
}

/// [`write_backup_with`] into the folder `folder`, named beforehand ([`new_folder`]) so a
/// job can report where its backup goes from its start.
pub async fn write_backup_to(
    app: &Arc<App>,
    dest: &Destination,
    folder: &str,
    restore_point: bool,
    records_per_chunk: usize,
    only: Option<&str>,
) -> Result<Manifest, BackupError> {
    dest::validate_folder(folder).map_err(BackupError::Invalid)?;
    let u = unsealed(app)?;
    let fingerprint = u.fingerprint();
    let folder = folder.to_string();
    let only = only.map(str::to_string);
    let spool = Spool(
        app.cfg
            .data_dir
            .join("backup-spool")
            .join(uuid::Uuid::new_v4().simple().to_string()),
    );
    let body = {
        let app = app.clone();
        let u = u.clone();
        let folder = folder.clone();
        let dir = spool.0.clone();
        tokio::task::spawn_blocking(move || match only.as_deref() {
            Some(name) => snapshot_key(&app, u.backup_key(), &fingerprint, &folder, &dir, name),
            None => snapshot_to_spool(
                &app,
                u.backup_key(),
                &fingerprint,
                &folder,
                &dir,
                restore_point,
                records_per_chunk,
            ),
        })
        .await
        .map_err(|e| BackupError::Internal(e.to_string()))??
    };
    let manifest = format::sign_manifest(u.backup_key(), body);
    let result = upload(dest, &folder, &spool.0, &manifest).await;
    if result.is_err() {
        // Best effort: do not leave a half-written folder behind (without its manifest it
        // would never be restored anyway).
        for c in &manifest.body.chunks {
            let _ = dest.store.delete(&dest.path(&folder, &c.name)).await;
        }
    }
    result.map(|()| manifest)
}

/// `manifest.json` as written to the store.
pub fn manifest_bytes(manifest: &Manifest) -> Result<Vec<u8>, BackupError> {
    serde_json::to_vec_pretty(manifest).map_err(|e| BackupError::Internal(e.to_string()))
}

/// The figures of a written backup reported in its job body.
pub fn summary(manifest: &Manifest) -> Result<job::BackupSummary, BackupError> {
    let bytes = manifest_bytes(manifest)?;
    let b = &manifest.body;
    Ok(job::BackupSummary {
        folder: b.folder.clone(),
        key_count: b.key_count,
        deleted_key_count: b.deleted_key_count,
        size_bytes: b.chunks.iter().map(|c| c.size).sum::<u64>() + bytes.len() as u64,
        manifest_sha256: format::sha256_hex(&bytes),
        domain_fingerprint: b.domain_fingerprint.clone(),
        key_name: b.key_name.clone(),
    })
}

/// Upload the spooled chunks, then the manifest (last: its presence marks a complete backup).
async fn upload(
    dest: &Destination,
    folder: &str,
    spool: &std::path::Path,
    manifest: &Manifest,
) -> Result<(), BackupError> {
    for c in &manifest.body.chunks {
        let bytes = tokio::fs::read(spool.join(&c.name))
            .await
            .map_err(|e| storage("the local spool", e))?;
        dest.store
            .put(&dest.path(folder, &c.name), PutPayload::from(bytes))
            .await
            .map_err(|e| storage(dest.folder_url(folder), e))?;
    }
    let bytes = manifest_bytes(manifest)?;
    dest.store
        .put(
            &dest.path(folder, format::MANIFEST),
            PutPayload::from(bytes),
        )
        .await
        .map_err(|e| storage(dest.folder_url(folder), e))?;
    Ok(())
}

/// What a backup folder holds, as far as deleting it goes ([`check_deletable`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deletable {
    /// Nothing is there.
    Missing,
    /// A backup of this pool: its manifest's MAC verifies under the domain.
    OwnBackup,
    /// Chunk files and no manifest: nothing in it shows whose it is. It may go only as the
    /// leftovers of a failed backup job of this pool (known from the pool's job records).
    NoManifest,
}

/// Whether backup folder `folder` of `dest` may be deleted by this pool: a backup of this
/// pool's security domain, or chunk files only ([`Deletable::NoManifest`], for the caller
/// to decide). A manifest of another domain or one that does not verify, or any other file
/// in the folder, is an error.
pub async fn check_deletable(
    app: &App,
    dest: &Destination,
    folder: &str,
) -> Result<Deletable, BackupError> {
    use futures::TryStreamExt;
    dest::validate_folder(folder).map_err(BackupError::Invalid)?;
    let u = unsealed(app)?;
    let what = dest.folder_url(folder);
    let objects: Vec<_> = dest
        .store
        .list(Some(&dest.folder_path(folder)))
        .try_collect()
        .await
        .map_err(|e| storage(&what, e))?;
    let names: Vec<&str> = objects
        .iter()
        .filter_map(|o| o.location.filename())
        .collect();
    if names.is_empty() {
        return Ok(Deletable::Missing);
    }
    let is_chunk = |n: &str| {
        n.strip_prefix("chunk-")
            .and_then(|r| r.strip_suffix(".bin"))
            .is_some_and(|d| d.len() == 5 && d.bytes().all(|b| b.is_ascii_digit()))
    };
    if let Some(other) = names
        .iter()
        .find(|n| **n != format::MANIFEST && !is_chunk(n))
    {
        return Err(BackupError::Invalid(format!(
            "{what} holds '{other}', which no Keystead backup has; it is not deleted (delete it in the store yourself if it is not needed)"
        )));
    }
    if !names.contains(&format::MANIFEST) {
        return Ok(Deletable::NoManifest);
    }
    let m = read_manifest(dest, folder).await?;
    let pool_fp = u.fingerprint();
    if m.body.domain_fingerprint != pool_fp {
        return Err(BackupError::Invalid(format!(
            "{what} is a backup of security domain {}, not of this pool's ({pool_fp}); a pool deletes only its own backups; nothing was deleted",
            m.body.domain_fingerprint
        )));
    }
    format::verify_manifest(u.backup_key(), &m)?;
    Ok(Deletable::OwnBackup)
}

/// Delete every object of `folder` (after [`check_deletable`]); how many went.
pub async fn delete_folder(dest: &Destination, folder: &str) -> Result<usize, BackupError> {
    dest::delete_folder(dest, folder)
        .await
        .map_err(|e| storage(dest.folder_url(folder), e))
}

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
const STAGE_BYTES: usize = 16 * 1024;

/// Stage commands proposed at once during a full restore.
const STAGES_IN_FLIGHT: usize = 32;

/// Split `items` into runs of at most `budget` bytes of JSON (a larger item goes alone;
/// `None`: one run).
fn stages<T: serde::Serialize>(
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
        app.store
            .propose(Command::RestoreBegin { id: id.clone() })
            .await?;
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
                .map(|cmd| app.store.propose(cmd))
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
