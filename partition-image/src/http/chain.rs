//! The request chain of the data plane, one step each, in order: URI cap → authenticate →
//! route → body → intent audit record (changes only) → read barrier → dispatch; the outcome
//! is audited whatever step answered. Each step either passes the request on or answers it.

use super::error::ApiError;
use super::route::{self, Route};
use super::{AuditInfo, ClientAddr, Ctx, ErrorCodeTag, dispatch};
use crate::auth::Principal;
use crate::service::app::App;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use keystead_core::audit::AuditRecord;
use std::sync::Arc;
use std::time::Instant;
use tracing::Instrument;

/// Largest request body accepted (keys, blobs and transfer blobs are far smaller).
const BODY_LIMIT: usize = 4 * 1024 * 1024;

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
        .unwrap_or_else(new_request_id);
    // The path stays in the audit record (cut there to a bounded length), not in every line.
    let span = tracing::info_span!("request", request_id = %request_id, method = %req.method());
    serve(app, req, request_id, started).instrument(span).await
}

/// A random (v4) UUID from aws-lc's user-space generator: `Uuid::new_v4` asks the kernel
/// (`getrandom`) for every request that brings no `x-ms-client-request-id`.
fn new_request_id() -> String {
    let mut bytes = [0u8; 16];
    if aws_lc_rs::rand::fill(&mut bytes).is_err() {
        return uuid::Uuid::new_v4().to_string();
    }
    uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .to_string()
}

/// What the outcome record says of the caller and the operation, learnt along the chain.
struct Seen {
    caller: String,
    info: AuditInfo,
}

async fn serve(app: Arc<App>, req: Request, request_id: String, started: Instant) -> Response {
    let facts = RequestFacts {
        request_id,
        client: req
            .extensions()
            .get::<ClientAddr>()
            .map(|c| c.0.to_string())
            .unwrap_or_else(|| "unknown".into()),
        method: req.method().to_string(),
        path: req.uri().path().to_string(),
    };
    let mut seen = Seen {
        caller: "anonymous".to_string(),
        info: AuditInfo {
            operation: "Unknown",
            ..Default::default()
        },
    };
    let (Ok(mut response) | Err(mut response)) = steps(&app, req, &facts, &mut seen).await;
    record_outcome(&app, &facts, seen, &response, started);
    if let Ok(v) = HeaderValue::from_str(&facts.request_id) {
        response.headers_mut().insert("x-ms-request-id", v);
    }
    response
}

/// The chain; `Err` is the answer of the step that stopped the request.
async fn steps(
    app: &Arc<App>,
    req: Request,
    facts: &RequestFacts,
    seen: &mut Seen,
) -> Result<Response, Response> {
    refuse_long_uri(&req, seen).map_err(IntoResponse::into_response)?;
    let token = crate::auth::bearer_token(req.headers()).map(str::to_string);
    let principal = authenticate(app, token, seen).await?;
    seen.caller = principal.subject.clone();
    let route = find_route(&req, seen).map_err(IntoResponse::into_response)?;
    // Never the request's Host header or authority: a caller could make the pool hand out
    // `kid`s and polling URLs of its choosing.
    let base_url = app.cfg.public_url.trim_end_matches('/').to_string();
    let query = parse_query(req.uri().query());
    let body = read_body(req.into_body()).await?;
    record_intent(app, facts, seen, &route).map_err(IntoResponse::into_response)?;
    let mut ctx = Ctx {
        app: app.clone(),
        principal: principal.subject,
        base_url,
        query,
        body,
        audit: AuditInfo::default(),
    };
    let answer = match read_barrier(app, &route).await {
        Ok(()) => dispatch(route, &mut ctx).await,
        Err(e) => Err(e),
    };
    seen.info = std::mem::take(&mut ctx.audit);
    Ok(answer.unwrap_or_else(IntoResponse::into_response))
}

/// Refused before anything else (the token is not even checked).
fn refuse_long_uri(req: &Request, seen: &mut Seen) -> Result<(), ApiError> {
    let path = req.uri().path();
    let uri_len = req
        .uri()
        .path_and_query()
        .map_or(path.len(), |pq| pq.as_str().len());
    if uri_len <= MAX_URI_BYTES {
        return Ok(());
    }
    seen.info.operation = "UriTooLong";
    Err(ApiError::new(
        StatusCode::URI_TOO_LONG,
        "UriTooLong",
        format!(
            "the request URI is {uri_len} bytes; this pool serves URIs of at most {MAX_URI_BYTES} bytes (Key Vault paths are far shorter: key names have at most 127 characters). Check the URL your client builds"
        ),
    ))
}

/// A bearer token is required and must validate; both refusals carry the challenge.
async fn authenticate(
    app: &App,
    token: Option<String>,
    seen: &mut Seen,
) -> Result<Principal, Response> {
    let challenged = |e: ApiError| {
        let mut r = e.into_response();
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, challenge(app));
        r
    };
    let Some(token) = token else {
        seen.info.operation = "Challenge";
        return Err(challenged(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "a bearer token is required: send `Authorization: Bearer <token>` with a token for this pool's audience",
        )));
    };
    app.validator.validate(&token).await.map_err(|e| {
        seen.info.operation = "Authenticate";
        challenged(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            format!("the bearer token was rejected: {e}"),
        ))
    })
}

fn find_route(req: &Request, seen: &mut Seen) -> Result<Route, ApiError> {
    let (method, path) = (req.method(), req.uri().path());
    route::parse(method, path).ok_or_else(|| {
        seen.info.operation = "NotFound";
        ApiError::not_found(
            "NotFound",
            format!(
                "no operation {method} {path}; see docs/compatibility.md for the supported routes"
            ),
        )
    })
}

async fn read_body(body: Body) -> Result<bytes::Bytes, Response> {
    axum::body::to_bytes(body, BODY_LIMIT).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "BadParameter",
            format!("the request body exceeds {BODY_LIMIT} bytes"),
        )
        .into_response()
    })
}

/// A change is recorded before it is carried out: if that record cannot be written, nothing
/// is done (fail closed).
fn record_intent(
    app: &App,
    facts: &RequestFacts,
    seen: &mut Seen,
    route: &Route,
) -> Result<(), ApiError> {
    if !route.audited_first() {
        return Ok(());
    }
    let what = AuditInfo {
        operation: route.operation(),
        ..Default::default()
    };
    let mut r = facts.record(app, &seen.caller, what, 0);
    r.intent = true;
    match app.audit.try_record(r) {
        Ok(_) => Ok(()),
        Err(_) => {
            seen.info.operation = route.operation();
            Err(audit_unavailable(app))
        }
    }
}

/// Wait until this partition has applied every change committed before the request.
/// Status and the member list answer even without a majority (they say so).
async fn read_barrier(app: &App, route: &Route) -> Result<(), ApiError> {
    if matches!(route, Route::AdminStatus | Route::ListMembers) {
        return Ok(());
    }
    Ok(app.store.read_barrier().await?)
}

/// Reads and cryptographic operations are answered even when this record is lost (it is
/// counted and logged); a change was refused above unless its intent was recorded.
fn record_outcome(
    app: &App,
    facts: &RequestFacts,
    seen: Seen,
    response: &Response,
    started: Instant,
) {
    let status = response.status().as_u16();
    let error_code = if status >= 400 {
        response
            .extensions()
            .get::<ErrorCodeTag>()
            .map(|t| t.0.clone())
    } else {
        None
    };
    let mut outcome = facts.record(app, &seen.caller, seen.info, status);
    outcome.error_code = error_code;
    outcome.latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    app.audit.record(outcome);
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
