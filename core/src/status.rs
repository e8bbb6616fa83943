//! `GET /admin/status`: a partition's view of its pool, as the partition writes it and the
//! operator and `kubectl hsm status` read it. Reading is tolerant: a field an older
//! partition does not send takes its default.

use serde::{Deserialize, Serialize};

/// Where the pool stands in its security-domain lifecycle.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Activation {
    /// Created; refuses key operations until a security domain is downloaded.
    #[default]
    Provisioned,
    /// Recovery started: waiting for a security-domain upload.
    RecoveryPending,
    Activated,
}

/// One re-download of the activated security domain (recorded pool-wide).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DomainRedownload {
    /// Who downloaded it (an Administrator).
    pub principal: String,
    /// Unix seconds.
    pub time: i64,
    /// Custodian keys the new file is protected under, and the quorum.
    #[serde(default)]
    pub wrapping_keys: u32,
    #[serde(default)]
    pub quorum: u32,
}

/// The partition's Raft view (replicated pools only).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ReplicationStatus {
    pub node_id: u64,
    pub name: String,
    /// `leader`, `follower`, `candidate`, `learner` or `shutdown`.
    pub role: String,
    pub term: u64,
    pub leader: Option<String>,
    pub commit_index: u64,
    pub applied_index: u64,
    pub last_log_index: u64,
    pub snapshot_index: u64,
    /// Started with an empty disk and not caught up yet (not voting).
    pub recovering: bool,
    pub members: Vec<MemberStatus>,
}

/// One member of the group as a partition sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct MemberStatus {
    pub node_id: u64,
    pub name: String,
    pub url: String,
    pub voter: bool,
    /// Replicated log index (known on the leader only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub matched_index: Option<u64>,
    /// Entries behind the leader's last log index (known on the leader only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lag: Option<u64>,
}

/// The body of `GET /admin/status`. Options are written as `null` when unknown.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PoolStatus {
    pub pool_name: String,
    pub pool_id: String,
    /// The answering partition.
    pub partition: String,
    pub activation: Activation,
    pub security_domain_fingerprint: Option<String>,
    /// Whether the answering partition holds the security domain.
    pub domain_loaded: bool,
    pub keys: u64,
    pub deleted_keys: u64,
    pub applied_index: u64,
    pub soft_delete_retention_days: i64,
    pub purge_protection: bool,
    /// Re-downloads of the activated domain recorded by the pool, and the last one.
    pub security_domain_redownloads: u64,
    pub last_security_domain_redownload: Option<DomainRedownload>,
    pub replication: Option<ReplicationStatus>,
    /// Region replication (docs/regions.md): this pool's role, position and lag.
    pub region: Option<crate::region::RegionStatus>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_keeps_its_wire_names_and_writes_unknowns_as_null() {
        let s = PoolStatus {
            pool_name: "p".into(),
            activation: Activation::RecoveryPending,
            ..PoolStatus::default()
        };
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["poolName"], "p");
        assert_eq!(v["activation"], "RecoveryPending");
        for k in [
            "securityDomainFingerprint",
            "lastSecurityDomainRedownload",
            "replication",
        ] {
            assert!(v[k].is_null() && v.get(k).is_some(), "{k}: {v}");
        }
        let back: PoolStatus = serde_json::from_str(r#"{"activation":"Activated"}"#).unwrap();
        assert_eq!(back.activation, Activation::Activated);
    }
}
