//! Local RBAC changes: role assignments and role definitions at a scope, committed as
//! commands (reads are answered from the state by the HTTP handlers).

use super::app::App;
use super::error::Error;
use crate::state::{Command, Outcome};
use keystead_core::rbac::{
    RoleAssignment, RoleAssignmentCreateParameters, RoleDefinition, RoleDefinitionCreateParameters,
};

fn unexpected() -> Error {
    Error::internal("unexpected outcome")
}

async fn assignment(app: &App, cmd: Command) -> Result<RoleAssignment, Error> {
    match app.store.propose(cmd).await? {
        Outcome::RoleAssignment(a) => Ok(*a),
        _ => Err(unexpected()),
    }
}

async fn definition(app: &App, cmd: Command) -> Result<RoleDefinition, Error> {
    match app.store.propose(cmd).await? {
        Outcome::RoleDefinition(d) => Ok(*d),
        _ => Err(unexpected()),
    }
}

/// Create (or replace) role assignment `name` at `scope`.
pub async fn put_assignment(
    app: &App,
    scope: &str,
    name: &str,
    params: RoleAssignmentCreateParameters,
) -> Result<RoleAssignment, Error> {
    let cmd = Command::PutRoleAssignment {
        scope: scope.to_string(),
        name: name.to_string(),
        params,
    };
    assignment(app, cmd).await
}

/// Delete role assignment `name` at `scope`; the assignment deleted.
pub async fn delete_assignment(
    app: &App,
    scope: &str,
    name: &str,
) -> Result<RoleAssignment, Error> {
    let cmd = Command::DeleteRoleAssignment {
        scope: scope.to_string(),
        name: name.to_string(),
    };
    assignment(app, cmd).await
}

/// Create (or replace) the custom role definition `name` at `scope`.
pub async fn put_definition(
    app: &App,
    scope: &str,
    name: &str,
    params: RoleDefinitionCreateParameters,
) -> Result<RoleDefinition, Error> {
    let cmd = Command::PutRoleDefinition {
        scope: scope.to_string(),
        name: name.to_string(),
        params,
    };
    definition(app, cmd).await
}

/// Delete the custom role definition `name` at `scope`; the definition deleted.
pub async fn delete_definition(
    app: &App,
    scope: &str,
    name: &str,
) -> Result<RoleDefinition, Error> {
    let cmd = Command::DeleteRoleDefinition {
        scope: scope.to_string(),
        name: name.to_string(),
    };
    definition(app, cmd).await
}
