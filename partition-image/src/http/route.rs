//! Parsing of the Key Vault paths, including the SDKs' empty version segments
//! (`GET /keys/k1/`, `POST /keys/k1//release`).

use axum::http::Method;

/// A cryptographic operation on a key version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyOp {
    Encrypt,
    Decrypt,
    WrapKey,
    UnwrapKey,
    Sign,
    Verify,
    Release,
}

impl KeyOp {
    fn parse(s: &str) -> Option<KeyOp> {
        Some(match s.to_ascii_lowercase().as_str() {
            "encrypt" => KeyOp::Encrypt,
            "decrypt" => KeyOp::Decrypt,
            "wrapkey" => KeyOp::WrapKey,
            "unwrapkey" => KeyOp::UnwrapKey,
            "sign" => KeyOp::Sign,
            "verify" => KeyOp::Verify,
            "release" => KeyOp::Release,
            _ => return None,
        })
    }
}

/// RBAC object kinds in `/{scope}/providers/Microsoft.Authorization/{kind}/{name}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RbacKind {
    Assignments,
    Definitions,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    CreateKey {
        name: String,
    },
    ImportKey {
        name: String,
    },
    GetKey {
        name: String,
        version: Option<String>,
    },
    UpdateKey {
        name: String,
        version: Option<String>,
    },
    ListKeys,
    ListVersions {
        name: String,
    },
    DeleteKey {
        name: String,
    },
    GetDeletedKey {
        name: String,
    },
    ListDeletedKeys,
    RecoverDeletedKey {
        name: String,
    },
    PurgeDeletedKey {
        name: String,
    },
    BackupKey {
        name: String,
    },
    RestoreKey,
    RotateKey {
        name: String,
    },
    GetRotationPolicy {
        name: String,
    },
    SetRotationPolicy {
        name: String,
    },
    KeyOperation {
        name: String,
        version: Option<String>,
        op: KeyOp,
    },
    GetAttestation {
        name: String,
        version: Option<String>,
    },
    Random,
    SdDownload,
    SdDownloadPending,
    SdTransferKey,
    SdUpload,
    SdUploadPending,
    FullBackup,
    FullBackupPending {
        job: String,
    },
    FullRestore,
    /// `PUT /prerestore`: verify a backup against this pool without restoring.
    PreRestore,
    /// `POST /backup/delete` (Keystead): delete a backup folder of this pool.
    DeleteBackup,
    RestorePending {
        job: String,
    },
    SelectiveRestore {
        name: String,
    },
    Rbac {
        scope: String,
        kind: RbacKind,
        name: Option<String>,
        method: Method,
    },
    AdminStatus,
    /// `GET /admin/members`
    ListMembers,
    /// `POST /admin/members`
    AddMember,
    /// `DELETE /admin/members/{id}`
    RemoveMember {
        id: String,
    },
    /// `PUT /admin/members/{id}`
    ReplaceMember {
        id: String,
    },
    /// `GET /admin/regions`
    ListRegions,
    /// `PUT /admin/regions/{name}`
    PutRegion {
        name: String,
    },
    /// `DELETE /admin/regions/{name}`
    DeleteRegion {
        name: String,
    },
    /// `POST /admin/regions/demote`
    DemoteRegion,
    /// `POST /admin/regions/promote`
    PromoteRegion,
    /// `POST /admin/regions/follow`
    FollowRegion,
}

impl Route {
    /// The operation name of the audit record (the handler records the same).
    pub fn operation(&self) -> &'static str {
        use Route as R;
        match self {
            R::CreateKey { .. } => "KeyCreate",
            R::ImportKey { .. } => "KeyImport",
            R::GetKey { .. } => "KeyGet",
            R::UpdateKey { .. } => "KeyUpdate",
            R::ListKeys => "KeyList",
            R::ListVersions { .. } => "KeyListVersions",
            R::DeleteKey { .. } => "KeyDelete",
            R::GetDeletedKey { .. } => "DeletedKeyGet",
            R::ListDeletedKeys => "DeletedKeyList",
            R::RecoverDeletedKey { .. } => "DeletedKeyRecover",
            R::PurgeDeletedKey { .. } => "DeletedKeyPurge",
            R::BackupKey { .. } => "KeyBackup",
            R::RestoreKey => "KeyRestore",
            R::RotateKey { .. } => "KeyRotate",
            R::GetRotationPolicy { .. } => "KeyGetRotationPolicy",
            R::SetRotationPolicy { .. } => "KeySetRotationPolicy",
            R::KeyOperation { op, .. } => match op {
                KeyOp::Encrypt => "KeyEncrypt",
                KeyOp::Decrypt => "KeyDecrypt",
                KeyOp::WrapKey => "KeyWrap",
                KeyOp::UnwrapKey => "KeyUnwrap",
                KeyOp::Sign => "KeySign",
                KeyOp::Verify => "KeyVerify",
                KeyOp::Release => "KeyRelease",
            },
            R::GetAttestation { .. } => "KeyAttestation",
            R::Random => "GetRandomBytes",
            R::SdDownload => "SecurityDomainDownload",
            R::SdDownloadPending => "SecurityDomainDownloadStatus",
            R::SdTransferKey => "SecurityDomainTransferKey",
            R::SdUpload => "SecurityDomainUpload",
            R::SdUploadPending => "SecurityDomainUploadStatus",
            R::FullBackup => "FullBackup",
            R::FullBackupPending { .. } => "FullBackupStatus",
            R::FullRestore => "FullRestore",
            R::PreRestore => "PreFullRestore",
            R::DeleteBackup => "DeleteBackup",
            R::RestorePending { .. } => "FullRestoreStatus",
            R::SelectiveRestore { .. } => "SelectiveKeyRestore",
            R::Rbac {
                kind, name, method, ..
            } => match (kind, method.as_str(), name.is_some()) {
                (RbacKind::Assignments, "GET", false) => "RoleAssignmentList",
                (RbacKind::Assignments, "GET", true) => "RoleAssignmentGet",
                (RbacKind::Assignments, "PUT", _) => "RoleAssignmentCreate",
                (RbacKind::Assignments, "DELETE", _) => "RoleAssignmentDelete",
                (RbacKind::Definitions, "GET", false) => "RoleDefinitionList",
                (RbacKind::Definitions, "GET", true) => "RoleDefinitionGet",
                (RbacKind::Definitions, "PUT", _) => "RoleDefinitionCreate",
                (RbacKind::Definitions, "DELETE", _) => "RoleDefinitionDelete",
                _ => "Rbac",
            },
            R::AdminStatus => "AdminStatus",
            R::ListMembers => "MemberList",
            R::AddMember => "MemberAdd",
            R::RemoveMember { .. } => "MemberRemove",
            R::ReplaceMember { .. } => "MemberReplace",
            R::ListRegions => "RegionList",
            R::PutRegion { .. } => "RegionAccept",
            R::DeleteRegion { .. } => "RegionRemove",
            R::DemoteRegion => "RegionDemote",
            R::PromoteRegion => "RegionPromote",
            R::FollowRegion => "RegionFollow",
        }
    }

    /// Whether the request changes the pool (its keys, RBAC, activation, membership, backups)
    /// or hands key material or the security domain out of it. Its audit record is written
    /// before it is carried out, and if that fails it is refused (docs/audit.md).
    pub fn audited_first(&self) -> bool {
        use Route as R;
        match self {
            R::CreateKey { .. }
            | R::ImportKey { .. }
            | R::UpdateKey { .. }
            | R::DeleteKey { .. }
            | R::RecoverDeletedKey { .. }
            | R::PurgeDeletedKey { .. }
            | R::BackupKey { .. }
            | R::RestoreKey
            | R::RotateKey { .. }
            | R::SetRotationPolicy { .. }
            | R::SdDownload
            | R::SdTransferKey
            | R::SdUpload
            | R::FullBackup
            | R::FullRestore
            | R::DeleteBackup
            | R::SelectiveRestore { .. }
            | R::AddMember
            | R::RemoveMember { .. }
            | R::ReplaceMember { .. }
            | R::PutRegion { .. }
            | R::DeleteRegion { .. }
            | R::DemoteRegion
            | R::PromoteRegion
            | R::FollowRegion => true,
            R::Rbac { method, .. } => *method != Method::GET,
            R::GetKey { .. }
            | R::ListKeys
            | R::ListVersions { .. }
            | R::GetDeletedKey { .. }
            | R::ListDeletedKeys
            | R::GetRotationPolicy { .. }
            | R::KeyOperation { .. }
            | R::GetAttestation { .. }
            | R::Random
            | R::SdDownloadPending
            | R::SdUploadPending
            | R::FullBackupPending { .. }
            | R::PreRestore
            | R::RestorePending { .. }
            | R::AdminStatus
            | R::ListMembers
            | R::ListRegions => false,
        }
    }
}

fn opt(s: &str) -> Option<String> {
    if s.is_empty() {
        None
    } else {
        Some(s.to_string())
    }
}

/// Parse a request path (without the query string). `None` means no such route.
pub fn parse(method: &Method, path: &str) -> Option<Route> {
    let segs: Vec<&str> = path.strip_prefix('/')?.split('/').collect();
    // RBAC: .../providers/Microsoft.Authorization/{roleAssignments|roleDefinitions}[/{name}]
    if let Some(pos) = segs
        .iter()
        .position(|s| s.eq_ignore_ascii_case("providers"))
    {
        let rest = &segs[pos + 1..];
        if rest
            .first()?
            .eq_ignore_ascii_case("Microsoft.Authorization")
        {
            let kind = match rest.get(1)?.to_ascii_lowercase().as_str() {
                "roleassignments" => RbacKind::Assignments,
                "roledefinitions" => RbacKind::Definitions,
                _ => return None,
            };
            let name = match rest.len() {
                2 => None,
                3 if rest[2].is_empty() => None,
                3 => Some(rest[2].to_string()),
                _ => return None,
            };
            let scope_segs = &segs[..pos];
            let scope = match scope_segs {
                [] | [""] => "/".to_string(),
                ["keys"] => "/keys".to_string(),
                ["keys", k] if !k.is_empty() => format!("/keys/{k}"),
                _ => return None,
            };
            return Some(Route::Rbac {
                scope,
                kind,
                name,
                method: method.clone(),
            });
        }
        return None;
    }
    let m = method;
    let r = match segs.as_slice() {
        ["keys"] | ["keys", ""] if m == Method::GET => Route::ListKeys,
        ["keys", "restore"] if m == Method::POST => Route::RestoreKey,
        ["keys", name, "create"] if m == Method::POST => Route::CreateKey {
            name: name.to_string(),
        },
        ["keys", name] if m == Method::PUT => Route::ImportKey {
            name: name.to_string(),
        },
        ["keys", name] if m == Method::GET => Route::GetKey {
            name: name.to_string(),
            version: None,
        },
        ["keys", name] if m == Method::PATCH => Route::UpdateKey {
            name: name.to_string(),
            version: None,
        },
        ["keys", name] if m == Method::DELETE => Route::DeleteKey {
            name: name.to_string(),
        },
        ["keys", name, "versions"] if m == Method::GET => Route::ListVersions {
            name: name.to_string(),
        },
        ["keys", name, "backup"] if m == Method::POST => Route::BackupKey {
            name: name.to_string(),
        },
        ["keys", name, "rotate"] if m == Method::POST => Route::RotateKey {
            name: name.to_string(),
        },
        ["keys", name, "restore"] if m == Method::PUT => Route::SelectiveRestore {
            name: name.to_string(),
        },
        ["keys", name, "rotationpolicy"] if m == Method::GET => Route::GetRotationPolicy {
            name: name.to_string(),
        },
        ["keys", name, "rotationpolicy"] if m == Method::PUT => Route::SetRotationPolicy {
            name: name.to_string(),
        },
        ["keys", name, version] if m == Method::GET => Route::GetKey {
            name: name.to_string(),
            version: opt(version),
        },
        ["keys", name, version] if m == Method::PATCH => Route::UpdateKey {
            name: name.to_string(),
            version: opt(version),
        },
        ["keys", name, version, "attestation"] if m == Method::GET => Route::GetAttestation {
            name: name.to_string(),
            version: opt(version),
        },
        ["keys", name, version, op] if m == Method::POST => Route::KeyOperation {
            name: name.to_string(),
            version: opt(version),
            op: KeyOp::parse(op)?,
        },
        // `POST /keys/{name}/sign` without a version segment at all.
        ["keys", name, op] if m == Method::POST && KeyOp::parse(op).is_some() => {
            Route::KeyOperation {
                name: name.to_string(),
                version: None,
                op: KeyOp::parse(op)?,
            }
        }
        ["deletedkeys"] | ["deletedkeys", ""] if m == Method::GET => Route::ListDeletedKeys,
        ["deletedkeys", name] if m == Method::GET => Route::GetDeletedKey {
            name: name.to_string(),
        },
        ["deletedkeys", name] if m == Method::DELETE => Route::PurgeDeletedKey {
            name: name.to_string(),
        },
        ["deletedkeys", name, "recover"] if m == Method::POST => Route::RecoverDeletedKey {
            name: name.to_string(),
        },
        ["rng"] if m == Method::POST => Route::Random,
        ["securitydomain", "download"] if m == Method::POST => Route::SdDownload,
        ["securitydomain", "download", "pending"] if m == Method::GET => Route::SdDownloadPending,
        ["securitydomain", "upload"] if m == Method::GET => Route::SdTransferKey,
        ["securitydomain", "upload"] if m == Method::POST => Route::SdUpload,
        ["securitydomain", "upload", "pending"] if m == Method::GET => Route::SdUploadPending,
        ["backup"] if m == Method::POST => Route::FullBackup,
        ["backup", "delete"] if m == Method::POST => Route::DeleteBackup,
        ["backup", job, "pending"] if m == Method::GET => Route::FullBackupPending {
            job: job.to_string(),
        },
        ["restore"] if m == Method::PUT => Route::FullRestore,
        ["prerestore"] if m == Method::PUT => Route::PreRestore,
        ["restore", job, "pending"] if m == Method::GET => Route::RestorePending {
            job: job.to_string(),
        },
        ["admin", "status"] if m == Method::GET => Route::AdminStatus,
        ["admin", "regions"] | ["admin", "regions", ""] if m == Method::GET => Route::ListRegions,
        ["admin", "regions", "demote"] if m == Method::POST => Route::DemoteRegion,
        ["admin", "regions", "promote"] if m == Method::POST => Route::PromoteRegion,
        ["admin", "regions", "follow"] if m == Method::POST => Route::FollowRegion,
        ["admin", "regions", name] if m == Method::PUT && !name.is_empty() => Route::PutRegion {
            name: name.to_string(),
        },
        ["admin", "regions", name] if m == Method::DELETE && !name.is_empty() => {
            Route::DeleteRegion {
                name: name.to_string(),
            }
        }
        ["admin", "members"] | ["admin", "members", ""] if m == Method::GET => Route::ListMembers,
        ["admin", "members"] | ["admin", "members", ""] if m == Method::POST => Route::AddMember,
        ["admin", "members", id] if m == Method::DELETE && !id.is_empty() => {
            Route::RemoveMember { id: id.to_string() }
        }
        ["admin", "members", id] if m == Method::PUT && !id.is_empty() => {
            Route::ReplaceMember { id: id.to_string() }
        }
        _ => return None,
    };
    Some(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(m: Method, path: &str) -> Option<Route> {
        parse(&m, path)
    }

    #[test]
    fn sdk_paths() {
        assert_eq!(
            p(Method::GET, "/keys/k1/"),
            Some(Route::GetKey {
                name: "k1".into(),
                version: None
            })
        );
        assert_eq!(
            p(Method::GET, "/keys/k1/abc"),
            Some(Route::GetKey {
                name: "k1".into(),
                version: Some("abc".into())
            })
        );
        assert_eq!(
            p(Method::POST, "/keys/k1//release"),
            Some(Route::KeyOperation {
                name: "k1".into(),
                version: None,
                op: KeyOp::Release
            })
        );
        assert_eq!(
            p(Method::POST, "/keys/k1/v1/sign"),
            Some(Route::KeyOperation {
                name: "k1".into(),
                version: Some("v1".into()),
                op: KeyOp::Sign
            })
        );
        assert_eq!(
            p(Method::PATCH, "/keys/k1/"),
            Some(Route::UpdateKey {
                name: "k1".into(),
                version: None
            })
        );
        assert_eq!(p(Method::GET, "/keys"), Some(Route::ListKeys));
        assert_eq!(
            p(Method::GET, "/keys/k1/versions"),
            Some(Route::ListVersions { name: "k1".into() })
        );
        assert_eq!(p(Method::POST, "/keys/restore"), Some(Route::RestoreKey));
        assert_eq!(
            p(Method::PUT, "/keys/k1/restore"),
            Some(Route::SelectiveRestore { name: "k1".into() })
        );
        assert_eq!(
            p(Method::DELETE, "/deletedkeys/k1"),
            Some(Route::PurgeDeletedKey { name: "k1".into() })
        );
        assert_eq!(p(Method::GET, "/admin/members"), Some(Route::ListMembers));
        assert_eq!(p(Method::POST, "/admin/members/"), Some(Route::AddMember));
        assert_eq!(
            p(Method::DELETE, "/admin/members/3"),
            Some(Route::RemoveMember { id: "3".into() })
        );
        assert_eq!(
            p(Method::PUT, "/admin/members/3"),
            Some(Route::ReplaceMember { id: "3".into() })
        );
        assert_eq!(p(Method::DELETE, "/admin/members/"), None);
        assert_eq!(p(Method::GET, "/nothing"), None);
        assert_eq!(p(Method::POST, "/keys/k1/v1/frobnicate"), None);
    }

    #[test]
    fn rbac_scopes() {
        let r = p(
            Method::PUT,
            "/providers/Microsoft.Authorization/roleAssignments/abc",
        )
        .unwrap();
        assert_eq!(
            r,
            Route::Rbac {
                scope: "/".into(),
                kind: RbacKind::Assignments,
                name: Some("abc".into()),
                method: Method::PUT
            }
        );
        let r = p(
            Method::GET,
            "/keys/providers/Microsoft.Authorization/roleAssignments",
        )
        .unwrap();
        assert!(matches!(r, Route::Rbac { ref scope, name: None, .. } if scope == "/keys"));
        let r = p(
            Method::GET,
            "/keys/k1/providers/Microsoft.Authorization/roleDefinitions",
        )
        .unwrap();
        assert!(
            matches!(r, Route::Rbac { ref scope, kind: RbacKind::Definitions, .. } if scope == "/keys/k1")
        );
        assert_eq!(
            p(
                Method::GET,
                "/foo/providers/Microsoft.Authorization/roleAssignments"
            ),
            None
        );
    }
}
