//! Local RBAC of a Keystead pool: the Managed HSM data actions, the built-in roles, custom
//! role definitions and role assignments, with the Azure-shaped wire types of
//! `.../providers/Microsoft.Authorization/role{Definitions,Assignments}`.
//!
//! Everything here is pure and deterministic (no clock, no randomness): the RBAC state lives
//! in the replicated state machine, so every partition must compute the same result from the
//! same commands. Callers pass ids (assignment and definition names are GUIDs chosen by the
//! client, as in Azure).
//!
//! Decisions (see `docs/rbac.md`):
//! - Crypto Auditor does **not** get `keys/deletedKeys/delete` (the published table shows it,
//!   which is very probably a documentation error; an auditor must not purge keys).
//! - `rng/action` is granted by Crypto User; `keys/export/action` by Crypto Officer (its
//!   published description says "export keys"); `securitydomain/download/read` (the status
//!   poll of a download) by Administrator, who is the one allowed to start a download.
//! - The principal id compared with `principalId` of assignments is the one the
//!   authentication layer produces (`oid` when the token has it, else `sub`).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::ErrorBody;

/// Prefix of every Managed HSM data action.
pub const DATA_ACTION_PREFIX: &str = "Microsoft.KeyVault/managedHsm/";
/// `type` of a role definition object.
pub const ROLE_DEFINITION_TYPE: &str = "Microsoft.Authorization/roleDefinitions";
/// `type` of a role assignment object.
pub const ROLE_ASSIGNMENT_TYPE: &str = "Microsoft.Authorization/roleAssignments";
/// Prefix of role definition ids on the wire (what the Azure CLI sends and the service returns).
pub const ROLE_DEFINITION_ID_PREFIX: &str =
    "Microsoft.KeyVault/providers/Microsoft.Authorization/roleDefinitions/";

macro_rules! data_actions {
    ($($variant:ident => $suffix:literal,)*) => {
        /// A Managed HSM data action (`Microsoft.KeyVault/managedHsm/...`).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum DataAction {
            $($variant,)*
        }

        impl DataAction {
            /// Every data action, in declaration order.
            pub const ALL: &'static [DataAction] = &[$(DataAction::$variant,)*];

            /// The full action string, e.g. `Microsoft.KeyVault/managedHsm/keys/sign/action`.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(DataAction::$variant => concat!("Microsoft.KeyVault/managedHsm/", $suffix),)*
                }
            }
        }
    };
}

data_actions! {
    KeysRead => "keys/read/action",
    KeysWrite => "keys/write/action",
    KeysCreate => "keys/create",
    KeysDelete => "keys/delete",
    KeysRotate => "keys/rotate/action",
    KeysBackup => "keys/backup/action",
    KeysRestore => "keys/restore/action",
    KeysRelease => "keys/release/action",
    KeysImport => "keys/import/action",
    KeysEncrypt => "keys/encrypt/action",
    KeysDecrypt => "keys/decrypt/action",
    KeysWrap => "keys/wrap/action",
    KeysUnwrap => "keys/unwrap/action",
    KeysSign => "keys/sign/action",
    KeysVerify => "keys/verify/action",
    KeysExport => "keys/export/action",
    DeletedKeysRead => "keys/deletedKeys/read/action",
    DeletedKeysRecover => "keys/deletedKeys/recover/action",
    DeletedKeysDelete => "keys/deletedKeys/delete",
    SecurityDomainDownload => "securitydomain/download/action",
    SecurityDomainDownloadRead => "securitydomain/download/read",
    SecurityDomainUpload => "securitydomain/upload/action",
    SecurityDomainUploadRead => "securitydomain/upload/read",
    SecurityDomainTransferKeyRead => "securitydomain/transferkey/read",
    RoleAssignmentsRead => "roleAssignments/read/action",
    RoleAssignmentsWrite => "roleAssignments/write/action",
    RoleAssignmentsDelete => "roleAssignments/delete/action",
    RoleDefinitionsRead => "roleDefinitions/read/action",
    RoleDefinitionsWrite => "roleDefinitions/write/action",
    RoleDefinitionsDelete => "roleDefinitions/delete/action",
    BackupStart => "backup/start/action",
    BackupStatus => "backup/status/action",
    // Keystead: delete a backup folder of the pool (retention of scheduled backups).
    BackupDelete => "backup/delete/action",
    RestoreStart => "restore/start/action",
    RestoreStatus => "restore/status/action",
    Rng => "rng/action",
}

impl fmt::Display for DataAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The string is not a known Managed HSM data action.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown data action {0:?}: data actions look like \"Microsoft.KeyVault/managedHsm/keys/sign/action\""
)]
pub struct UnknownDataAction(pub String);

impl FromStr for DataAction {
    type Err = UnknownDataAction;

    /// Parses the full action string (case-insensitive, as in Azure).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DataAction::ALL
            .iter()
            .copied()
            .find(|a| a.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| UnknownDataAction(s.to_owned()))
    }
}

impl Serialize for DataAction {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for DataAction {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Does `pattern` (an exact action or a `*`-terminated wildcard) match `action`?
/// Matching is ASCII case-insensitive, like Azure's.
pub fn action_matches(pattern: &str, action: DataAction) -> bool {
    let action = action.as_str();
    match pattern.strip_suffix('*') {
        Some(prefix) => {
            action.len() >= prefix.len()
                && action.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
        }
        None => pattern.eq_ignore_ascii_case(action),
    }
}

// ---------------------------------------------------------------------------------------------
// Wire types
// ---------------------------------------------------------------------------------------------

/// `properties.type` of a role definition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RoleType {
    #[serde(rename = "AKVBuiltInRole")]
    BuiltIn,
    #[serde(rename = "CustomRole")]
    Custom,
}

/// One permission block of a role definition.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Permission {
    #[serde(default)]
    pub actions: Vec<String>,
    #[serde(default)]
    pub not_actions: Vec<String>,
    #[serde(default)]
    pub data_actions: Vec<String>,
    #[serde(default)]
    pub not_data_actions: Vec<String>,
}

impl Permission {
    /// Does this permission grant `action` (some data action matches, no not-data action does)?
    pub fn grants(&self, action: DataAction) -> bool {
        self.data_actions.iter().any(|p| action_matches(p, action))
            && !self
                .not_data_actions
                .iter()
                .any(|p| action_matches(p, action))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RoleDefinitionProperties {
    pub role_name: String,
    #[serde(default)]
    pub description: String,
    #[serde(rename = "type")]
    pub role_type: RoleType,
    #[serde(default)]
    pub permissions: Vec<Permission>,
    #[serde(default)]
    pub assignable_scopes: Vec<String>,
}

/// A role definition as on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleDefinition {
    /// `Microsoft.KeyVault/providers/Microsoft.Authorization/roleDefinitions/<guid>`.
    pub id: String,
    /// The GUID.
    pub name: String,
    /// Always [`ROLE_DEFINITION_TYPE`].
    #[serde(rename = "type")]
    pub kind: String,
    pub properties: RoleDefinitionProperties,
}

impl RoleDefinition {
    /// Does any permission block of this role grant `action`?
    pub fn grants(&self, action: DataAction) -> bool {
        self.properties.permissions.iter().any(|p| p.grants(action))
    }
}

/// Body of `PUT .../roleDefinitions/{guid}`: `{"properties":{...}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleDefinitionCreateParameters {
    pub properties: RoleDefinitionCreateProperties,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RoleDefinitionCreateProperties {
    pub role_name: String,
    #[serde(default)]
    pub description: String,
    /// Ignored on input: a definition created through the API is always a custom role.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub role_type: Option<RoleType>,
    #[serde(default)]
    pub permissions: Vec<Permission>,
    /// Defaults to `["/"]` when empty.
    #[serde(default)]
    pub assignable_scopes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RoleAssignmentProperties {
    pub scope: String,
    pub role_definition_id: String,
    pub principal_id: String,
}

/// A role assignment as on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleAssignment {
    /// `/{scope}/providers/Microsoft.Authorization/roleAssignments/{name}`.
    pub id: String,
    /// The GUID.
    pub name: String,
    /// Always [`ROLE_ASSIGNMENT_TYPE`].
    #[serde(rename = "type")]
    pub kind: String,
    pub properties: RoleAssignmentProperties,
}

/// Body of `PUT .../roleAssignments/{guid}`: `{"properties":{"roleDefinitionId","principalId"}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleAssignmentCreateParameters {
    pub properties: RoleAssignmentCreateProperties,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RoleAssignmentCreateProperties {
    pub role_definition_id: String,
    pub principal_id: String,
}

/// A page of a list result: `{"value":[...],"nextLink":...}` (Keystead returns one page).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListResult<T> {
    pub value: Vec<T>,
    #[serde(rename = "nextLink", default, skip_serializing_if = "Option::is_none")]
    pub next_link: Option<String>,
}

impl<T> ListResult<T> {
    pub fn single_page(value: Vec<T>) -> Self {
        Self {
            value,
            next_link: None,
        }
    }
}

pub type RoleDefinitionListResult = ListResult<RoleDefinition>;
pub type RoleAssignmentListResult = ListResult<RoleAssignment>;

// ---------------------------------------------------------------------------------------------
// Built-in roles
// ---------------------------------------------------------------------------------------------

pub const ADMINISTRATOR_ROLE_ID: &str = "a290e904-7015-4bba-90c8-60543313cdb4";
pub const CRYPTO_OFFICER_ROLE_ID: &str = "515eb02d-2335-4d2d-92f2-b1cbdf9c3778";
pub const CRYPTO_USER_ROLE_ID: &str = "21dbd100-6940-42c2-9190-5d6cb909625b";
pub const POLICY_ADMINISTRATOR_ROLE_ID: &str = "4bd23610-cdcf-4971-bdee-bdc562cc28e4";
pub const CRYPTO_AUDITOR_ROLE_ID: &str = "2c18b078-7c48-4d3a-af88-5a3a1b3f82b3";
pub const CRYPTO_SERVICE_ENCRYPTION_USER_ROLE_ID: &str = "33413926-3206-4cdd-b39a-83574fe37a17";
pub const CRYPTO_SERVICE_RELEASE_USER_ROLE_ID: &str = "21dbd100-6940-42c2-9190-5d6cb909625c";
pub const BACKUP_ROLE_ID: &str = "7b127d3c-77bd-4e3e-bbe0-dbb8971fa7f8";
pub const RESTORE_ROLE_ID: &str = "6efe6056-5259-49d2-8b3d-d3d73544b20b";

/// The table of built-in roles: (guid, role name, description, data actions).
pub fn builtin_role_table() -> Vec<(&'static str, &'static str, &'static str, Vec<DataAction>)> {
    use DataAction::*;
    let role_management = [
        RoleAssignmentsRead,
        RoleAssignmentsWrite,
        RoleAssignmentsDelete,
        RoleDefinitionsRead,
        RoleDefinitionsWrite,
        RoleDefinitionsDelete,
    ];
    let mut admin = vec![
        SecurityDomainDownload,
        SecurityDomainDownloadRead,
        SecurityDomainUpload,
        SecurityDomainUploadRead,
        SecurityDomainTransferKeyRead,
    ];
    admin.extend(role_management);
    admin.extend([
        BackupStart,
        BackupStatus,
        BackupDelete,
        RestoreStart,
        RestoreStatus,
    ]);
    let mut officer = vec![
        DeletedKeysRead,
        DeletedKeysRecover,
        DeletedKeysDelete,
        KeysExport,
    ];
    officer.extend(role_management);
    vec![
        (
            ADMINISTRATOR_ROLE_ID,
            "Managed HSM Administrator",
            "Security domain, full backup and restore, and role management. No key operations.",
            admin,
        ),
        (
            CRYPTO_OFFICER_ROLE_ID,
            "Managed HSM Crypto Officer",
            "Role management, purge or recover deleted keys, export keys.",
            officer,
        ),
        (
            CRYPTO_USER_ROLE_ID,
            "Managed HSM Crypto User",
            "All key operations except purge or recover deleted keys and export; random bytes.",
            vec![
                KeysRead,
                KeysWrite,
                KeysCreate,
                KeysDelete,
                KeysRotate,
                KeysBackup,
                KeysRestore,
                KeysRelease,
                KeysImport,
                KeysEncrypt,
                KeysDecrypt,
                KeysWrap,
                KeysUnwrap,
                KeysSign,
                KeysVerify,
                RoleAssignmentsRead,
                RoleDefinitionsRead,
                Rng,
            ],
        ),
        (
            POLICY_ADMINISTRATOR_ROLE_ID,
            "Managed HSM Policy Administrator",
            "Create and delete role assignments and role definitions.",
            role_management.to_vec(),
        ),
        (
            CRYPTO_AUDITOR_ROLE_ID,
            "Managed HSM Crypto Auditor",
            "Read (but not use) key attributes.",
            vec![KeysRead, RoleAssignmentsRead, RoleDefinitionsRead],
        ),
        (
            CRYPTO_SERVICE_ENCRYPTION_USER_ROLE_ID,
            "Managed HSM Crypto Service Encryption User",
            "Use a key for service encryption (read, wrap, unwrap).",
            vec![KeysRead, KeysWrap, KeysUnwrap],
        ),
        (
            CRYPTO_SERVICE_RELEASE_USER_ROLE_ID,
            "Managed HSM Crypto Service Release User",
            "Release keys to a trusted execution environment.",
            vec![KeysRelease],
        ),
        (
            BACKUP_ROLE_ID,
            "Managed HSM Backup",
            "Single-key or full HSM backup.",
            vec![KeysBackup, BackupStart, BackupStatus, BackupDelete],
        ),
        (
            RESTORE_ROLE_ID,
            "Managed HSM Restore",
            "Single-key or full HSM restore.",
            vec![KeysRestore, RestoreStart, RestoreStatus],
        ),
    ]
}

/// The nine built-in roles as role definitions (assignable at `/`, and so below it).
pub fn builtin_roles() -> Vec<RoleDefinition> {
    BUILTIN_ROLES.clone()
}

static BUILTIN_ROLES: std::sync::LazyLock<Vec<RoleDefinition>> =
    std::sync::LazyLock::new(build_builtin_roles);

fn build_builtin_roles() -> Vec<RoleDefinition> {
    builtin_role_table()
        .into_iter()
        .map(|(id, name, description, actions)| RoleDefinition {
            id: role_definition_id(id),
            name: id.to_owned(),
            kind: ROLE_DEFINITION_TYPE.to_owned(),
            properties: RoleDefinitionProperties {
                role_name: name.to_owned(),
                description: description.to_owned(),
                role_type: RoleType::BuiltIn,
                permissions: vec![Permission {
                    data_actions: actions.iter().map(|a| a.as_str().to_owned()).collect(),
                    ..Permission::default()
                }],
                assignable_scopes: vec!["/".to_owned()],
            },
        })
        .collect()
}

fn builtin_role(guid: &str) -> Option<&'static RoleDefinition> {
    BUILTIN_ROLES.iter().find(|r| r.name == guid)
}

fn is_builtin(guid: &str) -> bool {
    builtin_role(guid).is_some()
}

/// The wire id of a role definition GUID.
pub fn role_definition_id(guid: &str) -> String {
    format!("{ROLE_DEFINITION_ID_PREFIX}{guid}")
}

/// Resolves a role definition reference to its lowercase GUID. Accepts
/// `Microsoft.KeyVault/providers/Microsoft.Authorization/roleDefinitions/<guid>`,
/// `/providers/Microsoft.Authorization/roleDefinitions/<guid>` (optionally behind a scope such
/// as `/keys`), and the bare GUID.
pub fn resolve_role_definition_guid(reference: &str) -> Option<String> {
    let reference = reference.trim();
    let last = match reference.rfind('/') {
        Some(i) => {
            let (head, tail) = reference.split_at(i);
            let head_ok = head
                .to_ascii_lowercase()
                .ends_with("/providers/microsoft.authorization/roledefinitions");
            if !head_ok {
                return None;
            }
            &tail[1..]
        }
        None => reference,
    };
    parse_guid(last)
}

fn parse_guid(s: &str) -> Option<String> {
    // Only the hyphenated 36-character form, as Azure uses.
    if s.len() != 36 {
        return None;
    }
    uuid::Uuid::parse_str(s)
        .ok()
        .map(|u| u.hyphenated().to_string())
}

// ---------------------------------------------------------------------------------------------
// Scopes and paths
// ---------------------------------------------------------------------------------------------

/// Is `name` a valid Key Vault key name (1–127 of `[0-9A-Za-z-]`)?
pub fn is_valid_key_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 127
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// Normalises an RBAC scope: `/`, `/keys` or `/keys/{name}` (a trailing slash and repeated
/// leading slashes are tolerated; the `keys` segment is case-insensitive). `None` if invalid.
pub fn normalize_scope(scope: &str) -> Option<String> {
    let trimmed = scope.trim_start_matches('/');
    let trimmed = trimmed.strip_suffix('/').unwrap_or(trimmed);
    if trimmed.is_empty() {
        return Some("/".to_owned());
    }
    let mut parts = trimmed.split('/');
    let first = parts.next()?;
    if !first.eq_ignore_ascii_case("keys") {
        return None;
    }
    match (parts.next(), parts.next()) {
        (None, _) => Some("/keys".to_owned()),
        (Some(name), None) if is_valid_key_name(name) => Some(format!("/keys/{name}")),
        _ => None,
    }
}

/// Does an assignment (or assignable scope) at `outer` cover the resource scope `inner`?
/// `/` covers everything, `/keys` covers `/keys` and every `/keys/{name}`, `/keys/{name}`
/// covers only itself. Both must be normalised.
pub fn scope_covers(outer: &str, inner: &str) -> bool {
    if outer == "/" || outer == inner {
        return true;
    }
    inner
        .strip_prefix(outer)
        .is_some_and(|rest| rest.starts_with('/'))
}

/// Which RBAC collection a path addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RbacKind {
    RoleAssignments,
    RoleDefinitions,
}

/// Parses `/{scope}/providers/Microsoft.Authorization/role{Assignments,Definitions}[/{name}]`
/// (scope `/`, `/keys` or `/keys/{key}`) into (normalised scope, kind, name). The name is
/// returned as sent (validate it with the mutators). `None` if the path is not an RBAC path.
pub fn parse_rbac_path(path: &str) -> Option<(String, RbacKind, Option<String>)> {
    let lower = path.to_ascii_lowercase();
    let marker = "/providers/microsoft.authorization/";
    let at = lower.find(marker)?;
    let scope = normalize_scope(&path[..at])?;
    let rest = &path[at + marker.len()..];
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let (collection, name) = match rest.split_once('/') {
        Some((c, n)) if !n.is_empty() && !n.contains('/') => (c, Some(n.to_owned())),
        Some(_) => return None,
        None => (rest, None),
    };
    let kind = if collection.eq_ignore_ascii_case("roleAssignments") {
        RbacKind::RoleAssignments
    } else if collection.eq_ignore_ascii_case("roleDefinitions") {
        RbacKind::RoleDefinitions
    } else {
        return None;
    };
    Some((scope, kind, name))
}

fn assignment_id(scope: &str, name: &str) -> String {
    if scope == "/" {
        format!("/providers/Microsoft.Authorization/roleAssignments/{name}")
    } else {
        format!("{scope}/providers/Microsoft.Authorization/roleAssignments/{name}")
    }
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// The caller lacks a data action: answer 403 with [`Denied::error_body`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "Caller is not authorized to perform action on resource. Caller: '{principal}'. Action: '{action}'. Resource: '{scope}'. Ask an administrator of the HSM for a role assignment that grants this action at this scope."
)]
pub struct Denied {
    pub principal: String,
    /// The full data action string.
    pub action: String,
    pub scope: String,
}

impl Denied {
    /// HTTP status to answer with.
    pub const STATUS: u16 = 403;

    /// The Key Vault error body: code `Forbidden`, inner code `ForbiddenByRbac`.
    pub fn error_body(&self) -> ErrorBody {
        ErrorBody::new("Forbidden", self.to_string()).with_inner(
            "ForbiddenByRbac",
            format!("Missing data action '{}'", self.action),
        )
    }
}

/// An RBAC API request cannot be carried out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RbacError {
    #[error("invalid scope {0:?}: use \"/\", \"/keys\" or \"/keys/<key name>\"")]
    InvalidScope(String),
    #[error("invalid name {0:?}: role assignment and role definition names are GUIDs")]
    InvalidName(String),
    #[error(
        "role definition {0:?} does not exist: use the id of a built-in role or of a custom role (list them with GET /providers/Microsoft.Authorization/roleDefinitions)"
    )]
    RoleDefinitionNotFound(String),
    #[error("role assignment {name} does not exist at scope {scope}")]
    RoleAssignmentNotFound { scope: String, name: String },
    #[error(
        "role definition {role} is not assignable at scope {scope}: its assignableScopes are {assignable:?}"
    )]
    NotAssignable {
        role: String,
        scope: String,
        assignable: Vec<String>,
    },
    #[error(
        "role assignment {name} already exists with a different scope, role or principal; delete it first or use a new GUID"
    )]
    AssignmentConflict { name: String },
    #[error("principalId must not be empty")]
    EmptyPrincipal,
    #[error("built-in role {0} cannot be changed or deleted; create a custom role instead")]
    BuiltInImmutable(String),
    #[error(
        "role definition {role} is used by {count} role assignment(s); delete them before deleting or narrowing the role"
    )]
    RoleInUse { role: String, count: usize },
    #[error("role name {0:?} is already used by another role definition")]
    DuplicateRoleName(String),
    #[error("invalid role definition: {0}")]
    InvalidRoleDefinition(String),
    #[error(
        "unsupported $filter {0:?}: use atScope(), principalId eq '<id>', or both joined with 'and'"
    )]
    InvalidFilter(String),
}

impl RbacError {
    /// HTTP status for the error.
    pub fn status(&self) -> u16 {
        match self {
            RbacError::RoleDefinitionNotFound(_) | RbacError::RoleAssignmentNotFound { .. } => 404,
            RbacError::AssignmentConflict { .. }
            | RbacError::RoleInUse { .. }
            | RbacError::DuplicateRoleName(_) => 409,
            RbacError::BuiltInImmutable(_) => 403,
            _ => 400,
        }
    }

    /// Key Vault error code.
    pub fn code(&self) -> &'static str {
        match self {
            RbacError::RoleDefinitionNotFound(_) => "RoleDefinitionNotFound",
            RbacError::RoleAssignmentNotFound { .. } => "RoleAssignmentNotFound",
            RbacError::AssignmentConflict { .. } => "RoleAssignmentExists",
            RbacError::RoleInUse { .. } => "RoleDefinitionInUse",
            RbacError::DuplicateRoleName(_) => "RoleDefinitionExists",
            RbacError::BuiltInImmutable(_) => "Forbidden",
            _ => "BadParameter",
        }
    }

    /// The Key Vault error body.
    pub fn error_body(&self) -> ErrorBody {
        ErrorBody::new(self.code(), self.to_string())
    }
}

// ---------------------------------------------------------------------------------------------
// State
// ---------------------------------------------------------------------------------------------

/// Parsed `$filter` of a role assignment list.
#[derive(Debug, Default, PartialEq, Eq)]
struct AssignmentFilter {
    at_scope: bool,
    principal: Option<String>,
}

fn parse_assignment_filter(filter: &str) -> Result<AssignmentFilter, RbacError> {
    let bad = || RbacError::InvalidFilter(filter.to_owned());
    let mut out = AssignmentFilter::default();
    let lower = filter.to_ascii_lowercase();
    let mut rest = filter.trim();
    let mut lower_rest = lower.trim();
    loop {
        if lower_rest.is_empty() {
            return Err(bad());
        }
        if lower_rest.starts_with("atscope()") {
            if out.at_scope {
                return Err(bad());
            }
            out.at_scope = true;
            rest = &rest["atscope()".len()..];
        } else if let Some(after) = lower_rest.strip_prefix("principalid") {
            let skip = lower_rest.len() - after.trim_start().len();
            let after_l = &lower_rest[skip..];
            let after_r = &rest[skip..];
            if !after_l.starts_with("eq") || out.principal.is_some() {
                return Err(bad());
            }
            let value = after_r[2..].trim_start();
            let value = value.strip_prefix('\'').ok_or_else(bad)?;
            let end = value.find('\'').ok_or_else(bad)?;
            out.principal = Some(value[..end].to_owned());
            let consumed = rest.len() - (value.len() - end - 1);
            rest = &rest[consumed..];
        } else {
            return Err(bad());
        }
        rest = rest.trim_start();
        lower_rest = &lower[lower.len() - rest.len()..];
        let lower_trim = lower_rest.trim_end();
        if lower_trim.is_empty() {
            return Ok(out);
        }
        if let Some(after) = lower_rest.strip_prefix("and ") {
            let consumed = lower_rest.len() - after.len();
            rest = rest[consumed..].trim_start();
            lower_rest = &lower[lower.len() - rest.len()..];
        } else {
            return Err(bad());
        }
    }
}

/// The replicated RBAC state of a pool: custom role definitions and role assignments, both
/// keyed by their lowercase GUID. Built-in roles are not stored; they are always present.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RbacState {
    pub definitions: BTreeMap<String, RoleDefinition>,
    pub assignments: BTreeMap<String, RoleAssignment>,
}

/// Namespace of the deterministic names of bootstrap administrator assignments (UUIDv5).
const BOOTSTRAP_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x6b2f_9c1e_4a7d_4e0b_9f3a_1d5c_7e8a_2b40);

/// The deterministic assignment name of an initial administrator: UUIDv5 (SHA-1) of the
/// principal in a Keystead namespace.
pub fn bootstrap_assignment_name(principal: &str) -> String {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(BOOTSTRAP_NAMESPACE.as_bytes());
    ctx.update(principal.as_bytes());
    let digest = ctx.finish();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest.as_ref()[..16]);
    uuid::Builder::from_sha1_bytes(bytes)
        .into_uuid()
        .hyphenated()
        .to_string()
}

impl RbacState {
    pub fn new() -> Self {
        Self::default()
    }

    /// A role definition (built-in or custom) by reference (any accepted id form).
    pub fn get_definition(&self, reference: &str) -> Option<RoleDefinition> {
        self.definition_ref(reference).cloned()
    }

    fn definition_ref(&self, reference: &str) -> Option<&RoleDefinition> {
        let guid = resolve_role_definition_guid(reference)?;
        builtin_role(&guid).or_else(|| self.definitions.get(&guid))
    }

    /// Is `principal` allowed `action` on `resource_scope` (`/`, `/keys` or `/keys/{name}`)?
    /// Deny by default; an invalid resource scope is denied.
    pub fn check(
        &self,
        principal: &str,
        action: DataAction,
        resource_scope: &str,
    ) -> Result<(), Denied> {
        let denied = || Denied {
            principal: principal.to_owned(),
            action: action.as_str().to_owned(),
            scope: resource_scope.to_owned(),
        };
        let Some(scope) = normalize_scope(resource_scope) else {
            return Err(denied());
        };
        let allowed = self.assignments.values().any(|a| {
            a.properties.principal_id == principal
                && scope_covers(&a.properties.scope, &scope)
                && self
                    .definition_ref(&a.properties.role_definition_id)
                    .is_some_and(|role| role.grants(action))
        });
        if allowed { Ok(()) } else { Err(denied()) }
    }

    /// The data actions `principal` holds at `resource_scope` (for diagnostics and tests).
    pub fn effective_actions(&self, principal: &str, resource_scope: &str) -> Vec<DataAction> {
        DataAction::ALL
            .iter()
            .copied()
            .filter(|a| self.check(principal, *a, resource_scope).is_ok())
            .collect()
    }

    /// `PUT {scope}/providers/Microsoft.Authorization/roleAssignments/{name}`.
    pub fn put_assignment(
        &mut self,
        scope: &str,
        name: &str,
        params: &RoleAssignmentCreateParameters,
    ) -> Result<RoleAssignment, RbacError> {
        let scope = normalize_scope(scope).ok_or_else(|| RbacError::InvalidScope(scope.into()))?;
        let name = parse_guid(name).ok_or_else(|| RbacError::InvalidName(name.into()))?;
        let principal = params.properties.principal_id.trim();
        if principal.is_empty() {
            return Err(RbacError::EmptyPrincipal);
        }
        let reference = &params.properties.role_definition_id;
        let role = self
            .get_definition(reference)
            .ok_or_else(|| RbacError::RoleDefinitionNotFound(reference.clone()))?;
        let assignable = &role.properties.assignable_scopes;
        if !assignable.iter().any(|s| scope_covers(s, &scope)) {
            return Err(RbacError::NotAssignable {
                role: role.name.clone(),
                scope,
                assignable: assignable.clone(),
            });
        }
        let assignment = RoleAssignment {
            id: assignment_id(&scope, &name),
            name: name.clone(),
            kind: ROLE_ASSIGNMENT_TYPE.to_owned(),
            properties: RoleAssignmentProperties {
                scope,
                role_definition_id: role.id.clone(),
                principal_id: principal.to_owned(),
            },
        };
        if let Some(existing) = self.assignments.get(&name) {
            return if *existing == assignment {
                Ok(assignment)
            } else {
                Err(RbacError::AssignmentConflict { name })
            };
        }
        self.assignments.insert(name, assignment.clone());
        Ok(assignment)
    }

    /// `GET .../roleAssignments/{name}` at `scope`.
    pub fn get_assignment(&self, scope: &str, name: &str) -> Result<RoleAssignment, RbacError> {
        let (scope, name) = self.locate_assignment(scope, name)?;
        self.assignments
            .get(&name)
            .cloned()
            .ok_or(RbacError::RoleAssignmentNotFound { scope, name })
    }

    /// `DELETE .../roleAssignments/{name}` at `scope`; returns the deleted assignment.
    pub fn delete_assignment(
        &mut self,
        scope: &str,
        name: &str,
    ) -> Result<RoleAssignment, RbacError> {
        let (scope, name) = self.locate_assignment(scope, name)?;
        match self.assignments.remove(&name) {
            Some(a) => Ok(a),
            None => Err(RbacError::RoleAssignmentNotFound { scope, name }),
        }
    }

    fn locate_assignment(&self, scope: &str, name: &str) -> Result<(String, String), RbacError> {
        let scope = normalize_scope(scope).ok_or_else(|| RbacError::InvalidScope(scope.into()))?;
        let name = parse_guid(name).ok_or_else(|| RbacError::InvalidName(name.into()))?;
        match self.assignments.get(&name) {
            Some(a) if a.properties.scope == scope => Ok((scope, name)),
            _ => Err(RbacError::RoleAssignmentNotFound { scope, name }),
        }
    }

    /// `GET {scope}/providers/Microsoft.Authorization/roleAssignments[?$filter=...]`.
    ///
    /// Without `atScope()`: assignments at, above and below `scope`. With `atScope()`: only
    /// those at or above it (the ones that apply there). `principalId eq '<id>'` narrows to one
    /// principal. Sorted by name.
    pub fn list_assignments(
        &self,
        scope: &str,
        filter: Option<&str>,
    ) -> Result<Vec<RoleAssignment>, RbacError> {
        let scope = normalize_scope(scope).ok_or_else(|| RbacError::InvalidScope(scope.into()))?;
        let filter = match filter.map(str::trim).filter(|f| !f.is_empty()) {
            Some(f) => parse_assignment_filter(f)?,
            None => AssignmentFilter::default(),
        };
        Ok(self
            .assignments
            .values()
            .filter(|a| {
                let s = &a.properties.scope;
                let related = if filter.at_scope {
                    scope_covers(s, &scope)
                } else {
                    scope_covers(s, &scope) || scope_covers(&scope, s)
                };
                related
                    && filter
                        .principal
                        .as_ref()
                        .is_none_or(|p| *p == a.properties.principal_id)
            })
            .cloned()
            .collect())
    }

    /// `PUT /providers/Microsoft.Authorization/roleDefinitions/{name}`: create or replace a
    /// custom role.
    pub fn put_definition(
        &mut self,
        scope: &str,
        name: &str,
        params: &RoleDefinitionCreateParameters,
    ) -> Result<RoleDefinition, RbacError> {
        normalize_scope(scope).ok_or_else(|| RbacError::InvalidScope(scope.into()))?;
        let guid = parse_guid(name).ok_or_else(|| RbacError::InvalidName(name.into()))?;
        if is_builtin(&guid) {
            return Err(RbacError::BuiltInImmutable(guid));
        }
        let p = &params.properties;
        let role_name = p.role_name.trim();
        if role_name.is_empty() {
            return Err(RbacError::InvalidRoleDefinition(
                "roleName must not be empty".into(),
            ));
        }
        let clash = BUILTIN_ROLES
            .iter()
            .chain(self.definitions.values())
            .any(|r| r.name != guid && r.properties.role_name.eq_ignore_ascii_case(role_name));
        if clash {
            return Err(RbacError::DuplicateRoleName(role_name.to_owned()));
        }
        if p.permissions.is_empty() {
            return Err(RbacError::InvalidRoleDefinition(
                "permissions must contain at least one entry".into(),
            ));
        }
        for perm in &p.permissions {
            for pattern in perm.data_actions.iter().chain(&perm.not_data_actions) {
                validate_action_pattern(pattern)?;
            }
        }
        let mut scopes = Vec::new();
        for s in &p.assignable_scopes {
            let n = normalize_scope(s).ok_or_else(|| RbacError::InvalidScope(s.clone()))?;
            if !scopes.contains(&n) {
                scopes.push(n);
            }
        }
        if scopes.is_empty() {
            scopes.push("/".to_owned());
        }
        let id = role_definition_id(&guid);
        let in_use_outside = self
            .assignments
            .values()
            .filter(|a| {
                resolve_role_definition_guid(&a.properties.role_definition_id).as_deref()
                    == Some(guid.as_str())
            })
            .filter(|a| !scopes.iter().any(|s| scope_covers(s, &a.properties.scope)))
            .count();
        if in_use_outside > 0 {
            return Err(RbacError::RoleInUse {
                role: guid,
                count: in_use_outside,
            });
        }
        let def = RoleDefinition {
            id,
            name: guid.clone(),
            kind: ROLE_DEFINITION_TYPE.to_owned(),
            properties: RoleDefinitionProperties {
                role_name: role_name.to_owned(),
                description: p.description.clone(),
                role_type: RoleType::Custom,
                permissions: p.permissions.clone(),
                assignable_scopes: scopes,
            },
        };
        self.definitions.insert(guid, def.clone());
        Ok(def)
    }

    /// `DELETE .../roleDefinitions/{name}`: built-ins are immutable; a role in use cannot be
    /// deleted. Returns the deleted definition.
    pub fn delete_definition(
        &mut self,
        scope: &str,
        name: &str,
    ) -> Result<RoleDefinition, RbacError> {
        normalize_scope(scope).ok_or_else(|| RbacError::InvalidScope(scope.into()))?;
        let guid = resolve_role_definition_guid(name)
            .ok_or_else(|| RbacError::InvalidName(name.into()))?;
        if is_builtin(&guid) {
            return Err(RbacError::BuiltInImmutable(guid));
        }
        if !self.definitions.contains_key(&guid) {
            return Err(RbacError::RoleDefinitionNotFound(name.to_owned()));
        }
        let count = self
            .assignments
            .values()
            .filter(|a| {
                resolve_role_definition_guid(&a.properties.role_definition_id).as_deref()
                    == Some(guid.as_str())
            })
            .count();
        if count > 0 {
            return Err(RbacError::RoleInUse { role: guid, count });
        }
        self.definitions
            .remove(&guid)
            .ok_or(RbacError::RoleDefinitionNotFound(guid))
    }

    /// `GET {scope}/providers/Microsoft.Authorization/roleDefinitions[?$filter=roleName eq '..']`:
    /// built-ins first, then custom roles assignable at, above or below `scope`.
    pub fn list_definitions(
        &self,
        scope: &str,
        filter: Option<&str>,
    ) -> Result<Vec<RoleDefinition>, RbacError> {
        let scope = normalize_scope(scope).ok_or_else(|| RbacError::InvalidScope(scope.into()))?;
        let role_name = match filter.map(str::trim).filter(|f| !f.is_empty()) {
            None => None,
            Some(f) => Some(parse_role_name_filter(f)?),
        };
        Ok(builtin_roles()
            .into_iter()
            .chain(self.definitions.values().cloned())
            .filter(|r| {
                r.properties
                    .assignable_scopes
                    .iter()
                    .any(|s| scope_covers(s, &scope) || scope_covers(&scope, s))
            })
            .filter(|r| {
                role_name
                    .as_ref()
                    .is_none_or(|n| r.properties.role_name.eq_ignore_ascii_case(n))
            })
            .collect())
    }

    /// Assignments of the Administrator role at `/` for the configured initial administrators,
    /// with deterministic names ([`bootstrap_assignment_name`]). Idempotent: existing identical
    /// assignments are kept. Returns the assignments (new or existing) in input order.
    /// All or nothing: on error the state is unchanged.
    pub fn bootstrap_administrators(
        &mut self,
        principals: &[String],
    ) -> Result<Vec<RoleAssignment>, RbacError> {
        let mut next = self.clone();
        let out = principals
            .iter()
            .map(|p| {
                let params = RoleAssignmentCreateParameters {
                    properties: RoleAssignmentCreateProperties {
                        role_definition_id: role_definition_id(ADMINISTRATOR_ROLE_ID),
                        principal_id: p.clone(),
                    },
                };
                next.put_assignment("/", &bootstrap_assignment_name(p.trim()), &params)
            })
            .collect::<Result<Vec<_>, _>>()?;
        *self = next;
        Ok(out)
    }
}

fn validate_action_pattern(pattern: &str) -> Result<(), RbacError> {
    let known = pattern.parse::<DataAction>().is_ok();
    let wildcard = pattern.ends_with('*')
        && !pattern[..pattern.len() - 1].contains('*')
        && DataAction::ALL.iter().any(|a| action_matches(pattern, *a));
    if known || wildcard {
        Ok(())
    } else {
        Err(RbacError::InvalidRoleDefinition(format!(
            "{pattern:?} is neither a Managed HSM data action nor a wildcard ending in '*' that matches one (for example \"Microsoft.KeyVault/managedHsm/keys/*\")"
        )))
    }
}

fn parse_role_name_filter(filter: &str) -> Result<String, RbacError> {
    let bad = || RbacError::InvalidFilter(filter.to_owned());
    let lower = filter.to_ascii_lowercase();
    let after = lower.strip_prefix("rolename").ok_or_else(bad)?;
    let skip = filter.len() - after.trim_start().len();
    if !lower[skip..].starts_with("eq") {
        return Err(bad());
    }
    let value = filter[skip + 2..].trim();
    value
        .strip_prefix('\'')
        .and_then(|v| v.strip_suffix('\''))
        .map(str::to_owned)
        .ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_parsing() {
        assert_eq!(
            parse_assignment_filter("atScope()").unwrap(),
            AssignmentFilter {
                at_scope: true,
                principal: None
            }
        );
        assert_eq!(
            parse_assignment_filter("principalId eq 'Ab-1'").unwrap(),
            AssignmentFilter {
                at_scope: false,
                principal: Some("Ab-1".into())
            }
        );
        assert_eq!(
            parse_assignment_filter("atScope() and principalId eq 'x'").unwrap(),
            AssignmentFilter {
                at_scope: true,
                principal: Some("x".into())
            }
        );
        assert_eq!(
            parse_assignment_filter("principalId eq 'x' and atScope()").unwrap(),
            AssignmentFilter {
                at_scope: true,
                principal: Some("x".into())
            }
        );
        for bad in [
            "",
            "foo",
            "atScope() or principalId eq 'x'",
            "principalId eq x",
            "atScope() and",
            "principalId eq 'x",
        ] {
            assert!(parse_assignment_filter(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_role_name_filter("roleName eq 'My Role'").unwrap(),
            "My Role"
        );
        assert!(parse_role_name_filter("roleName ne 'x'").is_err());
    }
}
