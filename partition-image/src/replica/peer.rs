//! The peer API (`/internal/...`): Raft RPCs, forwarded writes, read-index, group state and
//! the domain handover — and the client that calls it.
//!
//! Every `/internal` request must present BOTH a client certificate issued by the pool CA,
//! AND a bearer token of a configured issuer whose subject is `partition:<the certificate's
//! common name>` (the local issuer's workload identity) — or, with `peerServiceAccount` set
//! (Kubernetes), a projected service-account token of the pool's ServiceAccount bound to the
//! pod of that name. Then the partition's [`Standing`] decides: a partition removed
//! from the pool is refused everything; forwarded writes, the domain handover and
//! membership requests need a current member (voter or learner); Raft traffic and the group
//! state are open to any other pool partition (a configured peer at bootstrap, a member
//! this partition has not learned of yet). Refusals happen before the body is read. The
//! domain handover and membership requests are audited.

use super::membership::{MembershipRequest, execute, local_state};
use super::{ForwardReply, Standing};
use crate::app::App;
use crate::audit::AuditRecord;
use crate::config::PartitionConfig;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use keystead_core::sd::{ExchangeCertificate, seal_to_exchange_key};
use openraft::error::{ClientWriteError, RaftError};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Largest peer request (snapshot chunks are 3 MiB by default).
const PEER_BODY_LIMIT: usize = 32 * 1024 * 1024;

/// The pool-CA client certificate's common name, set by the TLS acceptor (None: no
/// certificate was presented).
#[derive(Clone, Debug)]
pub struct PeerCertName(pub Option<String>);

/// Common name of a DER certificate (already verified against the pool CA by rustls).
pub fn cert_common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_string)
}

/// `GET /internal/state`: whether this partition is part of a group.
#[derive(Serialize, Deserialize, Debug)]
pub struct PeerState {
    pub initialized: bool,
    /// Last log index (0: at most the initial membership entry).
    #[serde(default)]
    pub last_log_index: u64,
    #[serde(default)]
    pub applied_index: u64,
    /// Started with an empty disk and not caught up yet.
    #[serde(default)]
    pub recovering: bool,
    /// Holds the security domain.
    #[serde(default)]
    pub domain_loaded: bool,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DomainRequest {
    /// PEM of the requester's one-time exchange certificate.
    pub exchange_certificate: String,
}

#[derive(Serialize, Deserialize)]
pub struct DomainReply {
    /// The domain sealed to that exchange key (a transfer blob).
    pub blob: String,
}

/// Errors calling a peer.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("cannot connect to {0}")]
    Connect(String),
    #[error("{0} is not the leader")]
    NotLeader(String),
    #[error("{0} answered {1}: {2}")]
    Status(String, u16, String),
    #[error("request to {0} failed: {1}")]
    Transport(String, String),
    #[error("the answer of {0} does not parse: {1}")]
    Decode(String, String),
    #[error("cannot read this partition's peer token: {0}")]
    Token(String),
}

impl PeerError {
    /// True when the request certainly had no effect (safe to retry elsewhere).
    pub fn not_sent(&self) -> bool {
        matches!(
            self,
            PeerError::Connect(_) | PeerError::NotLeader(_) | PeerError::Token(_)
        )
    }
}

/// HTTPS client for the peer API: presents this partition's certificate and token.
pub struct PeerClient {
    tls: crate::config::TlsFiles,
    host_addresses: Vec<(String, std::net::IpAddr)>,
    /// The client, the digest of the TLS files it was built from, and when they were last
    /// checked: a rotated certificate is used for new peer connections within 30 s.
    http: std::sync::RwLock<(reqwest::Client, [u8; 32], std::time::Instant)>,
    token_file: Option<PathBuf>,
}

impl std::fmt::Debug for PeerClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PeerClient")
    }
}

/// How often the TLS files behind the peer client are checked for a rotation.
const PEER_TLS_RECHECK: Duration = Duration::from_secs(30);

impl PeerClient {
    pub fn new(cfg: &PartitionConfig) -> anyhow::Result<PeerClient> {
        let host_addresses: Vec<(String, std::net::IpAddr)> = cfg
            .host_addresses
            .iter()
            .map(|(h, ip)| (h.clone(), *ip))
            .collect();
        let (cert, key, ca) = crate::tls::read_files(&cfg.tls)?;
        let http = Self::build(&cert, &key, &ca, &host_addresses)?;
        Ok(PeerClient {
            tls: cfg.tls.clone(),
            host_addresses,
            http: std::sync::RwLock::new((
                http,
                crate::tls::files_digest(&cert, &key, &ca),
                std::time::Instant::now(),
            )),
            token_file: cfg.peer_token_file.clone(),
        })
    }

    fn build(
        cert: &str,
        key: &str,
        ca: &str,
        host_addresses: &[(String, std::net::IpAddr)],
    ) -> anyhow::Result<reqwest::Client> {
        let tls = crate::tls::client_config(ca, Some((cert, key)))?;
        let mut builder = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .connect_timeout(Duration::from_secs(2))
            .pool_idle_timeout(Duration::from_secs(30));
        for (host, ip) in host_addresses {
            // Port 0: the peer URL's own port is used.
            builder = builder.resolve(host, std::net::SocketAddr::new(*ip, 0));
        }
        Ok(builder.build()?)
    }

    /// The HTTP client, rebuilt when the TLS files changed (checked every 30 s; a broken
    /// rotation keeps the previous client).
    fn http(&self) -> reqwest::Client {
        {
            let g = self.http.read().unwrap_or_else(|p| p.into_inner());
            if g.2.elapsed() < PEER_TLS_RECHECK {
                return g.0.clone();
            }
        }
        let mut g = self.http.write().unwrap_or_else(|p| p.into_inner());
        if g.2.elapsed() >= PEER_TLS_RECHECK {
            g.2 = std::time::Instant::now();
            let current = g.1;
            let rebuilt = crate::tls::read_files(&self.tls).and_then(|(cert, key, ca)| {
                let digest = crate::tls::files_digest(&cert, &key, &ca);
                if digest == current {
                    return Ok(None);
                }
                Ok(Some((
                    Self::build(&cert, &key, &ca, &self.host_addresses)?,
                    digest,
                )))
            });
            match rebuilt {
                Ok(Some((client, digest))) => {
                    tracing::info!("TLS files changed; peer connections use them from now on");
                    g.0 = client;
                    g.1 = digest;
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "TLS files not reloaded for peer connections")
                }
            }
        }
        g.0.clone()
    }

    fn token(&self) -> Result<String, PeerError> {
        let Some(f) = &self.token_file else {
            return Err(PeerError::Token(
                "peerTokenFile is not configured".to_string(),
            ));
        };
        std::fs::read_to_string(f)
            .map(|t| t.trim().to_string())
            .map_err(|e| PeerError::Token(format!("{}: {e}", f.display())))
    }

    async fn send<Resp: DeserializeOwned>(
        &self,
        url: String,
        req: reqwest::RequestBuilder,
        timeout: Duration,
    ) -> Result<Resp, PeerError> {
        let token = self.token()?;
        let resp = req
            .bearer_auth(token)
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| {
                if e.is_connect() {
                    PeerError::Connect(url.clone())
                } else {
                    PeerError::Transport(url.clone(), e.to_string())
                }
            })?;
        let status = resp.status();
        if status == StatusCode::CONFLICT {
            return Err(PeerError::NotLeader(url));
        }
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| PeerError::Transport(url.clone(), e.to_string()))?;
        if !status.is_success() {
            let text = String::from_utf8_lossy(&bytes[..bytes.len().min(512)]).to_string();
            return Err(PeerError::Status(url, status.as_u16(), text));
        }
        serde_json::from_slice(&bytes).map_err(|e| PeerError::Decode(url, e.to_string()))
    }

    pub async fn post<Req: Serialize + ?Sized, Resp: DeserializeOwned>(
        &self,
        base: &str,
        path: &str,
        body: &Req,
        timeout: Duration,
    ) -> Result<Resp, PeerError> {
        let url = format!("{}{path}", base.trim_end_matches('/'));
        let bytes = serde_json::to_vec(body)
            .map_err(|e| PeerError::Transport(url.clone(), e.to_string()))?;
        let req = self
            .http()
            .post(&url)
            .header("content-type", "application/json")
            .body(bytes);
        self.send(url, req, timeout).await
    }

    pub async fn get<Resp: DeserializeOwned>(
        &self,
        base: &str,
        path: &str,
        timeout: Duration,
    ) -> Result<Resp, PeerError> {
        let url = format!("{}{path}", base.trim_end_matches('/'));
        let req = self.http().get(&url);
        self.send(url, req, timeout).await
    }
}

fn refuse(status: StatusCode, msg: &str) -> Response {
    (status, msg.to_string()).into_response()
}

fn json<T: Serialize>(v: &T) -> Response {
    match serde_json::to_vec(v) {
        Ok(b) => (
            StatusCode::OK,
            [("content-type", "application/json")],
            Body::from(b),
        )
            .into_response(),
        Err(_) => refuse(
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot encode the answer",
        ),
    }
}

/// Authenticate a peer: a pool-CA client certificate AND the workload token of the same
/// partition. Returns its name.
async fn authenticate(
    app: &App,
    cert_name: Option<String>,
    token: Option<String>,
) -> Result<String, Response> {
    if app.store.replica().is_none() {
        return Err(refuse(
            StatusCode::NOT_FOUND,
            "this partition is not replicated (no peers configured)",
        ));
    }
    let Some(name) = cert_name else {
        return Err(refuse(
            StatusCode::UNAUTHORIZED,
            "the peer API requires a client certificate issued by the pool CA",
        ));
    };
    let Some(token) = token else {
        return Err(refuse(
            StatusCode::UNAUTHORIZED,
            "the peer API requires the partition's workload-identity bearer token",
        ));
    };
    let principal = app.validator.validate(&token).await.map_err(|e| {
        refuse(
            StatusCode::UNAUTHORIZED,
            &format!("the peer's bearer token was rejected: {e}"),
        )
    })?;
    // Both identities lie in the reserved namespaces (`partition:`, `system:`) that only the
    // issuer without a principal prefix can produce: another trusted issuer minting the same
    // subject gets a prefixed principal, which matches neither (keystead_core::principal).
    let is_that_partition = match &app.cfg.peer_service_account {
        // Kubernetes: a pod-bound token of the pool's ServiceAccount, for that pod.
        Some(sa) => {
            principal.subject == *sa && principal.kubernetes_pod.as_deref() == Some(name.as_str())
        }
        None => principal.subject == format!("partition:{name}"),
    };
    if !is_that_partition {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            "the bearer token's subject is not the workload identity of the certificate's partition",
        ));
    }
    Ok(name)
}

/// Peer operations open to pool partitions that are not (yet) members: Raft traffic and the
/// group's state. Everything else — forwarded writes and uploads, the domain handover,
/// membership, jobs — needs a current member.
fn open_to_non_members(path: &str) -> bool {
    matches!(
        path,
        "/internal/raft/append"
            | "/internal/raft/vote"
            | "/internal/raft/snapshot"
            | "/internal/state"
            | "/internal/read-index"
    )
}

/// Peer operations with an audit record (rare and security-relevant; the Raft traffic is
/// not audited).
fn audited(path: &str) -> bool {
    matches!(
        path,
        "/internal/domain" | "/internal/members" | "/internal/sd/upload"
    )
}

/// Entry point of `/internal/...`.
pub async fn handle(State(app): State<Arc<App>>, req: Request) -> Response {
    let path = req.uri().path().to_string();
    if !audited(&path) {
        return serve(&app, req).await.0;
    }
    let started = std::time::Instant::now();
    let method = req.method().to_string();
    let client = req
        .extensions()
        .get::<crate::api::ClientAddr>()
        .map(|c| c.0.to_string())
        .unwrap_or_else(|| "unknown".into());
    let (response, peer, what) = serve(&app, req).await;
    let status = response.status().as_u16();
    app.audit.record(AuditRecord {
        request_id: uuid::Uuid::new_v4().to_string(),
        partition: app.cfg.partition_id.clone(),
        caller: peer
            .as_ref()
            .map(|p| format!("partition:{p}"))
            .unwrap_or_else(|| "anonymous".into()),
        client_address: client,
        method,
        path,
        operation: what.operation.to_string(),
        member: what.member,
        member_id: what.member_id,
        status,
        latency_ms: started.elapsed().as_secs_f64() * 1000.0,
        ..AuditRecord::default()
    });
    response
}

/// What an audited peer request was about.
#[derive(Default)]
struct PeerAudit {
    operation: &'static str,
    member: Option<String>,
    member_id: Option<u64>,
}

/// Authenticate, check the peer's standing, and serve. Returns the response, the
/// authenticated peer's name and what to audit.
async fn serve(app: &Arc<App>, req: Request) -> (Response, Option<String>, PeerAudit) {
    let path = req.uri().path().to_string();
    let mut what = PeerAudit {
        operation: match path.as_str() {
            "/internal/domain" => "SecurityDomainHandover",
            "/internal/sd/upload" => "SecurityDomainUploadForwarded",
            _ => "MembershipForwarded",
        },
        ..PeerAudit::default()
    };
    let cert_name = req
        .extensions()
        .get::<PeerCertName>()
        .and_then(|p| p.0.clone());
    let token = crate::auth::bearer_token(req.headers()).map(str::to_string);
    let peer = match authenticate(app, cert_name, token).await {
        Ok(p) => p,
        Err(r) => return (r, None, what),
    };
    let Some(replica) = app.store.replica().cloned() else {
        return (
            refuse(StatusCode::NOT_FOUND, "not replicated"),
            Some(peer),
            what,
        );
    };
    let refused = match replica.standing(&peer) {
        Standing::Retired => Some(format!(
            "partition '{peer}' was removed from the pool; its peer requests are refused (add a new partition under a new node id with POST /admin/members)"
        )),
        Standing::Other if !open_to_non_members(&path) => Some(format!(
            "partition '{peer}' is not a member of this pool's Raft group (yet): an administrator adds it with POST /admin/members before it may forward writes or receive the security domain"
        )),
        Standing::Member | Standing::Other => None,
    };
    if let Some(msg) = refused {
        return (refuse(StatusCode::FORBIDDEN, &msg), Some(peer), what);
    }
    if path == "/internal/domain" {
        what.member = Some(peer.clone());
        what.member_id = replica
            .group()
            .nodes
            .iter()
            .find(|(_, n)| n.name == peer)
            .map(|(id, _)| *id);
    }
    let method = req.method().clone();
    let body = match axum::body::to_bytes(req.into_body(), PEER_BODY_LIMIT).await {
        Ok(b) => b,
        Err(_) => {
            return (
                refuse(StatusCode::PAYLOAD_TOO_LARGE, "peer request too large"),
                Some(peer),
                what,
            );
        }
    };
    macro_rules! parse {
        ($t:ty) => {
            match serde_json::from_slice::<$t>(&body) {
                Ok(v) => v,
                Err(e) => {
                    return (
                        refuse(
                            StatusCode::BAD_REQUEST,
                            &format!("the peer request does not parse: {e}"),
                        ),
                        Some(peer),
                        what,
                    );
                }
            }
        };
    }
    let response = match (method, path.as_str()) {
        (Method::POST, "/internal/raft/append") => {
            json(&replica.raft.append_entries(parse!(_)).await)
        }
        (Method::POST, "/internal/raft/vote") => {
            if replica.is_recovering() {
                // An empty (new or wiped) disk may lack committed entries: no vote until
                // caught up (see docs/replication.md).
                refuse(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "catching up after an empty start; not voting yet",
                )
            } else {
                json(&replica.raft.vote(parse!(_)).await)
            }
        }
        (Method::POST, "/internal/raft/snapshot") => {
            json(&replica.raft.install_snapshot(parse!(_)).await)
        }
        (Method::POST, "/internal/forward") => {
            let cmd: crate::state::Command = parse!(_);
            match replica.raft.client_write(cmd).await {
                Ok(r) => json(&ForwardReply {
                    index: r.log_id.index,
                }),
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {
                    refuse(StatusCode::CONFLICT, "not the leader")
                }
                Err(e) => refuse(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
            }
        }
        (Method::GET, "/internal/read-index") => match replica.leader_read_index().await {
            Ok(index) => json(&super::ReadIndexReply { index }),
            Err(_) => refuse(StatusCode::CONFLICT, "not the leader"),
        },
        (Method::GET, "/internal/state") => json(&local_state(app, &replica).await),
        (Method::POST, "/internal/domain") => {
            let r: DomainRequest = parse!(_);
            hand_over_domain(app, &peer, &r)
        }
        (Method::POST, "/internal/members") => {
            let r: MembershipRequest = parse!(_);
            what.operation = r.audit_operation();
            (what.member, what.member_id) = r.audit_member();
            if matches!(r, MembershipRequest::List) || replica.is_leader() {
                json(&execute(app, &replica, r).await)
            } else {
                // The forwarding partition retries at the current leader.
                refuse(StatusCode::CONFLICT, "not the leader")
            }
        }
        (Method::GET, "/internal/sd/transfer-key") => {
            match crate::api::sd::local_transfer_key(app).await {
                Some(k) => json(&k),
                None => refuse(StatusCode::NOT_FOUND, "no pending exchange key here"),
            }
        }
        (Method::POST, "/internal/sd/upload") => {
            let r: UploadRequest = parse!(_);
            match crate::api::sd::upload_here(app, &r.value).await {
                Ok(Some(fingerprint)) => {
                    tracing::info!(peer = %peer, fingerprint = %fingerprint, "pool activated by a security-domain upload forwarded by a peer");
                    json(&UploadReply { error: None })
                }
                Ok(None) => refuse(StatusCode::NOT_FOUND, "no pending exchange key here"),
                Err(e) => json(&UploadReply {
                    error: Some(UploadError {
                        status: e.status.as_u16(),
                        code: e.code,
                        message: e.message,
                    }),
                }),
            }
        }
        (Method::GET, p) if p.starts_with(JOBS_PATH) => {
            let id = &p[JOBS_PATH.len()..];
            let pool_id = app.store.read().settings.pool_id.clone();
            match crate::backup::job::get_for_peer(&pool_id, id) {
                Some(j) => json(&j),
                None => refuse(StatusCode::NOT_FOUND, "no such job on this partition"),
            }
        }
        _ => refuse(StatusCode::NOT_FOUND, "no such peer operation"),
    };
    (response, Some(peer), what)
}

/// `POST /internal/sd/upload`: a transfer blob for the partition holding the exchange key.
#[derive(Serialize, Deserialize)]
struct UploadRequest {
    value: String,
}

#[derive(Serialize, Deserialize)]
struct UploadReply {
    error: Option<UploadError>,
}

#[derive(Serialize, Deserialize)]
struct UploadError {
    status: u16,
    code: String,
    message: String,
}

/// The pending exchange key (its thumbprint must be `thumbprint`) from the member that holds it.
pub async fn find_transfer_key(
    app: &Arc<App>,
    thumbprint: &str,
) -> Option<keystead_core::sd::wire::TransferKey> {
    let replica = app.store.replica()?.clone();
    for m in replica.other_members() {
        match replica
            .client
            .get::<keystead_core::sd::wire::TransferKey>(
                &m.url,
                "/internal/sd/transfer-key",
                Duration::from_secs(3),
            )
            .await
        {
            Ok(k) if transfer_key_thumbprint(&k).as_deref() == Some(thumbprint) => return Some(k),
            Ok(_) => {
                tracing::warn!(peer = %m.name, "a peer holds an exchange key the pool does not expect")
            }
            Err(e) => tracing::debug!(peer = %m.name, error = %e, "peer holds no exchange key"),
        }
    }
    None
}

fn transfer_key_thumbprint(k: &keystead_core::sd::wire::TransferKey) -> Option<String> {
    let json = serde_json::to_string(k).ok()?;
    ExchangeCertificate::from_transfer_key_json(&json)
        .ok()
        .map(|c| c.thumbprint().to_string())
}

/// Hand a transfer blob to the member holding the exchange key. `None`: no member holds one.
pub async fn forward_upload(
    app: &Arc<App>,
    blob: &str,
) -> Option<Result<(), crate::api::error::ApiError>> {
    let replica = app.store.replica()?.clone();
    let req = UploadRequest {
        value: blob.to_string(),
    };
    for m in replica.other_members() {
        match replica
            .client
            .post::<_, UploadReply>(&m.url, "/internal/sd/upload", &req, Duration::from_secs(60))
            .await
        {
            Ok(UploadReply { error: None }) => return Some(Ok(())),
            Ok(UploadReply { error: Some(e) }) => {
                let status =
                    StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                return Some(Err(crate::api::error::ApiError::new(
                    status, &e.code, e.message,
                )));
            }
            Err(e) => tracing::debug!(peer = %m.name, error = %e, "peer did not take the upload"),
        }
    }
    None
}

/// `GET /internal/jobs/{jobId}`: a backup or restore job running (or finished) on a peer.
const JOBS_PATH: &str = "/internal/jobs/";

/// Ask the other members for a job this partition does not know (jobs live in the memory
/// of the partition that runs them). `job_id` must satisfy `job::valid_id`.
pub async fn find_job(app: &Arc<App>, job_id: &str) -> Option<crate::backup::job::JobStatus> {
    let replica = app.store.replica()?.clone();
    let path = format!("{JOBS_PATH}{job_id}");
    for m in replica.other_members() {
        match replica
            .client
            .get::<crate::backup::job::PeerJob>(&m.url, &path, Duration::from_secs(3))
            .await
        {
            Ok(j) => return Some(j.into_status()),
            Err(e) => tracing::debug!(peer = %m.name, error = %e, "peer does not report the job"),
        }
    }
    None
}

/// Seal the domain to a member's one-time exchange key.
fn hand_over_domain(app: &App, peer: &str, r: &DomainRequest) -> Response {
    let Some(unsealed) = app.keyring.unsealed() else {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "this partition does not hold the security domain",
        );
    };
    let pool_id = app.store.read().settings.pool_id.clone();
    let cert = match ExchangeCertificate::from_pem(&r.exchange_certificate) {
        Ok(c) => c,
        Err(e) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                &format!("the exchange certificate does not parse: {e}"),
            );
        }
    };
    if cert.pool_id() != pool_id {
        return refuse(
            StatusCode::FORBIDDEN,
            "the exchange certificate names another pool",
        );
    }
    match seal_to_exchange_key(&unsealed.secret, &cert) {
        Ok(blob) => {
            tracing::info!(peer = %peer, thumbprint = %cert.thumbprint(), "security domain handed over to a member");
            json(&DomainReply { blob })
        }
        Err(e) => refuse(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("cannot seal the domain to the exchange key: {e}"),
        ),
    }
}

/// Ask the members for the domain, wrapped to a fresh one-time exchange key of this
/// partition; install it if it is the pool's domain. Returns true once installed.
pub async fn fetch_domain(app: &Arc<App>) -> anyhow::Result<bool> {
    let Some(replica) = app.store.replica().cloned() else {
        return Ok(false);
    };
    let (pool_id, fingerprint) = {
        let s = app.store.read();
        match s.fingerprint() {
            Some(f) => (s.settings.pool_id.clone(), f.to_string()),
            None => return Ok(false),
        }
    };
    let ek = app.keygen.exchange_key(&pool_id).await?;
    let req = DomainRequest {
        exchange_certificate: ek.certificate_pem(),
    };
    for m in replica.other_members() {
        let reply: DomainReply = match replica
            .client
            .post(&m.url, "/internal/domain", &req, Duration::from_secs(5))
            .await
        {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(peer = %m.name, error = %e, "peer could not hand over the domain");
                continue;
            }
        };
        let secret = match ek.open_transfer_blob(&reply.blob, &pool_id) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(peer = %m.name, error = %e, "the domain handed over does not open");
                continue;
            }
        };
        if secret.fingerprint() != fingerprint {
            tracing::warn!(peer = %m.name, "a peer handed over a domain that is not the pool's");
            continue;
        }
        app.install_domain(secret)?;
        tracing::info!(peer = %m.name, fingerprint = %fingerprint, "received the security domain from a peer");
        return Ok(true);
    }
    Ok(false)
}
