//! Conditions of Keystead's resources (every controller uses them): the ManagedHsm's typed
//! condition types and reasons, merging that keeps `lastTransitionTime`, and the phase
//! derived from them.

use crate::crd::HsmPhase;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

pub const READY: &str = "Ready";
pub const PARTITIONS_HEALTHY: &str = "PartitionsHealthy";
pub const SECURITY_DOMAIN_ACTIVATED: &str = "SecurityDomainActivated";
pub const LAST_BACKUP_SUCCEEDED: &str = "LastBackupSucceeded";
/// Only while `spec.backupVolumes` lists claims.
pub const BACKUP_VOLUMES_READY: &str = "BackupVolumesReady";
/// Only while `spec.replication` is set (docs/regions.md).
pub const REPLICATION_HEALTHY: &str = "ReplicationHealthy";

/// Every reason the operator writes into a ManagedHsm condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    // Ready
    PoolReady,
    InvalidSpec,
    SoftDeletedPoolExists,
    SoftDeleted,
    Provisioning,
    WaitingForSecurityDomain,
    RecoveryPending,
    QuorumLost,
    // PartitionsHealthy
    AllPartitionsHealthy,
    PartitionsStarting,
    PartitionUnschedulable,
    PartitionUnhealthy,
    Healing,
    RollingUpgrade,
    // SecurityDomainActivated
    Activated,
    PartitionsUnreachable,
    // LastBackupSucceeded
    NoBackupYet,
    BackupSucceeded,
    BackupFailed,
    // BackupVolumesReady
    VolumesBound,
    VolumeMissing,
    VolumeNotShared,
    VolumeNotBound,
    // ReplicationHealthy
    RegionsFollowing,
    RegionNotFollowing,
    Following,
    Joining,
    PrimaryUnreachable,
    PrimaryRefuses,
    RemovedByPrimary,
    WriteLeaseExpired,
    WaitingForPromotion,
    Demoting,
    Demoted,
    RegionCaMissing,
    RegionCallFailed,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PoolReady => "PoolReady",
            Self::InvalidSpec => "InvalidSpec",
            Self::SoftDeletedPoolExists => "SoftDeletedPoolExists",
            Self::SoftDeleted => "SoftDeleted",
            Self::Provisioning => "Provisioning",
            Self::WaitingForSecurityDomain => "WaitingForSecurityDomain",
            Self::RecoveryPending => "RecoveryPending",
            Self::QuorumLost => "QuorumLost",
            Self::AllPartitionsHealthy => "AllPartitionsHealthy",
            Self::PartitionsStarting => "PartitionsStarting",
            Self::PartitionUnschedulable => "PartitionUnschedulable",
            Self::PartitionUnhealthy => "PartitionUnhealthy",
            Self::Healing => "Healing",
            Self::RollingUpgrade => "RollingUpgrade",
            Self::Activated => "Activated",
            Self::PartitionsUnreachable => "PartitionsUnreachable",
            Self::NoBackupYet => "NoBackupYet",
            Self::BackupSucceeded => "BackupSucceeded",
            Self::BackupFailed => "BackupFailed",
            Self::VolumesBound => "VolumesBound",
            Self::VolumeMissing => "VolumeMissing",
            Self::VolumeNotShared => "VolumeNotShared",
            Self::VolumeNotBound => "VolumeNotBound",
            Self::RegionsFollowing => "RegionsFollowing",
            Self::RegionNotFollowing => "RegionNotFollowing",
            Self::Following => "Following",
            Self::Joining => "Joining",
            Self::PrimaryUnreachable => "PrimaryUnreachable",
            Self::PrimaryRefuses => "PrimaryRefuses",
            Self::RemovedByPrimary => "RemovedByPrimary",
            Self::WriteLeaseExpired => "WriteLeaseExpired",
            Self::WaitingForPromotion => "WaitingForPromotion",
            Self::Demoting => "Demoting",
            Self::Demoted => "Demoted",
            Self::RegionCaMissing => "RegionCaMissing",
            Self::RegionCallFailed => "RegionCallFailed",
        }
    }
}

/// Condition status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    True,
    False,
    Unknown,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::True => "True",
            Self::False => "False",
            Self::Unknown => "Unknown",
        }
    }
}

/// A condition before it gets its transition time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cond {
    pub type_: &'static str,
    pub status: Status,
    pub reason: Reason,
    pub message: String,
}

impl Cond {
    pub fn new(
        type_: &'static str,
        status: Status,
        reason: Reason,
        message: impl Into<String>,
    ) -> Self {
        Self {
            type_,
            status,
            reason,
            message: message.into(),
        }
    }
}

/// Merge freshly derived conditions into the existing ones: `lastTransitionTime` changes only
/// when the status changes. Conditions of other types are kept. The result is sorted by type
/// so that an unchanged state serialises identically (idle reconcile = no write).
pub fn merge(
    existing: &[Condition],
    fresh: &[Cond],
    generation: Option<i64>,
    now: &Time,
) -> Vec<Condition> {
    let fresh: Vec<(&str, Status, &str, &str)> = fresh
        .iter()
        .map(|f| (f.type_, f.status, f.reason.as_str(), f.message.as_str()))
        .collect();
    merge_raw(existing, &fresh, generation, now)
}

/// [`merge`] for any kind's conditions: `(type, status, reason, message)`.
pub fn merge_raw(
    existing: &[Condition],
    fresh: &[(&str, Status, &str, &str)],
    generation: Option<i64>,
    now: &Time,
) -> Vec<Condition> {
    let mut out: Vec<Condition> = existing
        .iter()
        .filter(|c| !fresh.iter().any(|f| f.0 == c.type_))
        .cloned()
        .collect();
    for (type_, status, reason, message) in fresh {
        let prev = existing.iter().find(|c| c.type_ == *type_);
        let last_transition_time = match prev {
            Some(p) if p.status == status.as_str() => p.last_transition_time.clone(),
            _ => now.clone(),
        };
        out.push(Condition {
            type_: type_.to_string(),
            status: status.as_str().to_string(),
            reason: reason.to_string(),
            message: message.to_string(),
            observed_generation: generation,
            last_transition_time,
        });
    }
    out.sort_by(|a, b| a.type_.cmp(&b.type_));
    out
}

/// Find a condition by type.
pub fn find<'a>(conds: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conds.iter().find(|c| c.type_ == type_)
}

fn is(conds: &[Condition], type_: &str, status: &str, reason: Option<&str>) -> bool {
    find(conds, type_).is_some_and(|c| c.status == status && reason.is_none_or(|r| c.reason == r))
}

/// The phase, derived from the conditions only.
pub fn phase(conds: &[Condition]) -> HsmPhase {
    if is(conds, READY, "False", Some(Reason::InvalidSpec.as_str()))
        || is(
            conds,
            READY,
            "False",
            Some(Reason::SoftDeletedPoolExists.as_str()),
        )
    {
        return HsmPhase::Failed;
    }
    if is(conds, READY, "False", Some(Reason::SoftDeleted.as_str())) {
        return HsmPhase::SoftDeleted;
    }
    if is(
        conds,
        SECURITY_DOMAIN_ACTIVATED,
        "False",
        Some(Reason::RecoveryPending.as_str()),
    ) {
        return HsmPhase::RecoveryPending;
    }
    if is(conds, SECURITY_DOMAIN_ACTIVATED, "True", None) {
        if is(conds, PARTITIONS_HEALTHY, "True", None) {
            return HsmPhase::Activated;
        }
        if is(
            conds,
            PARTITIONS_HEALTHY,
            "False",
            Some(Reason::Healing.as_str()),
        ) {
            return HsmPhase::Healing;
        }
        return HsmPhase::Degraded;
    }
    if is(
        conds,
        SECURITY_DOMAIN_ACTIVATED,
        "False",
        Some(Reason::WaitingForSecurityDomain.as_str()),
    ) && is(conds, PARTITIONS_HEALTHY, "True", None)
    {
        return HsmPhase::Provisioned;
    }
    HsmPhase::Provisioning
}
