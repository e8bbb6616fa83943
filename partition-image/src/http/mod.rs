//! The HTTPS data plane (the edge): the request chain (authentication, route, read barrier,
//! dispatch, audit), the handlers of each API and the one place errors become responses.
//!
//! Every request goes through [`handle`]: a request without a bearer token gets the 401
//! challenge before its body is read; a token is validated; the route is parsed; the
//! handler authorises the data action against local RBAC; one audit record is written for
//! every request, whatever its outcome.

mod backup;
pub mod error;
mod key_ops;
mod keys;
mod members;
pub mod metrics;
mod rbac;
pub mod route;
mod sd;
pub mod server;

use crate::service::app::App;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use error::ApiError;
use keystead_core::audit::AuditRecord;
use keystead_core::rbac::DataAction;
use route::Route;
use serde::de::DeserializeOwned;
use std::sync::Arc;
use std::time::Instant;
use tracing::Instrument;

/// Largest request body accepted (keys, blobs and transfer blobs are far smaller).
const BODY_LIMIT: usize = 4 * 1024 * 1024;

pub use crate::tls::ClientAddr;

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

fn challenge(app: &App) -> HeaderValue {
    let v = crate::auth::challenge_header(&app.cfg.auth.authority, &app.cfg.audience());
    HeaderValue::from_str(&v).unwrap_or_else(|_| HeaderValue::from_static("Bearer"))
}

fn parse_query(q: Option<&str>) -> Vec<(String, String)> {
    q.map(|q| {
        url::form_urlencoded::parse(q.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect()
    })
    .unwrap_or_default()
}

/// Longest request target (path and query) served: far above any Key Vault route (key names
/// have at most 127 characters), small enough that no request can bloat the audit log.
pub const MAX_URI_BYTES: usize = 8192;

/// What every audit record of one request shares.
struct RequestFacts {
    request_id: String,
    client: String,
    method: String,
    path: String,
}

impl RequestFacts {
    fn record(&self, app: &App, caller: &str, info: AuditInfo, status: u16) -> AuditRecord {
        AuditRecord {
            request_id: self.request_id.clone(),
            partition: app.cfg.partition_id.clone(),
            caller: caller.to_string(),
            client_address: self.client.clone(),
            method: self.method.clone(),
            path: self.path.clone(),
            operation: info.operation.to_string(),
            data_action: info.data_action.map(|a| a.as_str().to_string()),
            key_name: info.key_name,
            key_version: info.key_version,
            member: info.member,
            member_id: info.member_id,
            status,
            ..AuditRecord::default()
        }
    }
}

/// The answer to a change whose audit record could not be written (nothing was done).
fn audit_unavailable(app: &App) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "AuditLogUnavailable",
        format!(
            "partition {} cannot write its audit log, so it refuses changes: nothing was changed. Retry on another partition; the pool's operator must make the audit log writable again (see docs/audit.md)",
            app.cfg.partition_id
        ),
    )
}

/// The single entry point of the data plane: every log line written while the request is
/// served carries its request id (the one in its audit records and `x-ms-request-id`).
pub async fn handle(State(app): State<Arc<App>>, req: Request) -> Response {
    let started = Instant::now();
    let request_id = req
        .headers()
        .get("x-ms-client-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.len() <= 128 && v.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    // The path stays in the audit record (cut there to a bounded length), not in every line.
    let span = tracing::info_span!("request", request_id = %request_id, method = %req.method());
    serve(app, req, request_id, started).instrument(span).await
}

async fn serve(app: Arc<App>, req: Request, request_id: String, started: Instant) -> Response {
    let client = req
        .extensions()
        .get::<ClientAddr>()
        .map(|c| c.0.to_string())
        .unwrap_or_else(|| "unknown".into());
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let uri_len = req
        .uri()
        .path_and_query()
        .map_or(path.len(), |pq| pq.as_str().len());
    let facts = RequestFacts {
        request_id: request_id.clone(),
        client,
        method: method.to_string(),
        path: path.clone(),
    };

    let mut caller = "anonymous".to_string();
    let mut info = AuditInfo {
        operation: "Unknown",
        ..Default::default()
    };
    let token = crate::auth::bearer_token(req.headers()).map(str::to_string);
    let mut response = if uri_len > MAX_URI_BYTES {
        // Refused before anything else (the token is not even checked).
        info.operation = "UriTooLong";
        ApiError::new(
            StatusCode::URI_TOO_LONG,
            "UriTooLong",
            format!(
                "the request URI is {uri_len} bytes; this pool serves URIs of at most {MAX_URI_BYTES} bytes (Key Vault paths are far shorter: key names have at most 127 characters). Check the URL your client builds"
            ),
        )
        .into_response()
    } else {
        match token {
            None => {
                info.operation = "Challenge";
                let mut r = ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "Unauthorized",
                    "a bearer token is required: send `Authorization: Bearer <token>` with a token for this pool's audience",
                )
                .into_response();
                r.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, challenge(&app));
                r
            }
            Some(token) => match app.validator.validate(&token).await {
                Err(e) => {
                    info.operation = "Authenticate";
                    let mut r = ApiError::new(
                        StatusCode::UNAUTHORIZED,
                        "Unauthorized",
                        format!("the bearer token was rejected: {e}"),
                    )
                    .into_response();
                    r.headers_mut()
                        .insert(header::WWW_AUTHENTICATE, challenge(&app));
                    r
                }
                Ok(principal) => {
                    caller = principal.subject.clone();
                    // Never the request's Host header or authority: a caller could make
                    // the pool hand out `kid`s and polling URLs of its choosing.
                    let base = app.cfg.public_url.trim_end_matches('/').to_string();
                    let query = parse_query(req.uri().query());
                    match route::parse(&method, &path) {
                        None => {
                            info.operation = "NotFound";
                            ApiError::not_found(
                                "NotFound",
                                format!("no operation {method} {path}; see docs/compatibility.md for the supported routes"),
                            )
                            .into_response()
                        }
                        Some(route) => {
                            match axum::body::to_bytes(req.into_body(), BODY_LIMIT).await {
                                Err(_) => ApiError::new(
                                    StatusCode::PAYLOAD_TOO_LARGE,
                                    "BadParameter",
                                    format!("the request body exceeds {BODY_LIMIT} bytes"),
                                )
                                .into_response(),
                                Ok(body) => {
                                    // A change is recorded before it is carried out: if that
                                    // record cannot be written, nothing is done (fail closed).
                                    let intent = route.audited_first().then(|| {
                                        let what = AuditInfo {
                                            operation: route.operation(),
                                            ..Default::default()
                                        };
                                        let mut r = facts.record(&app, &caller, what, 0);
                                        r.intent = true;
                                        app.audit.try_record(r)
                                    });
                                    if let Some(Err(_)) = intent {
                                        info.operation = route.operation();
                                        audit_unavailable(&app).into_response()
                                    } else {
                                        let mut ctx = Ctx {
                                            app: app.clone(),
                                            principal: principal.subject.clone(),
                                            base_url: base,
                                            query,
                                            body,
                                            audit: AuditInfo::default(),
                                        };
                                        // Status and the member list answer even without a
                                        // majority (they say so).
                                        let barrier = if matches!(
                                            route,
                                            Route::AdminStatus | Route::ListMembers
                                        ) {
                                            Ok(())
                                        } else {
                                            app.store.read_barrier().await
                                        };
                                        let r = match barrier {
                                            Ok(()) => dispatch(route, &mut ctx).await,
                                            Err(e) => Err(ApiError::from(e)),
                                        };
                                        info = std::mem::take(&mut ctx.audit);
                                        match r {
                                            Ok(r) => r,
                                            Err(e) => e.into_response(),
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            },
        }
    };
    let status = response.status().as_u16();
    let error_code = if status >= 400 {
        response
            .extensions()
            .get::<ErrorCodeTag>()
            .map(|t| t.0.clone())
    } else {
        None
    };
    let mut outcome = facts.record(&app, &caller, info, status);
    outcome.error_code = error_code;
    outcome.latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    // Reads and cryptographic operations are answered even when this record is lost (it
    // is counted and logged); a change was refused above unless its intent was recorded.
    app.audit.record(outcome);
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-ms-request-id", v);
    }
    response
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
        R::RotateKey { name } => keys::rotate(ctx, &name).await,
        R::GetRotationPolicy { name } => keys::get_rotation_policy(ctx, &name),
        R::SetRotationPolicy { name } => keys::set_rotation_policy(ctx, &name).await,
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

pub async fn readyz(State(app): State<Arc<App>>) -> Response {
    // Ready to take traffic: serving, and (replicated) part of a group with a leader and a
    // bootstrapped pool. Activation is reported by /admin/status.
    if let Some(r) = app.store.replica() {
        let has_leader = r.raft.metrics().borrow().current_leader.is_some();
        if !has_leader || !app.store.read().bootstrapped {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                Body::from("not ready: no leader or the pool is not bootstrapped yet"),
            )
                .into_response();
        }
    }
    (StatusCode::OK, Body::from("ready")).into_response()
}
