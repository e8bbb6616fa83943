//! What was observed of a pool, the status derived from it, and the next lifecycle action
//! (healing, rolling upgrade, soft delete, purge, recovery). Pure functions only.

use crate::children::{
    PURGE_AFTER_ANNOTATION, PURGE_PROTECTED_ANNOTATION, PURGE_REQUEST_ANNOTATION,
};
use crate::conditions::{self as c, Cond, Reason, Status};
use crate::crd::{ManagedHsmSpec, ManagedHsmStatus, PartitionStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// Partitions needed for quorum in a group of three.
pub const QUORUM: usize = 2;
/// Log entries a peer may lag behind while another partition is taken down for an upgrade.
pub const MAX_UPGRADE_LAG: i64 = 16;

/// Activation state and `lastSecurityDomainRedownload` of a partition's `GET /admin/status`
/// (the contract is `keystead_core::status::PoolStatus`).
pub use keystead_core::status::{Activation, DomainRedownload};

/// A Warning Event's note for re-downloads of the security domain the operator has not
/// reported yet: the highest count any partition reports against `reported` (the count
/// in the pool's status). `None`: nothing new.
pub fn redownload_note(observed: &[ObservedPartition], reported: i64) -> Option<(i64, String)> {
    let newest = observed
        .iter()
        .filter_map(|p| p.admin.as_ref())
        .filter(|a| a.security_domain_redownloads.unwrap_or(0) > reported)
        .max_by_key(|a| a.security_domain_redownloads.unwrap_or(0))?;
    let count = newest.security_domain_redownloads.unwrap_or(0);
    let who = newest
        .last_security_domain_redownload
        .as_ref()
        .map(|d| {
            let when = k8s_openapi::jiff::Timestamp::from_second(d.time)
                .map(|t| t.to_string())
                .unwrap_or_else(|_| d.time.to_string());
            format!(
                "by {} at {when} (to {} custodian keys, quorum {})",
                d.principal, d.wrapping_keys, d.quorum
            )
        })
        .unwrap_or_default();
    Some((
        count,
        format!(
            "the security domain was downloaded again {who}; re-downloads so far: {count}. Whoever holds a quorum of the new custodian keys holds every key of this pool: if this was not a planned custodian change, treat the domain as exposed (docs/threat-model.md)"
        ),
    ))
}

/// The part of `GET /admin/status` ([`keystead_core::status::PoolStatus`]) the operator
/// uses, every field optional (unknown fields are ignored), plus what it derives (`role`,
/// `term`, `lag`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdminStatus {
    pub activation: Activation,
    #[serde(default)]
    pub security_domain_fingerprint: Option<String>,
    #[serde(default)]
    pub domain_loaded: Option<bool>,
    /// Re-downloads of the activated domain recorded by the pool, and the last one.
    #[serde(default)]
    pub security_domain_redownloads: Option<i64>,
    #[serde(default)]
    pub last_security_domain_redownload: Option<DomainRedownload>,
    #[serde(default)]
    pub applied_index: Option<i64>,
    #[serde(default)]
    pub role: Option<String>,
    #[serde(default)]
    pub term: Option<i64>,
    #[serde(default)]
    pub lag: Option<i64>,
    /// The partition's Raft view (replicated pools): role, term, and on the leader each
    /// member's lag. [`fill_replication`] copies it into `role`, `term` and `lag`.
    #[serde(default)]
    pub replication: Option<ReplicationView>,
}

/// `replication` of `GET /admin/status`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplicationView {
    #[serde(default)]
    pub role: Option<String>,
    #[serde(default)]
    pub term: Option<i64>,
    #[serde(default)]
    pub members: Vec<MemberView>,
}

/// One member in the Raft view of a partition (`lag` is known on the leader only).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberView {
    pub name: String,
    #[serde(default)]
    pub lag: Option<i64>,
}

fn is_leader(a: &AdminStatus) -> bool {
    a.role
        .as_deref()
        .is_some_and(|r| r.eq_ignore_ascii_case("leader"))
}

/// Fill each partition's `role` and `term` from its own Raft view and its `lag` from the
/// leader's view of the members (a follower does not know its own lag).
pub fn fill_replication(observed: &mut [ObservedPartition]) {
    for a in observed.iter_mut().filter_map(|p| p.admin.as_mut()) {
        if let Some(r) = &a.replication {
            a.role = a.role.clone().or(r.role.clone());
            a.term = a.term.or(r.term);
        }
    }
    let lags: BTreeMap<String, i64> = observed
        .iter()
        .filter_map(|p| p.admin.as_ref())
        .filter(|a| is_leader(a))
        .filter_map(|a| a.replication.as_ref())
        .flat_map(|r| r.members.iter())
        .filter_map(|m| Some((m.name.clone(), m.lag?)))
        .collect();
    for p in observed.iter_mut() {
        if let Some(a) = p.admin.as_mut() {
            a.lag = a.lag.or(lags.get(&p.name).copied());
        }
    }
}

/// One partition as observed (pod, volume, admin API).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ObservedPartition {
    pub name: String,
    pub pod_exists: bool,
    pub pod_terminating: bool,
    pub pod_ready: bool,
    pub template_hash: Option<String>,
    /// The pod's `creationTimestamp`.
    pub pod_created: Option<Time>,
    /// The partition's volume is gone (PVC phase `Lost`, or its node no longer exists).
    pub data_lost: bool,
    pub admin: Option<AdminStatus>,
    /// Why the admin API could not be read (no secrets in it).
    pub admin_error: Option<String>,
    /// The scheduler's message when the pod cannot be placed (its `PodScheduled` condition
    /// is False with reason `Unschedulable`).
    pub unschedulable: Option<String>,
}

impl ObservedPartition {
    /// Healthy: serving (pod Ready), admin API answering, and the domain key loaded when the
    /// pool is activated.
    pub fn healthy(&self) -> bool {
        self.pod_exists
            && !self.pod_terminating
            && self.pod_ready
            && self.admin.as_ref().is_some_and(|a| {
                a.activation != Activation::Activated || a.domain_loaded != Some(false)
            })
    }

    /// The pod serves and its admin API answers (whatever the domain's state).
    fn serving(&self) -> bool {
        self.pod_exists && !self.pod_terminating && self.pod_ready && self.admin.is_some()
    }

    fn problem(&self) -> Option<String> {
        if !self.pod_exists {
            Some("pod does not exist".into())
        } else if self.pod_terminating {
            Some("pod is terminating".into())
        } else if let Some(why) = self.unschedulable.as_ref().filter(|_| !self.pod_ready) {
            Some(format!("pod cannot be scheduled: {why}"))
        } else if !self.pod_ready {
            Some("pod is not Ready".into())
        } else if let Some(e) = &self.admin_error {
            Some(format!("admin API: {e}"))
        } else if self.admin.is_none() {
            Some("admin API not read".into())
        } else if !self.healthy() {
            Some("domain key not loaded yet".into())
        } else {
            None
        }
    }
}

/// What the status computation produced.
#[derive(Clone, Debug, PartialEq)]
pub struct Derived {
    pub conditions: Vec<Cond>,
    pub partitions: Vec<PartitionStatus>,
    pub ready_partitions: String,
    pub fingerprint: Option<String>,
    /// When to look again (a partition approaching its healing threshold, a pool starting).
    pub requeue_after: Option<Duration>,
}

fn ts(t: &Time) -> Timestamp {
    t.0
}

fn since(a: Timestamp, b: Timestamp) -> SignedDuration {
    b.duration_since(a)
}

/// Every answering partition (at least a quorum) is activated without the domain key: the
/// pool lost the domain everywhere (memory-only seal, all partitions restarted). No partition
/// can fetch it from a peer and replacing pods does not bring it back: the custodians upload
/// it again (SecurityDomain mode Upload).
pub fn domain_lost_everywhere(observed: &[ObservedPartition]) -> bool {
    let answering: Vec<&AdminStatus> = observed.iter().filter_map(|p| p.admin.as_ref()).collect();
    answering.len() >= QUORUM
        && answering
            .iter()
            .all(|a| a.activation == Activation::Activated && a.domain_loaded == Some(false))
}

/// Derive the conditions and per-partition status of a valid pool.
pub fn derive_status(
    spec: &ManagedHsmSpec,
    observed: &[ObservedPartition],
    desired_hash: &str,
    previous: Option<&ManagedHsmStatus>,
    now: &Time,
) -> Derived {
    let n = observed.len();
    // With the domain lost everywhere, a partition that serves is as healthy as it can be:
    // no healing (it would not help); the pool waits for the upload.
    let lost = domain_lost_everywhere(observed);
    let ok = |p: &ObservedPartition| if lost { p.serving() } else { p.healthy() };
    let healthy = observed.iter().filter(|p| ok(p)).count();
    let prev_parts: BTreeMap<&str, &PartitionStatus> = previous
        .map(|s| s.partitions.iter().map(|p| (p.name.as_str(), p)).collect())
        .unwrap_or_default();
    let threshold =
        SignedDuration::from_secs(i64::from(spec.healing.unhealthy_threshold_seconds.max(0)));
    let mut requeue: Option<Duration> = None;
    let mut overdue = false;

    let partitions: Vec<PartitionStatus> = observed
        .iter()
        .map(|p| {
            let unhealthy_since = if ok(p) {
                None
            } else {
                let since_t = prev_parts
                    .get(p.name.as_str())
                    .and_then(|q| q.unhealthy_since.clone())
                    .unwrap_or_else(|| now.clone());
                // A replaced pod gets its own time to start: the clock never runs from
                // before the pod was created (else healing deletes it again at once).
                Some(match &p.pod_created {
                    Some(c) if ts(c) > ts(&since_t) => c.clone(),
                    _ => since_t,
                })
            };
            if let Some(s) = &unhealthy_since {
                let left = threshold - since(ts(s), ts(now));
                if left <= SignedDuration::ZERO {
                    overdue |= spec.healing.enabled;
                } else {
                    let d = Duration::from_secs(left.as_secs().max(1) as u64);
                    requeue = Some(requeue.map_or(d, |r| r.min(d)));
                }
            }
            let a = p.admin.as_ref();
            PartitionStatus {
                name: p.name.clone(),
                ready: ok(p),
                role: a.and_then(|a| a.role.clone()),
                term: a.and_then(|a| a.term),
                applied_index: a.and_then(|a| a.applied_index),
                lag: a.and_then(|a| a.lag),
                unhealthy_since,
                message: p.problem(),
            }
        })
        .collect();

    // Security domain: from any partition that answers; the last known state otherwise.
    let statuses: Vec<&AdminStatus> = observed.iter().filter_map(|p| p.admin.as_ref()).collect();
    let activated = statuses
        .iter()
        .find(|a| a.activation == Activation::Activated);
    let fingerprint = activated.and_then(|a| a.security_domain_fingerprint.clone());
    let prev_sd = previous.and_then(|s| c::find(&s.conditions, c::SECURITY_DOMAIN_ACTIVATED));
    let sd = if lost {
        Cond::new(
            c::SECURITY_DOMAIN_ACTIVATED,
            Status::False,
            Reason::RecoveryPending,
            "every partition lost the domain key (memory-only seal, all restarted); upload the security domain (SecurityDomain mode Upload) to bring it back",
        )
    } else if activated.is_some() {
        Cond::new(
            c::SECURITY_DOMAIN_ACTIVATED,
            Status::True,
            Reason::Activated,
            "the pool holds an activated security domain",
        )
    } else if statuses
        .iter()
        .any(|a| a.activation == Activation::RecoveryPending)
    {
        Cond::new(
            c::SECURITY_DOMAIN_ACTIVATED,
            Status::False,
            Reason::RecoveryPending,
            "the pool lost its domain key; upload the security domain (SecurityDomain mode Upload) to recover it",
        )
    } else if !statuses.is_empty() {
        Cond::new(
            c::SECURITY_DOMAIN_ACTIVATED,
            Status::False,
            Reason::WaitingForSecurityDomain,
            "the pool is provisioned; create a SecurityDomain (mode Download) with the custodians' certificates to activate it",
        )
    } else if let Some(p) = prev_sd.filter(|p| p.status == "True") {
        Cond::new(
            c::SECURITY_DOMAIN_ACTIVATED,
            Status::True,
            Reason::Activated,
            p.message.clone(),
        )
    } else {
        Cond::new(
            c::SECURITY_DOMAIN_ACTIVATED,
            Status::Unknown,
            Reason::PartitionsUnreachable,
            "no partition's admin API answers yet",
        )
    };
    let is_activated = sd.status == Status::True;

    let hash_mismatch = observed
        .iter()
        .any(|p| p.pod_exists && p.template_hash.as_deref() != Some(desired_hash));
    let replacing = observed.iter().any(|p| !p.pod_exists || p.pod_terminating);
    let unhealthy_names: Vec<&str> = observed
        .iter()
        .filter(|p| !ok(p))
        .map(|p| p.name.as_str())
        .collect();
    let unschedulable: Vec<String> = observed
        .iter()
        .filter(|p| !p.pod_ready)
        .filter_map(|p| {
            Some(format!(
                "{} cannot be scheduled: {}",
                p.name,
                p.unschedulable.as_ref()?
            ))
        })
        .collect();
    let ph = if healthy == n && n > 0 {
        Cond::new(
            c::PARTITIONS_HEALTHY,
            Status::True,
            Reason::AllPartitionsHealthy,
            format!("{healthy}/{n} partitions healthy"),
        )
    } else if !unschedulable.is_empty() {
        // The scheduler's own words, and what usually causes it here: fewer topology
        // domains (spec.topologyKey) than partitions under required anti-affinity.
        Cond::new(
            c::PARTITIONS_HEALTHY,
            Status::False,
            Reason::PartitionUnschedulable,
            format!(
                "{healthy}/{n} partitions healthy; {}. With antiAffinity Required every partition needs its own value of node label {}: add nodes in more domains, or set antiAffinity: Preferred",
                unschedulable.join("; "),
                spec.topology_key
            ),
        )
    } else if !is_activated && sd.reason != Reason::RecoveryPending && healthy < n && !overdue {
        Cond::new(
            c::PARTITIONS_HEALTHY,
            Status::False,
            Reason::PartitionsStarting,
            format!(
                "{healthy}/{n} partitions healthy; waiting for {}",
                unhealthy_names.join(", ")
            ),
        )
    } else if healthy < QUORUM {
        Cond::new(
            c::PARTITIONS_HEALTHY,
            Status::False,
            Reason::QuorumLost,
            format!("only {healthy}/{n} partitions healthy; the pool needs {QUORUM} to serve"),
        )
    } else if overdue || (replacing && !hash_mismatch) {
        Cond::new(
            c::PARTITIONS_HEALTHY,
            Status::False,
            Reason::Healing,
            format!("replacing {}", unhealthy_names.join(", ")),
        )
    } else if hash_mismatch {
        Cond::new(
            c::PARTITIONS_HEALTHY,
            Status::False,
            Reason::RollingUpgrade,
            format!("rolling upgrade: {healthy}/{n} partitions healthy"),
        )
    } else {
        Cond::new(
            c::PARTITIONS_HEALTHY,
            Status::False,
            Reason::PartitionUnhealthy,
            format!(
                "{healthy}/{n} partitions healthy; unhealthy: {}",
                unhealthy_names.join(", ")
            ),
        )
    };

    let ready = match (sd.status, sd.reason) {
        (Status::True, _) if healthy >= QUORUM => Cond::new(
            c::READY,
            Status::True,
            Reason::PoolReady,
            format!("the pool serves requests ({healthy}/{n} partitions healthy)"),
        ),
        (Status::True, _) => Cond::new(
            c::READY,
            Status::False,
            Reason::QuorumLost,
            format!("only {healthy}/{n} partitions healthy; the pool needs {QUORUM} to serve"),
        ),
        (_, Reason::RecoveryPending) => Cond::new(
            c::READY,
            Status::False,
            Reason::RecoveryPending,
            sd.message.clone(),
        ),
        (_, Reason::WaitingForSecurityDomain) if ph.status == Status::True => Cond::new(
            c::READY,
            Status::False,
            Reason::WaitingForSecurityDomain,
            sd.message.clone(),
        ),
        _ => Cond::new(
            c::READY,
            Status::False,
            Reason::Provisioning,
            format!("{healthy}/{n} partitions healthy; provisioning"),
        ),
    };
    let backup = Cond::new(
        c::LAST_BACKUP_SUCCEEDED,
        Status::Unknown,
        Reason::NoBackupYet,
        "no backup of this pool has completed",
    );

    // While a partition is not healthy the pool is looked at again within 10 s, whatever
    // the healing threshold: a partition that recovers on its own (a follower loading the
    // domain from a peer) must show in the status at once, not when healing would be due.
    if ph.status != Status::True {
        let d = Duration::from_secs(10);
        requeue = Some(requeue.map_or(d, |r| r.min(d)));
    }
    Derived {
        conditions: vec![ready, ph, sd, backup],
        partitions,
        ready_partitions: format!("{healthy}/{n}"),
        fingerprint,
        requeue_after: requeue,
    }
}

/// Conditions of a pool whose spec is invalid.
pub fn invalid_conditions(message: &str) -> Vec<Cond> {
    vec![Cond::new(
        c::READY,
        Status::False,
        Reason::InvalidSpec,
        message,
    )]
}

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
            if since(ts(since_t), ts(now)) < threshold {
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
            .all(|p| p.admin.as_ref().and_then(|a| a.lag).unwrap_or(0) <= MAX_UPGRADE_LAG);
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

// ---------------------------------------------------------------------------------------
// Soft delete, purge, recovery
// ---------------------------------------------------------------------------------------

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
