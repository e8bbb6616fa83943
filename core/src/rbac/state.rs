//! `RbacState`: the replicated role definitions and assignments, their changes and the
//! access decision. Pure and deterministic (it runs inside the state machine).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::*;

/// The replicated RBAC state of a pool: custom role definitions and role assignments, both
/// keyed by their lowercase GUID. Built-in roles are not stored; they are always present.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RbacState {
    pub definitions: BTreeMap<String, RoleDefinition>,
    pub assignments: BTreeMap<String, RoleAssignment>,
}

/// Namespace of the deterministic names of bootstrap administrator assignments (UUIDv5).
pub(super) const BOOTSTRAP_NAMESPACE: uuid::Uuid =
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

pub(super) fn validate_action_pattern(pattern: &str) -> Result<(), RbacError> {
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

pub(super) fn parse_role_name_filter(filter: &str) -> Result<String, RbacError> {
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

/// Parsed `$filter` of a role assignment list.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct AssignmentFilter {
    pub(super) at_scope: bool,
    pub(super) principal: Option<String>,
}

pub(super) fn parse_assignment_filter(filter: &str) -> Result<AssignmentFilter, RbacError> {
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
