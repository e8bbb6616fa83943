//! `/admin/regions`: the regions a primary accepts (docs/regions.md) — list, name one with
//! its pool CA, remove one — and the planned switchover (demote the primary, promote a
//! region with the demotion token). Authorised like membership: listing needs
//! `securitydomain/download/read`, a change `securitydomain/download/action` at `/` (a named
//! region obtains the security domain).

use super::error::ApiError;
use super::{Ctx, json_response};
use crate::state::Command;
use axum::http::StatusCode;
use axum::response::Response;
use keystead_core::rbac::DataAction;
use keystead_core::region::{
    AcceptRegionRequest, AcceptedRegion, DemoteRequest, FollowRequest, PromoteRequest,
    check_region_name,
};

/// The accepted regions, as every operation answers them.
fn answer(ctx: &Ctx) -> Response {
    json_response(
        StatusCode::OK,
        &serde_json::json!({ "value": accepted(ctx) }),
    )
}

fn accepted(ctx: &Ctx) -> Vec<AcceptedRegion> {
    ctx.app
        .store
        .read()
        .region
        .accepted
        .iter()
        .map(|(name, r)| AcceptedRegion {
            name: name.clone(),
            ca_sha256: crate::region::ca_sha256(&r.ca_pem),
            added: r.added,
        })
        .collect()
}

/// `GET /admin/regions`
pub fn list(ctx: &mut Ctx) -> Result<Response, ApiError> {
    ctx.audit.operation = "RegionList";
    ctx.authorize(DataAction::SecurityDomainDownloadRead, "/")?;
    Ok(answer(ctx))
}

/// `PUT /admin/regions/{name}` with an [`AcceptRegionRequest`].
pub async fn put(ctx: &mut Ctx, name: &str) -> Result<Response, ApiError> {
    ctx.audit.operation = "RegionAccept";
    ctx.audit.member = Some(name.to_string());
    ctx.authorize(DataAction::SecurityDomainDownload, "/")?;
    check_region_name(name).map_err(ApiError::bad_request)?;
    let req: AcceptRegionRequest = ctx.json()?;
    crate::tls::chain_verifier(&req.ca_certificate).map_err(|e| {
        ApiError::bad_request(format!(
            "caCertificate is not a usable CA certificate (PEM): {e:#}"
        ))
    })?;
    if ctx.app.regions.link().is_some() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "RegionNotPrimary",
            "this pool is a replica region: name regions on its primary",
        ));
    }
    ctx.app
        .store
        .propose(Command::PutRegion {
            name: name.to_string(),
            ca_pem: req.ca_certificate,
            now: crate::service::now(),
        })
        .await?;
    Ok(answer(ctx))
}

/// `DELETE /admin/regions/{name}`: the region's partitions are refused from now on.
pub async fn delete(ctx: &mut Ctx, name: &str) -> Result<Response, ApiError> {
    ctx.audit.operation = "RegionRemove";
    ctx.audit.member = Some(name.to_string());
    ctx.authorize(DataAction::SecurityDomainDownload, "/")?;
    ctx.app
        .store
        .propose(Command::DeleteRegion {
            name: name.to_string(),
            now: crate::service::now(),
        })
        .await?;
    Ok(answer(ctx))
}

/// `POST /admin/regions/demote` with a [`DemoteRequest`]: the demotion token.
pub async fn demote(ctx: &mut Ctx) -> Result<Response, ApiError> {
    ctx.audit.operation = "RegionDemote";
    ctx.authorize(DataAction::SecurityDomainDownload, "/")?;
    let req: DemoteRequest = ctx.json()?;
    ctx.audit.member = Some(req.to.clone());
    let reply = crate::service::regions::switchover::demote(&ctx.app, &req).await?;
    Ok(json_response(StatusCode::OK, &reply))
}

/// `POST /admin/regions/follow` with a [`FollowRequest`] (a replica region after a
/// failover elsewhere): this region's status after.
pub async fn follow(ctx: &mut Ctx) -> Result<Response, ApiError> {
    ctx.audit.operation = "RegionFollow";
    ctx.authorize(DataAction::SecurityDomainDownload, "/")?;
    let req: FollowRequest = ctx.json()?;
    ctx.audit.member = Some(req.to.clone());
    crate::service::regions::failover::follow(&ctx.app, &req).await?;
    Ok(region_status(ctx))
}

/// `POST /admin/regions/promote` with a [`PromoteRequest`]: this region's status after.
pub async fn promote(ctx: &mut Ctx) -> Result<Response, ApiError> {
    ctx.audit.operation = "RegionPromote";
    ctx.authorize(DataAction::SecurityDomainDownload, "/")?;
    let req: PromoteRequest = ctx.json()?;
    match (&req.token, req.force) {
        (Some(token), false) => {
            crate::service::regions::switchover::promote(&ctx.app, token).await?
        }
        (None, true) => crate::service::regions::switchover::fail_over(&ctx.app).await?,
        _ => {
            return Err(ApiError::bad_request(
                "give either the demotion token of a planned switchover (token) or force: true for a failover, not both",
            ));
        }
    }
    Ok(region_status(ctx))
}

/// This region's status, the answer of a switchover or failover step.
fn region_status(ctx: &Ctx) -> Response {
    let st = ctx.app.store.read();
    let status = ctx
        .app
        .regions
        .status(&st, ctx.app.store.applied_index(), None);
    json_response(StatusCode::OK, &status)
}
