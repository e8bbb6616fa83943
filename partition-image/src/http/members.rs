//! `/admin/members`: the membership of a replicated pool (list, add, remove, replace).
//!
//! Authorised with the security-domain actions at `/` (see docs/rbac.md): listing needs
//! `securitydomain/download/read`, a change needs `securitydomain/download/action` — a new
//! member receives the domain, and whoever holds that action can already have the domain
//! re-protected to keys of their choice, so deciding membership grants nothing more. The
//! request is carried out by the leader (`crate::replica::membership`).

use super::error::ApiError;
use super::{Ctx, json_response};
use crate::service::members::{self as membership, MembershipRequest, Refusal};
use axum::http::StatusCode;
use axum::response::Response;
use keystead_core::members::MemberSpec;
use keystead_core::rbac::DataAction;

fn refusal(r: Refusal) -> ApiError {
    ApiError::new(
        StatusCode::from_u16(r.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &r.code,
        r.message,
    )
}

/// Carry out `req` (the caller is authorised already) and answer with the membership: 200
/// when done, 202 when a new member is still catching up (repeat the request to finish).
async fn run(ctx: &mut Ctx, req: MembershipRequest) -> Result<Response, ApiError> {
    ctx.audit.operation = req.audit_operation();
    (ctx.audit.member, ctx.audit.member_id) = req.audit_member();
    let reply = membership::request(&ctx.app, req).await.map_err(refusal)?;
    let status = if reply.complete {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok(json_response(status, &reply.view))
}

fn member_id(id: &str) -> Result<u64, ApiError> {
    id.parse().map_err(|_| {
        ApiError::bad_request(format!(
            "'{id}' is not a member id: use the numeric Raft node id shown by GET /admin/members"
        ))
    })
}

fn spec(ctx: &Ctx) -> Result<MemberSpec, ApiError> {
    let spec: MemberSpec = ctx.json()?;
    spec.validate().map_err(|e| ApiError::bad_request(e.0))?;
    Ok(spec)
}

/// `GET /admin/members`
pub async fn list(ctx: &mut Ctx) -> Result<Response, ApiError> {
    ctx.audit.operation = "MemberList";
    ctx.authorize(DataAction::SecurityDomainDownloadRead, "/")?;
    run(ctx, MembershipRequest::List).await
}

/// `POST /admin/members` with a [`MemberSpec`].
pub async fn add(ctx: &mut Ctx) -> Result<Response, ApiError> {
    ctx.audit.operation = "MemberAdd";
    ctx.authorize(DataAction::SecurityDomainDownload, "/")?;
    let member = spec(ctx)?;
    run(ctx, MembershipRequest::Add { member }).await
}

/// `DELETE /admin/members/{id}[?force=true]`
pub async fn remove(ctx: &mut Ctx, id: &str) -> Result<Response, ApiError> {
    ctx.audit.operation = "MemberRemove";
    ctx.authorize(DataAction::SecurityDomainDownload, "/")?;
    let id = member_id(id)?;
    let force = match ctx.query("force") {
        None => false,
        Some(v) if v.eq_ignore_ascii_case("true") => true,
        Some(v) if v.eq_ignore_ascii_case("false") => false,
        Some(v) => {
            return Err(ApiError::bad_request(format!(
                "force must be true or false, got '{v}'"
            )));
        }
    };
    run(ctx, MembershipRequest::Remove { id, force }).await
}

/// `PUT /admin/members/{id}` with the [`MemberSpec`] of the new member.
pub async fn replace(ctx: &mut Ctx, id: &str) -> Result<Response, ApiError> {
    ctx.audit.operation = "MemberReplace";
    ctx.authorize(DataAction::SecurityDomainDownload, "/")?;
    let old = member_id(id)?;
    let member = spec(ctx)?;
    run(ctx, MembershipRequest::Replace { old, member }).await
}
