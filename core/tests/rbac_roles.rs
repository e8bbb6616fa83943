//! Built-in roles: each grants exactly its data actions, at every scope it covers.

use std::collections::BTreeSet;

use keystead_core::rbac::*;

fn params(role: &str, principal: &str) -> RoleAssignmentCreateParameters {
    RoleAssignmentCreateParameters {
        properties: RoleAssignmentCreateProperties {
            role_definition_id: role.to_owned(),
            principal_id: principal.to_owned(),
        },
    }
}

const A1: &str = "00000000-0000-0000-0000-0000000000a1";

/// The expected table, written out independently of the implementation's table.
fn expected(role_guid: &str) -> BTreeSet<&'static str> {
    let p = |s: &[&'static str]| s.iter().copied().collect::<BTreeSet<_>>();
    let roles = [
        "roleAssignments/read/action",
        "roleAssignments/write/action",
        "roleAssignments/delete/action",
        "roleDefinitions/read/action",
        "roleDefinitions/write/action",
        "roleDefinitions/delete/action",
    ];
    let mut set = match role_guid {
        ADMINISTRATOR_ROLE_ID => p(&[
            "securitydomain/download/action",
            "securitydomain/download/read",
            "securitydomain/upload/action",
            "securitydomain/upload/read",
            "securitydomain/transferkey/read",
            "backup/start/action",
            "backup/status/action",
            "backup/delete/action",
            "restore/start/action",
            "restore/status/action",
        ]),
        CRYPTO_OFFICER_ROLE_ID => p(&[
            "keys/deletedKeys/read/action",
            "keys/deletedKeys/recover/action",
            "keys/deletedKeys/delete",
            "keys/export/action",
        ]),
        CRYPTO_USER_ROLE_ID => p(&[
            "keys/read/action",
            "keys/write/action",
            "keys/create",
            "keys/delete",
            "keys/rotate/action",
            "keys/backup/action",
            "keys/restore/action",
            "keys/release/action",
            "keys/import/action",
            "keys/encrypt/action",
            "keys/decrypt/action",
            "keys/wrap/action",
            "keys/unwrap/action",
            "keys/sign/action",
            "keys/verify/action",
            "roleAssignments/read/action",
            "roleDefinitions/read/action",
            "rng/action",
        ]),
        POLICY_ADMINISTRATOR_ROLE_ID => BTreeSet::new(),
        CRYPTO_AUDITOR_ROLE_ID => p(&[
            "keys/read/action",
            "roleAssignments/read/action",
            "roleDefinitions/read/action",
        ]),
        CRYPTO_SERVICE_ENCRYPTION_USER_ROLE_ID => {
            p(&["keys/read/action", "keys/wrap/action", "keys/unwrap/action"])
        }
        CRYPTO_SERVICE_RELEASE_USER_ROLE_ID => p(&["keys/release/action"]),
        BACKUP_ROLE_ID => p(&[
            "keys/backup/action",
            "backup/start/action",
            "backup/status/action",
            "backup/delete/action",
        ]),
        RESTORE_ROLE_ID => p(&[
            "keys/restore/action",
            "restore/start/action",
            "restore/status/action",
        ]),
        other => panic!("unexpected built-in role {other}"),
    };
    if matches!(
        role_guid,
        ADMINISTRATOR_ROLE_ID | CRYPTO_OFFICER_ROLE_ID | POLICY_ADMINISTRATOR_ROLE_ID
    ) {
        set.extend(roles);
    }
    set
}

#[test]
fn there_are_nine_builtin_roles_with_the_published_ids() {
    let roles = builtin_roles();
    let ids: BTreeSet<_> = roles.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(ids.len(), 9);
    for (guid, name) in [
        (
            "a290e904-7015-4bba-90c8-60543313cdb4",
            "Managed HSM Administrator",
        ),
        (
            "515eb02d-2335-4d2d-92f2-b1cbdf9c3778",
            "Managed HSM Crypto Officer",
        ),
        (
            "21dbd100-6940-42c2-9190-5d6cb909625b",
            "Managed HSM Crypto User",
        ),
        (
            "4bd23610-cdcf-4971-bdee-bdc562cc28e4",
            "Managed HSM Policy Administrator",
        ),
        (
            "2c18b078-7c48-4d3a-af88-5a3a1b3f82b3",
            "Managed HSM Crypto Auditor",
        ),
        (
            "33413926-3206-4cdd-b39a-83574fe37a17",
            "Managed HSM Crypto Service Encryption User",
        ),
        (
            "21dbd100-6940-42c2-9190-5d6cb909625c",
            "Managed HSM Crypto Service Release User",
        ),
        ("7b127d3c-77bd-4e3e-bbe0-dbb8971fa7f8", "Managed HSM Backup"),
        (
            "6efe6056-5259-49d2-8b3d-d3d73544b20b",
            "Managed HSM Restore",
        ),
    ] {
        let role = roles.iter().find(|r| r.name == guid).expect(guid);
        assert_eq!(role.properties.role_name, name);
        assert_eq!(role.properties.role_type, RoleType::BuiltIn);
        assert_eq!(
            role.id,
            format!("Microsoft.KeyVault/providers/Microsoft.Authorization/roleDefinitions/{guid}")
        );
        assert_eq!(role.kind, "Microsoft.Authorization/roleDefinitions");
        assert_eq!(role.properties.assignable_scopes, vec!["/".to_string()]);
    }
}

/// For every built-in role and every data action, at `/` and on a key: `check` allows exactly
/// the role's data actions.
#[test]
fn each_builtin_role_grants_exactly_its_data_actions() {
    for role in builtin_roles() {
        let mut state = RbacState::new();
        let principal = format!("principal-of-{}", role.name);
        state
            .put_assignment("/", A1, &params(&role.id, &principal))
            .unwrap();
        let want = expected(&role.name);
        for action in DataAction::ALL {
            let suffix = action
                .as_str()
                .strip_prefix("Microsoft.KeyVault/managedHsm/")
                .unwrap();
            let should = want.contains(suffix);
            for scope in ["/", "/keys", "/keys/k1"] {
                let got = state.check(&principal, *action, scope);
                assert_eq!(
                    got.is_ok(),
                    should,
                    "role {} action {} scope {scope}",
                    role.properties.role_name,
                    action
                );
                // Other principals never get anything.
                assert!(state.check("someone-else", *action, scope).is_err());
            }
        }
        // Every expected action exists in the enum (no typo in the table above).
        for suffix in &want {
            let full = format!("Microsoft.KeyVault/managedHsm/{suffix}");
            assert!(full.parse::<DataAction>().is_ok(), "{full}");
        }
    }
}

#[test]
fn crypto_auditor_cannot_purge_deleted_keys() {
    let mut state = RbacState::new();
    state
        .put_assignment("/", A1, &params(CRYPTO_AUDITOR_ROLE_ID, "auditor"))
        .unwrap();
    let denied = state
        .check("auditor", DataAction::DeletedKeysDelete, "/keys/k")
        .unwrap_err();
    assert_eq!(
        denied.action,
        "Microsoft.KeyVault/managedHsm/keys/deletedKeys/delete"
    );
}

#[test]
fn data_action_strings_round_trip() {
    // 35 Azure data actions and Keystead's backup/delete/action.
    assert_eq!(DataAction::ALL.len(), 36);
    let mut seen = BTreeSet::new();
    for a in DataAction::ALL {
        assert!(a.as_str().starts_with(DATA_ACTION_PREFIX));
        assert!(seen.insert(a.as_str()), "duplicate {}", a.as_str());
        assert_eq!(a.as_str().parse::<DataAction>().unwrap(), *a);
        assert_eq!(
            a.as_str()
                .to_ascii_uppercase()
                .parse::<DataAction>()
                .unwrap(),
            *a
        );
        let json = serde_json::to_string(a).unwrap();
        assert_eq!(serde_json::from_str::<DataAction>(&json).unwrap(), *a);
    }
    let err = "Microsoft.KeyVault/managedHsm/keys/fly/action"
        .parse::<DataAction>()
        .unwrap_err();
    assert!(err.to_string().contains("keys/fly/action"));
}

#[test]
fn denied_carries_the_action_and_a_key_vault_body() {
    let state = RbacState::new();
    let d = state
        .check("p", DataAction::KeysSign, "/keys/k1")
        .unwrap_err();
    assert_eq!(Denied::STATUS, 403);
    let body = serde_json::to_value(d.error_body()).unwrap();
    assert_eq!(body["error"]["code"], "Forbidden");
    assert_eq!(body["error"]["innererror"]["code"], "ForbiddenByRbac");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Microsoft.KeyVault/managedHsm/keys/sign/action")
    );
}

#[test]
fn role_definition_wire_json_is_azure_shaped() {
    let role = builtin_roles()
        .into_iter()
        .find(|r| r.name == BACKUP_ROLE_ID)
        .unwrap();
    let v = serde_json::to_value(&role).unwrap();
    assert_eq!(v["type"], "Microsoft.Authorization/roleDefinitions");
    assert_eq!(v["properties"]["type"], "AKVBuiltInRole");
    assert_eq!(v["properties"]["roleName"], "Managed HSM Backup");
    assert_eq!(v["properties"]["assignableScopes"][0], "/");
    let perm = &v["properties"]["permissions"][0];
    for field in ["actions", "notActions", "dataActions", "notDataActions"] {
        assert!(perm[field].is_array(), "{field}");
    }
    assert_eq!(
        perm["dataActions"][0],
        "Microsoft.KeyVault/managedHsm/keys/backup/action"
    );
    let back: RoleDefinition = serde_json::from_value(v).unwrap();
    assert_eq!(back, role);
}
