//! The local RBAC API (reference §5): role definitions and role assignments.

use super::error::ApiError;
use super::route::RbacKind;
use super::{Ctx, json_response};
use crate::service::rbac as service;
use axum::http::{Method, StatusCode};
use axum::response::Response;
use keystead_core::rbac::{
    DataAction, ListResult, RbacError, RoleAssignmentCreateParameters,
    RoleDefinitionCreateParameters,
};

fn rbac_err(e: RbacError) -> ApiError {
    ApiError::new(
        StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST),
        e.code(),
        e.to_string(),
    )
}

pub async fn handle(
    ctx: &mut Ctx,
    scope: &str,
    kind: RbacKind,
    name: Option<&str>,
    method: &Method,
) -> Result<Response, ApiError> {
    let filter = ctx.query("$filter").map(str::to_string);
    match (kind, method.clone(), name) {
        (RbacKind::Assignments, Method::GET, None) => {
            ctx.audit.operation = "RoleAssignmentList";
            ctx.authorize(DataAction::RoleAssignmentsRead, scope)?;
            let list = ctx
                .app
                .store
                .read()
                .rbac
                .list_assignments(scope, filter.as_deref())
                .map_err(rbac_err)?;
            Ok(json_response(
                StatusCode::OK,
                &ListResult::single_page(list),
            ))
        }
        (RbacKind::Assignments, Method::GET, Some(n)) => {
            ctx.audit.operation = "RoleAssignmentGet";
            ctx.authorize(DataAction::RoleAssignmentsRead, scope)?;
            let a = ctx
                .app
                .store
                .read()
                .rbac
                .get_assignment(scope, n)
                .map_err(rbac_err)?;
            Ok(json_response(StatusCode::OK, &a))
        }
        (RbacKind::Assignments, Method::PUT, Some(n)) => {
            ctx.audit.operation = "RoleAssignmentCreate";
            ctx.authorize(DataAction::RoleAssignmentsWrite, scope)?;
            let params: RoleAssignmentCreateParameters = ctx.json()?;
            let a = service::put_assignment(&ctx.app, scope, n, params).await?;
            Ok(json_response(StatusCode::CREATED, &a))
        }
        (RbacKind::Assignments, Method::DELETE, Some(n)) => {
            ctx.audit.operation = "RoleAssignmentDelete";
            ctx.authorize(DataAction::RoleAssignmentsDelete, scope)?;
            let a = service::delete_assignment(&ctx.app, scope, n).await?;
            Ok(json_response(StatusCode::OK, &a))
        }
        (RbacKind::Definitions, Method::GET, None) => {
            ctx.audit.operation = "RoleDefinitionList";
            ctx.authorize(DataAction::RoleDefinitionsRead, scope)?;
            let list = ctx
                .app
                .store
                .read()
                .rbac
                .list_definitions(scope, filter.as_deref())
                .map_err(rbac_err)?;
            Ok(json_response(
                StatusCode::OK,
                &ListResult::single_page(list),
            ))
        }
        (RbacKind::Definitions, Method::GET, Some(n)) => {
            ctx.audit.operation = "RoleDefinitionGet";
            ctx.authorize(DataAction::RoleDefinitionsRead, scope)?;
            let d = ctx.app.store.read().rbac.get_definition(n).ok_or_else(|| {
                ApiError::not_found(
                    "RoleDefinitionNotFound",
                    format!("role definition {n} does not exist; list them with GET /providers/Microsoft.Authorization/roleDefinitions"),
                )
            })?;
            Ok(json_response(StatusCode::OK, &d))
        }
        (RbacKind::Definitions, Method::PUT, Some(n)) => {
            ctx.audit.operation = "RoleDefinitionCreate";
            ctx.authorize(DataAction::RoleDefinitionsWrite, scope)?;
            let params: RoleDefinitionCreateParameters = ctx.json()?;
            let d = service::put_definition(&ctx.app, scope, n, params).await?;
            Ok(json_response(StatusCode::CREATED, &d))
        }
        (RbacKind::Definitions, Method::DELETE, Some(n)) => {
            ctx.audit.operation = "RoleDefinitionDelete";
            ctx.authorize(DataAction::RoleDefinitionsDelete, scope)?;
            let d = service::delete_definition(&ctx.app, scope, n).await?;
            Ok(json_response(StatusCode::OK, &d))
        }
        (_, m, _) => Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "BadRequest",
            format!("{m} is not supported on this RBAC path"),
        )),
    }
}
