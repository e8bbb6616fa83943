//! A pool as the ManagedHsm controller observed it, partition by partition (pod, volume,
//! admin API), and what follows from that alone: each partition's health, the Raft roles
//! and lags, a domain lost everywhere, re-downloads not reported yet. Pure functions only.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use keystead_core::status::{Activation, PoolStatus};
use serde::Deserialize;
use std::collections::BTreeMap;

/// Partitions needed for quorum in a group of three.
pub const QUORUM: usize = 2;

/// The partition's Raft role as it reports it (`leader`, `follower`, `candidate`,
/// `learner`); `None` for a single-partition pool.
pub fn role(a: &PoolStatus) -> Option<&str> {
    a.replication
        .as_ref()
        .map(|r| r.role.as_str())
        .filter(|r| !r.is_empty())
}

/// The partition's Raft term; `None` for a single-partition pool.
pub fn term(a: &PoolStatus) -> Option<u64> {
    a.replication.as_ref().map(|r| r.term)
}

pub(super) fn is_leader(a: &PoolStatus) -> bool {
    role(a).is_some_and(|r| r.eq_ignore_ascii_case("leader"))
}

/// Fill each partition's `lag` from the leader's view of the members (a follower does not
/// know its own lag).
pub fn fill_replication(observed: &mut [ObservedPartition]) {
    let lags: BTreeMap<String, u64> = observed
        .iter()
        .filter_map(|p| p.admin.as_ref())
        .filter(|a| is_leader(a))
        .filter_map(|a| a.replication.as_ref())
        .flat_map(|r| r.members.iter())
        .filter_map(|m| Some((m.name.clone(), m.lag?)))
        .collect();
    for p in observed.iter_mut() {
        p.lag = p.lag.or(lags.get(&p.name).copied());
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
    /// The pod's uid: a delete names it, so a pod re-created since the observation (read
    /// from the watch cache) is never deleted by mistake.
    pub pod_uid: Option<String>,
    /// The pod's `creationTimestamp`.
    pub pod_created: Option<Time>,
    /// The partition's volume is gone (PVC phase `Lost`, or its node no longer exists).
    pub data_lost: bool,
    /// `GET /admin/status` of the partition (the contract of keystead-core).
    pub admin: Option<PoolStatus>,
    /// Entries behind the leader's last log index, from the leader's view
    /// ([`fill_replication`]).
    pub lag: Option<u64>,
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
            && self
                .admin
                .as_ref()
                .is_some_and(|a| a.activation != Activation::Activated || a.domain_loaded)
    }

    /// Running, answering, and holding the domain when the pool is activated — maybe not
    /// Ready yet (catching up with the group): what healing waits for.
    pub fn alive(&self) -> bool {
        self.serving()
            && self
                .admin
                .as_ref()
                .is_some_and(|a| a.activation != Activation::Activated || a.domain_loaded)
    }

    /// The pod runs and its admin API answers (whatever the domain's state: a partition
    /// without the domain is not Ready, /readyz).
    pub(super) fn serving(&self) -> bool {
        self.pod_exists && !self.pod_terminating && self.admin.is_some()
    }

    pub(super) fn problem(&self) -> Option<String> {
        if !self.pod_exists {
            Some("pod does not exist".into())
        } else if self.pod_terminating {
            Some("pod is terminating".into())
        } else if let Some(why) = self.unschedulable.as_ref().filter(|_| !self.pod_ready) {
            Some(format!("pod cannot be scheduled: {why}"))
        } else if !self.pod_ready {
            Some(match &self.admin {
                Some(a) if a.activation == Activation::Activated && !a.domain_loaded => {
                    "pod is not Ready: the domain key is not loaded yet".into()
                }
                Some(_) => "pod is not Ready: not caught up with the group yet".into(),
                None => "pod is not Ready".into(),
            })
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

/// Every answering partition (at least a quorum) is activated without the domain key: the
/// pool lost the domain everywhere (memory-only seal, all partitions restarted). No partition
/// can fetch it from a peer and replacing pods does not bring it back: the custodians upload
/// it again (SecurityDomain mode Upload).
pub fn domain_lost_everywhere(observed: &[ObservedPartition]) -> bool {
    let answering: Vec<&PoolStatus> = observed.iter().filter_map(|p| p.admin.as_ref()).collect();
    answering.len() >= QUORUM
        && answering
            .iter()
            .all(|a| a.activation == Activation::Activated && !a.domain_loaded)
}

fn redownloads(a: &PoolStatus) -> i64 {
    i64::try_from(a.security_domain_redownloads).unwrap_or(i64::MAX)
}

/// A Warning Event's note for re-downloads of the security domain the operator has not
/// reported yet: the highest count any partition reports against `reported` (the count
/// in the pool's status). `None`: nothing new.
pub fn redownload_note(observed: &[ObservedPartition], reported: i64) -> Option<(i64, String)> {
    let newest = observed
        .iter()
        .filter_map(|p| p.admin.as_ref())
        .filter(|a| redownloads(a) > reported)
        .max_by_key(|a| redownloads(a))?;
    let count = redownloads(newest);
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
