//! RBAC scopes, custom roles, list filters, path parsing and the mutators' errors.

use keystead_core::rbac::*;

const A1: &str = "00000000-0000-0000-0000-0000000000a1";
const A2: &str = "00000000-0000-0000-0000-0000000000a2";
const A3: &str = "00000000-0000-0000-0000-0000000000a3";
const C1: &str = "11111111-2222-3333-4444-555555555555";

fn params(role: &str, principal: &str) -> RoleAssignmentCreateParameters {
    RoleAssignmentCreateParameters {
        properties: RoleAssignmentCreateProperties {
            role_definition_id: role.to_owned(),
            principal_id: principal.to_owned(),
        },
    }
}

fn custom(
    name: &str,
    data: &[&str],
    not_data: &[&str],
    scopes: &[&str],
) -> RoleDefinitionCreateParameters {
    RoleDefinitionCreateParameters {
        properties: RoleDefinitionCreateProperties {
            role_name: name.to_owned(),
            description: "test role".to_owned(),
            role_type: None,
            permissions: vec![Permission {
                data_actions: data.iter().map(|s| s.to_string()).collect(),
                not_data_actions: not_data.iter().map(|s| s.to_string()).collect(),
                ..Permission::default()
            }],
            assignable_scopes: scopes.iter().map(|s| s.to_string()).collect(),
        },
    }
}

#[test]
fn scope_of_an_assignment_limits_what_it_covers() {
    let mut s = RbacState::new();
    s.put_assignment("/keys/k1", A1, &params(CRYPTO_USER_ROLE_ID, "only-k1"))
        .unwrap();
    s.put_assignment("/keys", A2, &params(CRYPTO_USER_ROLE_ID, "all-keys"))
        .unwrap();
    s.put_assignment("/", A3, &params(CRYPTO_USER_ROLE_ID, "root"))
        .unwrap();
    let sign = DataAction::KeysSign;
    assert!(s.check("only-k1", sign, "/keys/k1").is_ok());
    assert!(s.check("only-k1", sign, "/keys/k2").is_err());
    assert!(
        s.check("only-k1", sign, "/keys/k10").is_err(),
        "prefix is not a parent"
    );
    assert!(s.check("only-k1", sign, "/keys").is_err());
    assert!(s.check("only-k1", DataAction::Rng, "/").is_err());
    assert!(s.check("all-keys", sign, "/keys/k2").is_ok());
    assert!(s.check("all-keys", sign, "/keys").is_ok());
    assert!(s.check("all-keys", DataAction::Rng, "/").is_err());
    assert!(s.check("root", sign, "/keys/any").is_ok());
    assert!(s.check("root", DataAction::Rng, "/").is_ok());
    // Invalid resource scopes are denied, never allowed.
    assert!(s.check("root", sign, "/secrets/x").is_err());
    assert!(s.check("root", sign, "/keys/bad_name").is_err());
    // Trailing slash and case of "keys" are normalised.
    assert!(s.check("only-k1", sign, "/KEYS/k1/").is_ok());
}

#[test]
fn custom_role_wildcards_and_not_data_actions() {
    let mut s = RbacState::new();
    let def = s
        .put_definition(
            "/",
            C1,
            &custom(
                "Key signer",
                &["Microsoft.KeyVault/managedHsm/keys/*"],
                &[
                    "Microsoft.KeyVault/managedHsm/keys/delete",
                    "Microsoft.KeyVault/managedHsm/keys/deletedKeys/*",
                ],
                &["/keys"],
            ),
        )
        .unwrap();
    assert_eq!(def.properties.role_type, RoleType::Custom);
    assert_eq!(def.id, role_definition_id(C1));
    // Assignable only at /keys and below.
    let err = s.put_assignment("/", A1, &params(C1, "p")).unwrap_err();
    assert!(matches!(err, RbacError::NotAssignable { .. }), "{err}");
    assert_eq!(err.status(), 400);
    // All three id forms resolve.
    s.put_assignment("/keys", A1, &params(&role_definition_id(C1), "p"))
        .unwrap();
    s.put_assignment(
        "/keys/k1",
        A2,
        &params(
            &format!("/providers/Microsoft.Authorization/roleDefinitions/{C1}"),
            "q",
        ),
    )
    .unwrap();
    for action in DataAction::ALL {
        let s_str = action.as_str();
        let want = s_str.starts_with("Microsoft.KeyVault/managedHsm/keys/")
            && *action != DataAction::KeysDelete
            && !s_str.contains("deletedKeys");
        assert_eq!(s.check("p", *action, "/keys/k9").is_ok(), want, "{s_str}");
    }
    assert!(s.check("q", DataAction::KeysSign, "/keys/k1").is_ok());
    assert!(s.check("q", DataAction::KeysSign, "/keys/k2").is_err());
}

#[test]
fn custom_role_validation() {
    let mut s = RbacState::new();
    let bad_action = custom(
        "r",
        &["Microsoft.KeyVault/managedHsm/keys/fly/action"],
        &[],
        &["/"],
    );
    assert!(matches!(
        s.put_definition("/", C1, &bad_action),
        Err(RbacError::InvalidRoleDefinition(_))
    ));
    let bad_wildcard = custom("r", &["Microsoft.Storage/*"], &[], &["/"]);
    assert!(s.put_definition("/", C1, &bad_wildcard).is_err());
    let bad_scope = custom(
        "r",
        &["Microsoft.KeyVault/managedHsm/rng/action"],
        &[],
        &["/secrets"],
    );
    assert!(matches!(
        s.put_definition("/", C1, &bad_scope),
        Err(RbacError::InvalidScope(_))
    ));
    let dup = custom(
        "Managed HSM Crypto User",
        &["Microsoft.KeyVault/managedHsm/rng/action"],
        &[],
        &[],
    );
    assert_eq!(s.put_definition("/", C1, &dup).unwrap_err().status(), 409);
    assert!(matches!(
        s.put_definition("/", "not-a-guid", &custom("x", &["*"], &[], &[])),
        Err(RbacError::InvalidName(_))
    ));
    // Built-ins are immutable.
    let err = s
        .put_definition("/", CRYPTO_USER_ROLE_ID, &custom("x", &["*"], &[], &[]))
        .unwrap_err();
    assert!(matches!(err, RbacError::BuiltInImmutable(_)));
    assert!(matches!(
        s.delete_definition("/", CRYPTO_USER_ROLE_ID),
        Err(RbacError::BuiltInImmutable(_))
    ));
    // Empty assignable scopes default to "/"; "*" is a valid wildcard.
    let def = s
        .put_definition("/", C1, &custom("everything", &["*"], &[], &[]))
        .unwrap();
    assert_eq!(def.properties.assignable_scopes, vec!["/".to_string()]);
}

#[test]
fn custom_role_in_use_cannot_be_deleted_or_narrowed() {
    let mut s = RbacState::new();
    s.put_definition(
        "/",
        C1,
        &custom(
            "r",
            &["Microsoft.KeyVault/managedHsm/rng/action"],
            &[],
            &["/"],
        ),
    )
    .unwrap();
    s.put_assignment("/", A1, &params(C1, "p")).unwrap();
    assert!(s.check("p", DataAction::Rng, "/").is_ok());
    let err = s.delete_definition("/", C1).unwrap_err();
    assert!(
        matches!(err, RbacError::RoleInUse { count: 1, .. }),
        "{err}"
    );
    let narrowed = custom(
        "r",
        &["Microsoft.KeyVault/managedHsm/rng/action"],
        &[],
        &["/keys"],
    );
    assert!(matches!(
        s.put_definition("/", C1, &narrowed),
        Err(RbacError::RoleInUse { .. })
    ));
    // Updating permissions in place takes effect.
    s.put_definition(
        "/",
        C1,
        &custom(
            "r",
            &["Microsoft.KeyVault/managedHsm/keys/read/action"],
            &[],
            &["/"],
        ),
    )
    .unwrap();
    assert!(s.check("p", DataAction::Rng, "/").is_err());
    s.delete_assignment("/", A1).unwrap();
    let deleted = s.delete_definition("/", &role_definition_id(C1)).unwrap();
    assert_eq!(deleted.name, C1);
    assert!(matches!(
        s.delete_definition("/", C1),
        Err(RbacError::RoleDefinitionNotFound(_))
    ));
}

#[test]
fn assignment_mutators_and_errors() {
    let mut s = RbacState::new();
    let a = s
        .put_assignment("/keys", A1, &params(CRYPTO_USER_ROLE_ID, "p"))
        .unwrap();
    assert_eq!(
        a.id,
        format!("/keys/providers/Microsoft.Authorization/roleAssignments/{A1}")
    );
    assert_eq!(a.kind, "Microsoft.Authorization/roleAssignments");
    assert_eq!(
        a.properties.role_definition_id,
        role_definition_id(CRYPTO_USER_ROLE_ID)
    );
    let v = serde_json::to_value(&a).unwrap();
    assert_eq!(v["properties"]["scope"], "/keys");
    assert_eq!(v["properties"]["principalId"], "p");
    // Idempotent re-put (also with another id form or upper-case GUID).
    let again = s
        .put_assignment(
            "/keys",
            &A1.to_uppercase(),
            &params(&role_definition_id(CRYPTO_USER_ROLE_ID), "p"),
        )
        .unwrap();
    assert_eq!(again, a);
    // Conflicting re-put.
    let err = s
        .put_assignment("/keys", A1, &params(CRYPTO_AUDITOR_ROLE_ID, "p"))
        .unwrap_err();
    assert_eq!(err.status(), 409);
    assert!(matches!(
        s.put_assignment("/", A1, &params(CRYPTO_USER_ROLE_ID, "p")),
        Err(RbacError::AssignmentConflict { .. })
    ));
    // Validation.
    assert!(matches!(
        s.put_assignment("/secrets", A2, &params(CRYPTO_USER_ROLE_ID, "p")),
        Err(RbacError::InvalidScope(_))
    ));
    assert!(matches!(
        s.put_assignment("/", "abc", &params(CRYPTO_USER_ROLE_ID, "p")),
        Err(RbacError::InvalidName(_))
    ));
    assert!(matches!(
        s.put_assignment("/", A2, &params(CRYPTO_USER_ROLE_ID, "  ")),
        Err(RbacError::EmptyPrincipal)
    ));
    let err = s
        .put_assignment(
            "/",
            A2,
            &params("99999999-9999-9999-9999-999999999999", "p"),
        )
        .unwrap_err();
    assert_eq!(err.status(), 404);
    assert_eq!(err.code(), "RoleDefinitionNotFound");
    // Get / delete are scoped.
    assert_eq!(s.get_assignment("/keys", A1).unwrap(), a);
    assert!(matches!(
        s.get_assignment("/", A1),
        Err(RbacError::RoleAssignmentNotFound { .. })
    ));
    assert!(s.delete_assignment("/", A1).is_err());
    assert_eq!(s.delete_assignment("/keys", A1).unwrap(), a);
    assert_eq!(s.delete_assignment("/keys", A1).unwrap_err().status(), 404);
    assert!(s.check("p", DataAction::KeysSign, "/keys/k").is_err());
}

#[test]
fn list_assignments_with_filters() {
    let mut s = RbacState::new();
    s.put_assignment("/", A1, &params(ADMINISTRATOR_ROLE_ID, "admin"))
        .unwrap();
    s.put_assignment("/keys", A2, &params(CRYPTO_USER_ROLE_ID, "user"))
        .unwrap();
    s.put_assignment("/keys/k1", A3, &params(CRYPTO_USER_ROLE_ID, "user"))
        .unwrap();
    let names = |v: Vec<RoleAssignment>| v.into_iter().map(|a| a.name).collect::<Vec<_>>();
    assert_eq!(names(s.list_assignments("/", None).unwrap()), [A1, A2, A3]);
    assert_eq!(
        names(s.list_assignments("/", Some("atScope()")).unwrap()),
        [A1]
    );
    assert_eq!(
        names(s.list_assignments("/keys", Some("atScope()")).unwrap()),
        [A1, A2]
    );
    assert_eq!(
        names(s.list_assignments("/keys", None).unwrap()),
        [A1, A2, A3]
    );
    assert_eq!(
        names(s.list_assignments("/keys/k1", Some("atScope()")).unwrap()),
        [A1, A2, A3]
    );
    assert_eq!(
        names(
            s.list_assignments("/", Some("principalId eq 'user'"))
                .unwrap()
        ),
        [A2, A3]
    );
    assert_eq!(
        names(
            s.list_assignments("/keys", Some("atScope() and principalId eq 'user'"))
                .unwrap()
        ),
        [A2]
    );
    assert!(matches!(
        s.list_assignments("/", Some("roleName eq 'x'")),
        Err(RbacError::InvalidFilter(_))
    ));
    let list = RoleAssignmentListResult::single_page(s.list_assignments("/", None).unwrap());
    let v = serde_json::to_value(&list).unwrap();
    assert_eq!(v["value"].as_array().unwrap().len(), 3);
}

#[test]
fn list_definitions_includes_builtins_and_customs() {
    let mut s = RbacState::new();
    s.put_definition(
        "/",
        C1,
        &custom(
            "Keys only",
            &["Microsoft.KeyVault/managedHsm/keys/*"],
            &[],
            &["/keys"],
        ),
    )
    .unwrap();
    assert_eq!(s.list_definitions("/", None).unwrap().len(), 10);
    assert_eq!(s.list_definitions("/keys", None).unwrap().len(), 10);
    let one = s
        .list_definitions("/", Some("roleName eq 'keys only'"))
        .unwrap();
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].name, C1);
    assert!(s.get_definition(C1).is_some());
    assert!(
        s.get_definition(&role_definition_id(BACKUP_ROLE_ID))
            .is_some()
    );
    assert!(
        s.get_definition("Microsoft.Foo/roleDefinitions/x")
            .is_none()
    );
}

#[test]
fn bootstrap_administrators_are_deterministic_and_idempotent() {
    let mut s1 = RbacState::new();
    let mut s2 = RbacState::new();
    let admins = vec!["alice".to_string(), "bob".to_string()];
    let a = s1.bootstrap_administrators(&admins).unwrap();
    let b = s2.bootstrap_administrators(&admins).unwrap();
    assert_eq!(a, b);
    assert_eq!(s1, s2);
    assert_ne!(a[0].name, a[1].name);
    assert!(uuid_like(&a[0].name));
    assert_eq!(a[0].properties.scope, "/");
    assert_eq!(
        a[0].properties.role_definition_id,
        role_definition_id(ADMINISTRATOR_ROLE_ID)
    );
    // Re-running is a no-op.
    assert_eq!(s1.bootstrap_administrators(&admins).unwrap(), a);
    assert_eq!(s1.assignments.len(), 2);
    assert!(
        s1.check("alice", DataAction::RoleAssignmentsWrite, "/")
            .is_ok()
    );
    assert!(s1.check("alice", DataAction::KeysSign, "/keys/k").is_err());
    // The state survives a serde round trip (it is replicated).
    let json = serde_json::to_string(&s1).unwrap();
    assert_eq!(serde_json::from_str::<RbacState>(&json).unwrap(), s1);
}

fn uuid_like(s: &str) -> bool {
    s.len() == 36 && s.chars().filter(|c| *c == '-').count() == 4
}

type Expected<'a> = (&'a str, RbacKind, Option<&'a str>);

#[test]
fn parse_rbac_paths() {
    let ra = RbacKind::RoleAssignments;
    let rd = RbacKind::RoleDefinitions;
    let cases: &[(&str, Option<Expected>)] = &[
        (
            "/providers/Microsoft.Authorization/roleAssignments",
            Some(("/", ra, None)),
        ),
        (
            "/providers/Microsoft.Authorization/roleAssignments/",
            Some(("/", ra, None)),
        ),
        (
            &format!("/providers/Microsoft.Authorization/roleAssignments/{A1}"),
            None,
        ),
        (
            "/keys/providers/Microsoft.Authorization/roleAssignments",
            Some(("/keys", ra, None)),
        ),
        (
            "//keys/providers/microsoft.authorization/roleassignments",
            Some(("/keys", ra, None)),
        ),
        (
            "/keys/k1/providers/Microsoft.Authorization/roleDefinitions/abc",
            Some(("/keys/k1", rd, Some("abc"))),
        ),
        (
            "/providers/Microsoft.Authorization/roleDefinitions",
            Some(("/", rd, None)),
        ),
        (
            "/secrets/providers/Microsoft.Authorization/roleAssignments",
            None,
        ),
        ("/providers/Microsoft.Authorization/policies", None),
        (
            "/providers/Microsoft.Authorization/roleAssignments/a/b",
            None,
        ),
        ("/keys/k1/sign", None),
    ];
    for (path, want) in cases {
        let got = parse_rbac_path(path);
        match want {
            Some((scope, kind, name)) => {
                let (gs, gk, gn) = got.unwrap_or_else(|| panic!("{path}"));
                assert_eq!(gs, *scope, "{path}");
                assert_eq!(gk, *kind, "{path}");
                assert_eq!(gn.as_deref(), *name, "{path}");
            }
            None if path.ends_with(A1) => {
                assert_eq!(got.unwrap().2.as_deref(), Some(A1));
            }
            None => assert!(got.is_none(), "{path}"),
        }
    }
}

/// Found by the `state_apply` fuzz target: a bootstrap whose second administrator's
/// deterministic assignment name is taken by a different assignment was refused, but the
/// first administrator had already been added. It is all or nothing now.
#[test]
fn a_refused_bootstrap_changes_nothing() {
    let mut s = RbacState::new();
    let taken = bootstrap_assignment_name("bob");
    s.put_assignment("/keys", &taken, &params(CRYPTO_USER_ROLE_ID, "bob"))
        .unwrap();
    let before = s.clone();
    let err = s
        .bootstrap_administrators(&["alice".to_owned(), "bob".to_owned()])
        .unwrap_err();
    assert!(err.to_string().contains("already exists"), "{err}");
    assert_eq!(s, before, "the refused bootstrap added alice anyway");
    // Without the conflict both are added.
    let mut fresh = RbacState::new();
    assert_eq!(
        fresh
            .bootstrap_administrators(&["alice".to_owned(), "bob".to_owned()])
            .unwrap()
            .len(),
        2
    );
}
