//! The Backup, Restore and BackupSchedule controllers. The pure decisions are in
//! `backup_plan`; here are the API calls: the pool's job endpoints (through [`PoolClient`],
//! with the operator's own identity), the Kubernetes objects, the store (to delete expired
//! backup folders), status and Events.
//!
//! A Backup or Restore starts one job on one Ready partition and records the job id and the
//! partition in its status before anything else, so an operator restart resumes polling
//! instead of starting a second job. Job status lives in that partition's memory: if it
//! restarts, the job is reported lost (`JobLost`, final) rather than retried, because the
//! job may have finished and a retry would make a second backup or restore.

use crate::backup_plan::{
    self as plan, BACKUP_FINALIZER, JobOutcome, JobReason, KEEP_FOLDER_ANNOTATION, POOL_LABEL,
    SCHEDULE_LABEL, SCHEDULED_TIME_ANNOTATION, ScheduledBackup,
};
use crate::children::{FIELD_MANAGER, Names};
use crate::conditions::{self as c, Status};
use crate::controller::{Context, Error, now_time, publish_on};
use crate::crd::{
    Backup, BackupDestination, BackupPhase, BackupSchedule, BackupScheduleStatus, BackupSpec,
    BackupStatus, ManagedHsm, Restore, RestorePhase, RestoreStatus,
};
use crate::pool_client::{JobPath, PoolClient};
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use keystead_core::backup_job::JobStatus;
use keystead_core::store::{self, StorageParameters};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action as Requeue;
use kube::runtime::events::EventType;
use kube::{Api, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const BACKUP_CONTROLLER: &str = "backup";
pub const RESTORE_CONTROLLER: &str = "restore";
pub const SCHEDULE_CONTROLLER: &str = "backupschedule";

/// How often a running job is polled.
const POLL: Duration = Duration::from_secs(2);

// ---------------------------------------------------------------------------------------
// Shared steps
// ---------------------------------------------------------------------------------------

/// Server-side apply `status` on `obj`'s status subresource.
async fn apply_status<K, S>(ctx: &Context, obj: &K, status: &S) -> Result<(), Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Debug
        + DeserializeOwned,
    S: Serialize,
{
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &obj.namespace().unwrap_or_default());
    let patch = json!({"apiVersion": K::api_version(&()), "kind": K::kind(&()), "status": status});
    api.patch_status(
        &obj.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

/// A pool ready for a job: one Ready partition's URL and a client with the operator's token.
struct Target {
    partition: String,
    url: String,
    client: PoolClient,
}

/// Why no job can be started or polled now (reason and message for the condition).
type Wait = (JobReason, String);

/// Dereference the pool and connect to `partition` (or, when `None`, its first Ready one).
/// `storage_uri`, when given, is the store the job will use: a claim the pool does not
/// mount makes it wait.
async fn target(
    ctx: &Context,
    ns: &str,
    pool: &str,
    partition: Option<&str>,
    storage_uri: Option<&str>,
) -> Result<Result<Target, Wait>, Error> {
    let hsms: Api<ManagedHsm> = Api::namespaced(ctx.client.clone(), ns);
    let Some(hsm) = hsms.get_opt(pool).await? else {
        return Ok(Err((
            JobReason::PoolNotFound,
            format!("the ManagedHsm {pool} does not exist in this namespace"),
        )));
    };
    if let Some(msg) =
        storage_uri.and_then(|u| plan::claim_not_mounted(u, pool, &hsm.spec.backup_volumes))
    {
        return Ok(Err((JobReason::PoolNotReady, msg)));
    }
    let status = hsm.status.clone().unwrap_or_default();
    let activated = c::find(&status.conditions, c::SECURITY_DOMAIN_ACTIVATED)
        .is_some_and(|c| c.status == "True");
    let chosen = match partition {
        Some(p) => Some(p.to_string()),
        None => status
            .partitions
            .iter()
            .find(|p| p.ready)
            .map(|p| p.name.clone()),
    };
    let Some(partition) = chosen.filter(|_| activated) else {
        return Ok(Err((
            JobReason::PoolNotReady,
            format!("waiting for {pool} to be activated with a Ready partition"),
        )));
    };
    let names = Names::of(&hsm)?;
    let ca = Api::<ConfigMap>::namespaced(ctx.client.clone(), ns)
        .get_opt(&names.ca_bundle)
        .await?
        .and_then(|cm| cm.data)
        .and_then(|d| d.get("ca.crt").cloned());
    let Some(ca) = ca else {
        return Ok(Err((
            JobReason::PoolNotReady,
            format!("the CA bundle {} does not exist yet", names.ca_bundle),
        )));
    };
    // The partition's pod IP (TLS still verifies its DNS name; see docs/operator.md).
    let pod = Api::<Pod>::namespaced(ctx.client.clone(), ns)
        .get_opt(&partition)
        .await?;
    let addresses = crate::controller::partition_addresses(&names, &[pod]);
    let client = match ctx
        .tokens
        .token(&crate::children::pool_audience(&hsm, &names))
        .await
    {
        Ok(t) => PoolClient::new(&ca, t, &addresses).map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    match client {
        Ok(client) => Ok(Ok(Target {
            url: names.partition_url(&partition),
            partition,
            client,
        })),
        Err(e) => Ok(Err((JobReason::PoolUnreachable, e))),
    }
}

/// What polling a started job found.
enum Poll {
    /// Still running (or the partition cannot be asked now): keep Running with this message.
    Running(String, Requeue),
    /// Finished successfully.
    Succeeded(Box<JobStatus>),
    /// Finished unsuccessfully, or lost: final.
    Failed(JobReason, String, Option<Time>),
}

/// Poll job `job_id` on the partition that took it; `lost` is the message if that partition
/// no longer knows the job.
async fn poll_job(
    ctx: &Context,
    ns: &str,
    pool: &str,
    kind: JobPath,
    (job_id, partition): (&str, &str),
    lost: String,
) -> Result<Poll, Error> {
    let what = match kind {
        JobPath::Backup => "backup",
        JobPath::Restore => "restore",
    };
    let t = match target(ctx, ns, pool, Some(partition), None).await? {
        Ok(t) => t,
        Err((JobReason::PoolNotFound, msg)) => {
            let msg = format!("{msg}; the {what} job {job_id} cannot be followed");
            return Ok(Poll::Failed(JobReason::JobLost, msg, None));
        }
        Err((_, msg)) => {
            let msg = format!("job {job_id} on {partition}: cannot poll it now ({msg})");
            return Ok(Poll::Running(
                msg,
                Requeue::requeue(Duration::from_secs(15)),
            ));
        }
    };
    Ok(match t.client.job(&t.url, kind, job_id).await {
        Ok(None) => Poll::Failed(JobReason::JobLost, lost, None),
        Ok(Some(job)) => match plan::job_outcome(&job) {
            JobOutcome::Running => Poll::Running(
                format!("{what} job {job_id} is running on {partition}"),
                Requeue::requeue(POLL),
            ),
            JobOutcome::Succeeded => Poll::Succeeded(Box::new(job)),
            JobOutcome::Failed { reason, message } => {
                Poll::Failed(reason, message, job.end_time.and_then(plan::time_of))
            }
        },
        Err(e) => Poll::Running(
            format!("job {job_id} on {partition}: cannot poll it now ({e})"),
            Requeue::requeue(Duration::from_secs(15)),
        ),
    })
}

/// Start a job on a Ready partition of `pool` with the store at `storage_uri`: the job and
/// the partition, or why not now.
async fn start_job(
    ctx: &Context,
    ns: &str,
    pool: &str,
    storage_uri: &str,
    method: reqwest::Method,
    path: &str,
    body: &serde_json::Value,
) -> Result<Result<(JobStatus, String), Wait>, Error> {
    let t = match target(ctx, ns, pool, None, Some(storage_uri)).await? {
        Ok(t) => t,
        Err(w) => return Ok(Err(w)),
    };
    Ok(match t.client.start_job(&t.url, method, path, body).await {
        Ok(job) => Ok((job, t.partition)),
        Err(e) if e.is_refusal() => Err((JobReason::JobRejected, e.to_string())),
        Err(e) => Err((JobReason::PoolUnreachable, e.to_string())),
    })
}

/// The store parameters of a destination, reading its credentials Secret.
async fn destination_parameters(
    ctx: &Context,
    ns: &str,
    d: &BackupDestination,
) -> Result<Result<StorageParameters, Wait>, Error> {
    let data = match plan::credentials_secret(d) {
        None => None,
        Some(name) => match Api::<Secret>::namespaced(ctx.client.clone(), ns)
            .get_opt(name)
            .await?
        {
            Some(s) => s.data,
            None => {
                return Ok(Err((
                    JobReason::CredentialsNotFound,
                    format!("the credentials Secret {name} does not exist in this namespace"),
                )));
            }
        },
    };
    Ok(plan::storage_parameters(d, data.as_ref()).map_err(|e| (JobReason::InvalidSpec, e)))
}

/// Requeue delay while waiting with `reason`.
fn wait_delay(reason: JobReason) -> Requeue {
    match reason {
        JobReason::PoolNotFound | JobReason::CredentialsNotFound | JobReason::BackupNotFound => {
            Requeue::requeue(Duration::from_secs(30))
        }
        JobReason::BackupNotReady => Requeue::requeue(Duration::from_secs(5)),
        r if r.is_final() => Requeue::await_change(),
        _ => Requeue::requeue(Duration::from_secs(15)),
    }
}

fn event_type(reason: JobReason) -> EventType {
    if reason.status() == Status::False {
        EventType::Warning
    } else {
        EventType::Normal
    }
}

pub fn error_policy<K: Resource<DynamicType = ()>>(
    controller: &'static str,
) -> impl Fn(Arc<K>, &Error, Arc<Context>) -> Requeue {
    move |obj, error, ctx| {
        ctx.metrics.failure(controller, error.metric_label());
        tracing::warn!(controller, name = %obj.meta().name.clone().unwrap_or_default(), reason = error.metric_label(), error = %error, "reconcile failed");
        Requeue::requeue(Duration::from_secs(15))
    }
}

async fn timed<F: std::future::Future<Output = Result<Requeue, Error>>>(
    ctx: &Context,
    controller: &'static str,
    f: F,
) -> Result<Requeue, Error> {
    let started = Instant::now();
    ctx.metrics.reconcile_started(controller);
    let r = f.await;
    ctx.metrics
        .observe_duration(controller, started.elapsed().as_secs_f64());
    r
}

/// Write a Backup's or Restore's status when it changed; an Event when the reason changed.
async fn record<K, S>(
    ctx: &Context,
    obj: &K,
    old_reason: Option<&str>,
    status: &S,
    reason: JobReason,
    message: &str,
    changed: bool,
) -> Result<(), Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Debug
        + DeserializeOwned,
    S: Serialize,
{
    if !changed {
        return Ok(());
    }
    apply_status(ctx, obj, status).await?;
    if old_reason != Some(reason.as_str()) {
        publish_on(
            ctx,
            &obj.object_ref(&()),
            event_type(reason),
            reason.as_str(),
            if K::kind(&()) == "Restore" {
                "Restore"
            } else {
                "Backup"
            },
            message.to_string(),
        )
        .await;
    }
    Ok(())
}

fn job_start_time(job: &JobStatus) -> Option<Time> {
    plan::time_of(job.start_time)
}

// ---------------------------------------------------------------------------------------
// Backup
// ---------------------------------------------------------------------------------------

fn backup_status(
    prev: &BackupStatus,
    reason: JobReason,
    message: &str,
    generation: Option<i64>,
    now: &Time,
) -> BackupStatus {
    let mut st = prev.clone();
    st.conditions = plan::job_conditions(&prev.conditions, reason, message, generation, now);
    st.phase = Some(reason.backup_phase());
    st.observed_generation = generation;
    if reason.status() == Status::False {
        st.error = Some(message.to_string());
        st.completion_time = st.completion_time.or_else(|| Some(now.clone()));
    }
    st
}

pub async fn reconcile_backup(b: Arc<Backup>, ctx: Arc<Context>) -> Result<Requeue, Error> {
    timed(&ctx, BACKUP_CONTROLLER, async {
        if b.metadata.deletion_timestamp.is_some() {
            return backup_cleanup(&b, &ctx).await;
        }
        backup_apply(&b, &ctx).await
    })
    .await
}

async fn backup_apply(b: &Backup, ctx: &Context) -> Result<Requeue, Error> {
    let ns = b
        .namespace()
        .ok_or_else(|| Error::Internal("Backup without namespace".into()))?;
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
        backup_status(st, reason, msg, generation, &now)
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
    let mut body = serde_json::to_value(&params).map_err(|e| Error::Internal(e.to_string()))?;
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
async fn drop_finalizer<K>(ctx: &Context, obj: &K) -> Result<(), Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Debug
        + DeserializeOwned,
{
    let rest: Vec<String> = obj
        .finalizers()
        .iter()
        .filter(|f| *f != BACKUP_FINALIZER)
        .cloned()
        .collect();
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &obj.namespace().unwrap_or_default());
    api.patch(
        &obj.name_any(),
        &PatchParams::default(),
        &Patch::Merge(
            &json!({"metadata": {"finalizers": rest, "resourceVersion": obj.resource_version()}}),
        ),
    )
    .await?;
    Ok(())
}

/// The finalizer of a scheduled Backup: wait for a running job, delete the folder, let go.
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

// ---------------------------------------------------------------------------------------
// Restore
// ---------------------------------------------------------------------------------------

fn restore_status(
    prev: &RestoreStatus,
    reason: JobReason,
    message: &str,
    generation: Option<i64>,
    now: &Time,
) -> RestoreStatus {
    let mut st = prev.clone();
    st.conditions = plan::job_conditions(&prev.conditions, reason, message, generation, now);
    st.phase = Some(reason.restore_phase());
    st.observed_generation = generation;
    if reason.status() == Status::False {
        st.error = Some(message.to_string());
        st.completion_time = st.completion_time.or_else(|| Some(now.clone()));
    }
    st
}

pub async fn reconcile_restore(r: Arc<Restore>, ctx: Arc<Context>) -> Result<Requeue, Error> {
    timed(&ctx, RESTORE_CONTROLLER, restore_apply(&r, &ctx)).await
}

/// Where a Restore's backup is: the store parameters and the folder URL.
async fn restore_source(
    ctx: &Context,
    ns: &str,
    r: &Restore,
) -> Result<Result<(StorageParameters, String), Wait>, Error> {
    let (destination, folder_url) = match (&r.spec.backup_name, &r.spec.source) {
        (Some(name), _) => {
            let Some(b) = Api::<Backup>::namespaced(ctx.client.clone(), ns)
                .get_opt(name)
                .await?
            else {
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
    let ns = r
        .namespace()
        .ok_or_else(|| Error::Internal("Restore without namespace".into()))?;
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
        restore_status(st, reason, msg, generation, &now)
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
    let sas = serde_json::to_value(&params).map_err(|e| Error::Internal(e.to_string()))?;
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

// ---------------------------------------------------------------------------------------
// BackupSchedule
// ---------------------------------------------------------------------------------------

fn scheduled(b: &Backup) -> ScheduledBackup {
    let st = b.status.clone().unwrap_or_default();
    ScheduledBackup {
        name: b.name_any(),
        phase: st.phase,
        created: b
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0)
            .unwrap_or_else(Timestamp::now),
        completed: st.completion_time.map(|t| t.0),
        scheduled: b
            .annotations()
            .get(SCHEDULED_TIME_ANNOTATION)
            .and_then(|t| t.parse().ok()),
        deleting: b.metadata.deletion_timestamp.is_some(),
    }
}

/// The Backups of `pool` in `ns` (any creator) as the pool's condition needs them.
pub async fn pool_backups(
    ctx: &Context,
    ns: &str,
    pool: &str,
) -> Result<Vec<plan::PoolBackup>, Error> {
    let all = Api::<Backup>::namespaced(ctx.client.clone(), ns)
        .list(&ListParams::default())
        .await?;
    Ok(all
        .items
        .iter()
        .filter(|b| b.spec.hsm_ref.name == pool && b.metadata.deletion_timestamp.is_none())
        .map(pool_backup)
        .collect())
}

fn pool_backup(b: &Backup) -> plan::PoolBackup {
    let st = b.status.clone().unwrap_or_default();
    plan::PoolBackup {
        name: b.name_any(),
        phase: st.phase,
        created: b
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0)
            .unwrap_or_else(Timestamp::now),
        completion_time: st.completion_time,
        location: st.location,
        key_count: st.key_count,
        error: st.error,
    }
}

pub async fn reconcile_schedule(
    s: Arc<BackupSchedule>,
    ctx: Arc<Context>,
) -> Result<Requeue, Error> {
    timed(&ctx, SCHEDULE_CONTROLLER, schedule_apply(&s, &ctx)).await
}

async fn schedule_apply(s: &BackupSchedule, ctx: &Context) -> Result<Requeue, Error> {
    let ns = s
        .namespace()
        .ok_or_else(|| Error::Internal("BackupSchedule without namespace".into()))?;
    let name = s.name_any();
    let uid = s.metadata.uid.clone().unwrap_or_default();
    let now_t = now_time();
    let now = now_t.0;
    let generation = s.metadata.generation;
    let prev = s.status.clone().unwrap_or_default();
    let api: Api<Backup> = Api::namespaced(ctx.client.clone(), &ns);

    let cron = match plan::parse_schedule(&s.spec.schedule) {
        Ok(c) => c,
        Err(msg) => {
            let mut st = prev.clone();
            st.conditions = c::merge_raw(
                &prev.conditions,
                &[(plan::READY, Status::False, "InvalidSchedule", &msg)],
                generation,
                &now_t,
            );
            st.observed_generation = generation;
            st.next_schedule_time = None;
            if s.status.as_ref() != Some(&st) {
                apply_status(ctx, s, &st).await?;
                publish_on(
                    ctx,
                    &s.object_ref(&()),
                    EventType::Warning,
                    "InvalidSchedule",
                    "Schedule",
                    msg,
                )
                .await;
            }
            return Ok(Requeue::await_change());
        }
    };

    let owned: Vec<Backup> = api
        .list(&ListParams::default().labels(&format!("{SCHEDULE_LABEL}={name}")))
        .await?
        .items
        .into_iter()
        .filter(|b| b.owner_references().iter().any(|o| o.uid == uid))
        .collect();
    let infos: Vec<ScheduledBackup> = owned.iter().map(scheduled).collect();
    let created = s
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0)
        .unwrap_or(now);
    let p = plan::plan_schedule(
        &s.spec,
        &cron,
        created,
        prev.last_schedule_time.as_ref().map(|t| t.0),
        &infos,
        now,
    );

    let mut remaining: Vec<&Backup> = owned.iter().collect();
    for victim in &p.delete {
        match api.delete(victim, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
        remaining.retain(|b| &b.name_any() != victim);
        publish_on(
            ctx,
            &s.object_ref(&()),
            EventType::Normal,
            "BackupExpired",
            "Retention",
            format!("deleting Backup {victim} (retention: maxCount {}, maxAgeDays {:?}); its folder is deleted from the store", s.spec.retention.max_count, s.spec.retention.max_age_days),
        )
        .await;
    }
    let mut created_now = None;
    if let Some(at) = p.create {
        let bname = plan::scheduled_backup_name(&name, at);
        let backup = Backup {
            metadata: ObjectMeta {
                name: Some(bname.clone()),
                namespace: Some(ns.clone()),
                labels: Some(BTreeMap::from([
                    (SCHEDULE_LABEL.to_string(), name.clone()),
                    (POOL_LABEL.to_string(), s.spec.hsm_ref.name.clone()),
                    (
                        "app.kubernetes.io/managed-by".to_string(),
                        FIELD_MANAGER.to_string(),
                    ),
                ])),
                annotations: Some(BTreeMap::from([(
                    SCHEDULED_TIME_ANNOTATION.to_string(),
                    at.to_string(),
                )])),
                owner_references: s.controller_owner_ref(&()).map(|o| vec![o]),
                finalizers: Some(vec![BACKUP_FINALIZER.to_string()]),
                ..ObjectMeta::default()
            },
            spec: BackupSpec {
                hsm_ref: s.spec.hsm_ref.clone(),
                key_name: s.spec.key_name.clone(),
                destination: s.spec.destination.clone(),
            },
            status: None,
        };
        match api.create(&PostParams::default(), &backup).await {
            Ok(_) => {
                publish_on(
                    ctx,
                    &s.object_ref(&()),
                    EventType::Normal,
                    "BackupCreated",
                    "Schedule",
                    format!("created Backup {bname} for {at}"),
                )
                .await;
            }
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
        created_now = Some(bname);
    }

    // Status.
    let pool_view: Vec<plan::PoolBackup> = remaining.iter().map(|b| pool_backup(b)).collect();
    let (last_cond, last_ok) = plan::last_backup(&pool_view);
    let (ready_reason, ready_msg) = if s.spec.suspend {
        (
            "Suspended",
            "suspended: no new backups; retention still applies".to_string(),
        )
    } else if let Some(w) = &p.waiting_for {
        (
            "Scheduled",
            format!("a run is due and waits for Backup {w} to finish"),
        )
    } else {
        (
            "Scheduled",
            format!(
                "next backup at {}",
                p.next_schedule_time
                    .map(|t| t.to_string())
                    .unwrap_or_else(|| "never".into())
            ),
        )
    };
    let mut st: BackupScheduleStatus = prev.clone();
    st.conditions = c::merge_raw(
        &prev.conditions,
        &[
            (plan::READY, Status::True, ready_reason, &ready_msg),
            (
                last_cond.type_,
                last_cond.status,
                last_cond.reason.as_str(),
                &last_cond.message,
            ),
        ],
        generation,
        &now_t,
    );
    st.observed_generation = generation;
    st.last_schedule_time = p.last_schedule_time.map(Time);
    st.next_schedule_time = p.next_schedule_time.map(Time);
    st.last_successful_backup = last_ok.map(|r| r.name);
    st.backups = Some((remaining.len() + usize::from(created_now.is_some())) as i32);
    if s.status.as_ref() != Some(&st) {
        apply_status(ctx, s, &st).await?;
    }
    Ok(Requeue::requeue(p.requeue_after))
}
