//! The pool's replicated state and the deterministic commands that change it.
//!
//! Every change of a pool is a [`Command`]; [`PoolState::apply`] is a pure function of the
//! state and the command (no clock, no randomness: the proposer puts `now`, version ids and
//! already-wrapped key material into the command). That is what lets the same commands be
//! committed through Raft and applied identically on every partition.
//!
//! Key material inside the state is only ever AEAD-wrapped bytes (see `keyring`); public
//! key parts, attributes, tags and names are metadata and are stored as they are.

use keystead_core::keys::JsonWebKey;
use keystead_core::rbac::{
    RbacError, RbacState, RoleAssignment, RoleAssignmentCreateParameters, RoleDefinition,
    RoleDefinitionCreateParameters,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Bytes serialized as base64url in JSON (wrapped key material, never plaintext).
#[derive(Clone, PartialEq, Eq, Default)]
pub struct WrappedBytes(pub Vec<u8>);

impl std::fmt::Debug for WrappedBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WrappedBytes({} bytes)", self.0.len())
    }
}

impl Serialize for WrappedBytes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&keystead_core::b64::encode_url(&self.0))
    }
}

impl<'de> Deserialize<'de> for WrappedBytes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        keystead_core::b64::decode_url(&s)
            .map(WrappedBytes)
            .map_err(serde::de::Error::custom)
    }
}

/// Writable and server-set attributes of one key version (times in Unix seconds).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Attributes {
    pub enabled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<i64>,
    pub created: i64,
    pub updated: i64,
    #[serde(default)]
    pub exportable: bool,
}

/// A change to the writable attributes (absent fields stay as they are).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AttributesPatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<i64>,
}

/// One version of a key.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KeyVersion {
    pub version: String,
    /// `RSA-HSM`, `EC-HSM` or `oct-HSM`.
    pub kty: String,
    pub key_ops: Vec<String>,
    /// Public parts only (no `kid`; it is built from the configured `publicUrl`).
    pub public_jwk: JsonWebKey,
    /// The private material, AEAD-wrapped under the domain's key-wrapping key and bound
    /// to (name, version).
    pub wrapped: WrappedBytes,
    pub attributes: Attributes,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release_policy: Option<serde_json::Value>,
}

/// A key: its versions in creation order (the last is the current one), in a persistent
/// vector: copying a record — when a copy of the state (a snapshot being written) shares
/// it, the first write to it or to its neighbours in the key map copies them — shares
/// every version instead of copying a key's whole history.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KeyRecord {
    pub name: String,
    pub versions: imbl::Vector<KeyVersion>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation_policy: Option<RotationPolicyRecord>,
}

impl KeyRecord {
    pub fn latest(&self) -> Option<&KeyVersion> {
        self.versions.last()
    }

    pub fn version(&self, version: &str) -> Option<&KeyVersion> {
        self.versions.iter().find(|v| v.version == version)
    }
}

/// A rotation policy as the client sent it (validated at the API edge), with times.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RotationPolicyRecord {
    pub policy: serde_json::Value,
    pub created: i64,
    pub updated: i64,
}

/// A soft-deleted key.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DeletedKey {
    pub key: KeyRecord,
    pub deleted_date: i64,
    pub scheduled_purge_date: i64,
}

/// Activation of the pool by its security domain.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(tag = "status", rename_all = "camelCase")]
pub enum Activation {
    /// No security domain yet: download or upload one.
    #[default]
    Provisioned,
    /// An exchange key was generated (init recovery); waiting for the transfer blob.
    #[serde(rename_all = "camelCase")]
    RecoveryPending {
        exchange_thumbprint: String,
        since: i64,
    },
    /// The pool holds a security domain.
    #[serde(rename_all = "camelCase")]
    Activated {
        domain_id: String,
        fingerprint: String,
        since: i64,
    },
}

/// Pool-wide settings fixed at creation (from the ManagedHsm spec or the local config).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Settings {
    pub pool_name: String,
    /// Random id of the pool, fixed at bootstrap (binds exchange keys to this pool).
    #[serde(default)]
    pub pool_id: String,
    pub soft_delete_retention_days: i64,
    pub purge_protection: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            pool_name: "keystead".into(),
            pool_id: String::new(),
            soft_delete_retention_days: 90,
            purge_protection: false,
        }
    }
}

/// The pool's keys by name, and its soft-deleted keys by name.
pub type Keys = imbl::OrdMap<String, KeyRecord>;
pub type DeletedKeys = imbl::OrdMap<String, DeletedKey>;

/// Everything a pool holds.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PoolState {
    pub bootstrapped: bool,
    pub settings: Settings,
    pub activation: Activation,
    /// Persistent (structurally shared) maps: a copy of the state — a Raft snapshot, a
    /// region snapshot session, a backup job, the single-partition store's trial apply —
    /// costs O(1) and shares every record, instead of copying every key under the lock.
    pub keys: Keys,
    pub deleted: DeletedKeys,
    pub rbac: RbacState,
    /// Members removed from the pool's Raft group (node id → partition name), derived by the
    /// replicated state machine from committed membership changes. Node ids are never
    /// reused, and a removed partition's peer requests are refused (docs/replication.md).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub retired_members: BTreeMap<u64, String>,
    /// A full restore being replicated in pieces (`RestoreBegin`, `RestoreStage`…,
    /// `RestoreCommit`): invisible until its commit replaces keys, soft-deleted keys and
    /// RBAC at once; dropped by `RestoreAbort` or the next `RestoreBegin`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_staging: Option<Box<RestoreStaging>>,
    /// How many times the activated domain was handed out again (re-protected under new
    /// custodian keys) and the last of them: reported by `/admin/status` so the operator can
    /// raise an Event (docs/threat-model.md).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub domain_redownloads: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_domain_redownload: Option<DomainRedownload>,
    /// Region replication: accepted regions (a primary) or the primary followed (a replica).
    #[serde(default, skip_serializing_if = "RegionState::is_empty")]
    pub region: RegionState,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// One re-download of the activated security domain (its shape is part of `/admin/status`).
pub use keystead_core::status::DomainRedownload;

/// What a staged full restore has received so far.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RestoreStaging {
    pub id: String,
    pub keys: Vec<KeyRecord>,
    pub deleted: Vec<DeletedKey>,
    pub rbac: Option<RbacState>,
}

mod apply;
mod command;
mod region;
#[cfg(test)]
mod tests;

pub use command::{ChangeHook, Command, Outcome, StateChange, StateError};
pub use region::{
    AcceptedRegionRecord, Demotion, FenceTarget, RegionOutcomes, RegionState, ReplicaOf,
};
