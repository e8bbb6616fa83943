//! The lifecycle decisions of a pool: the next disruptive action (healing, rolling upgrade),
//! soft delete and purge, recovery of a soft-deleted pool. Pure functions only.

use super::observed::{ObservedPartition, QUORUM, is_leader};
use crate::crd::{ManagedHsmSpec, PartitionStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use std::collections::BTreeMap;

/// Log entries a peer may lag behind while another partition is taken down for an upgrade.
pub const MAX_UPGRADE_LAG: u64 = 16;
/// Annotation set on retained PVCs and Secrets while a pool is soft-deleted (RFC 3339).
pub const PURGE_AFTER_ANNOTATION: &str = "keystead.io/purge-after";
/// Annotation recording whether the soft-deleted pool had purge protection.
pub const PURGE_PROTECTED_ANNOTATION: &str = "keystead.io/purge-protection";
/// Annotation a user sets on the retained CA Secret to ask for an early purge.
pub const PURGE_REQUEST_ANNOTATION: &str = "keystead.io/purge-requested";
/// Label set on retained objects of a soft-deleted pool (value: pool name).
pub const SOFT_DELETED_LABEL: &str = "keystead.io/soft-deleted-pool";
/// Finalizer guarding soft delete of a ManagedHsm.
pub const HSM_FINALIZER: &str = "keystead.io/soft-delete";

/// The next disruptive action on the pool. At most one per reconcile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    None,
    /// Delete the pod; the StatefulSet re-creates it on the same volume.
    ReplacePod {
        pod: String,
        reason: String,
    },
    /// Delete the PVC and the pod: the volume's data is lost; the new partition catches up
    /// from its peers.
    ReplacePodAndVolume {
        pod: String,
        pvc: String,
        reason: String,
    },
    /// Delete an up-to-date-less pod so the StatefulSet (OnDelete) re-creates it from the new
    /// template.
    UpgradePod {
        pod: String,
    },
}

/// Decide the next action from the observation and the partition status just derived.
pub fn next_action(
    spec: &ManagedHsmSpec,
    observed: &[ObservedPartition],
    partitions: &[PartitionStatus],
    desired_hash: &str,
    now: &Time,
    pvc_name: impl Fn(&str) -> String,
) -> Action {
    // One disruption at a time: wait while a pod is missing or going away.
    if observed.iter().any(|p| !p.pod_exists || p.pod_terminating) {
        return Action::None;
    }
    if spec.healing.enabled {
        let threshold =
            SignedDuration::from_secs(i64::from(spec.healing.unhealthy_threshold_seconds.max(0)));
        for (p, st) in observed.iter().zip(partitions) {
            let Some(since_t) = &st.unhealthy_since else {
                continue;
            };
            if now.0.duration_since(since_t.0) < threshold {
                continue;
            }
            let reason = format!(
                "{} unhealthy for more than {}s: {}",
                p.name,
                spec.healing.unhealthy_threshold_seconds,
                st.message.clone().unwrap_or_default()
            );
            return if p.data_lost {
                Action::ReplacePodAndVolume {
                    pod: p.name.clone(),
                    pvc: pvc_name(&p.name),
                    reason,
                }
            } else {
                Action::ReplacePod {
                    pod: p.name.clone(),
                    reason,
                }
            };
        }
    }
    // Rolling upgrade: only with every partition healthy and caught up.
    let all_good = observed.iter().all(ObservedPartition::healthy)
        && observed
            .iter()
            .all(|p| p.lag.unwrap_or(0) <= MAX_UPGRADE_LAG);
    if !all_good || observed.len() < QUORUM + 1 {
        return Action::None;
    }
    let mut stale: Vec<&ObservedPartition> = observed
        .iter()
        .filter(|p| p.template_hash.as_deref() != Some(desired_hash))
        .collect();
    // Followers first (highest ordinal first), the Raft leader last.
    stale.sort_by(|a, b| {
        let leader = |p: &ObservedPartition| p.admin.as_ref().is_some_and(is_leader);
        leader(a).cmp(&leader(b)).then_with(|| b.name.cmp(&a.name))
    });
    match stale.first() {
        Some(p) => Action::UpgradePod {
            pod: p.name.clone(),
        },
        None => Action::None,
    }
}

/// The purge date of a pool deleted at `deleted_at`.
pub fn purge_after(deleted_at: Timestamp, retention_days: i32) -> Timestamp {
    deleted_at
        .checked_add(SignedDuration::from_hours(
            24 * i64::from(retention_days.max(0)),
        ))
        .unwrap_or(deleted_at)
}

/// Annotations put on retained PVCs and Secrets when a pool is soft-deleted.
pub fn soft_delete_annotations(
    deleted_at: Timestamp,
    retention_days: i32,
    purge_protection: bool,
) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            PURGE_AFTER_ANNOTATION.to_string(),
            purge_after(deleted_at, retention_days).to_string(),
        ),
        (
            PURGE_PROTECTED_ANNOTATION.to_string(),
            purge_protection.to_string(),
        ),
    ])
}

/// What to do with the retained objects of a soft-deleted pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PurgeDecision {
    /// Not a soft-deleted object (no purge date).
    NotSoftDeleted,
    /// Keep until the date; look again then.
    Keep { until: Timestamp },
    /// The retention period is over (or an early purge was asked without protection): delete.
    Purge,
    /// An early purge was asked but purge protection is on: refused until the date.
    EarlyPurgeRefused { until: Timestamp },
    /// The purge date annotation is unreadable; keep and report.
    Unreadable(String),
}

pub fn purge_decision(annotations: &BTreeMap<String, String>, now: Timestamp) -> PurgeDecision {
    let Some(text) = annotations.get(PURGE_AFTER_ANNOTATION) else {
        return PurgeDecision::NotSoftDeleted;
    };
    let until: Timestamp = match text.parse() {
        Ok(t) => t,
        Err(_) => {
            return PurgeDecision::Unreadable(format!(
                "{PURGE_AFTER_ANNOTATION}={text:?} is not an RFC 3339 time"
            ));
        }
    };
    if now >= until {
        return PurgeDecision::Purge;
    }
    let requested = annotations
        .get(PURGE_REQUEST_ANNOTATION)
        .is_some_and(|v| v == "true");
    let protected = annotations
        .get(PURGE_PROTECTED_ANNOTATION)
        .is_none_or(|v| v != "false");
    match (requested, protected) {
        (true, true) => PurgeDecision::EarlyPurgeRefused { until },
        (true, false) => PurgeDecision::Purge,
        _ => PurgeDecision::Keep { until },
    }
}

/// What a (re-)created ManagedHsm does about retained data of a soft-deleted pool of the
/// same name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecoveryDecision {
    /// Nothing retained: provision a new pool.
    Fresh,
    /// `spec.recover` and retained data exist: adopt it (remove the soft-delete marks).
    Recover,
    /// Retained data exist but `spec.recover` is false: refuse, like Azure's name conflict.
    Conflict { until: Option<Timestamp> },
    /// `spec.recover` is set but nothing is retained: provision a new pool and say so.
    NothingToRecover,
}

pub fn recovery_decision(
    recover: bool,
    retained_purge_after: Option<Option<Timestamp>>,
) -> RecoveryDecision {
    match (recover, retained_purge_after) {
        (false, None) => RecoveryDecision::Fresh,
        (true, None) => RecoveryDecision::NothingToRecover,
        (true, Some(_)) => RecoveryDecision::Recover,
        (false, Some(until)) => RecoveryDecision::Conflict { until },
    }
}
