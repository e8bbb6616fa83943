//! Pure steps of the Backup, BackupSchedule and Restore controllers: destination → store
//! parameters, job body → status, the schedule and retention decision (with the current time
//! as a parameter, so it is tested with a controlled clock), and the pool's
//! `LastBackupSucceeded` condition. Nothing here talks to an API.

use crate::conditions::{self as c, Status};
use crate::crd::{
    BackupDestination, BackupPhase, BackupReference, BackupScheduleSpec, BackupVolume,
    RestorePhase, RetentionSpec,
};
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use k8s_openapi::ByteString;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::tz::TimeZone;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use keystead_core::backup_job::{JobState, JobStatus};
use keystead_core::store::StorageParameters;
use std::collections::BTreeMap;
use std::time::Duration;

/// Finalizer on every Backup a schedule creates: its folder is deleted from the store
/// before the object goes away.
pub const BACKUP_FINALIZER: &str = "keystead.io/backup-folder";
/// Label on a scheduled Backup: the schedule's name.
pub const SCHEDULE_LABEL: &str = "keystead.io/backup-schedule";
/// Label on a scheduled Backup: the pool's name.
pub const POOL_LABEL: &str = "keystead.io/pool";
/// Annotation on a scheduled Backup: the cron time it was made for (RFC 3339).
pub const SCHEDULED_TIME_ANNOTATION: &str = "keystead.io/scheduled-time";
/// Annotation a user sets on a Backup to keep its folder when the object is deleted.
pub const KEEP_FOLDER_ANNOTATION: &str = "keystead.io/keep-backup-folder";

/// The condition of a Backup or Restore (its phase is derived from it).
pub const SUCCEEDED: &str = "Succeeded";
/// The schedule's own condition.
pub const READY: &str = c::READY;

// ---------------------------------------------------------------------------------------
// Destinations
// ---------------------------------------------------------------------------------------

/// The Secret holding a destination's credentials (none for `filesystem`).
pub fn credentials_secret(d: &BackupDestination) -> Option<&str> {
    if let Some(s3) = &d.s3 {
        return Some(&s3.credentials.name);
    }
    if let Some(a) = &d.azure_blob {
        return Some(&a.credentials.name);
    }
    d.gcs.as_ref().map(|g| g.credentials.name.as_str())
}

fn clean_prefix(p: Option<&str>) -> Result<String, String> {
    let p = p.unwrap_or_default().trim().trim_matches('/');
    if p.split('/').any(|s| s == ".." || s == ".") {
        return Err(format!(
            "the prefix or path '{p}' may not contain '.' or '..' segments"
        ));
    }
    Ok(p.to_string())
}

fn join(base: &str, prefix: &str) -> String {
    let base = base.trim_end_matches('/');
    if prefix.is_empty() {
        base.to_string()
    } else {
        format!("{base}/{prefix}")
    }
}

fn secret_value(
    data: Option<&BTreeMap<String, ByteString>>,
    key: &str,
) -> Result<Option<String>, String> {
    match data.and_then(|d| d.get(key)) {
        None => Ok(None),
        Some(b) => String::from_utf8(b.0.clone())
            .map(|s| Some(s.trim().to_string()))
            .map_err(|_| format!("the Secret's key {key} is not UTF-8 text")),
    }
}

/// The store URI of a destination: the parent of its backup folders, as the partition is
/// given it. A `filesystem` destination is `pvc://<claimName>/<path>`, which the partitions
/// resolve to where they mount the claim. It holds no credential.
pub fn destination_uri(d: &BackupDestination) -> Result<String, String> {
    if let Some(f) = &d.filesystem {
        let claim = clean_prefix(Some(&f.claim_name))?;
        if claim.is_empty() || claim.contains('/') {
            return Err(format!(
                "claimName '{}' is not a PersistentVolumeClaim name",
                f.claim_name
            ));
        }
        let path = clean_prefix(f.path.as_deref())?;
        Ok(join(&format!("pvc://{claim}"), &path))
    } else if let Some(s3) = &d.s3 {
        Ok(join(
            &format!("s3://{}", s3.bucket),
            &clean_prefix(s3.prefix.as_deref())?,
        ))
    } else if let Some(a) = &d.azure_blob {
        Ok(join(&a.container_uri, &clean_prefix(a.prefix.as_deref())?))
    } else if let Some(g) = &d.gcs {
        Ok(join(
            &format!("gs://{}", g.bucket),
            &clean_prefix(g.prefix.as_deref())?,
        ))
    } else {
        Err("the destination names no store; set one of filesystem, s3, azureBlob, gcs".into())
    }
}

/// The store parameters the partition (and the operator, to delete folders) opens for a
/// destination: [`destination_uri`] and the credentials from `secret`, the data of
/// [`credentials_secret`]. Errors say what is wrong with the spec or the Secret; values
/// never appear.
pub fn storage_parameters(
    d: &BackupDestination,
    secret: Option<&BTreeMap<String, ByteString>>,
) -> Result<StorageParameters, String> {
    let mut p = StorageParameters {
        storage_resource_uri: destination_uri(d)?,
        ..StorageParameters::default()
    };
    let need = |key: &str, name: &str| -> Result<String, String> {
        secret_value(secret, key)?
            .filter(|v| !v.is_empty())
            .ok_or_else(|| format!("the Secret {name} has no key {key}"))
    };
    if let Some(s3) = &d.s3 {
        let name = &s3.credentials.name;
        let o = &mut p.storage_options;
        o.insert("aws_access_key_id".into(), need("AWS_ACCESS_KEY_ID", name)?);
        o.insert(
            "aws_secret_access_key".into(),
            need("AWS_SECRET_ACCESS_KEY", name)?,
        );
        if let Some(t) = secret_value(secret, "AWS_SESSION_TOKEN")? {
            o.insert("aws_session_token".into(), t);
        }
        if let Some(e) = &s3.endpoint {
            if !(e.starts_with("https://") || e.starts_with("http://")) {
                return Err(format!("the S3 endpoint '{e}' is not an http(s) URL"));
            }
            o.insert("aws_endpoint".into(), e.clone());
            if e.starts_with("http://") {
                o.insert("aws_allow_http".into(), "true".into());
            }
        }
        o.insert(
            "aws_region".into(),
            s3.region.clone().unwrap_or_else(|| "us-east-1".into()),
        );
    } else if let Some(a) = &d.azure_blob {
        let name = &a.credentials.name;
        match (
            secret_value(secret, "sasToken")?.filter(|v| !v.is_empty()),
            secret_value(secret, "accountKey")?.filter(|v| !v.is_empty()),
        ) {
            (Some(sas), _) => p.token = Some(sas),
            (None, Some(key)) => {
                p.storage_options
                    .insert("azure_storage_account_key".into(), key);
            }
            (None, None) => {
                return Err(format!(
                    "the Secret {name} has neither sasToken nor accountKey"
                ));
            }
        }
    } else if let Some(g) = &d.gcs {
        p.storage_options.insert(
            "google_service_account_key".into(),
            need("service-account.json", &g.credentials.name)?,
        );
    }
    Ok(p)
}

/// What the operator sees of a claim listed in `spec.backupVolumes`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimState {
    pub name: String,
    /// `None`: the claim does not exist.
    pub found: Option<ClaimFound>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimFound {
    /// `status.phase` (`Pending`, `Bound`, `Lost`).
    pub phase: Option<String>,
    /// `spec.accessModes`.
    pub access_modes: Vec<String>,
}

/// `BackupVolumesReady` of a pool listing `claims` in `spec.backupVolumes` (`None` when it
/// lists none: no condition). Every partition mounts every claim, on different nodes, so a
/// claim must exist, be Bound and be ReadWriteMany.
pub fn backup_volumes_condition(claims: &[ClaimState]) -> Option<c::Cond> {
    if claims.is_empty() {
        return None;
    }
    let missing: Vec<&str> = claims
        .iter()
        .filter(|c| c.found.is_none())
        .map(|c| c.name.as_str())
        .collect();
    let found = || {
        claims
            .iter()
            .filter_map(|c| Some((c.name.as_str(), c.found.as_ref()?)))
    };
    let not_shared: Vec<&str> = found()
        .filter(|(_, f)| !f.access_modes.iter().any(|m| m == "ReadWriteMany"))
        .map(|(n, _)| n)
        .collect();
    let not_bound: Vec<&str> = found()
        .filter(|(_, f)| f.phase.as_deref() != Some("Bound"))
        .map(|(n, _)| n)
        .collect();
    let cond = |reason, msg: String| {
        Some(c::Cond::new(
            c::BACKUP_VOLUMES_READY,
            Status::False,
            reason,
            msg,
        ))
    };
    if !missing.is_empty() {
        return cond(
            c::Reason::VolumeMissing,
            format!(
                "the PersistentVolumeClaim(s) {} of spec.backupVolumes do not exist in this namespace; partitions that mount them cannot start: create them (ReadWriteMany) or remove them from spec.backupVolumes",
                missing.join(", ")
            ),
        );
    }
    if !not_shared.is_empty() {
        return cond(
            c::Reason::VolumeNotShared,
            format!(
                "the PersistentVolumeClaim(s) {} are not ReadWriteMany; the three partitions run on different nodes and all mount them, so partitions may not start: use ReadWriteMany claims",
                not_shared.join(", ")
            ),
        );
    }
    if !not_bound.is_empty() {
        return cond(
            c::Reason::VolumeNotBound,
            format!(
                "the PersistentVolumeClaim(s) {} are not Bound yet",
                not_bound.join(", ")
            ),
        );
    }
    let names: Vec<&str> = claims.iter().map(|c| c.name.as_str()).collect();
    Some(c::Cond::new(
        c::BACKUP_VOLUMES_READY,
        Status::True,
        c::Reason::VolumesBound,
        format!(
            "{} mounted in every partition for filesystem backups",
            names.join(", ")
        ),
    ))
}

/// Why a job on `uri` cannot start on pool `pool` (spec `backup_volumes`) now: its claim is
/// not one the pool mounts.
pub fn claim_not_mounted(uri: &str, pool: &str, backup_volumes: &[BackupVolume]) -> Option<String> {
    let claim = keystead_core::store::claim_of(uri)?;
    (!backup_volumes.iter().any(|v| v.claim_name == claim)).then(|| {
        format!(
            "the PersistentVolumeClaim {claim} is not mounted in the partitions of {pool}: add {{claimName: {claim}}} to the ManagedHsm's spec.backupVolumes (the partitions roll one at a time); waiting"
        )
    })
}

// ---------------------------------------------------------------------------------------
// Backup and Restore conditions
// ---------------------------------------------------------------------------------------

/// Every reason of the `Succeeded` condition of a Backup or a Restore.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobReason {
    // Unknown, phase Pending: waiting, retried.
    PoolNotFound,
    PoolNotReady,
    PoolUnreachable,
    CredentialsNotFound,
    BackupNotFound,
    BackupNotReady,
    // Unknown, phase Running.
    JobRunning,
    // True.
    BackupSucceeded,
    RestoreSucceeded,
    // False, phase Failed: final.
    InvalidSpec,
    SourceBackupFailed,
    JobRejected,
    JobFailed,
    SecurityDomainMismatch,
    JobLost,
}

impl JobReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PoolNotFound => "PoolNotFound",
            Self::PoolNotReady => "PoolNotReady",
            Self::PoolUnreachable => "PoolUnreachable",
            Self::CredentialsNotFound => "CredentialsNotFound",
            Self::BackupNotFound => "BackupNotFound",
            Self::BackupNotReady => "BackupNotReady",
            Self::JobRunning => "JobRunning",
            Self::BackupSucceeded => "BackupSucceeded",
            Self::RestoreSucceeded => "RestoreSucceeded",
            Self::InvalidSpec => "InvalidSpec",
            Self::SourceBackupFailed => "SourceBackupFailed",
            Self::JobRejected => "JobRejected",
            Self::JobFailed => "JobFailed",
            Self::SecurityDomainMismatch => "SecurityDomainMismatch",
            Self::JobLost => "JobLost",
        }
    }

    pub fn status(self) -> Status {
        match self {
            Self::BackupSucceeded | Self::RestoreSucceeded => Status::True,
            Self::InvalidSpec
            | Self::SourceBackupFailed
            | Self::JobRejected
            | Self::JobFailed
            | Self::SecurityDomainMismatch
            | Self::JobLost => Status::False,
            _ => Status::Unknown,
        }
    }

    /// The phase of a Backup with this reason.
    pub fn backup_phase(self) -> BackupPhase {
        match (self.status(), self) {
            (Status::True, _) => BackupPhase::Succeeded,
            (Status::False, _) => BackupPhase::Failed,
            (_, Self::JobRunning) => BackupPhase::Running,
            _ => BackupPhase::Pending,
        }
    }

    /// The phase of a Restore with this reason.
    pub fn restore_phase(self) -> RestorePhase {
        match self.backup_phase() {
            BackupPhase::Pending => RestorePhase::Pending,
            BackupPhase::Running => RestorePhase::Running,
            BackupPhase::Succeeded => RestorePhase::Succeeded,
            BackupPhase::Failed => RestorePhase::Failed,
        }
    }

    /// A final reason: the controller does nothing more.
    pub fn is_final(self) -> bool {
        self.status() != Status::Unknown
    }
}

/// The conditions of a Backup or Restore with `reason` (keeps `lastTransitionTime`).
pub fn job_conditions(
    existing: &[Condition],
    reason: JobReason,
    message: &str,
    generation: Option<i64>,
    now: &Time,
) -> Vec<Condition> {
    c::merge_raw(
        existing,
        &[(SUCCEEDED, reason.status(), reason.as_str(), message)],
        generation,
        now,
    )
}

/// The reason of the `Succeeded` condition, read back.
pub fn reason_of(conditions: &[Condition]) -> Option<&str> {
    c::find(conditions, SUCCEEDED).map(|c| c.reason.as_str())
}

/// What a job body says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobOutcome {
    Running,
    Succeeded,
    Failed { reason: JobReason, message: String },
}

/// Interpret a job body (`…/pending`).
pub fn job_outcome(job: &JobStatus) -> JobOutcome {
    match job.status {
        JobState::InProgress => JobOutcome::Running,
        JobState::Succeeded => JobOutcome::Succeeded,
        JobState::Failed => {
            let (code, msg) = job
                .error
                .as_ref()
                .map(|e| (e.code.as_str(), e.message.as_str()))
                .unwrap_or(("Unknown", job.status_details.as_deref().unwrap_or("")));
            let reason = if code == "SecurityDomainMismatch" {
                JobReason::SecurityDomainMismatch
            } else {
                JobReason::JobFailed
            };
            JobOutcome::Failed {
                reason,
                message: format!("{code}: {msg}"),
            }
        }
    }
}

/// A job whose status its partition no longer has (it restarted), for [`job_lost_message`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LostJob<'a> {
    /// A backup to the store URI `destination` (when the spec still yields it), into
    /// `folder` (the folder URL the partition named when the job started, if recorded).
    Backup {
        destination: Option<&'a str>,
        folder: Option<&'a str>,
    },
    Restore,
}

/// The message of a `JobLost` Backup or Restore: what happened and what to do. `started`
/// is the job's start time as recorded in the status.
pub fn job_lost_message(
    job: LostJob,
    job_id: &str,
    partition: &str,
    started: Option<&Time>,
) -> String {
    let kind = match job {
        LostJob::Backup { .. } => "backup",
        LostJob::Restore => "restore",
    };
    let head = format!(
        "partition {partition} restarted and no longer knows {kind} job {job_id} (job status lives only in the memory of the partition that ran it), so the outcome is unknown; this object is final."
    );
    let since = started
        .map(|t| format!(" started at or after {}", t.0))
        .unwrap_or_default();
    match job {
        LostJob::Backup {
            destination,
            folder,
        } => {
            let look = match destination {
                // A claim is read where it is mounted (`kubectl hsm backup list` reads stores
                // from the machine it runs on).
                Some(d) if d.starts_with("pvc://") => {
                    format!("look at the folders under {d} (the claim as the partitions mount it)")
                }
                Some(d) => format!("`kubectl hsm backup list {d}` shows it"),
                None => "`kubectl hsm backup list <destination>` shows it".into(),
            };
            let folder = folder
                .map(|f| format!(" This job's folder is {f}."))
                .unwrap_or_default();
            format!(
                "{head} The job may have written its backup: {look}. A folder of this pool{since} with manifest.json is complete and can be restored by a Restore naming it in spec.source; one without manifest.json is incomplete, never restored, and can be deleted. To back up again, create a new Backup.{folder}"
            )
        }
        LostJob::Restore => format!(
            "{head} A restore commits all at once or not at all: check the pool's keys to see whether it took effect (a full restore that committed also wrote a restore point{since} next to the backup). To run it again, create a new Restore."
        ),
    }
}

/// Second-precision `Time` of Unix seconds.
pub fn time_of(unix: i64) -> Option<Time> {
    Timestamp::from_second(unix).ok().map(Time)
}

// ---------------------------------------------------------------------------------------
// Schedule and retention
// ---------------------------------------------------------------------------------------

/// Parse a standard 5-field cron expression (minute hour day-of-month month day-of-week,
/// UTC). Seconds-first and year fields are refused.
pub fn parse_schedule(expr: &str) -> Result<Cron, String> {
    if expr.split_whitespace().count() != 5 {
        return Err(format!(
            "schedule '{expr}' must have exactly five fields (minute hour day-of-month month day-of-week), e.g. '0 2 * * *'"
        ));
    }
    CronParser::builder()
        .seconds(Seconds::Disallowed)
        .year(Year::Disallowed)
        .build()
        .parse(expr)
        .map_err(|e| format!("schedule '{expr}' is not a valid cron expression: {e}"))
}

fn next_after(cron: &Cron, t: Timestamp) -> Option<Timestamp> {
    cron.find_next_occurrence(&t.to_zoned(TimeZone::UTC), false)
        .ok()
        .map(|z| z.timestamp())
}

fn latest_at_or_before(cron: &Cron, t: Timestamp) -> Option<Timestamp> {
    cron.find_previous_occurrence(&t.to_zoned(TimeZone::UTC), true)
        .ok()
        .map(|z| z.timestamp())
}

/// What the schedule controller knows about one of its Backups.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScheduledBackup {
    pub name: String,
    pub phase: Option<BackupPhase>,
    pub created: Timestamp,
    pub completed: Option<Timestamp>,
    /// The cron time it was made for (annotation).
    pub scheduled: Option<Timestamp>,
    /// Already being deleted (finalizer running).
    pub deleting: bool,
}

impl ScheduledBackup {
    fn active(&self) -> bool {
        !self.deleting
            && !matches!(
                self.phase,
                Some(BackupPhase::Succeeded) | Some(BackupPhase::Failed)
            )
    }
    fn time(&self) -> Timestamp {
        self.completed.unwrap_or(self.created)
    }
}

/// The decision of one schedule reconcile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SchedulePlan {
    /// Create a Backup for this scheduled time now.
    pub create: Option<Timestamp>,
    /// A run is due but this Backup of the schedule is still running: the run waits for it
    /// (one at a time; missed runs collapse into one).
    pub waiting_for: Option<String>,
    /// Expired Backups to delete (their finalizer deletes the folders).
    pub delete: Vec<String>,
    pub last_schedule_time: Option<Timestamp>,
    pub next_schedule_time: Option<Timestamp>,
    pub requeue_after: Duration,
}

/// The longest a schedule sleeps (age-based retention is re-checked at least this often).
pub const MAX_SCHEDULE_SLEEP: Duration = Duration::from_secs(3600);

/// Decide one reconcile of a schedule at time `now`.
///
/// - A run is due at the latest cron time in `(last, now]`, where `last` is the last
///   scheduled time (status, or the newest Backup's annotation if the status was lost), or
///   the schedule's creation when it never ran. Runs missed while the operator was down,
///   while suspended, or while a backup ran collapse into that one run.
/// - `immediate`: the first run happens at once (when nothing ran yet).
/// - `suspend`: nothing is created and there is no next time; retention still applies.
/// - One backup at a time: a due run waits while a Backup of the schedule is not finished.
pub fn plan_schedule(
    spec: &BackupScheduleSpec,
    cron: &Cron,
    created: Timestamp,
    last_in_status: Option<Timestamp>,
    backups: &[ScheduledBackup],
    now: Timestamp,
) -> SchedulePlan {
    let last = backups
        .iter()
        .filter_map(|b| b.scheduled)
        .chain(last_in_status)
        .max();
    let due = if spec.suspend {
        None
    } else if last.is_none() && spec.immediate {
        Some(now)
    } else {
        let from = last.unwrap_or(created);
        latest_at_or_before(cron, now).filter(|t| *t > from)
    };
    let active = backups.iter().find(|b| b.active()).map(|b| b.name.clone());
    let (create, waiting_for) = match (due, active) {
        (Some(t), None) => (Some(t), None),
        (Some(_), Some(name)) => (None, Some(name)),
        (None, _) => (None, None),
    };
    let next = if spec.suspend {
        None
    } else {
        next_after(cron, now)
    };
    let mut requeue = next
        .map(|n| {
            let s = n.duration_since(now).as_secs().max(1);
            Duration::from_secs(s as u64)
        })
        .unwrap_or(MAX_SCHEDULE_SLEEP)
        .min(MAX_SCHEDULE_SLEEP);
    if waiting_for.is_some() || create.is_some() {
        requeue = requeue.min(Duration::from_secs(10));
    }
    SchedulePlan {
        create,
        waiting_for,
        delete: expired(backups, &spec.retention, now),
        last_schedule_time: create.or(last),
        next_schedule_time: next,
        requeue_after: requeue,
    }
}

/// The Backups that retention deletes at time `now`:
///
/// - never a Backup that is pending or running, nor one already being deleted;
/// - successful ones: beyond the newest `maxCount`, or older than `maxAgeDays` — but never
///   the newest successful one (a schedule always keeps one good backup);
/// - failed ones: those older than the newest successful one, those beyond the newest
///   `maxCount` failures, and those older than `maxAgeDays`.
///
/// Age is measured from the completion time (the creation time if none is recorded).
pub fn expired(
    backups: &[ScheduledBackup],
    retention: &RetentionSpec,
    now: Timestamp,
) -> Vec<String> {
    let max_count = retention.max_count.max(1) as usize;
    let too_old = |b: &ScheduledBackup| {
        retention.max_age_days.is_some_and(|d| {
            now.duration_since(b.time()) > SignedDuration::from_hours(24 * i64::from(d.max(1)))
        })
    };
    let newest_first = |phase: BackupPhase| {
        let mut v: Vec<&ScheduledBackup> = backups
            .iter()
            .filter(|b| !b.deleting && b.phase.as_ref() == Some(&phase))
            .collect();
        v.sort_by(|a, b| b.time().cmp(&a.time()).then_with(|| b.name.cmp(&a.name)));
        v
    };
    let ok = newest_first(BackupPhase::Succeeded);
    let failed = newest_first(BackupPhase::Failed);
    let newest_ok = ok.first().map(|b| b.time());
    let mut out = Vec::new();
    for (i, b) in ok.iter().enumerate() {
        if i > 0 && (i >= max_count || too_old(b)) {
            out.push(b.name.clone());
        }
    }
    for (i, b) in failed.iter().enumerate() {
        if i >= max_count || too_old(b) || newest_ok.is_some_and(|t| b.time() < t) {
            out.push(b.name.clone());
        }
    }
    out.sort();
    out
}

/// Name of the Backup a schedule creates for scheduled time `t`: `<schedule>-<YYYYMMDDHHMM>`
/// (deterministic, so a retried create after a crash finds the first one).
pub fn scheduled_backup_name(schedule: &str, t: Timestamp) -> String {
    let z = t.to_zoned(TimeZone::UTC);
    let stem: String = schedule.chars().take(253 - 13).collect();
    format!(
        "{stem}-{:04}{:02}{:02}{:02}{:02}",
        z.year(),
        z.month(),
        z.day(),
        z.hour(),
        z.minute()
    )
}

// ---------------------------------------------------------------------------------------
// The pool's LastBackupSucceeded
// ---------------------------------------------------------------------------------------

/// What the pool's condition needs from one Backup of the pool.
#[derive(Clone, Debug, PartialEq)]
pub struct PoolBackup {
    pub name: String,
    pub phase: Option<BackupPhase>,
    pub created: Timestamp,
    pub completion_time: Option<Time>,
    pub location: Option<String>,
    pub key_count: Option<i64>,
    pub error: Option<String>,
}

/// `LastBackupSucceeded` of a pool from its Backups: the newest finished one decides
/// (running ones do not change it), and `lastBackup` is the newest successful one.
pub fn last_backup(backups: &[PoolBackup]) -> (c::Cond, Option<BackupReference>) {
    let finished_at = |b: &PoolBackup| b.completion_time.as_ref().map(|t| t.0).unwrap_or(b.created);
    let mut done: Vec<&PoolBackup> = backups
        .iter()
        .filter(|b| {
            matches!(
                b.phase,
                Some(BackupPhase::Succeeded) | Some(BackupPhase::Failed)
            )
        })
        .collect();
    done.sort_by(|a, b| {
        finished_at(b)
            .cmp(&finished_at(a))
            .then_with(|| b.name.cmp(&a.name))
    });
    let reference = done
        .iter()
        .find(|b| b.phase == Some(BackupPhase::Succeeded))
        .map(|b| BackupReference {
            name: b.name.clone(),
            location: b.location.clone(),
            completion_time: b.completion_time.clone(),
        });
    let cond = match done.first() {
        None => c::Cond::new(
            c::LAST_BACKUP_SUCCEEDED,
            Status::Unknown,
            c::Reason::NoBackupYet,
            "no backup of this pool has finished",
        ),
        Some(b) if b.phase == Some(BackupPhase::Succeeded) => c::Cond::new(
            c::LAST_BACKUP_SUCCEEDED,
            Status::True,
            c::Reason::BackupSucceeded,
            format!(
                "Backup {} succeeded ({} keys) at {}",
                b.name,
                b.key_count.unwrap_or(0),
                b.location.as_deref().unwrap_or("an unknown location")
            ),
        ),
        Some(b) => c::Cond::new(
            c::LAST_BACKUP_SUCCEEDED,
            Status::False,
            c::Reason::BackupFailed,
            format!(
                "Backup {} failed: {}",
                b.name,
                b.error.as_deref().unwrap_or("no error recorded")
            ),
        ),
    };
    (cond, reference)
}
