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

/// A key: its versions in creation order (the last is the current one).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KeyRecord {
    pub name: String,
    pub versions: Vec<KeyVersion>,
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

/// Everything a pool holds.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PoolState {
    pub bootstrapped: bool,
    pub settings: Settings,
    pub activation: Activation,
    pub keys: BTreeMap<String, KeyRecord>,
    pub deleted: BTreeMap<String, DeletedKey>,
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

/// A state change. Proposed by the partition that received the request, applied by all.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum Command {
    /// First command of a pool: settings and initial administrators.
    #[serde(rename_all = "camelCase")]
    Bootstrap {
        settings: Settings,
        administrators: Vec<String>,
    },
    /// Add a version to a key, creating the key if needed (create, import, rotate).
    #[serde(rename_all = "camelCase")]
    AddKeyVersion {
        name: String,
        version: Box<KeyVersion>,
        /// When true the key must not exist yet as an active key (restore semantics are
        /// separate); create/import/rotate pass false.
        must_be_new: bool,
    },
    #[serde(rename_all = "camelCase")]
    UpdateKeyVersion {
        name: String,
        /// None: the current version.
        version: Option<String>,
        key_ops: Option<Vec<String>>,
        attributes: Option<AttributesPatch>,
        tags: Option<BTreeMap<String, String>>,
        release_policy: Option<serde_json::Value>,
        now: i64,
    },
    #[serde(rename_all = "camelCase")]
    DeleteKey { name: String, now: i64 },
    #[serde(rename_all = "camelCase")]
    RecoverKey { name: String },
    #[serde(rename_all = "camelCase")]
    PurgeKey { name: String, now: i64 },
    /// Purge every soft-deleted key whose scheduled purge date has passed.
    #[serde(rename_all = "camelCase")]
    PurgeExpired { now: i64 },
    /// Restore a whole key (all versions) from a single-key backup blob.
    #[serde(rename_all = "camelCase")]
    RestoreKey { key: KeyRecord },
    #[serde(rename_all = "camelCase")]
    SetRotationPolicy {
        name: String,
        policy: serde_json::Value,
        now: i64,
    },
    #[serde(rename_all = "camelCase")]
    PutRoleAssignment {
        scope: String,
        name: String,
        params: RoleAssignmentCreateParameters,
    },
    #[serde(rename_all = "camelCase")]
    DeleteRoleAssignment { scope: String, name: String },
    #[serde(rename_all = "camelCase")]
    PutRoleDefinition {
        scope: String,
        name: String,
        params: RoleDefinitionCreateParameters,
    },
    #[serde(rename_all = "camelCase")]
    DeleteRoleDefinition { scope: String, name: String },
    /// Replace every key, soft-deleted key and RBAC entry at once (a full restore, all or
    /// nothing). The proposer has checked the backup's security domain is the pool's.
    #[serde(rename_all = "camelCase")]
    RestoreAll {
        keys: Vec<KeyRecord>,
        deleted: Vec<DeletedKey>,
        rbac: Box<RbacState>,
    },
    /// Start staging full restore `id` (drops any other staged restore).
    #[serde(rename_all = "camelCase")]
    RestoreBegin { id: String },
    /// Add records to staged restore `id` (each command stays far below a peer request's
    /// size limit, however large the backup).
    #[serde(rename_all = "camelCase")]
    RestoreStage {
        id: String,
        keys: Vec<KeyRecord>,
        deleted: Vec<DeletedKey>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rbac: Option<Box<RbacState>>,
    },
    /// Replace keys, soft-deleted keys and RBAC with staged restore `id` at once, if it holds
    /// exactly these counts and the RBAC state; otherwise nothing changes.
    #[serde(rename_all = "camelCase")]
    RestoreCommit {
        id: String,
        key_count: u64,
        deleted_count: u64,
    },
    /// Drop staged restore `id` (a restore that failed midway).
    #[serde(rename_all = "camelCase")]
    RestoreAbort { id: String },
    #[serde(rename_all = "camelCase")]
    BeginRecovery {
        exchange_thumbprint: String,
        now: i64,
    },
    #[serde(rename_all = "camelCase")]
    Activate {
        domain_id: String,
        fingerprint: String,
        now: i64,
    },
    /// The activated domain is being handed out again: recorded before the file is.
    #[serde(rename_all = "camelCase")]
    RecordDomainRedownload { download: DomainRedownload },
}

/// What applying a command produced (the request handler turns it into a response).
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    None,
    Key(Box<KeyRecord>),
    Deleted(Box<DeletedKey>),
    Purged(Vec<String>),
    RoleAssignment(Box<RoleAssignment>),
    RoleDefinition(Box<RoleDefinition>),
}

/// Deterministic refusals of a command (the same on every partition).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StateError {
    #[error("key '{0}' was not found; list keys with GET /keys")]
    KeyNotFound(String),
    #[error(
        "key '{name}' has no version '{version}'; list versions with GET /keys/{name}/versions"
    )]
    VersionNotFound { name: String, version: String },
    #[error("deleted key '{0}' was not found; list deleted keys with GET /deletedkeys")]
    DeletedKeyNotFound(String),
    #[error(
        "key '{0}' is soft-deleted: recover it (POST /deletedkeys/{0}/recover) or purge it before reusing the name"
    )]
    KeyIsDeleted(String),
    #[error(
        "key '{0}' already exists; a restore never overwrites a key — delete and purge it first, or restore under a pool without it"
    )]
    KeyExists(String),
    #[error(
        "key '{name}' cannot be purged before {purge_date} (Unix seconds): purge protection is enabled for this pool"
    )]
    PurgeProtected { name: String, purge_date: i64 },
    #[error("version '{version}' of key '{name}' already exists")]
    VersionExists { name: String, version: String },
    #[error(transparent)]
    Rbac(RbacError),
    #[error(
        "the pool is already activated with security domain {0}; an upload is only possible into a pool that is not activated"
    )]
    AlreadyActivated(String),
    #[error("the pool was already bootstrapped")]
    AlreadyBootstrapped,
    #[error("restore {0} is not being staged (another restore started since); nothing was changed")]
    RestoreNotStaged(String),
    #[error(
        "restore {id} staged {keys} keys, {deleted} deleted keys and {rbac} RBAC state, not the {want_keys} keys, {want_deleted} deleted keys and RBAC state of its backup; nothing was changed"
    )]
    RestoreIncomplete {
        id: String,
        keys: u64,
        deleted: u64,
        rbac: &'static str,
        want_keys: u64,
        want_deleted: u64,
    },
}

impl From<RbacError> for StateError {
    fn from(e: RbacError) -> Self {
        StateError::Rbac(e)
    }
}

impl PoolState {
    pub fn is_activated(&self) -> bool {
        matches!(self.activation, Activation::Activated { .. })
    }

    pub fn fingerprint(&self) -> Option<&str> {
        match &self.activation {
            Activation::Activated { fingerprint, .. } => Some(fingerprint),
            _ => None,
        }
    }

    fn retention_secs(&self) -> i64 {
        // Saturating: a command from a peer or from disk may carry any number (fuzz target
        // `state_apply`); an overflow must not panic or wrap into the past.
        self.settings
            .soft_delete_retention_days
            .saturating_mul(86_400)
    }

    /// Apply one command. Pure and deterministic; on error the state is unchanged.
    /// For commands whose refusal can be decided without applying them (the staged-restore
    /// commands, which touch only the staging), that decision; `None` for the others. Lets a
    /// single-partition store skip its trial copy of the whole state for them.
    pub fn precheck(&self, cmd: &Command) -> Option<Result<(), StateError>> {
        let staged = |id: &String| self.restore_staging.as_ref().filter(|st| st.id == *id);
        Some(match cmd {
            Command::RestoreBegin { .. } | Command::RestoreAbort { .. } => Ok(()),
            Command::RestoreStage { id, .. } => staged(id)
                .map(|_| ())
                .ok_or_else(|| StateError::RestoreNotStaged(id.clone())),
            Command::RestoreCommit {
                id,
                key_count,
                deleted_count,
            } => match staged(id) {
                None => Err(StateError::RestoreNotStaged(id.clone())),
                Some(st)
                    if st.keys.len() as u64 != *key_count
                        || st.deleted.len() as u64 != *deleted_count
                        || st.rbac.is_none() =>
                {
                    Err(StateError::RestoreIncomplete {
                        id: id.clone(),
                        keys: st.keys.len() as u64,
                        deleted: st.deleted.len() as u64,
                        rbac: if st.rbac.is_some() { "the" } else { "no" },
                        want_keys: *key_count,
                        want_deleted: *deleted_count,
                    })
                }
                Some(_) => Ok(()),
            },
            _ => return None,
        })
    }

    pub fn apply(&mut self, cmd: &Command) -> Result<Outcome, StateError> {
        match cmd {
            Command::Bootstrap {
                settings,
                administrators,
            } => {
                if self.bootstrapped {
                    return Err(StateError::AlreadyBootstrapped);
                }
                // RBAC first (all or nothing): a refused bootstrap changes nothing.
                self.rbac.bootstrap_administrators(administrators)?;
                self.settings = settings.clone();
                self.bootstrapped = true;
                Ok(Outcome::None)
            }
            Command::AddKeyVersion {
                name,
                version,
                must_be_new,
            } => {
                if self.deleted.contains_key(name) {
                    return Err(StateError::KeyIsDeleted(name.clone()));
                }
                match self.keys.get_mut(name) {
                    Some(_) if *must_be_new => Err(StateError::KeyExists(name.clone())),
                    Some(rec) => {
                        if rec.version(&version.version).is_some() {
                            return Err(StateError::VersionExists {
                                name: name.clone(),
                                version: version.version.clone(),
                            });
                        }
                        rec.versions.push((**version).clone());
                        Ok(Outcome::Key(Box::new(rec.clone())))
                    }
                    None => {
                        let rec = KeyRecord {
                            name: name.clone(),
                            versions: vec![(**version).clone()],
                            rotation_policy: None,
                        };
                        self.keys.insert(name.clone(), rec.clone());
                        Ok(Outcome::Key(Box::new(rec)))
                    }
                }
            }
            Command::UpdateKeyVersion {
                name,
                version,
                key_ops,
                attributes,
                tags,
                release_policy,
                now,
            } => {
                let rec = self
                    .keys
                    .get_mut(name)
                    .ok_or_else(|| StateError::KeyNotFound(name.clone()))?;
                let v = match version {
                    Some(ver) => rec
                        .versions
                        .iter_mut()
                        .find(|v| &v.version == ver)
                        .ok_or_else(|| StateError::VersionNotFound {
                            name: name.clone(),
                            version: ver.clone(),
                        })?,
                    None => rec
                        .versions
                        .last_mut()
                        .ok_or_else(|| StateError::KeyNotFound(name.clone()))?,
                };
                if let Some(ops) = key_ops {
                    v.key_ops = ops.clone();
                }
                if let Some(a) = attributes {
                    if let Some(e) = a.enabled {
                        v.attributes.enabled = e;
                    }
                    if a.nbf.is_some() {
                        v.attributes.nbf = a.nbf;
                    }
                    if a.exp.is_some() {
                        v.attributes.exp = a.exp;
                    }
                }
                if let Some(t) = tags {
                    v.tags = t.clone();
                }
                if let Some(p) = release_policy {
                    v.release_policy = Some(p.clone());
                }
                v.attributes.updated = *now;
                Ok(Outcome::Key(Box::new(rec.clone())))
            }
            Command::DeleteKey { name, now } => {
                let key = self
                    .keys
                    .remove(name)
                    .ok_or_else(|| StateError::KeyNotFound(name.clone()))?;
                let deleted = DeletedKey {
                    key,
                    deleted_date: *now,
                    scheduled_purge_date: now.saturating_add(self.retention_secs()),
                };
                self.deleted.insert(name.clone(), deleted.clone());
                Ok(Outcome::Deleted(Box::new(deleted)))
            }
            Command::RecoverKey { name } => {
                if self.keys.contains_key(name) {
                    return Err(StateError::KeyExists(name.clone()));
                }
                let deleted = self
                    .deleted
                    .remove(name)
                    .ok_or_else(|| StateError::DeletedKeyNotFound(name.clone()))?;
                self.keys.insert(name.clone(), deleted.key.clone());
                Ok(Outcome::Key(Box::new(deleted.key)))
            }
            Command::PurgeKey { name, now } => {
                let d = self
                    .deleted
                    .get(name)
                    .ok_or_else(|| StateError::DeletedKeyNotFound(name.clone()))?;
                if self.settings.purge_protection && *now < d.scheduled_purge_date {
                    return Err(StateError::PurgeProtected {
                        name: name.clone(),
                        purge_date: d.scheduled_purge_date,
                    });
                }
                self.deleted.remove(name);
                Ok(Outcome::Purged(vec![name.clone()]))
            }
            Command::PurgeExpired { now } => {
                let expired: Vec<String> = self
                    .deleted
                    .iter()
                    .filter(|(_, d)| d.scheduled_purge_date <= *now)
                    .map(|(n, _)| n.clone())
                    .collect();
                for n in &expired {
                    self.deleted.remove(n);
                }
                Ok(Outcome::Purged(expired))
            }
            Command::RestoreKey { key } => {
                if self.keys.contains_key(&key.name) {
                    return Err(StateError::KeyExists(key.name.clone()));
                }
                if self.deleted.contains_key(&key.name) {
                    return Err(StateError::KeyIsDeleted(key.name.clone()));
                }
                self.keys.insert(key.name.clone(), key.clone());
                Ok(Outcome::Key(Box::new(key.clone())))
            }
            Command::SetRotationPolicy { name, policy, now } => {
                let rec = self
                    .keys
                    .get_mut(name)
                    .ok_or_else(|| StateError::KeyNotFound(name.clone()))?;
                let created = rec.rotation_policy.as_ref().map_or(*now, |p| p.created);
                rec.rotation_policy = Some(RotationPolicyRecord {
                    policy: policy.clone(),
                    created,
                    updated: *now,
                });
                Ok(Outcome::Key(Box::new(rec.clone())))
            }
            Command::PutRoleAssignment {
                scope,
                name,
                params,
            } => {
                let a = self.rbac.put_assignment(scope, name, params)?;
                Ok(Outcome::RoleAssignment(Box::new(a)))
            }
            Command::DeleteRoleAssignment { scope, name } => {
                let a = self.rbac.delete_assignment(scope, name)?;
                Ok(Outcome::RoleAssignment(Box::new(a)))
            }
            Command::PutRoleDefinition {
                scope,
                name,
                params,
            } => {
                let d = self.rbac.put_definition(scope, name, params)?;
                Ok(Outcome::RoleDefinition(Box::new(d)))
            }
            Command::DeleteRoleDefinition { scope, name } => {
                let d = self.rbac.delete_definition(scope, name)?;
                Ok(Outcome::RoleDefinition(Box::new(d)))
            }
            Command::RestoreAll {
                keys,
                deleted,
                rbac,
            } => {
                self.keys = keys.iter().map(|k| (k.name.clone(), k.clone())).collect();
                self.deleted = deleted
                    .iter()
                    .map(|d| (d.key.name.clone(), d.clone()))
                    .collect();
                self.rbac = (**rbac).clone();
                Ok(Outcome::None)
            }
            Command::RestoreBegin { id } => {
                self.restore_staging = Some(Box::new(RestoreStaging {
                    id: id.clone(),
                    ..Default::default()
                }));
                Ok(Outcome::None)
            }
            Command::RestoreStage {
                id,
                keys,
                deleted,
                rbac,
            } => {
                let st = self
                    .restore_staging
                    .as_mut()
                    .filter(|st| st.id == *id)
                    .ok_or_else(|| StateError::RestoreNotStaged(id.clone()))?;
                st.keys.extend(keys.iter().cloned());
                st.deleted.extend(deleted.iter().cloned());
                if let Some(r) = rbac {
                    st.rbac = Some((**r).clone());
                }
                Ok(Outcome::None)
            }
            Command::RestoreCommit { id, .. } => {
                if let Some(Err(e)) = self.precheck(cmd) {
                    return Err(e);
                }
                let Some(st) = self.restore_staging.take() else {
                    return Err(StateError::RestoreNotStaged(id.clone()));
                };
                let st = *st;
                self.keys = st.keys.into_iter().map(|k| (k.name.clone(), k)).collect();
                self.deleted = st
                    .deleted
                    .into_iter()
                    .map(|d| (d.key.name.clone(), d))
                    .collect();
                self.rbac = st.rbac.unwrap_or_default();
                Ok(Outcome::None)
            }
            Command::RestoreAbort { id } => {
                if self.restore_staging.as_ref().is_some_and(|st| st.id == *id) {
                    self.restore_staging = None;
                }
                Ok(Outcome::None)
            }
            Command::BeginRecovery {
                exchange_thumbprint,
                now,
            } => {
                if let Activation::Activated { fingerprint, .. } = &self.activation {
                    return Err(StateError::AlreadyActivated(fingerprint.clone()));
                }
                self.activation = Activation::RecoveryPending {
                    exchange_thumbprint: exchange_thumbprint.clone(),
                    since: *now,
                };
                Ok(Outcome::None)
            }
            Command::Activate {
                domain_id,
                fingerprint,
                now,
            } => {
                if let Activation::Activated {
                    fingerprint: current,
                    ..
                } = &self.activation
                    && current != fingerprint
                {
                    return Err(StateError::AlreadyActivated(current.clone()));
                }
                self.activation = Activation::Activated {
                    domain_id: domain_id.clone(),
                    fingerprint: fingerprint.clone(),
                    since: *now,
                };
                Ok(Outcome::None)
            }
            Command::RecordDomainRedownload { download } => {
                self.domain_redownloads += 1;
                self.last_domain_redownload = Some(download.clone());
                Ok(Outcome::None)
            }
        }
    }
}

/// A change of this partition's state, as the keyring learns of it (to drop unwrapped key
/// material that the state no longer holds).
#[derive(Debug, Clone, Copy)]
pub enum StateChange<'a> {
    /// A command was applied (committed, on every partition) with this outcome.
    Applied(&'a Command, &'a Outcome),
    /// The whole state was replaced (a snapshot installed from a peer).
    Replaced,
}

/// Called on every [`StateChange`], while the state's write lock is held (so a reader that
/// holds the read lock sees the state and the hook's effect together).
pub type ChangeHook = Box<dyn Fn(StateChange<'_>) + Send + Sync>;

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> KeyRecord {
        KeyRecord {
            name: name.into(),
            versions: vec![],
            rotation_policy: None,
        }
    }

    fn stage(id: &str, keys: &[&str], rbac: bool) -> Command {
        Command::RestoreStage {
            id: id.into(),
            keys: keys.iter().map(|k| key(k)).collect(),
            deleted: vec![],
            rbac: rbac.then(|| Box::new(RbacState::default())),
        }
    }

    fn commit(id: &str, keys: u64) -> Command {
        Command::RestoreCommit {
            id: id.into(),
            key_count: keys,
            deleted_count: 0,
        }
    }

    #[test]
    fn a_staged_restore_is_invisible_until_its_commit_and_all_or_nothing() {
        let mut s = PoolState::default();
        s.keys.insert("old".into(), key("old"));
        let before = s.clone();
        s.apply(&Command::RestoreBegin { id: "r1".into() }).unwrap();
        s.apply(&stage("r1", &["a", "b"], true)).unwrap();
        s.apply(&stage("r1", &["c"], false)).unwrap();
        assert_eq!(s.keys, before.keys, "staged records are not visible");
        // Counts that do not match the staged records: refused, nothing changes.
        let e = s.apply(&commit("r1", 4)).unwrap_err();
        assert!(
            matches!(e, StateError::RestoreIncomplete { keys: 3, .. }),
            "{e}"
        );
        assert_eq!(s.keys, before.keys);
        s.apply(&commit("r1", 3)).unwrap();
        assert_eq!(s.keys.keys().collect::<Vec<_>>(), ["a", "b", "c"]);
        assert!(s.restore_staging.is_none());
        // Committed once: a second commit finds nothing staged.
        assert!(matches!(
            s.apply(&commit("r1", 3)),
            Err(StateError::RestoreNotStaged(_))
        ));
    }

    #[test]
    fn a_newer_restore_or_an_abort_drops_the_staged_one() {
        let mut s = PoolState::default();
        s.keys.insert("old".into(), key("old"));
        s.apply(&Command::RestoreBegin { id: "r1".into() }).unwrap();
        s.apply(&stage("r1", &["a"], true)).unwrap();
        s.apply(&Command::RestoreBegin { id: "r2".into() }).unwrap();
        assert!(matches!(
            s.apply(&stage("r1", &["b"], false)),
            Err(StateError::RestoreNotStaged(_))
        ));
        assert!(matches!(
            s.apply(&commit("r1", 1)),
            Err(StateError::RestoreNotStaged(_))
        ));
        // Without the RBAC state a restore does not commit.
        s.apply(&stage("r2", &["x"], false)).unwrap();
        assert!(matches!(
            s.apply(&commit("r2", 1)),
            Err(StateError::RestoreIncomplete { .. })
        ));
        // An abort of another id changes nothing; its own drops it.
        s.apply(&Command::RestoreAbort { id: "r1".into() }).unwrap();
        assert!(s.restore_staging.is_some());
        s.apply(&Command::RestoreAbort { id: "r2".into() }).unwrap();
        assert!(s.restore_staging.is_none());
        assert_eq!(s.keys.keys().collect::<Vec<_>>(), ["old"]);
        // The staging travels in snapshots (serialized state), and is absent when empty.
        s.apply(&Command::RestoreBegin { id: "r3".into() }).unwrap();
        let json = serde_json::to_string(&s).unwrap();
        let back: PoolState = serde_json::from_str(&json).unwrap();
        assert_eq!(back, s);
        s.apply(&Command::RestoreAbort { id: "r3".into() }).unwrap();
        assert!(
            !serde_json::to_string(&s)
                .unwrap()
                .contains("restoreStaging")
        );
    }
}
