//! The operator's view of a partition's `GET /admin/status`: the part of the contract
//! ([`keystead_core::status::PoolStatus`]) it reads, every field optional.

use serde::Deserialize;

/// Activation state and `lastSecurityDomainRedownload` of a partition's `GET /admin/status`
/// (the contract is `keystead_core::status::PoolStatus`).
pub use keystead_core::status::{Activation, DomainRedownload};

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
    /// member's lag. `hsm::plan::observed::fill_replication` copies it into `role`, `term` and `lag`.
    #[serde(default)]
    pub replication: Option<ReplicationView>,
    /// Region replication (docs/regions.md): role, epoch, position, lag, accepted regions.
    #[serde(default)]
    pub region: Option<keystead_core::region::RegionStatus>,
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
