//! The steps every job controller (Backup, Restore, and a scheduled Backup's cleanup) takes
//! the same way: find the pool and connect to one of its Ready partitions, start a job, poll
//! it, read a destination's credentials, and record a status with its Event.
//!
//! A Backup or Restore starts one job on one Ready partition and records the job id and the
//! partition in its status before anything else, so an operator restart resumes polling
//! instead of starting a second job. Job status lives in that partition's memory: if it
//! restarts, the job is reported lost (`JobLost`, final) rather than retried, because the
//! job may have finished and a retry would make a second backup or restore.

use super::plan::{self, JobOutcome, JobReason};
use crate::conditions::{self as c, Status};
use crate::context::{At, Context, Error, Namespaced, apply_status, publish_on};
use crate::crd::BackupDestination;
use crate::pool::client::{JobPath, PoolClient};
use crate::pool::names::Names;
use crate::pool::reach::{ca_bundle, connect};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use keystead_core::backup_job::JobStatus;
use keystead_core::store::StorageParameters;
use kube::Api;
use kube::runtime::controller::Action as Requeue;
use kube::runtime::events::EventType;
use serde::Serialize;
use std::time::Duration;

/// How often a running job is polled.
pub const POLL: Duration = Duration::from_secs(2);

/// A pool ready for a job: one Ready partition's URL and a client with the operator's token.
pub struct Target {
    pub partition: String,
    pub url: String,
    pub client: PoolClient,
}

/// Why no job can be started or polled now (reason and message for the condition).
pub type Wait = (JobReason, String);

/// Dereference the pool and connect to `partition` (or, when `None`, its first Ready one).
/// `storage_uri`, when given, is the store the job will use: a claim the pool does not
/// mount makes it wait.
pub async fn target(
    ctx: &Context,
    ns: &str,
    pool: &str,
    partition: Option<&str>,
    storage_uri: Option<&str>,
) -> Result<Result<Target, Wait>, Error> {
    let Some(hsm) = ctx.hsm(ns, pool).await? else {
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
    let names = Names::of(&hsm).at("naming the pool's objects")?;
    let ca = ca_bundle(&ctx.client, &names)
        .await
        .at(format!("reading the CA bundle {}", names.ca_bundle))?;
    let Some(ca) = ca else {
        return Ok(Err((
            JobReason::PoolNotReady,
            format!("the CA bundle {} does not exist yet", names.ca_bundle),
        )));
    };
    // The partition's pod IP (TLS still verifies its DNS name; see docs/operator.md).
    let pod = ctx.pod(ns, &partition).await?;
    match connect(&ctx.tokens, &hsm, &names, &ca, &[pod]).await {
        Ok(client) => Ok(Ok(Target {
            url: names.partition_url(&partition),
            partition,
            client,
        })),
        Err(e) => Ok(Err((JobReason::PoolUnreachable, e))),
    }
}

/// What polling a started job found.
pub enum Poll {
    /// Still running (or the partition cannot be asked now): keep Running with this message.
    Running(String, Requeue),
    /// Finished successfully.
    Succeeded(Box<JobStatus>),
    /// Finished unsuccessfully, or lost: final.
    Failed(JobReason, String, Option<Time>),
}

/// Poll job `job_id` on the partition that took it; `lost` is the message if that partition
/// no longer knows the job.
pub async fn poll_job(
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
pub async fn start_job(
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
pub async fn destination_parameters(
    ctx: &Context,
    ns: &str,
    d: &BackupDestination,
) -> Result<Result<StorageParameters, Wait>, Error> {
    let data = match plan::credentials_secret(d) {
        None => None,
        Some(name) => match Api::<Secret>::namespaced(ctx.client.clone(), ns)
            .get_opt(name)
            .await
            .at(format!("reading the credentials Secret {name}"))?
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
pub fn wait_delay(reason: JobReason) -> Requeue {
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

/// Write a Backup's or Restore's status when it changed; an Event when the reason changed.
pub async fn record<K, S>(
    ctx: &Context,
    obj: &K,
    old_reason: Option<&str>,
    status: &S,
    reason: JobReason,
    message: &str,
    changed: bool,
) -> Result<(), Error>
where
    K: Namespaced,
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

pub fn job_start_time(job: &JobStatus) -> Option<Time> {
    plan::time_of(job.start_time)
}

/// The fields a job condition sets in the status of a Backup or a Restore.
pub trait JobStatusFields: Clone {
    fn set_phase(&mut self, reason: JobReason);
    fn fields(
        &mut self,
    ) -> (
        &mut Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>,
        &mut Option<i64>,
        &mut Option<String>,
        &mut Option<Time>,
    );
}

impl JobStatusFields for crate::crd::BackupStatus {
    fn set_phase(&mut self, reason: JobReason) {
        self.phase = Some(reason.backup_phase());
    }
    fn fields(
        &mut self,
    ) -> (
        &mut Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>,
        &mut Option<i64>,
        &mut Option<String>,
        &mut Option<Time>,
    ) {
        (
            &mut self.conditions,
            &mut self.observed_generation,
            &mut self.error,
            &mut self.completion_time,
        )
    }
}

impl JobStatusFields for crate::crd::RestoreStatus {
    fn set_phase(&mut self, reason: JobReason) {
        self.phase = Some(reason.restore_phase());
    }
    fn fields(
        &mut self,
    ) -> (
        &mut Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>,
        &mut Option<i64>,
        &mut Option<String>,
        &mut Option<Time>,
    ) {
        (
            &mut self.conditions,
            &mut self.observed_generation,
            &mut self.error,
            &mut self.completion_time,
        )
    }
}

/// `prev` with the job condition of `reason` and `message`: the phase, the generation
/// observed, and for a final failure the error and the completion time.
pub fn job_status<S: JobStatusFields>(
    prev: &S,
    reason: JobReason,
    message: &str,
    generation: Option<i64>,
    now: &Time,
) -> S {
    let mut st = prev.clone();
    st.set_phase(reason);
    let (conditions, observed, error, completion) = st.fields();
    *conditions = plan::job_conditions(conditions, reason, message, generation, now);
    *observed = generation;
    if reason.status() == Status::False {
        *error = Some(message.to_string());
        *completion = completion.take().or_else(|| Some(now.clone()));
    }
    st
}
