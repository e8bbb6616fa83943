//! The status of a valid ManagedHsm derived from what was observed: its conditions (Ready,
//! PartitionsHealthy, SecurityDomainActivated, LastBackupSucceeded), each partition's status
//! and when to look again. Pure functions only.

use super::observed::{self, ObservedPartition, QUORUM, domain_lost_everywhere};
use crate::conditions::{self as c, Cond, Reason, Status};
use crate::crd::{ManagedHsmSpec, ManagedHsmStatus, PartitionStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use keystead_core::status::{Activation, PoolStatus};
use std::collections::BTreeMap;
use std::time::Duration;

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
    // The healing clock runs only for a partition that is down or without the domain: one
    // that answers with the domain but is not Ready yet (catching up with the group, which
    // can take minutes in a large pool) is not replaced for it.
    let alive = |p: &ObservedPartition| if lost { p.serving() } else { p.alive() };
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
            let unhealthy_since = if alive(p) {
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
                role: a.and_then(observed::role).map(str::to_string),
                term: a
                    .and_then(observed::term)
                    .and_then(|t| i64::try_from(t).ok()),
                applied_index: a.and_then(|a| i64::try_from(a.applied_index).ok()),
                lag: p.lag.and_then(|l| i64::try_from(l).ok()),
                unhealthy_since,
                message: p.problem(),
            }
        })
        .collect();

    // Security domain: from any partition that answers; the last known state otherwise.
    let statuses: Vec<&PoolStatus> = observed.iter().filter_map(|p| p.admin.as_ref()).collect();
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
