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
mod restore;
pub(crate) use restore::{STAGE_BYTES, stages};
pub mod run;
pub use restore::{RestoreReport, check_backup, restore_full, restore_key};

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
    #[error(
        "the restore could not be staged or committed ({0}); what was staged is dropped and nothing was changed: run the restore again"
    )]
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
        // Saturating: the sizes come from a manifest, which may be damaged or forged
        // (fuzz/regressions/backup_manifest/chunk-sizes-overflow overflowed the sum).
        size_bytes: b
            .chunks
            .iter()
            .fold(bytes.len() as u64, |sum, c| sum.saturating_add(c.size)),
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
