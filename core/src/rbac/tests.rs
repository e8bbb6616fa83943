//! Unit tests of RBAC: data actions, built-in roles, scopes, and RbacState.

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
