//! The Restore controller: find the backup (a Backup by name, or a folder of a
//! destination), start one restore job on a Ready partition, and poll it to its end.

use super::jobs::{
    POLL, Poll, Wait, destination_parameters, job_start_time, job_status, poll_job, record,
    start_job, wait_delay,
};
use super::plan::{self, JobReason};
use crate::context::{Context, Error, namespace_of, now_time, reconciling};
use crate::crd::{BackupPhase, Restore, RestorePhase, RestoreStatus};
use crate::pool::client::JobPath;
use keystead_core::store::{self, StorageParameters};
use kube::runtime::controller::Action as Requeue;
use serde_json::json;
use std::sync::Arc;

pub const RESTORE_CONTROLLER: &str = "restore";

pub async fn reconcile_restore(r: Arc<Restore>, ctx: Arc<Context>) -> Result<Requeue, Error> {
    reconciling(&ctx, RESTORE_CONTROLLER, &*r, restore_apply(&r, &ctx)).await
}

/// Where a Restore's backup is: the store parameters and the folder URL.
async fn restore_source(
    ctx: &Context,
    ns: &str,
    r: &Restore,
) -> Result<Result<(StorageParameters, String), Wait>, Error> {
    let (destination, folder_url) = match (&r.spec.backup_name, &r.spec.source) {
        (Some(name), _) => {
            let Some(b) = ctx.backup(ns, name).await? else {
                return Ok(Err((
                    JobReason::BackupNotFound,
                    format!("the Backup {name} does not exist in this namespace"),
                )));
            };
            let st = b.status.clone().unwrap_or_default();
            match (st.phase, st.location) {
                (Some(BackupPhase::Succeeded), Some(loc)) => (b.spec.destination.clone(), loc),
                (Some(BackupPhase::Failed), _) => {
                    return Ok(Err((
                        JobReason::SourceBackupFailed,
                        format!("the Backup {name} failed; there is nothing to restore"),
                    )));
                }
                _ => {
                    return Ok(Err((
                        JobReason::BackupNotReady,
                        format!("waiting for the Backup {name} to succeed"),
                    )));
                }
            }
        }
        (None, Some(src)) => {
            let folder = src.folder.trim().trim_matches('/');
            (src.destination.clone(), folder.to_string())
        }
        (None, None) => {
            return Ok(Err((
                JobReason::InvalidSpec,
                "name the backup by backupName or by source".into(),
            )));
        }
    };
    let params = match destination_parameters(ctx, ns, &destination).await? {
        Ok(p) => p,
        Err(w) => return Ok(Err(w)),
    };
    let folder_url = if r.spec.backup_name.is_some() {
        folder_url
    } else {
        format!(
            "{}/{folder_url}",
            params.storage_resource_uri.trim_end_matches('/')
        )
    };
    Ok(Ok((params, folder_url)))
}

async fn restore_apply(r: &Restore, ctx: &Context) -> Result<Requeue, Error> {
    let ns = namespace_of(r)?;
    let prev = r.status.clone().unwrap_or_default();
    let old_reason = plan::reason_of(&prev.conditions).map(str::to_string);
    if matches!(
        prev.phase,
        Some(RestorePhase::Succeeded | RestorePhase::Failed)
    ) {
        return Ok(Requeue::await_change());
    }
    let now = now_time();
    let generation = r.metadata.generation;
    let pool = &r.spec.hsm_ref.name;
    let set = |reason: JobReason, msg: &str, st: &RestoreStatus| {
        job_status(st, reason, msg, generation, &now)
    };
    let write = |st: RestoreStatus, reason: JobReason, msg: String| {
        let changed = r.status.as_ref() != Some(&st);
        let old = old_reason.clone();
        async move {
            record(ctx, r, old.as_deref(), &st, reason, &msg, changed).await?;
            Ok::<_, Error>(())
        }
    };

    if let (Some(job_id), Some(partition)) = (prev.job_id.clone(), prev.job_partition.clone()) {
        let lost = plan::job_lost_message(
            plan::LostJob::Restore,
            &job_id,
            &partition,
            prev.start_time.as_ref(),
        );
        let job = (job_id.as_str(), partition.as_str());
        return match poll_job(ctx, &ns, pool, JobPath::Restore, job, lost).await? {
            Poll::Running(msg, requeue) => {
                write(
                    set(JobReason::JobRunning, &msg, &prev),
                    JobReason::JobRunning,
                    msg,
                )
                .await?;
                Ok(requeue)
            }
            Poll::Succeeded(job) => {
                let mut st = prev.clone();
                st.restore_point = job.restore_point.clone();
                st.completion_time = job.end_time.and_then(plan::time_of).or(Some(now.clone()));
                st.error = None;
                let msg = job
                    .status_details
                    .clone()
                    .unwrap_or_else(|| "restore succeeded".into());
                let st = set(JobReason::RestoreSucceeded, &msg, &st);
                write(st, JobReason::RestoreSucceeded, msg).await?;
                Ok(Requeue::await_change())
            }
            Poll::Failed(reason, msg, end) => {
                let mut st = set(reason, &msg, &prev);
                st.completion_time = end.or(st.completion_time);
                write(st, reason, msg).await?;
                Ok(Requeue::await_change())
            }
        };
    }

    let (params, folder_url) = match restore_source(ctx, &ns, r).await? {
        Ok(x) => x,
        Err((reason, msg)) => {
            write(set(reason, &msg, &prev), reason, msg).await?;
            return Ok(wait_delay(reason));
        }
    };
    let (parent, folder) = match store::split_folder(&folder_url) {
        Ok(x) => x,
        Err(msg) => {
            write(
                set(JobReason::InvalidSpec, &msg, &prev),
                JobReason::InvalidSpec,
                msg,
            )
            .await?;
            return Ok(Requeue::await_change());
        }
    };
    let params = StorageParameters {
        storage_resource_uri: parent,
        ..params
    };
    let sas = serde_json::to_value(&params)
        .map_err(|e| Error::internal("starting the restore job", e))?;
    let (path, body) = match &r.spec.key_name {
        Some(k) => (
            format!("/keys/{k}/restore"),
            json!({"sasTokenParameters": sas, "folder": folder}),
        ),
        None => (
            "/restore".to_string(),
            json!({"sasTokenParameters": sas, "folderToRestore": folder}),
        ),
    };
    let uri = &params.storage_resource_uri;
    match start_job(ctx, &ns, pool, uri, reqwest::Method::PUT, &path, &body).await? {
        Ok((job, partition)) => {
            let mut st = prev.clone();
            st.job_id = Some(job.job_id.clone());
            st.job_partition = Some(partition.clone());
            st.start_time = job_start_time(&job).or(Some(now.clone()));
            st.source = Some(folder_url.clone());
            let msg = format!(
                "restore job {} of {folder_url} started on {partition}",
                job.job_id
            );
            write(
                set(JobReason::JobRunning, &msg, &st),
                JobReason::JobRunning,
                msg,
            )
            .await?;
            Ok(Requeue::requeue(POLL))
        }
        Err((reason, msg)) => {
            write(set(reason, &msg, &prev), reason, msg).await?;
            Ok(wait_delay(reason))
        }
    }
}
