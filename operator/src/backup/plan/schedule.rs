//! The BackupSchedule decision: the cron expression, which run is due, which Backups
//! expired under the retention, and how long to sleep — with the current time as a
//! parameter, so it is tested with a controlled clock. Pure functions only.

use super::{SCHEDULED_TIME_ANNOTATION, created};
use crate::crd::{Backup, BackupPhase, BackupScheduleSpec, RetentionSpec};
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use k8s_openapi::jiff::tz::TimeZone;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::ResourceExt;
use std::time::Duration;

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
    pub fn of(b: &Backup) -> Self {
        let st = b.status.clone().unwrap_or_default();
        Self {
            name: b.name_any(),
            phase: st.phase,
            created: created(b),
            completed: st.completion_time.map(|t| t.0),
            scheduled: b
                .annotations()
                .get(SCHEDULED_TIME_ANNOTATION)
                .and_then(|t| t.parse().ok()),
            deleting: b.metadata.deletion_timestamp.is_some(),
        }
    }

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
