//! The Backup controller: start one backup job on a Ready partition, poll it to its end,
//! and — for a scheduled Backup being deleted — delete its folder from the store before the
//! object goes (its finalizer).

use super::jobs::{
    POLL, Poll, destination_parameters, job_start_time, job_status, poll_job, record, start_job,
    target, wait_delay,
};
use super::plan::{self, BACKUP_FINALIZER, JobReason, KEEP_FOLDER_ANNOTATION};
use crate::context::{At, Context, Error, namespace_of, now_time, publish_on, reconciling};
use crate::crd::{Backup, BackupPhase, BackupStatus};
use crate::pool::client::JobPath;
use keystead_core::store::{self, StorageParameters};
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action as Requeue;
use kube::runtime::events::EventType;
use kube::{Api, Resource, ResourceExt};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

pub const BACKUP_CONTROLLER: &str = "backup";

pub async fn reconcile_backup(b: Arc<Backup>, ctx: Arc<Context>) -> Result<Requeue, Error> {
    reconciling(&ctx, BACKUP_CONTROLLER, &*b, async {
        if b.metadata.deletion_timestamp.is_some() {
            return backup_cleanup(&b, &ctx).await;
        }
        backup_apply(&b, &ctx).await
    })
    .await
}

async fn backup_apply(b: &Backup, ctx: &Context) -> Result<Requeue, Error> {
    let ns = namespace_of(b)?;
    let prev = b.status.clone().unwrap_or_default();
    let old_reason = plan::reason_of(&prev.conditions).map(str::to_string);
    if matches!(
        prev.phase,
        Some(BackupPhase::Succeeded | BackupPhase::Failed)
    ) {
        return Ok(Requeue::await_change());
    }
    let now = now_time();
    let generation = b.metadata.generation;
    let pool = &b.spec.hsm_ref.name;
    let set = |reason: JobReason, msg: &str, st: &BackupStatus| {
        job_status(st, reason, msg, generation, &now)
    };
    let write = |st: BackupStatus, reason: JobReason, msg: String| {
        let changed = b.status.as_ref() != Some(&st);
        let old = old_reason.clone();
        async move {
            record(ctx, b, old.as_deref(), &st, reason, &msg, changed).await?;
            Ok::<_, Error>(())
        }
    };

    // Resume: a job was started; poll the partition that took it.
    if let (Some(job_id), Some(partition)) = (prev.job_id.clone(), prev.job_partition.clone()) {
        let destination = plan::destination_uri(&b.spec.destination).ok();
        let lost = plan::job_lost_message(
            plan::LostJob::Backup {
                destination: destination.as_deref(),
                folder: prev.location.as_deref(),
            },
            &job_id,
            &partition,
            prev.start_time.as_ref(),
        );
        let job = (job_id.as_str(), partition.as_str());
        return match poll_job(ctx, &ns, pool, JobPath::Backup, job, lost).await? {
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
                st.location = job.azure_storage_blob_container_uri.clone();
                if let Some(s) = &job.backup {
                    st.key_count = Some(s.key_count as i64);
                    st.deleted_key_count = Some(s.deleted_key_count as i64);
                    st.size_bytes = Some(s.size_bytes as i64);
                    st.digest = Some(format!("sha256:{}", s.manifest_sha256));
                    st.security_domain_fingerprint = Some(s.domain_fingerprint.clone());
                }
                st.completion_time = job.end_time.and_then(plan::time_of).or(Some(now.clone()));
                st.error = None;
                let msg = format!(
                    "backed up {} keys ({} bytes) to {}",
                    st.key_count.unwrap_or(0),
                    st.size_bytes.unwrap_or(0),
                    st.location.as_deref().unwrap_or("?")
                );
                let st = set(JobReason::BackupSucceeded, &msg, &st);
                write(st, JobReason::BackupSucceeded, msg).await?;
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

    // Start.
    let params = match destination_parameters(ctx, &ns, &b.spec.destination).await? {
        Ok(p) => p,
        Err((reason, msg)) => {
            write(set(reason, &msg, &prev), reason, msg).await?;
            return Ok(wait_delay(reason));
        }
    };
    let mut body =
        serde_json::to_value(&params).map_err(|e| Error::internal("starting the backup job", e))?;
    if let Some(k) = &b.spec.key_name {
        body["keyName"] = json!(k);
    }
    let uri = &params.storage_resource_uri;
    match start_job(ctx, &ns, pool, uri, reqwest::Method::POST, "/backup", &body).await? {
        Ok((job, partition)) => {
            let mut st = prev.clone();
            st.job_id = Some(job.job_id.clone());
            st.job_partition = Some(partition.clone());
            st.start_time = job_start_time(&job).or(Some(now.clone()));
            // Where the backup goes, as the partition named it at the start: a lost job's
            // folder can still be found, and a scheduled one's deleted by its finalizer.
            st.location = job.azure_storage_blob_container_uri.clone();
            let msg = format!("backup job {} started on {partition}", job.job_id);
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

/// Remove our finalizer from an object (merge patch of the remaining list).
async fn drop_finalizer(ctx: &Context, obj: &Backup) -> Result<(), Error> {
    let rest: Vec<String> = obj
        .finalizers()
        .iter()
        .filter(|f| *f != BACKUP_FINALIZER)
        .cloned()
        .collect();
    let api: Api<Backup> =
        Api::namespaced(ctx.client.clone(), &obj.namespace().unwrap_or_default());
    api.patch(
        &obj.name_any(),
        &PatchParams::default(),
        &Patch::Merge(
            &json!({"metadata": {"finalizers": rest, "resourceVersion": obj.resource_version()}}),
        ),
    )
    .await
    .at("removing the Backup's finalizer")?;
    Ok(())
}

/// Whether namespace `ns` is being deleted.
async fn namespace_deleted(ctx: &Context, ns: &str) -> Result<bool, Error> {
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(ctx.client.clone());
    let n = namespaces
        .get_opt(ns)
        .await
        .at("reading the Backup's namespace")?;
    // (A Backup cannot outlive its namespace object: a missing one is not "being deleted".)
    Ok(n.is_some_and(|n| n.metadata.deletion_timestamp.is_some()))
}

/// The finalizer of a scheduled Backup: wait for a running job, delete the folder (kept when
/// the namespace is being deleted), let go.
async fn backup_cleanup(b: &Backup, ctx: &Context) -> Result<Requeue, Error> {
    if !b.finalizers().iter().any(|f| f == BACKUP_FINALIZER) {
        return Ok(Requeue::await_change());
    }
    let ns = b.namespace().unwrap_or_default();
    let keep = b
        .annotations()
        .get(KEEP_FOLDER_ANNOTATION)
        .map(String::as_str)
        == Some("true");
    let st = b.status.clone().unwrap_or_default();
    if !keep && st.phase == Some(BackupPhase::Running) {
        // Let the job finish first (its folder would otherwise appear after the deletion).
        let r = backup_apply(b, ctx).await?;
        return Ok(if r == Requeue::await_change() {
            Requeue::requeue(Duration::from_secs(1))
        } else {
            r
        });
    }
    if let (false, Some(location)) = (keep, st.location.as_deref())
        && namespace_deleted(ctx, &ns).await?
    {
        // Deleting a namespace never deletes backups: they are what recovers it. The
        // folder stays where it is (its claim, if any, goes with the namespace by its own
        // reclaim policy); no Event (the namespace takes no new objects).
        tracing::info!(backup = %b.name_any(), namespace = %ns, folder = %location,
            "the namespace is being deleted: the backup folder is kept");
        drop_finalizer(ctx, b).await?;
        return Ok(Requeue::await_change());
    }
    if let (false, Some(location)) = (keep, st.location.as_deref()) {
        let outcome = async {
            let params = match destination_parameters(ctx, &ns, &b.spec.destination).await? {
                Ok(p) => p,
                Err((_, msg)) => return Ok::<_, Error>(Err(msg)),
            };
            Ok(if store::claim_of(location).is_some() {
                let job = st.job_id.as_deref();
                delete_folder_by_pool(ctx, &ns, &b.spec.hsm_ref.name, params, location, job).await?
            } else {
                delete_folder(params, location, ctx.settings.loopback_storage_endpoints).await
            })
        }
        .await?;
        match outcome {
            Ok(n) => {
                tracing::info!(backup = %b.name_any(), namespace = %ns, folder = %location, objects = n, "deleted the backup folder");
                publish_on(
                    ctx,
                    &b.object_ref(&()),
                    EventType::Normal,
                    "FolderDeleted",
                    "DeleteBackup",
                    format!("deleted {location} ({n} objects)"),
                )
                .await;
            }
            Err(msg) => {
                publish_on(
                    ctx,
                    &b.object_ref(&()),
                    EventType::Warning,
                    "FolderDeleteFailed",
                    "DeleteBackup",
                    format!("{msg}; retrying (annotate the Backup {KEEP_FOLDER_ANNOTATION}=true to keep the folder and let the object go)"),
                )
                .await;
                return Ok(Requeue::requeue(Duration::from_secs(30)));
            }
        }
    }
    drop_finalizer(ctx, b).await?;
    Ok(Requeue::await_change())
}

/// Delete the backup folder at `location` (a folder URL of an object store) with `params`'
/// credentials.
async fn delete_folder(
    mut params: StorageParameters,
    location: &str,
    loopback_endpoints: bool,
) -> Result<usize, String> {
    let (parent, folder) = store::split_folder(location)?;
    params.storage_resource_uri = parent;
    // Object stores only: claims (pvc://) are mounted in the partitions, not here.
    let local = store::LocalPaths {
        loopback_endpoints,
        ..Default::default()
    };
    let dest = store::open(&params, &local)?;
    store::delete_folder(&dest, &folder).await
}

/// Delete the backup folder at `location` on a claim through the pool (`POST
/// /backup/delete`): only the partitions mount the claim, and a pool deletes only its own
/// backups — a verified one, or the leftovers of its failed job `job_id`.
async fn delete_folder_by_pool(
    ctx: &Context,
    ns: &str,
    pool: &str,
    params: StorageParameters,
    location: &str,
    job_id: Option<&str>,
) -> Result<Result<usize, String>, Error> {
    let (parent, folder) = match store::split_folder(location) {
        Ok(x) => x,
        Err(e) => return Ok(Err(e)),
    };
    let t = match target(ctx, ns, pool, None, Some(&parent)).await? {
        Ok(t) => t,
        Err((_, msg)) => return Ok(Err(format!("the pool cannot delete {location} now: {msg}"))),
    };
    let sas = StorageParameters {
        storage_resource_uri: parent,
        ..params
    };
    Ok(t.client
        .delete_backup(&t.url, &sas, &folder, job_id)
        .await
        .map_err(|e| e.to_string()))
}
