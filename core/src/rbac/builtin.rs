//! The built-in roles of a Managed HSM: their ids, names and data actions, and the
//! resolution of role definition references.

use super::*;

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

pub(super) static BUILTIN_ROLES: std::sync::LazyLock<Vec<RoleDefinition>> =
    std::sync::LazyLock::new(build_builtin_roles);

pub(super) fn build_builtin_roles() -> Vec<RoleDefinition> {
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

pub(super) fn builtin_role(guid: &str) -> Option<&'static RoleDefinition> {
    BUILTIN_ROLES.iter().find(|r| r.name == guid)
}

pub(super) fn is_builtin(guid: &str) -> bool {
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

pub(super) fn parse_guid(s: &str) -> Option<String> {
    // Only the hyphenated 36-character form, as Azure uses.
    if s.len() != 36 {
        return None;
    }
    uuid::Uuid::parse_str(s)
        .ok()
        .map(|u| u.hyphenated().to_string())
}
