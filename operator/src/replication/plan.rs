//! The pure half of the replication controller (docs/regions.md, "The operator"): checks of
//! `spec.replication`, the region configuration the partitions start with, the next call to
//! make on the pool's admin API (name a region, demote, promote), `status.replication` and
//! the `ReplicationHealthy` condition from the partitions' merged region view, and the
//! Events a status change is worth. No I/O: `controller` does the calls.

use crate::conditions::{self as c, Cond};
use crate::crd::{RegionLag, ReplicationRole, ReplicationSpec, ReplicationStatus};
use keystead_core::region::{PrimarySource, RegionConfig, RegionRole, RegionStatus};
use std::collections::BTreeMap;

/// Where the partitions find their region configuration and the primary's CA.
pub const REGION_DIR: &str = "/etc/keystead/region";
pub const REGION_FILE: &str = "region.json";
pub const PRIMARY_CA_FILE: &str = "primary-ca.crt";

/// How often a pool with `spec.replication` is looked at again: lag and role changes come
/// from the partitions, not from a watch.
pub const REQUEUE: std::time::Duration = std::time::Duration::from_secs(10);

/// A region is healthy while it acknowledged within this many seconds.
pub const SEEN_WITHIN_SECONDS: u64 = 30;

/// Problems of `spec.replication` the schema cannot express.
pub fn validate(spec: &ReplicationSpec) -> Vec<String> {
    let mut out = Vec::new();
    for name in std::iter::once(&spec.region).chain(spec.regions.iter().map(|r| &r.name)) {
        if let Err(e) = keystead_core::region::check_region_name(name) {
            out.push(e);
        }
    }
    if spec.primary != spec.region && !spec.regions.iter().any(|r| r.name == spec.primary) {
        out.push(format!(
            "primary {:?} is neither this region nor one of regions",
            spec.primary
        ));
    }
    for r in &spec.regions {
        if r.name == spec.region {
            out.push(format!("regions lists this region {:?} itself", r.name));
        }
        for e in &r.endpoints {
            if !e.starts_with("https://") {
                out.push(format!(
                    "region {:?}: endpoint {e:?} is not an https:// URL",
                    r.name
                ));
            }
        }
    }
    if spec.primary != spec.region {
        if spec.promotion_token.is_some() || spec.force == Some(true) {
            out.push("promotionToken and force are only for the region named primary".into());
        }
        if spec
            .regions
            .iter()
            .any(|r| r.name == spec.primary && r.endpoints.is_empty())
        {
            out.push(format!(
                "the primary region {:?} has no endpoints",
                spec.primary
            ));
        }
    }
    if spec.promotion_token.is_some() && spec.force == Some(true) {
        out.push("give either promotionToken (switchover) or force (failover), not both".into());
    }
    out
}

/// The region configuration of the pool's partitions (`serve --region-config`): this
/// region, and while another region is primary, where it is. Read at start only: a
/// switchover or failover is carried by the replicated state, not by this file.
pub fn region_config(spec: &ReplicationSpec) -> RegionConfig {
    let primary = (spec.primary != spec.region)
        .then(|| spec.regions.iter().find(|r| r.name == spec.primary))
        .flatten()
        .map(|r| PrimarySource {
            name: r.name.clone(),
            endpoints: r.endpoints.clone(),
            ca_file: format!("{REGION_DIR}/{PRIMARY_CA_FILE}").into(),
        });
    RegionConfig {
        name: spec.region.clone(),
        primary,
        write_lease_ms: spec.write_lease_seconds.map(|s| u64::from(s) * 1000),
    }
}

/// The ports of the other regions' endpoints the NetworkPolicy does not open already (443
/// and 6443 are open to the token issuers).
pub fn endpoint_ports(spec: Option<&ReplicationSpec>) -> Vec<i32> {
    let mut out: Vec<i32> = spec
        .into_iter()
        .flat_map(|s| s.regions.iter().flat_map(|r| r.endpoints.iter()))
        .filter_map(|e| {
            let authority = e.strip_prefix("https://")?.split('/').next()?;
            let port = match authority.strip_prefix('[') {
                Some(v6) => v6.split_once("]:").map(|(_, p)| p),
                None => authority.rsplit_once(':').map(|(_, p)| p),
            };
            port.map_or(Some(443), |p| p.parse().ok())
        })
        .filter(|p| ![443, 6443].contains(p))
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// SHA-256 (hex) of a PEM certificate's DER, as the partitions list accepted regions.
pub fn ca_sha256(pem_text: &str) -> Option<String> {
    let p = pem::parse(pem_text.as_bytes()).ok()?;
    Some(hex::encode(
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, p.contents()).as_ref(),
    ))
}

/// What the partitions say, merged: `None` while no partition answered with a region view.
pub type View = Option<RegionStatus>;

/// The role a merged view shows.
pub fn role(v: &RegionStatus) -> ReplicationRole {
    match v.role {
        RegionRole::Replica => ReplicationRole::Replica,
        RegionRole::Primary if v.demoted_to.is_some() => ReplicationRole::Demoted,
        RegionRole::Primary => ReplicationRole::Primary,
    }
}

/// One call on the pool's admin API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// `PUT /admin/regions/{name}` with its CA.
    Accept { name: String, ca_pem: String },
    /// `DELETE /admin/regions/{name}`: a region no longer in `spec.replication.regions`.
    Remove { name: String },
    /// `POST /admin/regions/demote` (switchover, step 1).
    Demote { to: String, endpoints: Vec<String> },
    /// `POST /admin/regions/promote` with the token (switchover, step 2).
    Promote { token: String },
    /// `POST /admin/regions/promote` with `force` (failover).
    ForcePromote,
    /// `POST /admin/regions/follow`: a replica region whose spec names another primary
    /// than the one it follows (after a failover elsewhere).
    Follow {
        to: String,
        endpoints: Vec<String>,
        ca_pem: String,
    },
}

impl Step {
    /// For logs and errors (never the token).
    pub fn label(&self) -> &'static str {
        match self {
            Step::Accept { .. } => "naming a region",
            Step::Remove { .. } => "removing a region no longer listed",
            Step::Demote { .. } => "demoting this primary",
            Step::Promote { .. } => "promoting with the demotion token",
            Step::ForcePromote => "promoting by force (failover)",
            Step::Follow { .. } => "following the region promoted by a failover",
        }
    }
}

/// The calls the spec asks for, given the merged view and the CAs of `spec.regions` that
/// could be read (name → PEM). Nothing while the partitions have not answered.
pub fn next_steps(
    spec: &ReplicationSpec,
    view: &View,
    cas: &BTreeMap<String, String>,
) -> Vec<Step> {
    let Some(v) = view else { return vec![] };
    let mut out = Vec::new();
    let me_primary = spec.primary == spec.region;
    match role(v) {
        ReplicationRole::Primary => {
            // Name every region whose CA is known and not named with that CA yet.
            for r in &spec.regions {
                let Some(pem) = cas.get(&r.name) else {
                    continue;
                };
                let named = v
                    .accepted
                    .iter()
                    .find(|a| a.name == r.name)
                    .map(|a| a.ca_sha256.clone());
                if named.is_none() || named != ca_sha256(pem) {
                    out.push(Step::Accept {
                        name: r.name.clone(),
                        ca_pem: pem.clone(),
                    });
                }
            }
            // Refuse every region the spec no longer lists (the spec is the whole truth of
            // the topology; a region named by hand and not in the spec is removed too).
            for a in &v.accepted {
                if a.name != spec.region && !spec.regions.iter().any(|r| r.name == a.name) {
                    out.push(Step::Remove {
                        name: a.name.clone(),
                    });
                }
            }
            if !me_primary && let Some(to) = spec.regions.iter().find(|r| r.name == spec.primary) {
                // The successor must be named before the demotion (the old primary follows it
                // by the CA it was named with).
                if !out
                    .iter()
                    .any(|s| matches!(s, Step::Accept { name, .. } if *name == to.name))
                    && v.accepted.iter().any(|a| a.name == to.name)
                {
                    out.push(Step::Demote {
                        to: to.name.clone(),
                        endpoints: to.endpoints.clone(),
                    });
                }
            }
        }
        ReplicationRole::Replica if me_primary && v.joined => {
            if let Some(token) = &spec.promotion_token {
                out.push(Step::Promote {
                    token: token.clone(),
                });
            } else if spec.force == Some(true) {
                out.push(Step::ForcePromote);
            }
        }
        // The spec names another primary than the one this region follows: re-point it
        // (after a failover; a planned switchover re-points it by itself, and a call made
        // before the promotion is answered "not promoted yet").
        ReplicationRole::Replica if v.joined && v.primary.as_deref() != Some(&spec.primary) => {
            if let (Some(to), Some(pem)) = (
                spec.regions.iter().find(|r| r.name == spec.primary),
                cas.get(&spec.primary),
            ) {
                out.push(Step::Follow {
                    to: to.name.clone(),
                    endpoints: to.endpoints.clone(),
                    ca_pem: pem.clone(),
                });
            }
        }
        _ => {}
    }
    out
}

fn seconds(ms: u64) -> String {
    format!("{}.{:03}", ms / 1000, ms % 1000)
}

/// `status.replication` from the merged view (`None`: no partition answered; the previous
/// status is kept by the caller).
pub fn status(spec: &ReplicationSpec, v: &RegionStatus) -> ReplicationStatus {
    let role = role(v);
    let regions = spec
        .regions
        .iter()
        .filter(|r| role == ReplicationRole::Primary || v.regions.iter().any(|p| p.name == r.name))
        .map(|r| {
            let seen = v.regions.iter().find(|p| p.name == r.name);
            RegionLag {
                name: r.name.clone(),
                accepted: v.accepted.iter().any(|a| a.name == r.name),
                acknowledged_index: seen.map(|p| p.acknowledged_index as i64),
                lag_entries: seen.map(|p| p.lag_entries as i64),
            }
        })
        .collect();
    let replica = role == ReplicationRole::Replica;
    ReplicationStatus {
        region: Some(spec.region.clone()),
        role: Some(role),
        epoch: Some(v.epoch as i64),
        primary: v.primary.clone().or_else(|| v.demoted_to.clone()),
        joined: replica.then_some(v.joined),
        applied_primary_index: replica.then_some(v.applied_primary_index as i64),
        primary_index: Some(v.primary_index as i64),
        lag_entries: replica.then_some(v.lag_entries as i64),
        lag_seconds: replica.then(|| seconds(v.lag_ms)),
        primary_reachable: replica.then_some(v.primary_reachable),
        primary_refuses: (replica && v.primary_refuses).then_some(true),
        regions,
        demoted_to: v.demoted_to.clone(),
        demotion_token: v.demotion_token.clone(),
        discarded_writes: v.discarded_writes.clone(),
        removed_by: v.removed_by.clone(),
        write_lease_expired: (role == ReplicationRole::Primary && v.writes_refused_by_lease)
            .then_some(true),
    }
}

/// `ReplicationHealthy`: does this region do what `spec.replication` asks?
pub fn condition(
    spec: &ReplicationSpec,
    view: &View,
    missing_cas: &[String],
    step_error: Option<&str>,
) -> Cond {
    let cond = |ok: bool, reason: c::Reason, msg: String| {
        let s = if ok {
            c::Status::True
        } else {
            c::Status::False
        };
        Cond::new(c::REPLICATION_HEALTHY, s, reason, msg)
    };
    if !missing_cas.is_empty() {
        return cond(
            false,
            c::Reason::RegionCaMissing,
            format!(
                "the CA ConfigMap of region(s) {} cannot be read: copy each region's ca.crt into the ConfigMap named in spec.replication.regions",
                missing_cas.join(", ")
            ),
        );
    }
    let Some(v) = view else {
        return cond(
            false,
            c::Reason::PartitionsUnreachable,
            "no partition reported its region state yet".into(),
        );
    };
    if let Some(e) = step_error {
        return cond(false, c::Reason::RegionCallFailed, e.to_string());
    }
    let me_primary = spec.primary == spec.region;
    match (role(v), me_primary) {
        (ReplicationRole::Primary, true) => {
            let lagging: Vec<String> = spec
                .regions
                .iter()
                .filter(|r| {
                    !v.regions.iter().any(|p| {
                        p.name == r.name
                            && p.last_seen_seconds_ago
                                .is_some_and(|s| s <= SEEN_WITHIN_SECONDS)
                    })
                })
                .map(|r| r.name.clone())
                .collect();
            if v.writes_refused_by_lease {
                cond(
                    false,
                    c::Reason::WriteLeaseExpired,
                    format!(
                        "primary region {}: no region polled it within its write lease ({} ms), so it refuses writes until one polls again (reads and crypto go on)",
                        spec.region,
                        v.write_lease_ms.unwrap_or_default()
                    ),
                )
            } else if lagging.is_empty() {
                cond(
                    true,
                    c::Reason::RegionsFollowing,
                    format!(
                        "primary region {} at epoch {}; every region follows",
                        spec.region, v.epoch
                    ),
                )
            } else {
                cond(
                    false,
                    c::Reason::RegionNotFollowing,
                    format!(
                        "primary region {}: no request from region(s) {} within {SEEN_WITHIN_SECONDS} s",
                        spec.region,
                        lagging.join(", ")
                    ),
                )
            }
        }
        (ReplicationRole::Primary, false) => cond(
            false,
            c::Reason::Demoting,
            format!(
                "demoting to {}: waiting for it to be named here and for the demotion",
                spec.primary
            ),
        ),
        (ReplicationRole::Demoted, _) if v.demotion_token.is_none() => cond(
            false,
            c::Reason::Demoting,
            format!(
                "demoted (no more writes here); the demotion token is published once every region has applied this primary's last index, then promote region {} with it",
                v.demoted_to.clone().unwrap_or_default()
            ),
        ),
        (ReplicationRole::Demoted, _) => cond(
            false,
            c::Reason::Demoted,
            format!(
                "demoted; promote region {} with status.replication.demotionToken (set its spec.replication.primary to itself and promotionToken)",
                v.demoted_to.clone().unwrap_or_default()
            ),
        ),
        (ReplicationRole::Replica, true) => cond(
            false,
            c::Reason::WaitingForPromotion,
            if v.joined {
                "this region is named primary: set spec.replication.promotionToken (switchover) or force: true (failover)".into()
            } else {
                "this region is named primary but never joined a primary region".into()
            },
        ),
        (ReplicationRole::Replica, false) if !v.joined => cond(
            false,
            c::Reason::Joining,
            format!(
                "joining primary region {}: it must name this region (its spec.replication.regions) and be reachable",
                v.primary.clone().unwrap_or_default()
            ),
        ),
        (ReplicationRole::Replica, false) if v.removed_by.is_some() => cond(
            false,
            c::Reason::RemovedByPrimary,
            format!(
                "primary region {} removed this region: its pool was purged (keys and security domain gone); name this region on the primary again to have it join anew",
                v.removed_by.clone().unwrap_or_default()
            ),
        ),
        (ReplicationRole::Replica, false) if v.primary_refuses => cond(
            false,
            c::Reason::PrimaryRefuses,
            format!(
                "primary region {} refuses this region (removed from its spec.replication.regions, or named there with another CA): nothing new arrives here and writes are refused; name this region on the primary again",
                v.primary.clone().unwrap_or_default()
            ),
        ),
        (ReplicationRole::Replica, false) if !v.primary_reachable => cond(
            false,
            c::Reason::PrimaryUnreachable,
            format!(
                "primary region {} does not answer; reads and crypto are served here, writes refused — promote this region (force) to take writes",
                v.primary.clone().unwrap_or_default()
            ),
        ),
        (ReplicationRole::Replica, false) => cond(
            true,
            c::Reason::Following,
            format!(
                "following primary region {} at epoch {}: applied {}, lag {} entries",
                v.primary.clone().unwrap_or_default(),
                v.epoch,
                v.applied_primary_index,
                v.lag_entries
            ),
        ),
    }
}

/// An Event worth raising: (warning?, reason, note).
pub type Note = (bool, &'static str, String);

/// The Events a status change is worth: a region joined, a demotion (its token is in the
/// status), a switchover or failover completed, discarded writes listed.
pub fn events(
    old: Option<&ReplicationStatus>,
    new: &ReplicationStatus,
    spec: &ReplicationSpec,
) -> Vec<Note> {
    let mut out = Vec::new();
    let old_role = old.and_then(|o| o.role);
    if new.joined == Some(true) && old.and_then(|o| o.joined) != Some(true) {
        out.push((
            false,
            "RegionJoined",
            format!(
                "region {} joined primary region {} (the security domain was sealed to this region's transfer key)",
                spec.region,
                new.primary.clone().unwrap_or_default()
            ),
        ));
    }
    for r in &new.regions {
        let was = old
            .map(|o| {
                o.regions
                    .iter()
                    .any(|p| p.name == r.name && p.acknowledged_index.is_some())
            })
            .unwrap_or(false);
        if r.acknowledged_index.is_some() && !was && new.role == Some(ReplicationRole::Primary) {
            out.push((
                false,
                "RegionJoined",
                format!("region {} follows this primary region", r.name),
            ));
        }
    }
    if new.removed_by.is_some() && old.and_then(|o| o.removed_by.as_ref()).is_none() {
        out.push((
            true,
            "RegionPurged",
            format!(
                "primary region {} removed region {}: its pool was purged (keys and security domain gone)",
                new.removed_by.clone().unwrap_or_default(),
                spec.region
            ),
        ));
    }
    if new.role == Some(ReplicationRole::Demoted) && old_role != Some(ReplicationRole::Demoted) {
        out.push((
            false,
            "Demoted",
            format!(
                "switchover: this primary region stopped taking writes and hands over to {}; its demotion token is in status.replication.demotionToken",
                new.demoted_to.clone().unwrap_or_default()
            ),
        ));
    }
    if new.role == Some(ReplicationRole::Primary)
        && matches!(old_role, Some(ReplicationRole::Replica))
    {
        let (reason, how) = if spec.promotion_token.is_some() {
            ("Switchover", "with the demotion token (no loss)")
        } else {
            (
                "Failover",
                "by force: what the old primary committed beyond this region's position is lost",
            )
        };
        out.push((
            spec.promotion_token.is_none(),
            reason,
            format!(
                "region {} promoted {how}; epoch {}",
                spec.region,
                new.epoch.unwrap_or_default()
            ),
        ));
    }
    let old_discarded = old.map(|o| o.discarded_writes.clone()).unwrap_or_default();
    if !new.discarded_writes.is_empty() && new.discarded_writes != old_discarded {
        out.push((
            true,
            "DiscardedWrites",
            format!(
                "this old primary was fenced by a failover; {} change(s) it committed were discarded: {}",
                new.discarded_writes.len(),
                new.discarded_writes.join(", ")
            ),
        ));
    }
    out
}
