//! The pure plan of the Backup, BackupSchedule and Restore controllers, one face for its
//! parts: `destination` (destination → store parameters, backup claims), `job` (job status →
//! conditions), `schedule` (the schedule and retention decision) and `last_backup` (the
//! pool's `LastBackupSucceeded`). Nothing here talks to an API; the labels and annotations
//! the controllers put on Backups are here too.

mod destination;
mod job;
mod last_backup;
mod schedule;

pub use destination::*;
pub use job::*;
pub use last_backup::*;
pub use schedule::*;

use crate::conditions as c;
use crate::crd::Backup;
use k8s_openapi::jiff::Timestamp;

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

/// When a Backup was created (now, for one not created yet).
fn created(b: &Backup) -> Timestamp {
    b.metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0)
        .unwrap_or_else(Timestamp::now)
}
