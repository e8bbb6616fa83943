//! Full backup and restore over the Azure-shaped API (reference §4): `POST /backup`,
//! `GET /backup/{jobId}/pending`, `PUT /restore`, `GET /restore/{jobId}/pending`,
//! `PUT /keys/{name}/restore` (selective), and `PUT /prerestore` (check only). Jobs run
//! as background tasks (`service::backup::run`); their status lives in the App (`backup::job`).

use super::error::ApiError;
use super::{Ctx, json_response};
use crate::service::backup::{self, dest, job};
use axum::http::{HeaderValue, StatusCode};
use axum::response::Response;
use keystead_core::rbac::DataAction;
use serde::Deserialize;

/// `POST /backup`: the Azure `sasTokenParameters`, plus the Keystead extension `keyName`
/// (back up one key with all its versions; it restores only selectively).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct BackupParameters {
    #[serde(flatten)]
    storage: dest::StorageParameters,
    #[serde(default)]
    key_name: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RestoreParameters {
    sas_token_parameters: dest::StorageParameters,
    folder_to_restore: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SelectiveRestoreParameters {
    sas_token_parameters: dest::StorageParameters,
    folder: String,
}

fn pool_id(ctx: &Ctx) -> String {
    ctx.app.store.read().settings.pool_id.clone()
}

fn accepted(ctx: &Ctx, st: &job::JobStatus, pending: &str) -> Response {
    let mut r = json_response(StatusCode::ACCEPTED, st);
    let url = format!("{}{pending}", ctx.base_url);
    if let Ok(v) = HeaderValue::from_str(&url) {
        r.headers_mut().insert("azure-asyncoperation", v);
    }
    r.headers_mut()
        .insert("retry-after", HeaderValue::from_static("1"));
    r
}

fn bad_destination(msg: String) -> ApiError {
    ApiError::bad_request(msg).with_inner(
        "InvalidStorageDestination",
        "the storage destination was rejected",
    )
}

/// Open the destination of `params` with what this partition may use locally.
fn open(ctx: &Ctx, params: &dest::StorageParameters) -> Result<dest::Destination, ApiError> {
    let local = ctx.app.cfg.backup_paths();
    // A claim this partition does not mount (yet: partitions roll one at a time after the
    // pool's backupVolumes change) is worth retrying, here or on another partition.
    if let Some(claim) = dest::claim_of(&params.storage_resource_uri)
        && !local.claims.contains_key(claim)
    {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "ClaimNotMounted",
            format!(
                "partition {} does not mount the PersistentVolumeClaim '{claim}'; list it in the ManagedHsm's spec.backupVolumes and retry when the partitions have rolled",
                ctx.app.cfg.partition_id
            ),
        ));
    }
    dest::open(params, &local).map_err(bad_destination)
}

/// Open `<uri>/<folder>` as (destination, folder name).
fn open_folder(
    ctx: &Ctx,
    params: &dest::StorageParameters,
    folder: &str,
) -> Result<(dest::Destination, String), ApiError> {
    let full = format!(
        "{}/{}",
        params.storage_resource_uri.trim().trim_end_matches('/'),
        folder.trim().trim_matches('/')
    );
    let (parent, name) = dest::split_folder(&full).map_err(bad_destination)?;
    dest::validate_folder(&name).map_err(bad_destination)?;
    let p = dest::StorageParameters {
        storage_resource_uri: parent,
        ..params.clone()
    };
    Ok((open(ctx, &p)?, name))
}

/// `POST /backup`
pub fn start_backup(ctx: &mut Ctx) -> Result<Response, ApiError> {
    ctx.audit.operation = "FullBackup";
    ctx.authorize(DataAction::BackupStart, "/")?;
    ctx.require_active()?;
    let params: BackupParameters = ctx.json()?;
    if let Some(k) = &params.key_name {
        crate::service::keys::validate_name(k)?;
    }
    let d = open(ctx, &params.storage)?;
    let st = backup::run::start_backup(&ctx.app, d, params.key_name);
    Ok(accepted(
        ctx,
        &st,
        &format!("/backup/{}/pending", st.job_id),
    ))
}

async fn status(ctx: &mut Ctx, job_id: &str, kinds: &[job::Kind]) -> Result<Response, ApiError> {
    let pool = pool_id(ctx);
    let found = match ctx.app.jobs.get(&pool, job_id) {
        Some(st) => Some(st),
        // The job may run on another partition (a load-balanced client polls any of them).
        None if job::valid_id(job_id) => job::find_job(&ctx.app.store, job_id).await,
        None => None,
    };
    match found {
        Some(st) if st.kind.is_some_and(|k| kinds.contains(&k)) => {
            let mut r = json_response(StatusCode::OK, &st);
            if st.status == job::Status::InProgress {
                r.headers_mut()
                    .insert("retry-after", HeaderValue::from_static("1"));
            }
            Ok(r)
        }
        _ => Err(ApiError::not_found(
            "JobNotFound",
            format!(
                "no job '{job_id}' in this pool; job status is kept in the memory of the partition that runs the job and is lost when it restarts (the backup folder or the pool's keys tell the outcome)"
            ),
        )),
    }
}

/// `GET /backup/{jobId}/pending`
pub async fn backup_status(ctx: &mut Ctx, job_id: &str) -> Result<Response, ApiError> {
    ctx.audit.operation = "FullBackupStatus";
    ctx.authorize(DataAction::BackupStatus, "/")?;
    status(ctx, job_id, &[job::Kind::Backup]).await
}

/// `GET /restore/{jobId}/pending`
pub async fn restore_status(ctx: &mut Ctx, job_id: &str) -> Result<Response, ApiError> {
    ctx.audit.operation = "FullRestoreStatus";
    ctx.authorize(DataAction::RestoreStatus, "/")?;
    status(
        ctx,
        job_id,
        &[
            job::Kind::Restore,
            job::Kind::SelectiveRestore,
            job::Kind::RestoreCheck,
        ],
    )
    .await
}

/// `PUT /restore` (full restore) and `PUT /prerestore` (`check_only`: verify, decrypt, no change).
pub fn start_restore(ctx: &mut Ctx, check_only: bool) -> Result<Response, ApiError> {
    ctx.audit.operation = if check_only {
        "PreFullRestore"
    } else {
        "FullRestore"
    };
    ctx.authorize(DataAction::RestoreStart, "/")?;
    ctx.require_active()?;
    let p: RestoreParameters = ctx.json()?;
    let (d, folder) = open_folder(ctx, &p.sas_token_parameters, &p.folder_to_restore)?;
    let st = backup::run::start_restore(&ctx.app, d, folder, check_only);
    Ok(accepted(
        ctx,
        &st,
        &format!("/restore/{}/pending", st.job_id),
    ))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DeleteParameters {
    sas_token_parameters: dest::StorageParameters,
    folder: String,
    /// The backup job of this pool that wrote the folder and failed: what lets a folder
    /// without a manifest be deleted.
    #[serde(default)]
    job_id: Option<String>,
}

/// Check that `job_id` is a backup job of this pool (on this partition or a peer) that
/// wrote `url` and failed.
async fn failed_backup_job(ctx: &Ctx, job_id: &str, url: &str) -> Result<(), ApiError> {
    let conflict = |m: String| ApiError::conflict("Conflict", m);
    let pool = pool_id(ctx);
    let st = match ctx.app.jobs.get(&pool, job_id) {
        Some(st) => Some(st),
        None if job::valid_id(job_id) => job::find_job(&ctx.app.store, job_id).await,
        None => None,
    }
    .ok_or_else(|| {
        conflict(format!(
            "no job '{job_id}' is known in this pool (job status lives in the memory of the partition that ran it, and is lost when it restarts); nothing was deleted"
        ))
    })?;
    if st.kind != Some(job::Kind::Backup)
        || st.azure_storage_blob_container_uri.as_deref() != Some(url)
    {
        return Err(conflict(format!(
            "job '{job_id}' is not the backup job that wrote {url}; nothing was deleted"
        )));
    }
    match st.status {
        job::Status::Failed => Ok(()),
        job::Status::InProgress => Err(conflict(format!(
            "backup job '{job_id}' is still writing {url}; wait until it ends (GET /backup/{job_id}/pending) and try again"
        ))),
        job::Status::Succeeded => Err(conflict(format!(
            "backup job '{job_id}' succeeded, so {url} should hold its manifest; without it the folder was changed outside the pool: delete it in the store yourself"
        ))),
    }
}

/// `POST /backup/delete` (Keystead extension): delete one backup folder of this pool, as
/// retention does (`{"sasTokenParameters": {…}, "folder": "<folder>", "jobId": "<id>"?}`):
/// a backup whose manifest verifies under this pool's domain, or — with `jobId` — the
/// leftovers (chunks, no manifest) of that failed backup job of this pool. Synchronous.
pub async fn delete_backup(ctx: &mut Ctx) -> Result<Response, ApiError> {
    ctx.audit.operation = "DeleteBackup";
    ctx.authorize(DataAction::BackupDelete, "/")?;
    ctx.require_active()?;
    let p: DeleteParameters = ctx.json()?;
    let (d, folder) = open_folder(ctx, &p.sas_token_parameters, &p.folder)?;
    let url = d.folder_url(&folder);
    let pool = pool_id(ctx);
    // Not while a backup or restore of this pool runs here (it may be writing this folder).
    let lock = ctx.app.jobs.pool_lock(&pool);
    let _g = lock.lock().await;
    let refused = |e: backup::BackupError| {
        let status = match e {
            backup::BackupError::Storage { .. } => StatusCode::BAD_GATEWAY,
            backup::BackupError::Sealed => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::CONFLICT,
        };
        ApiError::new(status, e.code(), e.to_string())
    };
    match backup::check_deletable(&ctx.app, &d, &folder)
        .await
        .map_err(refused)?
    {
        backup::Deletable::Missing | backup::Deletable::OwnBackup => {}
        backup::Deletable::NoManifest => match &p.job_id {
            Some(id) => failed_backup_job(ctx, id, &url).await?,
            None => {
                return Err(ApiError::conflict(
                    "Conflict",
                    format!(
                        "{url} has no manifest, so nothing shows it is a backup of this pool; nothing was deleted. Give the jobId of the backup job of this pool that wrote it and failed (the answer of POST /backup), or delete it in the store yourself"
                    ),
                ));
            }
        },
    }
    let n = backup::delete_folder(&d, &folder).await.map_err(refused)?;
    tracing::info!(folder = %url, objects = n, "deleted a backup folder");
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({"folder": url, "deletedObjects": n}),
    ))
}

/// `PUT /keys/{name}/restore`
pub fn start_selective_restore(ctx: &mut Ctx, name: &str) -> Result<Response, ApiError> {
    ctx.audit.operation = "SelectiveKeyRestore";
    ctx.key(name, None);
    ctx.authorize(DataAction::RestoreStart, "/")?;
    ctx.require_active()?;
    crate::service::keys::validate_name(name)?;
    let p: SelectiveRestoreParameters = ctx.json()?;
    let (d, folder) = open_folder(ctx, &p.sas_token_parameters, &p.folder)?;
    let st = backup::run::start_key_restore(&ctx.app, d, folder, name.to_string());
    Ok(accepted(
        ctx,
        &st,
        &format!("/restore/{}/pending", st.job_id),
    ))
}
