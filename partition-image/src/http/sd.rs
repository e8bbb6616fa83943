//! The security-domain API (reference §2) and the partition's status endpoint.

use super::error::ApiError;
use super::{Ctx, json_response};
use crate::service::sd::sd_err;
use crate::service::sd::upload_here;
use crate::state::{Activation, Command};
use axum::http::{HeaderValue, StatusCode};
use axum::response::Response;
use keystead_core::rbac::DataAction;
use keystead_core::sd::wire::{
    CertificateInfo, OperationStatus, SecurityDomainObject, SecurityDomainOperationStatus,
    TransferKey,
};
use keystead_core::sd::{self, DomainSecret};
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
    // 3..=10 distinct RSA >= 2048 keys, 2 <= quorum <= n: the format library's own check.
    let (custodians, quorum) = sd::custodians_from_download_request(&req).map_err(sd_err)?;
    let n = custodians.len();
    let activation = ctx.app.store.read().activation.clone();
    let app = ctx.app.clone();
    let _guard = app.sd_lock.lock().await;
    match activation {
        Activation::Activated { fingerprint, .. } => {
            // Re-protection: the same domain under new wrapping keys.
            if ctx.app.cfg.security_domain_redownload == crate::config::RedownloadPolicy::Refused {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "RedownloadRefused",
                    "this pool refuses to download its activated security domain again (securityDomainRedownload: refused); keep the file made at activation, and to change custodians recover into a pool that allows it",
                ));
            }
            let u = ctx.app.keyring.unsealed().ok_or_else(|| {
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "PartitionSealed",
                    "this partition does not hold the security domain; retry on another partition",
                )
            })?;
            if u.fingerprint() != fingerprint {
                return Err(ApiError::internal(
                    "the partition holds a domain other than the pool's",
                ));
            }
            let file = sd::create_domain_file(&u.secret, &custodians, quorum).map_err(sd_err)?;
            verify_file(&file, &fingerprint, n)?;
            // Recorded pool-wide before the file leaves: a re-download that cannot be
            // recorded is not made (the operator turns the record into a Warning Event).
            let download = crate::state::DomainRedownload {
                principal: ctx.principal.clone(),
                time: crate::service::now(),
                wrapping_keys: n as u32,
                quorum,
            };
            ctx.app
                .store
                .propose(Command::RecordDomainRedownload { download })
                .await?;
            tracing::warn!(fingerprint = %fingerprint, principal = %ctx.principal, wrapping_keys = n, quorum, "security domain downloaded again (re-protected under new custodian keys)");
            Ok(accepted(
                ctx,
                &SecurityDomainObject { value: file },
                "/securitydomain/download/pending",
            ))
        }
        Activation::RecoveryPending { .. } => Err(ApiError::conflict(
            "Conflict",
            "the pool is waiting for a security-domain upload (recovery was started with GET /securitydomain/upload); upload the transfer blob made for its exchange key",
        )),
        Activation::Provisioned => {
            let pool = ctx.app.store.read().settings.pool_name.clone();
            let secret = DomainSecret::generate(&pool);
            let fingerprint = secret.fingerprint();
            let file = sd::create_domain_file(&secret, &custodians, quorum).map_err(sd_err)?;
            verify_file(&file, &fingerprint, n)?;
            ctx.app.activate(secret).await?;
            tracing::info!(fingerprint = %fingerprint, wrapping_keys = n, quorum, "pool activated by security-domain download");
            Ok(accepted(
                ctx,
                &SecurityDomainObject { value: file },
                "/securitydomain/download/pending",
            ))
        }
    }
}

/// Check what is about to be handed out before the pool commits to it.
fn verify_file(file: &str, fingerprint: &str, n: usize) -> Result<(), ApiError> {
    let info = sd::inspect_domain_file(file)
        .map_err(|e| ApiError::internal(format!("the new domain file does not verify: {e}")))?;
    if info.fingerprint != fingerprint || info.shares.len() != n {
        return Err(ApiError::internal(
            "the new domain file does not match the domain; nothing was changed",
        ));
    }
    Ok(())
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
    let app = ctx.app.clone();
    let _guard = app.sd_lock.lock().await;
    let (activation, pool_id) = {
        let st = ctx.app.store.read();
        (st.activation.clone(), st.settings.pool_id.clone())
    };
    if let Activation::Activated { fingerprint, .. } = &activation {
        if ctx.app.keyring.is_unsealed() {
            return Err(ApiError::conflict(
                "Conflict",
                format!(
                    "the pool is already activated with security domain {fingerprint} and this partition holds it; recovery is only possible into a pool that is not activated, or one whose partitions all lost the domain"
                ),
            ));
        }
        // Activated, but this partition lacks the domain and could not get it from a peer
        // (every partition restarted with `seal.mode: memoryOnly`): the custodians supply it
        // again. The exchange key stays local; the pool's state does not change.
        let mut slot = ctx.app.exchange.lock().await;
        if slot.is_none() {
            let key = ctx
                .app
                .keygen
                .exchange_key(&pool_id)
                .await
                .map_err(sd_err)?;
            *slot = Some(key);
        }
        let key = slot
            .as_ref()
            .ok_or_else(|| ApiError::internal("no exchange key"))?;
        return Ok(json_response(StatusCode::OK, &key.transfer_key()));
    }
    let mut slot = ctx.app.exchange.lock().await;
    let reuse = matches!((&activation, slot.as_ref()),
        (Activation::RecoveryPending { exchange_thumbprint, .. }, Some(k)) if *exchange_thumbprint == k.thumbprint());
    if !reuse
        && let Activation::RecoveryPending {
            exchange_thumbprint,
            ..
        } = &activation
    {
        // Another partition may hold the pending exchange key (a client behind a
        // load-balanced Service reaches any partition): hand out that one rather than
        // replacing it.
        if let Some(k) = crate::service::sd::find_transfer_key(&app, exchange_thumbprint).await {
            return Ok(json_response(StatusCode::OK, &k));
        }
    }
    if !reuse {
        let key = ctx
            .app
            .keygen
            .exchange_key(&pool_id)
            .await
            .map_err(sd_err)?;
        ctx.app
            .store
            .propose(Command::BeginRecovery {
                exchange_thumbprint: key.thumbprint().to_string(),
                now: crate::service::now(),
            })
            .await?;
        *slot = Some(key);
    }
    let key = slot
        .as_ref()
        .ok_or_else(|| ApiError::internal("no exchange key"))?;
    let body: TransferKey = key.transfer_key();
    Ok(json_response(StatusCode::OK, &body))
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
    };
    Ok(json_response(StatusCode::OK, &body))
}
