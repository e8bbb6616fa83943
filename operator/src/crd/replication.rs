//! The ManagedHsm's replication contract (docs/regions.md, "The operator"): `spec.replication`
//! (this pool's region, which region is primary, the other regions of the topology, a
//! promotion) and `status.replication` (role, epoch, position, lag, demotion token,
//! discarded writes). Part of the generated CRD schema, like the rest of `crd`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// This pool as one region of a replicated topology, modelled on CloudNativePG replica
/// clusters: every region's resource names the same `primary`; a switchover is two edits
/// (the primary's resource names the new primary — it demotes and publishes a token in its
/// status — then the new primary's resource names itself with that token), a failover one
/// (the new primary's resource names itself with `force: true`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.primary == self.region || self.regions.exists(r, r.name == self.primary)", "message": "replication.primary must be this region or one of replication.regions"},
    {"rule": "!has(self.promotionToken) || self.primary == self.region", "message": "promotionToken is only for the region named primary; remove it when another region becomes primary"},
    {"rule": "!has(self.force) || !self.force || self.primary == self.region", "message": "force is only for the region named primary; remove it when another region becomes primary"},
    {"rule": "!self.regions.exists(r, r.name == self.region)", "message": "replication.regions lists the other regions, not this one"},
    {"rule": "self.primary == self.region || self.regions.exists(r, r.name == self.primary && size(r.endpoints) > 0)", "message": "the primary region needs endpoints in replication.regions"}
]))]
pub struct ReplicationSpec {
    /// This pool's region name (a DNS label). Immutable.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
    )]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "self == oldSelf", "message": "the region name is immutable"}
    ]))]
    pub region: String,
    /// The region that takes writes: this one (`region`) or one of `regions`. Changing it on
    /// the current primary demotes it (planned switchover, step 1: the demotion token appears
    /// in `status.replication.demotionToken`).
    #[schemars(length(min = 1, max = 63))]
    pub primary: String,
    /// Switchover, step 2: the demotion token the old primary published. Promotes this
    /// region (`primary` == `region`) once it has applied everything the old primary
    /// committed — no loss.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promotion_token: Option<String>,
    /// Failover: promote this region (`primary` == `region`) without a token, at the
    /// position it has applied; what the lost primary committed beyond it is lost and
    /// listed by the old primary when it returns. Remove it once promoted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub force: Option<bool>,
    /// The other regions of the topology. As a primary this pool accepts each of them (its
    /// pool CA); as a replica it follows `primary` at its endpoints, trusting its CA.
    #[serde(default)]
    #[schemars(length(max = 8))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub regions: Vec<PeerRegion>,
    /// While this pool is the primary: refuse changes of keys and RBAC when no other region
    /// has polled it for this many seconds (3–300). Closes the split-brain window of a
    /// failover (a primary cut off from every region stops taking writes the failover would
    /// discard) at the cost of availability when every region is unreachable; a forced
    /// promotion waits the lease out. Absent: no lease (docs/regions.md, "Write lease").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 3, max = 300))]
    pub write_lease_seconds: Option<u32>,
}

/// Another region of the topology (a pool in another cluster).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PeerRegion {
    /// Its region name (its `spec.replication.region`).
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    /// HTTPS endpoints of its partitions or of its client Service, reachable from this
    /// cluster; their certificates must name these hosts (`spec.tls.extraDnsNames` there).
    #[serde(default)]
    #[schemars(length(max = 8))]
    pub endpoints: Vec<String>,
    /// A ConfigMap in this namespace holding its pool CA certificate (PEM; the `ca.crt` of
    /// its `status.caBundleConfigMap`, copied here). Public material only.
    pub ca_config_map: CaConfigMapRef,
}

/// A key of a ConfigMap in the same namespace holding a CA certificate.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CaConfigMapRef {
    /// Name of the ConfigMap.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key inside it (default `ca.crt`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

impl CaConfigMapRef {
    pub fn key(&self) -> &str {
        self.key.as_deref().unwrap_or("ca.crt")
    }
}

/// The region's role as the partitions report it.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ReplicationRole {
    /// Takes writes.
    Primary,
    /// Follows the primary, serves reads and crypto locally, forwards writes.
    Replica,
    /// A primary that handed over (switchover): refuses writes, follows its successor.
    Demoted,
}

/// The replication state of this region, read from its partitions' `/admin/status`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplicationStatus {
    /// This pool's region name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<ReplicationRole>,
    /// The topology's epoch as this region knows it (a promotion starts the next one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<i64>,
    /// The region this one follows (a replica, demoted or fenced).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary: Option<String>,
    /// A replica holds the domain from its primary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub joined: Option<bool>,
    /// The primary's log index this region has applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_primary_index: Option<i64>,
    /// The primary's index as last seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_index: Option<i64>,
    /// Entries this region is behind the primary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_entries: Option<i64>,
    /// Seconds since this region was last fully caught up (0 when caught up), with
    /// millisecond precision as a decimal string (e.g. `0.012`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_seconds: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_reachable: Option<bool>,
    /// A replica: the primary answers but refuses this region (removed there, or named with
    /// another CA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_refuses: Option<bool>,
    /// A primary: each region of `spec.replication.regions` and how far it follows.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub regions: Vec<RegionLag>,
    /// A demoted primary: the token to promote `demotedTo` with (switchover step 2). It
    /// carries no key material: a MAC over the pool, epoch and last index, checkable only
    /// by holders of the security domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub demoted_to: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub demotion_token: Option<String>,
    /// A fenced old primary: its changes the new primary never had (key names and
    /// versions, deletions, role assignments), also in a Warning Event `DiscardedWrites`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub discarded_writes: Vec<String>,
    /// A former replica its primary removed: its pool was purged (keys and security domain
    /// gone; Warning Event `RegionPurged`). The primary's region name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub removed_by: Option<String>,
    /// A primary with `writeLeaseSeconds`: no region polled it within the lease, so it
    /// refuses writes (reads and crypto go on) until one polls again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_lease_expired: Option<bool>,
}

/// One region as the primary sees it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RegionLag {
    pub name: String,
    /// The primary accepts it (its CA is named on the primary).
    pub accepted: bool,
    /// The position it last acknowledged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acknowledged_index: Option<i64>,
    /// Entries it is behind this primary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_entries: Option<i64>,
}
