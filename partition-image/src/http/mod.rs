//! The HTTPS data plane (the edge): the request chain (authentication, route, read barrier,
//! dispatch, audit), the handlers of each API and the one place errors become responses.
//!
//! Every request goes through [`handle`] (`chain.rs`): a request without a bearer token gets
//! the 401 challenge before its body is read; a token is validated; the route is parsed; the
//! handler authorises the data action against local RBAC; one audit record is written for
//! every request, whatever its outcome. A new route is a line in `route.rs`, one in
//! [`dispatch`] and a small handler.

mod backup;
mod chain;
pub mod error;
mod key_ops;
mod keys;
mod members;
pub mod metrics;
mod rbac;
mod regions;
mod rotation;
pub mod route;
mod sd;
pub mod server;

use crate::service::app::App;
use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use error::ApiError;
use keystead_core::rbac::DataAction;
use route::Route;
use serde::de::DeserializeOwned;
use std::sync::Arc;

pub use crate::tls::ClientAddr;
pub use chain::{MAX_URI_BYTES, handle};

/// What a handler records about the request for the audit log.
#[derive(Default, Debug)]
pub struct AuditInfo {
    pub operation: &'static str,
    pub data_action: Option<DataAction>,
    pub key_name: Option<String>,
    pub key_version: Option<String>,
    pub member: Option<String>,
    pub member_id: Option<u64>,
}

/// One authenticated request.
pub struct Ctx {
    pub app: Arc<App>,
    pub principal: String,
    /// The configured `publicUrl` without a trailing slash (for `kid`, `nextLink`, polling
    /// URLs).
    pub base_url: String,
    pub query: Vec<(String, String)>,
    pub body: bytes::Bytes,
    pub audit: AuditInfo,
}

impl Ctx {
    /// Authorise `action` at `scope` (`/`, `/keys`, `/keys/{name}`) for the caller.
    pub fn authorize(&mut self, action: DataAction, scope: &str) -> Result<(), ApiError> {
        self.audit.data_action = Some(action);
        let state = self.app.store.read();
        state
            .rbac
            .check(&self.principal, action, scope)
            .map_err(|_| {
                ApiError::new(
                    StatusCode::FORBIDDEN,
                    "Forbidden",
                    format!(
                        "Caller is not authorized to perform action on resource.\r\nCaller: {}\r\nAction: '{}'\r\nResource: '{}'\r\nAsk a Managed HSM Administrator or Policy Administrator to assign you a role granting this action at this scope.",
                        self.principal,
                        action.as_str(),
                        scope
                    ),
                )
                .with_inner("ForbiddenByRbac", "no role assignment grants this data action")
            })
    }

    /// Refuse key operations until the pool is activated and this partition holds the domain.
    pub fn require_active(&self) -> Result<(), ApiError> {
        if !self.app.store.read().is_activated() {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "NotActivated",
                "the pool is not activated: an administrator must download its security domain \
                 (`kubectl hsm sd download` or POST /securitydomain/download with 3-10 custodian \
                 certificates), or upload one to recover it, before keys can be used",
            ));
        }
        if !self.app.keyring.is_unsealed() {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "PartitionSealed",
                "this partition does not hold the security domain yet (it restarted without a \
                 sealing key and no healthy peer has handed it over); retry against another \
                 partition, or upload the security domain to recover the pool",
            ));
        }
        Ok(())
    }

    /// Parse the JSON body into `T`, with an error that says what is wrong.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, ApiError> {
        if self.body.is_empty() {
            return Err(ApiError::bad_request(
                "the request body is empty; this operation needs a JSON body",
            ));
        }
        serde_json::from_slice(&self.body).map_err(|e| {
            ApiError::bad_request(format!(
                "the request body is not valid for this operation: {e}"
            ))
        })
    }

    pub fn query(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn key(&mut self, name: &str, version: Option<&str>) {
        self.audit.key_name = Some(name.to_string());
        self.audit.key_version = version.map(str::to_string);
    }
}

/// JSON response with status.
pub fn json_response<T: serde::Serialize>(status: StatusCode, body: &T) -> Response {
    (status, axum::Json(body)).into_response()
}

/// Error code of an error response, for the audit record.
#[derive(Clone, Debug)]
pub struct ErrorCodeTag(pub String);

async fn dispatch(route: Route, ctx: &mut Ctx) -> Result<Response, ApiError> {
    use Route as R;
    match route {
        R::CreateKey { name } => keys::create(ctx, &name).await,
        R::ImportKey { name } => keys::import(ctx, &name).await,
        R::GetKey { name, version } => keys::get(ctx, &name, version.as_deref()),
        R::UpdateKey { name, version } => keys::update(ctx, &name, version.as_deref()).await,
        R::ListKeys => keys::list(ctx),
        R::ListVersions { name } => keys::list_versions(ctx, &name),
        R::DeleteKey { name } => keys::delete(ctx, &name).await,
        R::GetDeletedKey { name } => keys::get_deleted(ctx, &name),
        R::ListDeletedKeys => keys::list_deleted(ctx),
        R::RecoverDeletedKey { name } => keys::recover(ctx, &name).await,
        R::PurgeDeletedKey { name } => keys::purge(ctx, &name).await,
        R::BackupKey { name } => keys::backup(ctx, &name),
        R::RestoreKey => keys::restore(ctx).await,
        R::RotateKey { name } => rotation::rotate(ctx, &name).await,
        R::GetRotationPolicy { name } => rotation::get_rotation_policy(ctx, &name),
        R::SetRotationPolicy { name } => rotation::set_rotation_policy(ctx, &name).await,
        R::KeyOperation { name, version, op } => {
            key_ops::operation(ctx, &name, version.as_deref(), op)
        }
        R::GetAttestation { .. } => Err(not_supported(
            ctx,
            "KeyAttestation",
            "key attestation is not supported by Keystead (there is no hardware attestation chain); see docs/compatibility.md",
        )),
        R::Random => key_ops::random(ctx),
        R::SdDownload => sd::download(ctx).await,
        R::SdDownloadPending => sd::download_pending(ctx),
        R::SdTransferKey => sd::transfer_key(ctx).await,
        R::SdUpload => sd::upload(ctx).await,
        R::SdUploadPending => sd::upload_pending(ctx),
        R::FullBackup => backup::start_backup(ctx),
        R::FullBackupPending { job } => backup::backup_status(ctx, &job).await,
        R::FullRestore => backup::start_restore(ctx, false),
        R::PreRestore => backup::start_restore(ctx, true),
        R::DeleteBackup => backup::delete_backup(ctx).await,
        R::RestorePending { job } => backup::restore_status(ctx, &job).await,
        R::SelectiveRestore { name } => backup::start_selective_restore(ctx, &name),
        R::Rbac {
            scope,
            kind,
            name,
            method,
        } => rbac::handle(ctx, &scope, kind, name.as_deref(), &method).await,
        R::AdminStatus => sd::admin_status(ctx),
        R::ListMembers => members::list(ctx).await,
        R::AddMember => members::add(ctx).await,
        R::RemoveMember { id } => members::remove(ctx, &id).await,
        R::ReplaceMember { id } => members::replace(ctx, &id).await,
        R::ListRegions => regions::list(ctx),
        R::PutRegion { name } => regions::put(ctx, &name).await,
        R::DeleteRegion { name } => regions::delete(ctx, &name).await,
        R::DemoteRegion => regions::demote(ctx).await,
        R::PromoteRegion => regions::promote(ctx).await,
        R::FollowRegion => regions::follow(ctx).await,
    }
}

fn not_supported(ctx: &mut Ctx, operation: &'static str, message: &str) -> ApiError {
    ctx.audit.operation = operation;
    ApiError::new(StatusCode::NOT_IMPLEMENTED, "NotSupported", message)
}

/// Health endpoints for probes (no authentication, no detail).
pub async fn healthz() -> impl IntoResponse {
    (StatusCode::OK, "ok")
}

/// Ready to take traffic behind a Service: the partition can serve what a client would ask
/// of it now (docs/replication.md, "Readiness"). Replicated, it is part of a group with a
/// leader, has caught up to the leader's commit index (one read barrier, at most
/// [`READY_BARRIER_WAIT`]) and the pool is bootstrapped. And an activated pool's partition
/// must hold the security domain: one that restarted and has not unsealed it yet (or been
/// handed it by a peer) would answer every key operation with 503. A pool that is not
/// activated (`Provisioned`, `RecoveryPending`) is ready without the domain: the ceremony
/// that activates it must reach it.
pub async fn readyz(State(app): State<Arc<App>>) -> Response {
    match not_ready(&app).await {
        None => (StatusCode::OK, Body::from("ready")).into_response(),
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Body::from(format!("not ready: {why}")),
        )
            .into_response(),
    }
}

/// How long one readiness check waits for its read barrier.
pub const READY_BARRIER_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Why this partition should not get traffic now, if it should not.
pub async fn not_ready(app: &App) -> Option<&'static str> {
    if let Some(r) = app.store.replica() {
        if r.raft.metrics().borrow().current_leader.is_none() {
            return Some("no leader (a majority of the partitions must be up and connected)");
        }
        // Without this, a restarted partition reports the state it found on disk (perhaps
        // `Provisioned`) until it has applied the rest of the log.
        match tokio::time::timeout(READY_BARRIER_WAIT, app.store.read_barrier_raw()).await {
            Ok(Ok(())) => {}
            _ => return Some("not caught up with the leader's commit index yet"),
        }
    }
    let st = app.store.read();
    if app.store.replica().is_some() && !st.bootstrapped {
        return Some("the pool is not bootstrapped yet");
    }
    if st.is_activated() && !app.keyring.is_unsealed() {
        return Some(
            "the pool is activated and this partition does not hold its security domain yet",
        );
    }
    None
}
