//! The Backup, Restore and BackupSchedule controllers (`take`, `restore`, `schedule`), the
//! steps they share to run a job on a pool (`jobs`), and their pure plan (`plan/`). They use
//! `pool` and `context`, never the ManagedHsm controller; the ManagedHsm controller reads
//! `plan` for its backup conditions.

pub mod jobs;
pub mod plan;
pub mod restore;
pub mod schedule;
pub mod take;
