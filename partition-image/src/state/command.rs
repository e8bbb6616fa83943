//! The commands that change a pool, what applying one produced, its deterministic refusals,
//! and the change hook the keyring listens on.

use super::*;

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
    /// A primary names a region it accepts (its pool CA) — docs/regions.md.
    #[serde(rename_all = "camelCase")]
    PutRegion {
        name: String,
        ca_pem: String,
        now: i64,
    },
    /// A primary stops accepting a region; it answers the region's next request with a
    /// removal notice (the region purges its pool).
    #[serde(rename_all = "camelCase")]
    DeleteRegion {
        name: String,
        #[serde(default)]
        now: i64,
    },
    /// A replica region its primary removed (the notice verified under the domain): purge
    /// keys, deleted keys and RBAC; the partitions drop the domain.
    #[serde(rename_all = "camelCase")]
    RegionPurge { primary: String, removed_at: i64 },
    /// A purged region its primary accepts again: join it anew.
    RegionRejoin,
    /// This pool joined a primary region: activated with the primary's domain.
    #[serde(rename_all = "camelCase")]
    RegionJoined {
        primary: String,
        primary_pool_id: String,
        epoch: u64,
        domain_id: String,
        fingerprint: String,
        settings: keystead_core::region::ReplicatedSettings,
        now: i64,
    },
    /// Apply the primary's entries after this region's position (each at most once), then
    /// advance the position to `through`.
    #[serde(rename_all = "camelCase")]
    RegionApply {
        entries: Vec<super::region::RegionEntry>,
        through: u64,
    },
    /// Stage part of a primary's snapshot (`RestoreBegin` or `RestoreStage`, which a replica
    /// region refuses on their own).
    #[serde(rename_all = "camelCase")]
    RegionStage { command: Box<Command> },
    /// Planned switchover, on the primary: stop taking writes (from the index of this
    /// command on) and hand over to region `to` under epoch `epoch`.
    #[serde(rename_all = "camelCase")]
    RegionDemote {
        to: String,
        endpoints: Vec<String>,
        ca_pem: String,
        epoch: u64,
    },
    /// Planned switchover, on the region promoted with a demotion token: become the primary
    /// of `epoch`, accepting the old primary (its CA) as a region.
    #[serde(rename_all = "camelCase")]
    RegionPromote {
        epoch: u64,
        old_primary: String,
        old_primary_ca: String,
        now: i64,
        /// A failover: the old primary to fence.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fence: Option<super::region::FenceTarget>,
        /// A planned switchover: the other regions the demoted primary accepted (name, CA);
        /// they follow this region next.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        also_accept: Vec<(String, String)>,
    },
    /// A primary with a write lease: a region polled it at `epoch`, so the lease applies
    /// from now on (a primary no region ever polled at its epoch — just promoted by a
    /// failover — takes writes without it).
    #[serde(rename_all = "camelCase")]
    RegionLeaseArmed { epoch: u64 },
    /// A replica region: the write lease its primary announces (None: none), which a
    /// failover waits out.
    #[serde(rename_all = "camelCase")]
    RegionPrimaryLease { ms: Option<u64> },
    /// Planned switchover, on the demoted primary: every region it accepted has applied its
    /// last index; the demotion token may be published.
    #[serde(rename_all = "camelCase")]
    RegionHandoverReady { epoch: u64 },
    /// Planned switchover, on a replica region that has applied the demoted primary's last
    /// index: follow `to` once it is promoted at `epoch` (as the demoted primary does).
    #[serde(rename_all = "camelCase")]
    RegionRepoint {
        to: String,
        endpoints: Vec<String>,
        ca_pem: String,
        epoch: u64,
        last_index: u64,
        /// Re-pointed by hand after a failover (`POST /admin/regions/follow`), not by a
        /// hand-over: `epoch` is any later one and `last_index` is not known (0).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        failover: bool,
    },
    /// An old primary learns of a failover: it stops taking changes, lists the ones the new
    /// primary never had, and re-seeds from it before following it.
    #[serde(rename_all = "camelCase")]
    RegionFenced {
        to: String,
        endpoints: Vec<String>,
        ca_pem: String,
        epoch: u64,
        discarded: Vec<String>,
    },
    /// The old primary acknowledged its fence.
    RegionFenceDone,
    /// A demoted primary, or a replica region it handed over, follows the promoted region
    /// from its promotion index `from`.
    #[serde(rename_all = "camelCase")]
    RegionFollow {
        primary: String,
        primary_pool_id: String,
        epoch: u64,
        from: u64,
        /// A region re-pointed after a failover that had not applied exactly what the
        /// promoted region had: re-seed from a snapshot of it first.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        reseed: bool,
        /// What that re-seed drops: the old primary's changes this region had and the
        /// promoted region never had (listed in the status and the audit log).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        discarded: Vec<String>,
    },
    /// Replace keys, deleted keys and RBAC with the staged snapshot `id` of the primary and
    /// set the position to `through` (catch-up from a snapshot).
    #[serde(rename_all = "camelCase")]
    RegionInstall {
        id: String,
        key_count: u64,
        deleted_count: u64,
        through: u64,
        settings: keystead_core::region::ReplicatedSettings,
    },
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
    /// What each primary entry of a `RegionApply` produced.
    Region(super::region::RegionOutcomes),
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
    #[error("region '{0}' is not accepted by this pool; list them with GET /admin/regions")]
    RegionNotFound(String),
    #[error("{0}")]
    RegionRole(String),
    /// A change made directly in a replica region or a demoted primary.
    #[error("{0}")]
    RegionFenced(String),
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
