//! The security-domain API (reference §2) and the partition's status endpoint.

use super::error::ApiError;
use super::{Ctx, json_response};
use crate::service::sd::{self as service, upload_here};
use crate::state::Activation;
use axum::http::{HeaderValue, StatusCode};
use axum::response::Response;
use keystead_core::rbac::DataAction;
use keystead_core::sd::wire::{
    CertificateInfo, OperationStatus, SecurityDomainObject, SecurityDomainOperationStatus,
};
use keystead_core::status::{self, PoolStatus};

fn accepted(ctx: &Ctx, body: &impl serde::Serialize, pending_path: &str) -> Response {
    let mut r = json_response(StatusCode::ACCEPTED, body);
    let url = format!("{}{pending_path}", ctx.base_url);
    if let Ok(v) = HeaderValue::from_str(&url) {
        r.headers_mut().insert("azure-asyncoperation", v);
    }
    r.headers_mut()
        .insert("retry-after", HeaderValue::from_static("0"));
    r
}

fn status(status: &str, details: impl Into<String>) -> SecurityDomainOperationStatus {
    SecurityDomainOperationStatus {
        status: match status {
            "Success" => OperationStatus::Success,
            "InProgress" => OperationStatus::InProgress,
            _ => OperationStatus::Failed,
        },
        status_details: Some(details.into()),
    }
}

pub async fn download(ctx: &mut Ctx) -> Result<Response, ApiError> {
    ctx.audit.operation = "SecurityDomainDownload";
    ctx.authorize(DataAction::SecurityDomainDownload, "/")?;
    let req: CertificateInfo = ctx.json()?;
    let file = service::download(&ctx.app, &ctx.principal, &req).await?;
    Ok(accepted(
        ctx,
        &SecurityDomainObject { value: file },
        "/securitydomain/download/pending",
    ))
}

pub fn download_pending(ctx: &mut Ctx) -> Result<Response, ApiError> {
    ctx.audit.operation = "SecurityDomainDownloadStatus";
    ctx.authorize(DataAction::SecurityDomainDownload, "/")?;
    let body = match ctx.app.store.read().activation {
        Activation::Activated { .. } => status("Success", "The resource is active."),
        Activation::RecoveryPending { .. } => status(
            "Failed",
            "The pool is waiting for a security-domain upload.",
        ),
        Activation::Provisioned => status(
            "Failed",
            "No security domain was downloaded; the pool is not activated.",
        ),
    };
    Ok(json_response(StatusCode::OK, &body))
}

pub async fn transfer_key(ctx: &mut Ctx) -> Result<Response, ApiError> {
    ctx.audit.operation = "SecurityDomainTransferKey";
    ctx.authorize(DataAction::SecurityDomainTransferKeyRead, "/")?;
    let key = service::transfer_key(&ctx.app).await?;
    Ok(json_response(StatusCode::OK, &key))
}

pub async fn upload(ctx: &mut Ctx) -> Result<Response, ApiError> {
    ctx.audit.operation = "SecurityDomainUpload";
    ctx.authorize(DataAction::SecurityDomainUpload, "/")?;
    let req: SecurityDomainObject = ctx.json()?;
    let app = ctx.app.clone();
    match upload_here(&app, &req.value).await? {
        Some(fingerprint) => {
            tracing::info!(fingerprint = %fingerprint, "pool activated by security-domain upload");
        }
        None => {
            // The exchange key may be on another partition (the client reached this one
            // through a load-balanced Service): the blob is sealed to that key, so it can
            // travel to it over the authenticated peer channel.
            match crate::service::sd::forward_upload(&app, &req.value).await {
                Some(Ok(())) => {
                    tracing::info!(
                        "pool activated by a security-domain upload forwarded to the partition holding the exchange key"
                    );
                }
                Some(Err(e)) => return Err(e.into()),
                None => {
                    return Err(ApiError::conflict(
                        "Conflict",
                        "no partition of this pool holds an exchange key: start recovery with GET /securitydomain/upload (`kubectl hsm sd exchange-key`), build the transfer blob for that key, then upload it",
                    ));
                }
            }
        }
    }
    *ctx.app.upload_status.lock().await =
        Some(("Success".into(), "The resource is active.".into()));
    Ok(accepted(
        ctx,
        &status("Success", "The resource is active."),
        "/securitydomain/upload/pending",
    ))
}

pub fn upload_pending(ctx: &mut Ctx) -> Result<Response, ApiError> {
    ctx.audit.operation = "SecurityDomainUploadStatus";
    ctx.authorize(DataAction::SecurityDomainUploadRead, "/")?;
    let body = match &ctx.app.store.read().activation {
        Activation::Activated { .. } => status("Success", "The resource is active."),
        Activation::RecoveryPending { .. } => {
            match ctx
                .app
                .upload_status
                .try_lock()
                .ok()
                .and_then(|s| s.clone())
            {
                Some((s, d)) if s == "Failed" => status("Failed", d),
                _ => status(
                    "InProgress",
                    "Waiting for the transfer blob to be uploaded.",
                ),
            }
        }
        Activation::Provisioned => status(
            "Failed",
            "Recovery was not started; GET /securitydomain/upload first.",
        ),
    };
    Ok(json_response(StatusCode::OK, &body))
}

/// `GET /admin/status`: the partition's view for the operator and `kubectl hsm status`.
/// Needs `securitydomain/download/read` at `/` (Administrator; the operator's principal is an
/// initial administrator). A partition that has not received the pool's state yet (no RBAC
/// to check: a new or wiped member catching up) answers its configured initial
/// administrators only.
pub fn admin_status(ctx: &mut Ctx) -> Result<Response, ApiError> {
    ctx.audit.operation = "AdminStatus";
    let bootstrapped = ctx.app.store.read().bootstrapped;
    if bootstrapped || !ctx.app.cfg.initial_administrators.contains(&ctx.principal) {
        ctx.authorize(DataAction::SecurityDomainDownloadRead, "/")?;
    } else {
        ctx.audit.data_action = Some(DataAction::SecurityDomainDownloadRead);
    }
    let st = ctx.app.store.read();
    let (activation, fingerprint) = match &st.activation {
        Activation::Provisioned => (status::Activation::Provisioned, None),
        Activation::RecoveryPending { .. } => (status::Activation::RecoveryPending, None),
        Activation::Activated { fingerprint, .. } => {
            (status::Activation::Activated, Some(fingerprint.clone()))
        }
    };
    let body = PoolStatus {
        pool_name: st.settings.pool_name.clone(),
        pool_id: st.settings.pool_id.clone(),
        partition: ctx.app.cfg.partition_id.clone(),
        activation,
        security_domain_fingerprint: fingerprint,
        domain_loaded: ctx.app.keyring.is_unsealed(),
        keys: st.keys.len() as u64,
        deleted_keys: st.deleted.len() as u64,
        applied_index: ctx.app.store.applied_index(),
        soft_delete_retention_days: st.settings.soft_delete_retention_days,
        purge_protection: st.settings.purge_protection,
        security_domain_redownloads: st.domain_redownloads,
        last_security_domain_redownload: st.last_domain_redownload.clone(),
        replication: ctx.app.store.replica().map(|r| r.status()),
        region: ctx.app.regions.status(
            &st,
            ctx.app.store.applied_index(),
            crate::service::regions::switchover::demotion_token(&ctx.app, &st),
        ),
    };
    Ok(json_response(StatusCode::OK, &body))
}
