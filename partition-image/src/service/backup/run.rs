//! Backup and restore jobs in the background: each starts with its status in the
//! partition's [`Jobs`](super::job::Jobs), runs under its pool's lock (one backup or restore of
//! a pool at a time) and finishes its status with the outcome.

use super::dest::Destination;
use super::job::{JobError, JobStatus, Kind};
use super::{BackupError, new_folder};
use crate::service::app::App;
use crate::service::now;
use std::sync::Arc;

fn job_error(e: &BackupError) -> JobError {
    JobError {
        code: e.code().to_string(),
        message: e.to_string(),
        innererror: None,
    }
}

/// Start a full backup of the pool (or of the one key `key_name`) into `d`. The folder is in
/// the status from the start.
pub fn start_backup(app: &Arc<App>, d: Destination, key_name: Option<String>) -> JobStatus {
    let pool = app.store.read().settings.pool_id.clone();
    let what = match &key_name {
        Some(k) => format!("Backup of key '{k}'"),
        None => "Full backup".to_string(),
    };
    let mut st = app.jobs.create(
        &pool,
        Kind::Backup,
        &format!("{what} is in progress"),
        now(),
    );
    // The folder is named now and reported from the start, so a job lost to a restart
    // still says where its (possibly partial) backup went.
    let folder = new_folder(app, false, key_name.as_deref());
    let url = d.folder_url(&folder);
    app.jobs.update(&pool, &st.job_id, |s| {
        s.azure_storage_blob_container_uri = Some(url.clone())
    });
    st.azure_storage_blob_container_uri = Some(url);
    let task_app = app.clone();
    let id = st.job_id.clone();
    tokio::spawn(async move {
        let lock = task_app.jobs.pool_lock(&pool);
        let _g = lock.lock().await;
        let chunk = super::format::RECORDS_PER_CHUNK;
        let key = key_name.as_deref();
        let r = super::write_backup_to(&task_app, &d, &folder, false, chunk, key)
            .await
            .and_then(|m| super::summary(&m).map(|s| (m, s)));
        match r {
            Ok((m, summary)) => {
                let url = d.folder_url(&m.body.folder);
                tracing::info!(job = %id, folder = %url, keys = m.body.key_count, "{what} succeeded");
                task_app.jobs.update(&pool, &id, |s| {
                    s.azure_storage_blob_container_uri = Some(url);
                    s.backup = Some(summary);
                });
                task_app
                    .jobs
                    .finish(&pool, &id, now(), Ok(format!("{what} succeeded")));
            }
            Err(e) => {
                tracing::warn!(job = %id, error = %e, "{what} failed");
                task_app.jobs.finish(&pool, &id, now(), Err(job_error(&e)));
            }
        }
    });
    st
}

/// Start a full restore of `folder` (or only its check, `check_only`).
pub fn start_restore(
    app: &Arc<App>,
    d: Destination,
    folder: String,
    check_only: bool,
) -> JobStatus {
    let pool = app.store.read().settings.pool_id.clone();
    let (kind, details) = if check_only {
        (Kind::RestoreCheck, "Restore check is in progress")
    } else {
        (Kind::Restore, "Full restore is in progress")
    };
    let st = app.jobs.create(&pool, kind, details, now());
    let task_app = app.clone();
    let id = st.job_id.clone();
    tokio::spawn(async move {
        let lock = task_app.jobs.pool_lock(&pool);
        let _g = lock.lock().await;
        let r = if check_only {
            super::check_backup(&task_app, &d, &folder).await.map(|m| {
                format!(
                    "The backup {} verifies and decrypts with this pool's security domain ({} keys, {} deleted keys)",
                    d.folder_url(&folder),
                    m.body.key_count,
                    m.body.deleted_key_count
                )
            })
        } else {
            super::restore_full(&task_app, &d, &folder).await.map(|r| {
                let rp = r.restore_point.clone();
                task_app.jobs.update(&pool, &id, |s| s.restore_point = Some(rp));
                format!(
                    "Full restore succeeded: {} keys and {} deleted keys restored; restore point {}",
                    r.keys, r.deleted, r.restore_point
                )
            })
        };
        match r {
            Ok(msg) => {
                tracing::info!(job = %id, "{msg}");
                task_app.jobs.finish(&pool, &id, now(), Ok(msg));
            }
            Err(e) => {
                tracing::warn!(job = %id, error = %e, "restore failed");
                task_app.jobs.finish(&pool, &id, now(), Err(job_error(&e)));
            }
        }
    });
    st
}

/// Start the restore of key `name` from `folder`.
pub fn start_key_restore(
    app: &Arc<App>,
    d: Destination,
    folder: String,
    name: String,
) -> JobStatus {
    let pool = app.store.read().settings.pool_id.clone();
    let st = app.jobs.create(
        &pool,
        Kind::SelectiveRestore,
        "Selective key restore is in progress",
        now(),
    );
    let task_app = app.clone();
    let id = st.job_id.clone();
    tokio::spawn(async move {
        let lock = task_app.jobs.pool_lock(&pool);
        let _g = lock.lock().await;
        match super::restore_key(&task_app, &d, &folder, &name).await {
            Ok(rec) => task_app.jobs.finish(
                &pool,
                &id,
                now(),
                Ok(format!(
                    "Key '{}' restored with {} versions",
                    rec.name,
                    rec.versions.len()
                )),
            ),
            Err(e) => task_app.jobs.finish(&pool, &id, now(), Err(job_error(&e))),
        }
    });
    st
}
