//! Scopes (`/`, `/keys`, `/keys/<name>`) and the RBAC paths of the REST API.

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

pub(super) fn assignment_id(scope: &str, name: &str) -> String {
    if scope == "/" {
        format!("/providers/Microsoft.Authorization/roleAssignments/{name}")
    } else {
        format!("{scope}/providers/Microsoft.Authorization/roleAssignments/{name}")
    }
}
