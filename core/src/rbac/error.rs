//! Why an RBAC change is refused, with its Azure error code.

use crate::error::ErrorBody;

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
