//! The Managed HSM data actions: their names, parsing, and wildcard matching.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

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
