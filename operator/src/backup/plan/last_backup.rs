//! A pool's `LastBackupSucceeded` condition and `lastBackup` from its Backups (the
//! ManagedHsm and BackupSchedule statuses both report them). Pure functions only.

use super::created;
use crate::conditions::{self as c, Status};
use crate::crd::{Backup, BackupPhase, BackupReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

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

impl PoolBackup {
    pub fn of(b: &Backup) -> Self {
        let st = b.status.clone().unwrap_or_default();
        Self {
            name: b.name_any(),
            phase: st.phase,
            created: created(b),
            completion_time: st.completion_time,
            location: st.location,
            key_count: st.key_count,
            error: st.error,
        }
    }
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
