//! Region replication wire types (docs/regions.md): the region configuration of a replica
//! region's partitions, the primary's region API (`/internal/region/...`), the admin API of
//! accepted regions, and the region part of `GET /admin/status`.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The error code of a write refused because the primary region cannot be reached.
pub const PRIMARY_UNREACHABLE: &str = "RegionPrimaryUnreachable";
/// The error code of a region request from a certificate no accepted region issued.
pub const NOT_ACCEPTED: &str = "RegionNotAccepted";
/// The error code (410) of a region request from a region the primary removed.
pub const REMOVED: &str = "RegionRemoved";

/// A primary's answer (410 Gone) to a region it removed: a Key Vault error body and the
/// removal notice (`region_token::RemovalNotice`, sealed) the region purges its pool on.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RemovedAnswer {
    pub error: crate::error::ErrorDetail,
    pub removal_notice: String,
}

/// `serve --region-config FILE`: how a partition of a replica region reaches its primary.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegionConfig {
    /// This region's name (as the primary names it in its accepted regions).
    pub name: String,
    /// The primary region (absent: this pool is a primary).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary: Option<PrimarySource>,
    /// While this pool is a primary with accepted regions: refuse changes of keys and RBAC
    /// when no replica region has polled it for this long (closes the split-brain window of
    /// a failover at the cost of availability; docs/regions.md "Write lease"). 3,000 to
    /// 300,000 ms; absent: no lease.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_lease_ms: Option<u64>,
}

/// The shortest write lease: a region polls at least once a second (long poll), with
/// room for a slow round trip.
pub const MIN_WRITE_LEASE_MS: u64 = 3_000;
/// The longest write lease.
pub const MAX_WRITE_LEASE_MS: u64 = 300_000;
/// The error code of a write a primary refuses because its write lease ran out.
pub const WRITE_LEASE_EXPIRED: &str = "RegionWriteLeaseExpired";

/// Where the primary region is.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PrimarySource {
    /// The primary's region name (for errors and status).
    pub name: String,
    /// HTTPS endpoints of the primary's partitions (any of them serves the region API).
    pub endpoints: Vec<String>,
    /// The CA that issued the primary partitions' server certificates.
    pub ca_file: PathBuf,
}

/// Error of a region configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("region configuration {path}: {message}")]
pub struct RegionConfigError {
    pub path: String,
    pub message: String,
}

impl RegionConfig {
    /// Read and check a region configuration file.
    pub fn load(path: &std::path::Path) -> Result<RegionConfig, RegionConfigError> {
        let err = |message: String| RegionConfigError {
            path: path.display().to_string(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read: {e}")))?;
        let cfg: RegionConfig =
            serde_json::from_str(&text).map_err(|e| err(format!("does not parse: {e}")))?;
        cfg.validate().map_err(err)?;
        Ok(cfg)
    }

    /// The checks `load` makes.
    pub fn validate(&self) -> Result<(), String> {
        check_region_name(&self.name)?;
        if let Some(ms) = self.write_lease_ms
            && !(MIN_WRITE_LEASE_MS..=MAX_WRITE_LEASE_MS).contains(&ms)
        {
            return Err(format!(
                "writeLeaseMs {ms} is out of range: give {MIN_WRITE_LEASE_MS} to {MAX_WRITE_LEASE_MS} ms (a region polls about once a second), or leave it out for no lease"
            ));
        }
        if let Some(p) = &self.primary {
            check_region_name(&p.name)?;
            if p.name == self.name {
                return Err(format!(
                    "the primary '{}' is this region itself; a primary has no `primary`",
                    p.name
                ));
            }
            if p.endpoints.is_empty() {
                return Err("primary.endpoints is empty: list the primary's partition URLs".into());
            }
            for e in &p.endpoints {
                if !e.starts_with("https://") {
                    return Err(format!("primary endpoint {e:?} is not an https:// URL"));
                }
            }
        }
        Ok(())
    }
}

/// A region name: 1–63 characters of `a-z`, `0-9` and `-`, starting with a letter (a DNS label).
pub fn check_region_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "region name {name:?} is not valid: 1-63 characters of a-z, 0-9 and '-', starting with a letter"
        ))
    }
}

/// `PUT /admin/regions/{name}` body: the region's pool CA, which its partitions' client
/// certificates must chain to.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AcceptRegionRequest {
    pub ca_certificate: String,
}

/// One accepted region as `GET /admin/regions` lists it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase", default)]
pub struct AcceptedRegion {
    pub name: String,
    /// SHA-256 of the CA certificate (DER), hex.
    pub ca_sha256: String,
    /// Unix seconds.
    pub added: i64,
}

/// `POST /internal/region/join`.
#[derive(Serialize, Deserialize, Clone, Debug)]
#[serde(rename_all = "camelCase")]
pub struct JoinRequest {
    /// The joining region's name (must be the region whose CA issued the client certificate).
    pub region: String,
    /// PEM of the joiner's one-time exchange (transfer) certificate; it names the joiner's pool id.
    pub exchange_certificate: String,
}

/// Settings of the primary a replica copies at join (so refusals apply identically).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ReplicatedSettings {
    pub soft_delete_retention_days: i64,
    pub purge_protection: bool,
}

/// The answer to a join: the domain sealed to the exchange key, and who the primary is.
#[derive(Serialize, Deserialize, Clone, Debug)]
#[serde(rename_all = "camelCase")]
pub struct JoinReply {
    /// A transfer blob (`keystead_core::sd`) sealed to the exchange certificate.
    pub blob: String,
    pub fingerprint: String,
    pub domain_id: String,
    /// The primary's region name and pool id.
    pub primary: String,
    pub primary_pool_id: String,
    pub epoch: u64,
    pub settings: ReplicatedSettings,
}

/// One primary entry in the feed (`command` is the partition's command type).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct FeedEntry<C> {
    pub index: u64,
    pub command: C,
}

/// `GET /internal/region/feed?after=N&max=M&waitMs=W`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Feed<C> {
    pub epoch: u64,
    /// The answering partition's applied index (the primary's position as it knows it).
    pub primary_index: u64,
    /// Region-replicated commands after `after`, in order.
    pub entries: Vec<FeedEntry<C>>,
    /// Every index up to this one is covered (entries that do not replicate are skipped).
    pub through: u64,
    /// `after` is below the primary's compacted log: bootstrap from a snapshot.
    pub snapshot_required: bool,
    /// The primary's pool id.
    #[serde(default)]
    pub pool_id: String,
    /// A promoted primary: the index of its promotion (a demoted old primary follows it
    /// from there, without re-seeding).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promoted_at: Option<u64>,
    /// A promoted primary: the epoch it was promoted from and the position it had applied
    /// then (a region that followed the same old primary continues in place only from
    /// exactly that position; otherwise it re-seeds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promotion: Option<Promotion>,
    /// A demoted primary: whom every region it fed follows next, from which index on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handover: Option<Handover>,
    /// The primary's write lease (ms), if it runs one: a failover waits it out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_lease_ms: Option<u64>,
}

/// Where a promoted primary came from: the old primary's epoch and the old primary's index
/// this region had applied when its promotion applied (the common index).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Promotion {
    pub from_epoch: u64,
    pub common_index: u64,
}

/// `POST /admin/regions/follow` on a replica region whose primary was lost and replaced by
/// a failover: follow the promoted region `to` from now on (in place when this region had
/// applied exactly what `to` had when promoted; otherwise re-seeded from `to`, the changes
/// `to` never had listed as discarded).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct FollowRequest {
    /// The promoted region.
    pub to: String,
    /// Its partitions' endpoints.
    pub endpoints: Vec<String>,
    /// The CA its partitions' certificates chain to (PEM).
    pub ca_certificate: String,
}

/// A demoted primary's hand-over (planned switchover), in its feed and position answers: a
/// region that has applied `last_index` follows `to` once `to` is promoted at `epoch`, and
/// `to` accepts the other regions (`regions`) when it is promoted.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Handover {
    pub to: String,
    /// The new primary's endpoints (as the demotion named them).
    pub endpoints: Vec<String>,
    /// The CA `to` was accepted with (its partitions' certificates chain to it).
    pub ca_certificate: String,
    pub epoch: u64,
    /// The demoted primary's last index: nothing replicated comes after it.
    pub last_index: u64,
    /// The other regions the demoted primary accepted, with their CAs.
    #[serde(default)]
    pub regions: Vec<HandoverRegion>,
    /// Every region has acknowledged `last_index` (the demotion token is published): a
    /// region follows `to` only then — until then it keeps polling the demoted primary,
    /// whose next poll is its acknowledgement.
    #[serde(default)]
    pub ready: bool,
}

/// A region handed over with a switchover: its name and the CA it was accepted with.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct HandoverRegion {
    pub name: String,
    pub ca_certificate: String,
}

/// `GET /internal/region/snapshot?session=S&page=P`: one page of a consistent copy of the
/// primary's replicated state (`K`: key record, `D`: deleted key, `R`: RBAC state).
#[derive(Serialize, Deserialize, Clone, Debug)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotPage<K, D, R> {
    pub session: String,
    /// The primary index the copy was taken at.
    pub through: u64,
    pub epoch: u64,
    pub page: u64,
    pub keys: Vec<K>,
    pub deleted: Vec<D>,
    /// On the first page only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rbac: Option<R>,
    pub settings: ReplicatedSettings,
    /// Totals of the whole copy.
    pub key_count: u64,
    pub deleted_count: u64,
    pub last: bool,
}

/// `POST /internal/region/forward` answer: the primary index the write was committed at.
#[derive(Serialize, Deserialize, Clone, Debug)]
#[serde(rename_all = "camelCase")]
pub struct ForwardReply {
    pub index: u64,
}

/// `POST /admin/regions/demote` (on the primary): stop taking writes, hand over to `to`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DemoteRequest {
    /// The accepted region to promote next.
    pub to: String,
    /// Its partitions' endpoints (this pool follows it once it is promoted; their server
    /// certificates chain to the CA the region was accepted with).
    pub endpoints: Vec<String>,
    /// How long to wait for every region to apply the demoted primary's last index before
    /// answering (default 60, at most 300). The demotion stands when the wait runs out:
    /// calling demote again with the same `to` waits again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_seconds: Option<u64>,
}

/// The error code of a demotion whose regions have not all applied its last index yet.
pub const REGIONS_NOT_CAUGHT_UP: &str = "RegionsNotCaughtUp";
/// `POST /admin/regions/follow` refused: the region named is not (yet) a primary promoted
/// after this region's epoch.
pub const REGION_NOT_PROMOTED: &str = "RegionNotPromoted";

/// `POST /admin/regions/demote` answer.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DemoteReply {
    /// The signed demotion token to promote `to` with.
    pub token: String,
    pub epoch: u64,
    pub last_index: u64,
}

/// `POST /admin/regions/promote` (on a replica region): with the demotion token of a planned
/// switchover, or `force` (failover: the primary is lost; changes this region has not
/// applied are lost with it).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PromoteRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(default)]
    pub force: bool,
}

/// `POST /internal/region/fence`: a region promoted by failover tells the old primary.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct FenceRequest {
    /// The new primary (the caller's region) and its endpoints.
    pub primary: String,
    pub endpoints: Vec<String>,
    pub epoch: u64,
    /// The old primary's index the new primary had applied when promoted: every change of
    /// the old primary after it is discarded.
    pub common_index: u64,
}

/// This pool's role.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum RegionRole {
    #[default]
    Primary,
    Replica,
}

/// A replica region as a primary partition sees it (from its feed requests).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase", default)]
pub struct PeerRegionStatus {
    pub name: String,
    /// The last position the region acknowledged (its `after`).
    pub acknowledged_index: u64,
    pub lag_entries: u64,
    /// Seconds since its last feed request here (`None`: never seen by this partition).
    pub last_seen_seconds_ago: Option<u64>,
}

/// The region part of `GET /admin/status`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase", default)]
pub struct RegionStatus {
    /// This region's name (None: a pool without region configuration).
    pub name: Option<String>,
    pub role: RegionRole,
    pub epoch: u64,
    /// Replica: the primary's name and endpoints.
    pub primary: Option<String>,
    pub primary_endpoints: Vec<String>,
    /// Replica: whether this region has joined (holds the domain from the primary).
    pub joined: bool,
    pub applied_primary_index: u64,
    /// The primary's index as last seen by this partition.
    pub primary_index: u64,
    pub lag_entries: u64,
    /// Milliseconds since this region was last fully caught up (0 when caught up).
    pub lag_ms: u64,
    pub primary_reachable: bool,
    /// Replica: the primary answers but refuses this region ([`NOT_ACCEPTED`]): named
    /// there with another CA, or removed while this region could not check the notice.
    pub primary_refuses: bool,
    /// A former replica region its primary removed: its pool was purged (keys, RBAC and
    /// the security domain gone) when the primary's removal notice verified. The primary's
    /// name and the removal time (Unix seconds).
    pub removed_by: Option<String>,
    pub removed_at: Option<i64>,
    /// Milliseconds since the last successful contact with the primary.
    pub last_contact_ms_ago: Option<u64>,
    /// A demoted primary: the region it hands over to, and the token to promote it with.
    pub demoted_to: Option<String>,
    pub demotion_token: Option<String>,
    /// An old primary fenced by a failover: its changes the new primary never had.
    pub discarded_writes: Vec<String>,
    /// A primary with a write lease: its length (ms), and whether it refuses writes now
    /// (no region polled within it).
    pub write_lease_ms: Option<u64>,
    pub writes_refused_by_lease: bool,
    /// A replica: the write lease its primary announced (a failover waits it out).
    pub primary_write_lease_ms: Option<u64>,
    /// Primary: the accepted regions and, where this partition served them, their lag.
    pub accepted: Vec<AcceptedRegion>,
    pub regions: Vec<PeerRegionStatus>,
}

/// One view of a region from several partitions' views (`kubectl hsm region status`, the
/// operator's `status.replication`): the furthest position, each region's freshest
/// acknowledgement, the accepted regions of any partition.
pub fn merge_views(views: Vec<RegionStatus>) -> RegionStatus {
    let mut it = views.into_iter();
    let Some(mut out) = it.next() else {
        return RegionStatus::default();
    };
    for v in it {
        if v.applied_primary_index > out.applied_primary_index
            || (v.applied_primary_index == out.applied_primary_index
                && v.primary_index > out.primary_index)
        {
            let (accepted, regions) = (out.accepted.clone(), out.regions.clone());
            out = RegionStatus {
                accepted,
                regions,
                ..v.clone()
            };
        }
        for p in v.regions {
            match out.regions.iter_mut().find(|q| q.name == p.name) {
                Some(q)
                    if p.last_seen_seconds_ago.unwrap_or(u64::MAX)
                        < q.last_seen_seconds_ago.unwrap_or(u64::MAX) =>
                {
                    *q = p
                }
                Some(_) => {}
                None => out.regions.push(p),
            }
        }
        if out.accepted.is_empty() {
            out.accepted = v.accepted;
        }
        // One partition told it is refused is enough to say so.
        out.primary_refuses |= v.primary_refuses;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn region_names_are_dns_labels() {
        assert!(check_region_name("west-1").is_ok());
        for bad in ["", "West", "1a", "a_b", &"a".repeat(64)] {
            assert!(check_region_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_replica_config_needs_https_endpoints_and_another_primary() {
        let mut c = RegionConfig {
            name: "b".into(),
            primary: Some(PrimarySource {
                name: "a".into(),
                endpoints: vec!["https://127.0.0.1:1".into()],
                ca_file: "/ca.pem".into(),
            }),
            write_lease_ms: None,
        };
        assert!(c.validate().is_ok());
        for (ms, ok) in [
            (2_999, false),
            (3_000, true),
            (300_000, true),
            (300_001, false),
        ] {
            c.write_lease_ms = Some(ms);
            assert_eq!(c.validate().is_ok(), ok, "{ms}");
        }
        c.write_lease_ms = None;
        c.primary.as_mut().unwrap().endpoints = vec!["http://x".into()];
        assert!(c.validate().unwrap_err().contains("https"));
        c.primary.as_mut().unwrap().endpoints = vec![];
        assert!(c.validate().is_err());
        c.primary.as_mut().unwrap().name = "b".into();
        assert!(c.validate().is_err());
        let back: Result<RegionConfig, _> = serde_json::from_str(r#"{"name":"b","primry":{}}"#);
        assert!(back.is_err(), "unknown fields are refused");
    }
}
