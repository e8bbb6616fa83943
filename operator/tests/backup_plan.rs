//! Pure tests of the Backup, BackupSchedule and Restore decisions (`backup_plan`): the
//! schedule and retention with a controlled clock, destinations → store parameters, job
//! bodies → reasons and phases, and the pool's `LastBackupSucceeded`.

use k8s_openapi::ByteString;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use keystead_core::backup_job::{JobError, JobState, JobStatus};
use keystead_operator::backup::plan::{self as plan, JobOutcome, JobReason, ScheduledBackup};
use keystead_operator::conditions::{Reason, Status};
use keystead_operator::crd::{
    BackupDestination, BackupPhase, BackupScheduleSpec, RestorePhase, RetentionSpec,
};
use serde_json::json;
use std::collections::BTreeMap;
use std::time::Duration;

fn t(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn spec(
    schedule: &str,
    immediate: bool,
    suspend: bool,
    count: i32,
    age: Option<i32>,
) -> BackupScheduleSpec {
    serde_json::from_value(json!({
        "hsmRef": {"name": "pool"},
        "schedule": schedule,
        "immediate": immediate,
        "suspend": suspend,
        "destination": {"filesystem": {"claimName": "b"}},
        "retention": {"maxCount": count, "maxAgeDays": age},
    }))
    .unwrap()
}

fn b(name: &str, phase: Option<BackupPhase>, done: &str) -> ScheduledBackup {
    ScheduledBackup {
        name: name.into(),
        phase,
        created: t(done),
        completed: Some(t(done)),
        scheduled: Some(t(done)),
        deleting: false,
    }
}

const OK: Option<BackupPhase> = Some(BackupPhase::Succeeded);
const FAILED: Option<BackupPhase> = Some(BackupPhase::Failed);
const RUNNING: Option<BackupPhase> = Some(BackupPhase::Running);

// ---------------------------------------------------------------------------------------
// Cron
// ---------------------------------------------------------------------------------------

#[test]
fn only_standard_five_field_cron_is_accepted() {
    for ok in [
        "0 2 * * *",
        "*/15 * * * *",
        "30 1 * * MON-FRI",
        "0 0 1 */3 *",
    ] {
        plan::parse_schedule(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
    }
    for (bad, needle) in [
        ("0 0 2 * * *", "five fields"),
        ("0 2 * *", "five fields"),
        ("61 2 * * *", "not a valid cron"),
        ("0 25 * * *", "not a valid cron"),
        ("a b c d e", "not a valid cron"),
    ] {
        let e = plan::parse_schedule(bad).unwrap_err();
        assert!(e.contains(needle), "{bad}: {e}");
        assert!(e.contains(bad), "the message names the expression: {e}");
    }
}

// ---------------------------------------------------------------------------------------
// Schedule decisions with a controlled clock
// ---------------------------------------------------------------------------------------

#[test]
fn immediate_first_run_then_the_cron_times() {
    let s = spec("0 2 * * *", true, false, 7, None);
    let cron = plan::parse_schedule(&s.schedule).unwrap();
    let created = t("2026-03-01T10:00:00Z");
    let now = t("2026-03-01T10:00:05Z");
    let p = plan::plan_schedule(&s, &cron, created, None, &[], now);
    assert_eq!(p.create, Some(now), "immediate: the first run is now");
    assert_eq!(p.last_schedule_time, Some(now));
    assert_eq!(p.next_schedule_time, Some(t("2026-03-02T02:00:00Z")));

    // The run exists (status lost): no second immediate run.
    let done = vec![b("s-202603011000", RUNNING, "2026-03-01T10:00:05Z")];
    let later = t("2026-03-01T12:00:00Z");
    let p = plan::plan_schedule(&s, &cron, created, None, &done, later);
    assert_eq!(p.create, None);
    assert_eq!(p.waiting_for, None, "nothing is due, so nothing waits");
    // Sleeps until the next cron time (capped at an hour).
    assert_eq!(p.requeue_after, plan::MAX_SCHEDULE_SLEEP);

    // At 02:00 the next day the cron time is due.
    let done = vec![b("s-202603011000", OK, "2026-03-01T10:00:05Z")];
    let at = t("2026-03-02T02:00:00Z");
    let p = plan::plan_schedule(
        &s,
        &cron,
        created,
        Some(t("2026-03-01T10:00:05Z")),
        &done,
        at,
    );
    assert_eq!(p.create, Some(at));
    assert_eq!(
        plan::scheduled_backup_name("s", at),
        "s-202603020200",
        "deterministic: a retried create finds the first one"
    );
}

#[test]
fn without_immediate_the_first_run_waits_for_the_first_cron_time() {
    let s = spec("0 2 * * *", false, false, 7, None);
    let cron = plan::parse_schedule(&s.schedule).unwrap();
    let created = t("2026-03-01T10:00:00Z");
    let p = plan::plan_schedule(&s, &cron, created, None, &[], t("2026-03-01T10:00:01Z"));
    assert_eq!(p.create, None);
    assert_eq!(p.next_schedule_time, Some(t("2026-03-02T02:00:00Z")));
    // A cron time before the schedule existed is not a missed run.
    let p = plan::plan_schedule(&s, &cron, created, None, &[], t("2026-03-02T01:59:59Z"));
    assert_eq!(p.create, None);
    assert_eq!(p.requeue_after, Duration::from_secs(1));
    let p = plan::plan_schedule(&s, &cron, created, None, &[], t("2026-03-02T02:00:30Z"));
    assert_eq!(p.create, Some(t("2026-03-02T02:00:00Z")));
}

#[test]
fn missed_runs_collapse_into_one_run_for_the_latest_time() {
    let s = spec("0 2 * * *", false, false, 7, None);
    let cron = plan::parse_schedule(&s.schedule).unwrap();
    let created = t("2026-03-01T00:00:00Z");
    let last = t("2026-03-01T02:00:00Z");
    let have = vec![b("s-202603010200", OK, "2026-03-01T02:01:00Z")];
    // The operator was down for three days.
    let now = t("2026-03-04T05:00:00Z");
    let p = plan::plan_schedule(&s, &cron, created, Some(last), &have, now);
    assert_eq!(p.create, Some(t("2026-03-04T02:00:00Z")));
    // Once that one is recorded, nothing more is due until the next day.
    let p = plan::plan_schedule(
        &s,
        &cron,
        created,
        Some(t("2026-03-04T02:00:00Z")),
        &have,
        now,
    );
    assert_eq!(p.create, None);
    assert_eq!(p.next_schedule_time, Some(t("2026-03-05T02:00:00Z")));
}

#[test]
fn the_last_time_comes_from_the_backups_when_the_status_was_lost() {
    let s = spec("*/10 * * * *", false, false, 7, None);
    let cron = plan::parse_schedule(&s.schedule).unwrap();
    let have = vec![b("s-202603010210", OK, "2026-03-01T02:10:00Z")];
    let p = plan::plan_schedule(
        &s,
        &cron,
        t("2026-03-01T00:00:00Z"),
        None,
        &have,
        t("2026-03-01T02:15:00Z"),
    );
    assert_eq!(p.create, None, "02:10 already has its Backup");
    assert_eq!(p.last_schedule_time, Some(t("2026-03-01T02:10:00Z")));
}

#[test]
fn one_backup_at_a_time_a_due_run_waits_for_the_running_one() {
    let s = spec("*/5 * * * *", false, false, 7, None);
    let cron = plan::parse_schedule(&s.schedule).unwrap();
    let have = vec![b("s-202603010200", RUNNING, "2026-03-01T02:00:00Z")];
    let now = t("2026-03-01T02:05:10Z");
    let p = plan::plan_schedule(
        &s,
        &cron,
        t("2026-03-01T00:00:00Z"),
        Some(t("2026-03-01T02:00:00Z")),
        &have,
        now,
    );
    assert_eq!(p.create, None);
    assert_eq!(p.waiting_for.as_deref(), Some("s-202603010200"));
    assert!(p.requeue_after <= Duration::from_secs(10));
    assert_eq!(p.last_schedule_time, Some(t("2026-03-01T02:00:00Z")));
    // It finished (at 02:06, scheduled for 02:00): the waiting run happens, once.
    let mut done = b("s-202603010200", OK, "2026-03-01T02:06:00Z");
    done.scheduled = Some(t("2026-03-01T02:00:00Z"));
    let have = vec![done];
    let p = plan::plan_schedule(
        &s,
        &cron,
        t("2026-03-01T00:00:00Z"),
        Some(t("2026-03-01T02:00:00Z")),
        &have,
        t("2026-03-01T02:06:01Z"),
    );
    assert_eq!(p.create, Some(t("2026-03-01T02:05:00Z")));
}

#[test]
fn suspend_creates_nothing_has_no_next_time_and_still_applies_retention() {
    let s = spec("*/5 * * * *", true, true, 1, None);
    let cron = plan::parse_schedule(&s.schedule).unwrap();
    let have = vec![
        b("a", OK, "2026-03-01T01:00:00Z"),
        b("b", OK, "2026-03-01T02:00:00Z"),
    ];
    let p = plan::plan_schedule(
        &s,
        &cron,
        t("2026-03-01T00:00:00Z"),
        None,
        &have,
        t("2026-03-01T03:00:00Z"),
    );
    assert_eq!(p.create, None, "not even the immediate first run");
    assert_eq!(p.next_schedule_time, None);
    assert_eq!(p.delete, vec!["a".to_string()]);
    assert_eq!(p.requeue_after, plan::MAX_SCHEDULE_SLEEP);

    // Resumed: the most recent missed time runs once.
    let s = spec("*/5 * * * *", true, false, 1, None);
    let p = plan::plan_schedule(
        &s,
        &cron,
        t("2026-03-01T00:00:00Z"),
        Some(t("2026-03-01T02:00:00Z")),
        &have[1..],
        t("2026-03-01T03:02:00Z"),
    );
    assert_eq!(p.create, Some(t("2026-03-01T03:00:00Z")));
}

// ---------------------------------------------------------------------------------------
// Retention
// ---------------------------------------------------------------------------------------

fn retention(count: i32, age: Option<i32>) -> RetentionSpec {
    RetentionSpec {
        max_count: count,
        max_age_days: age,
    }
}

#[test]
fn retention_by_count_keeps_the_newest_successes() {
    let have = vec![
        b("d1", OK, "2026-03-01T02:00:00Z"),
        b("d2", OK, "2026-03-02T02:00:00Z"),
        b("d3", OK, "2026-03-03T02:00:00Z"),
        b("d4", RUNNING, "2026-03-04T02:00:00Z"),
    ];
    let now = t("2026-03-04T02:00:10Z");
    assert_eq!(plan::expired(&have, &retention(2, None), now), vec!["d1"]);
    assert_eq!(
        plan::expired(&have, &retention(1, None), now),
        vec!["d1", "d2"]
    );
    assert!(plan::expired(&have, &retention(5, None), now).is_empty());
}

#[test]
fn retention_by_count_and_age_together_never_deletes_the_newest_success_or_a_running_one() {
    let have = vec![
        b("old-1", OK, "2026-01-01T02:00:00Z"),
        b("old-2", OK, "2026-01-02T02:00:00Z"),
        b("recent", OK, "2026-03-03T02:00:00Z"),
        b("newest", OK, "2026-03-04T02:00:00Z"),
        b("running", RUNNING, "2025-01-01T00:00:00Z"),
    ];
    let now = t("2026-03-04T12:00:00Z");
    // Count 3 would keep old-2; age 30 days removes it as well.
    assert_eq!(
        plan::expired(&have, &retention(3, Some(30)), now),
        vec!["old-1", "old-2"]
    );
    // Everything is too old: the newest success stays, the running one is never touched.
    let far = t("2027-01-01T00:00:00Z");
    assert_eq!(
        plan::expired(&have, &retention(10, Some(1)), far),
        vec!["old-1", "old-2", "recent"]
    );
    // The only successful backup stays whatever its age.
    let only = vec![b("only", OK, "2020-01-01T00:00:00Z")];
    assert!(plan::expired(&only, &retention(1, Some(1)), far).is_empty());
}

#[test]
fn failed_backups_older_than_the_newest_success_go_and_recent_failures_are_bounded() {
    let have = vec![
        b("f-old", FAILED, "2026-03-01T02:00:00Z"),
        b("ok", OK, "2026-03-02T02:00:00Z"),
        b("f1", FAILED, "2026-03-03T02:00:00Z"),
        b("f2", FAILED, "2026-03-04T02:00:00Z"),
        b("f3", FAILED, "2026-03-05T02:00:00Z"),
    ];
    let now = t("2026-03-05T03:00:00Z");
    assert_eq!(
        plan::expired(&have, &retention(2, None), now),
        vec!["f-old", "f1"]
    );
    // A Backup already being deleted is left alone.
    let mut gone = have.clone();
    gone[0].deleting = true;
    assert_eq!(plan::expired(&gone, &retention(2, None), now), vec!["f1"]);
}

#[test]
fn the_plan_carries_the_retention_decision() {
    let s = spec("0 2 * * *", false, false, 2, None);
    let cron = plan::parse_schedule(&s.schedule).unwrap();
    let have = vec![
        b("d1", OK, "2026-03-01T02:00:00Z"),
        b("d2", OK, "2026-03-02T02:00:00Z"),
        b("d3", OK, "2026-03-03T02:00:00Z"),
    ];
    let p = plan::plan_schedule(
        &s,
        &cron,
        t("2026-02-01T00:00:00Z"),
        Some(t("2026-03-03T02:00:00Z")),
        &have,
        t("2026-03-03T03:00:00Z"),
    );
    assert_eq!(p.delete, vec!["d1".to_string()]);
    assert_eq!(p.create, None);
}

// ---------------------------------------------------------------------------------------
// Destinations
// ---------------------------------------------------------------------------------------

fn dest(v: serde_json::Value) -> BackupDestination {
    serde_json::from_value(v).unwrap()
}

fn secret(pairs: &[(&str, &str)]) -> BTreeMap<String, ByteString> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
        .collect()
}

#[test]
fn destinations_map_to_store_parameters_without_leaking_credentials() {
    let fs = dest(json!({"filesystem": {"claimName": "hsm-backups", "path": "/pool-a/"}}));
    assert_eq!(plan::credentials_secret(&fs), None);
    let p = plan::storage_parameters(&fs, None).unwrap();
    assert_eq!(p.storage_resource_uri, "pvc://hsm-backups/pool-a");
    assert_eq!(
        keystead_core::store::claim_of(&p.storage_resource_uri),
        Some("hsm-backups")
    );
    assert_eq!(keystead_core::store::claim_of("s3://bk/x"), None);
    let mounted: Vec<keystead_operator::crd::BackupVolume> =
        serde_json::from_value(json!([{"claimName": "hsm-backups"}])).unwrap();
    assert_eq!(
        plan::claim_not_mounted(&p.storage_resource_uri, "pool", &mounted),
        None
    );
    let why = plan::claim_not_mounted("pvc://other/x", "pool", &mounted).unwrap();
    assert!(
        why.contains("other") && why.contains("spec.backupVolumes"),
        "{why}"
    );
    assert_eq!(plan::claim_not_mounted("s3://bk", "pool", &[]), None);
    assert!(p.storage_options.is_empty() && p.token.is_none());
    let escape = dest(json!({"filesystem": {"claimName": "b", "path": "../etc"}}));
    assert!(
        plan::storage_parameters(&escape, None)
            .unwrap_err()
            .contains("..")
    );

    let s3 = dest(
        json!({"s3": {"bucket": "bk", "prefix": "nightly/", "endpoint": "http://127.0.0.1:9000", "credentials": {"name": "s3-creds"}}}),
    );
    assert_eq!(plan::credentials_secret(&s3), Some("s3-creds"));
    let data = secret(&[
        ("AWS_ACCESS_KEY_ID", "AKIA"),
        ("AWS_SECRET_ACCESS_KEY", "very-secret"),
    ]);
    let p = plan::storage_parameters(&s3, Some(&data)).unwrap();
    assert_eq!(p.storage_resource_uri, "s3://bk/nightly");
    assert_eq!(p.storage_options["aws_endpoint"], "http://127.0.0.1:9000");
    assert_eq!(p.storage_options["aws_allow_http"], "true");
    assert_eq!(p.storage_options["aws_region"], "us-east-1");
    assert_eq!(p.storage_options["aws_secret_access_key"], "very-secret");
    assert!(!format!("{p:?}").contains("very-secret"), "Debug redacts");
    let e =
        plan::storage_parameters(&s3, Some(&secret(&[("AWS_ACCESS_KEY_ID", "AKIA")]))).unwrap_err();
    assert!(
        e.contains("s3-creds") && e.contains("AWS_SECRET_ACCESS_KEY"),
        "{e}"
    );
    assert!(!e.contains("AKIA"), "no value in messages: {e}");

    let az = dest(
        json!({"azureBlob": {"containerUri": "https://acct.blob.core.windows.net/hsm", "prefix": "p", "credentials": {"name": "az"}}}),
    );
    let p = plan::storage_parameters(&az, Some(&secret(&[("sasToken", "?sv=1&sig=x")]))).unwrap();
    assert_eq!(
        p.storage_resource_uri,
        "https://acct.blob.core.windows.net/hsm/p"
    );
    assert_eq!(p.token.as_deref(), Some("?sv=1&sig=x"));
    let p = plan::storage_parameters(&az, Some(&secret(&[("accountKey", "k==")]))).unwrap();
    assert_eq!(p.storage_options["azure_storage_account_key"], "k==");
    assert!(
        plan::storage_parameters(&az, Some(&secret(&[])))
            .unwrap_err()
            .contains("neither sasToken nor accountKey")
    );

    let gcs = dest(json!({"gcs": {"bucket": "g-bucket", "credentials": {"name": "g"}}}));
    let p =
        plan::storage_parameters(&gcs, Some(&secret(&[("service-account.json", "{}")]))).unwrap();
    assert_eq!(p.storage_resource_uri, "gs://g-bucket");
    assert_eq!(p.storage_options["google_service_account_key"], "{}");
    // What is sent to the partition: the Azure field names.
    let v = serde_json::to_value(&p).unwrap();
    assert_eq!(v["storageResourceUri"], "gs://g-bucket");
    assert!(v.get("token").is_none());
}

#[test]
fn a_destinations_uri_needs_no_secret() {
    // What the JobLost message names: the same URI the partition gets, without credentials.
    for (d, uri) in [
        (
            json!({"s3": {"bucket": "bk", "prefix": "/nightly/", "credentials": {"name": "gone"}}}),
            "s3://bk/nightly",
        ),
        (
            json!({"azureBlob": {"containerUri": "https://a.blob.core.windows.net/c/", "credentials": {"name": "gone"}}}),
            "https://a.blob.core.windows.net/c",
        ),
        (
            json!({"gcs": {"bucket": "g", "prefix": "x", "credentials": {"name": "gone"}}}),
            "gs://g/x",
        ),
        (
            json!({"filesystem": {"claimName": "c", "path": "p/"}}),
            "pvc://c/p",
        ),
    ] {
        assert_eq!(plan::destination_uri(&dest(d)).as_deref(), Ok(uri));
    }
    let none = dest(json!({}));
    assert!(
        plan::destination_uri(&none)
            .unwrap_err()
            .contains("names no store")
    );
    assert!(plan::storage_parameters(&none, None).is_err());
    let bad_claim = dest(json!({"filesystem": {"claimName": "a/b"}}));
    assert!(plan::destination_uri(&bad_claim).is_err());
}

// ---------------------------------------------------------------------------------------
// Jobs, reasons, phases
// ---------------------------------------------------------------------------------------

fn job(state: JobState, error: Option<(&str, &str)>) -> JobStatus {
    JobStatus {
        status: state,
        status_details: None,
        error: error.map(|(c, m)| JobError {
            code: c.into(),
            message: m.into(),
            innererror: None,
        }),
        job_id: "j1".into(),
        start_time: 1_770_000_000,
        end_time: None,
        azure_storage_blob_container_uri: None,
        backup: None,
        restore_point: None,
        kind: None,
    }
}

#[test]
fn job_bodies_map_to_typed_reasons_and_phases() {
    assert_eq!(
        plan::job_outcome(&job(JobState::InProgress, None)),
        JobOutcome::Running
    );
    assert_eq!(
        plan::job_outcome(&job(JobState::Succeeded, None)),
        JobOutcome::Succeeded
    );
    let mismatch = plan::job_outcome(&job(
        JobState::Failed,
        Some((
            "SecurityDomainMismatch",
            "the backup belongs to security domain aa, but this pool holds security domain bb",
        )),
    ));
    match mismatch {
        JobOutcome::Failed { reason, message } => {
            assert_eq!(reason, JobReason::SecurityDomainMismatch);
            assert!(
                message.contains("aa") && message.contains("bb"),
                "{message}"
            );
        }
        other => panic!("{other:?}"),
    }
    match plan::job_outcome(&job(JobState::Failed, Some(("StorageError", "gone")))) {
        JobOutcome::Failed { reason, message } => {
            assert_eq!(reason, JobReason::JobFailed);
            assert_eq!(message, "StorageError: gone");
        }
        other => panic!("{other:?}"),
    }

    for (r, bp, rp, status) in [
        (
            JobReason::PoolNotReady,
            BackupPhase::Pending,
            RestorePhase::Pending,
            Status::Unknown,
        ),
        (
            JobReason::CredentialsNotFound,
            BackupPhase::Pending,
            RestorePhase::Pending,
            Status::Unknown,
        ),
        (
            JobReason::JobRunning,
            BackupPhase::Running,
            RestorePhase::Running,
            Status::Unknown,
        ),
        (
            JobReason::BackupSucceeded,
            BackupPhase::Succeeded,
            RestorePhase::Succeeded,
            Status::True,
        ),
        (
            JobReason::JobLost,
            BackupPhase::Failed,
            RestorePhase::Failed,
            Status::False,
        ),
        (
            JobReason::SecurityDomainMismatch,
            BackupPhase::Failed,
            RestorePhase::Failed,
            Status::False,
        ),
        (
            JobReason::InvalidSpec,
            BackupPhase::Failed,
            RestorePhase::Failed,
            Status::False,
        ),
    ] {
        assert_eq!(r.backup_phase(), bp, "{r:?}");
        assert_eq!(r.restore_phase(), rp, "{r:?}");
        assert_eq!(r.status(), status, "{r:?}");
        assert_eq!(r.is_final(), status != Status::Unknown);
    }

    // lastTransitionTime moves only when the status changes.
    let t0 = Time(t("2026-03-01T00:00:00Z"));
    let t1 = Time(t("2026-03-01T00:01:00Z"));
    let c0 = plan::job_conditions(&[], JobReason::PoolNotReady, "wait", Some(1), &t0);
    let c1 = plan::job_conditions(&c0, JobReason::JobRunning, "run", Some(1), &t1);
    assert_eq!(
        c1[0].last_transition_time, t0,
        "Unknown → Unknown keeps the time"
    );
    assert_eq!(plan::reason_of(&c1), Some("JobRunning"));
    let c2 = plan::job_conditions(&c1, JobReason::BackupSucceeded, "ok", Some(1), &t1);
    assert_eq!(c2[0].last_transition_time, t1);
    assert_eq!(c2[0].status, "True");

    // A lost job: what happened and what to do.
    let started = Time("2026-01-02T03:04:05Z".parse().unwrap());
    let lost = plan::job_lost_message(
        plan::LostJob::Backup {
            destination: Some("s3://bk/nightly"),
            folder: Some("s3://bk/nightly/pool-20260102T030405000Z"),
        },
        "j1",
        "pool-1",
        Some(&started),
    );
    for part in [
        "pool-1",
        "j1",
        "restarted",
        "kubectl hsm backup list s3://bk/nightly",
        "2026-01-02T03:04:05Z",
        "manifest.json",
        "spec.source",
        "create a new Backup",
        "This job's folder is s3://bk/nightly/pool-20260102T030405000Z.",
    ] {
        assert!(lost.contains(part), "{part:?} in {lost}");
    }
    let lost = plan::job_lost_message(
        plan::LostJob::Backup {
            destination: None,
            folder: None,
        },
        "j1",
        "pool-1",
        None,
    );
    assert!(
        lost.contains("kubectl hsm backup list <destination>"),
        "{lost}"
    );
    let lost = plan::job_lost_message(
        plan::LostJob::Backup {
            destination: Some("pvc://claim/hsm"),
            folder: None,
        },
        "j1",
        "pool-1",
        None,
    );
    assert!(lost.contains("folders under pvc://claim/hsm"), "{lost}");
    assert!(!lost.contains("backup list"), "{lost}");
    assert!(!lost.contains("This job's folder"), "{lost}");
    let lost = plan::job_lost_message(plan::LostJob::Restore, "j2", "pool-2", None);
    for part in [
        "pool-2",
        "j2",
        "all at once or not at all",
        "create a new Restore",
    ] {
        assert!(lost.contains(part), "{part:?} in {lost}");
    }
    assert!(!lost.contains("backup list"), "{lost}");
}

#[test]
fn the_pools_last_backup_condition_follows_the_newest_finished_backup() {
    let pb = |name: &str, phase: Option<BackupPhase>, at: &str| plan::PoolBackup {
        name: name.into(),
        created: t(at),
        completion_time: Some(Time(t(at))),
        location: Some(format!("file:///b/{name}")),
        key_count: Some(3),
        error: (phase == FAILED).then(|| "StorageError: gone".into()),
        phase,
    };
    let (cond, last) = plan::last_backup(&[]);
    assert_eq!(
        (cond.status, cond.reason),
        (Status::Unknown, Reason::NoBackupYet)
    );
    assert!(last.is_none());

    let list = vec![
        pb("a", OK, "2026-03-01T00:00:00Z"),
        pb("b", FAILED, "2026-03-02T00:00:00Z"),
        pb("c", RUNNING, "2026-03-03T00:00:00Z"),
    ];
    let (cond, last) = plan::last_backup(&list);
    assert_eq!(
        (cond.status, cond.reason),
        (Status::False, Reason::BackupFailed)
    );
    assert!(
        cond.message.contains("b") && cond.message.contains("StorageError"),
        "{}",
        cond.message
    );
    assert_eq!(last.unwrap().name, "a", "lastBackup is the newest success");

    let mut list = list;
    list.push(pb("d", OK, "2026-03-04T00:00:00Z"));
    let (cond, last) = plan::last_backup(&list);
    assert_eq!(
        (cond.status, cond.reason),
        (Status::True, Reason::BackupSucceeded)
    );
    assert!(
        cond.message.contains("d") && cond.message.contains("3 keys"),
        "{}",
        cond.message
    );
    assert_eq!(last.unwrap().location.as_deref(), Some("file:///b/d"));
}

#[test]
fn backup_volumes_must_exist_be_shared_and_bound() {
    use plan::{ClaimFound, ClaimState, backup_volumes_condition};
    let claim = |name: &str, modes: &[&str], phase: Option<&str>| ClaimState {
        name: name.into(),
        found: Some(ClaimFound {
            phase: phase.map(String::from),
            access_modes: modes.iter().map(|m| m.to_string()).collect(),
        }),
    };
    assert!(
        backup_volumes_condition(&[]).is_none(),
        "no claims, no condition"
    );
    let ok = backup_volumes_condition(&[claim("a", &["ReadWriteMany"], Some("Bound"))]).unwrap();
    assert_eq!(
        (ok.status, ok.reason.as_str()),
        (Status::True, "VolumesBound")
    );
    let cases = [
        (
            vec![
                claim("a", &["ReadWriteMany"], Some("Bound")),
                ClaimState {
                    name: "gone".into(),
                    found: None,
                },
            ],
            "VolumeMissing",
            "gone",
        ),
        (
            vec![claim("rwo", &["ReadWriteOnce"], Some("Bound"))],
            "VolumeNotShared",
            "ReadWriteMany",
        ),
        (
            vec![claim("slow", &["ReadWriteMany"], Some("Pending"))],
            "VolumeNotBound",
            "slow",
        ),
    ];
    for (claims, reason, text) in cases {
        let c = backup_volumes_condition(&claims).unwrap();
        assert_eq!((c.status, c.reason.as_str()), (Status::False, reason));
        assert!(c.message.contains(text), "{}", c.message);
    }
}
