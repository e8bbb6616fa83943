//! A Backup's or Restore's job as its conditions say it: the reasons (each with its phase
//! and whether it is final), the conditions, what a job's status means, and the message of a
//! job lost with its partition. Pure functions only.

use super::SUCCEEDED;
use crate::conditions::{self as c, Status};
use crate::crd::{BackupPhase, RestorePhase};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use keystead_core::backup_job::{JobState, JobStatus};

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
