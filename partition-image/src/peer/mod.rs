//! The peer API (`/internal/...`), server side: Raft RPCs, forwarded writes, read-index,
//! group state, the domain handover; it calls services and consensus only (the client is
//! `consensus::raft::client`). `/internal/region/...` is the primary's region API
//! ([`region`]), for partitions of other regions.
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

mod region;

use crate::audit::AuditRecord;
use crate::consensus::raft::{ForwardReply, ReadIndexReply, Standing};
use crate::service::app::App;
use crate::service::members::{MembershipRequest, execute, local_state};
use crate::service::sd::{DomainReply, DomainRequest, UploadError, UploadReply, UploadRequest};
use crate::tls::{ClientAddr, PeerCertName};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use keystead_core::sd::{ExchangeCertificate, seal_to_exchange_key};
use openraft::error::{ClientWriteError, RaftError};
use serde::Serialize;
use std::sync::Arc;
use tracing::Instrument;

/// Largest peer request (snapshot chunks are 3 MiB by default).
const PEER_BODY_LIMIT: usize = 32 * 1024 * 1024;

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
/// Audited requests (the domain handover, membership, forwarded uploads) are served inside a
/// `peer_request` span carrying the request id of their audit record; Raft traffic is not.
pub async fn handle(State(app): State<Arc<App>>, req: Request) -> Response {
    let path = req.uri().path().to_string();
    if path.starts_with("/internal/region/") {
        // Partitions of other regions, authenticated by their region's CA (docs/regions.md).
        return region::handle(app, req).await;
    }
    if !audited(&path) {
        return serve(&app, req).await.0;
    }
    let request_id = uuid::Uuid::new_v4().to_string();
    let span = tracing::info_span!("peer_request", request_id = %request_id, path = %path);
    audited_request(app, req, path, request_id)
        .instrument(span)
        .await
}

async fn audited_request(
    app: Arc<App>,
    req: Request,
    path: String,
    request_id: String,
) -> Response {
    let started = std::time::Instant::now();
    let method = req.method().to_string();
    let client = req
        .extensions()
        .get::<ClientAddr>()
        .map(|c| c.0.to_string())
        .unwrap_or_else(|| "unknown".into());
    let (response, peer, what) = serve(&app, req).await;
    let status = response.status().as_u16();
    app.audit.record(AuditRecord {
        request_id,
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
            let req: openraft::raft::AppendEntriesRequest<crate::consensus::raft::TypeConfig> =
                parse!(_);
            match replica.accepts_leader_term(req.vote.leader_id().term) {
                Ok(()) => json(&replica.raft.append_entries(req).await),
                Err(why) => refuse(StatusCode::SERVICE_UNAVAILABLE, &why),
            }
        }
        (Method::POST, "/internal/raft/vote") => {
            if replica.is_recovering() {
                // An empty (new or wiped) disk may lack committed entries: no vote until
                // caught up (see docs/replication.md).
                refuse(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "catching up after an empty start; not voting yet",
                )
            } else if replica.leases.holds_back_votes() {
                // Lease reads: a leader may still read under a heartbeat this partition
                // accepted before it restarted (openraft forgets it): no vote until that
                // lease would have run out.
                refuse(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "restarted less than a follower lease ago (lease reads); not voting yet",
                )
            } else {
                json(&replica.raft.vote(parse!(_)).await)
            }
        }
        (Method::POST, "/internal/raft/snapshot") => {
            let req: openraft::raft::InstallSnapshotRequest<crate::consensus::raft::TypeConfig> =
                parse!(_);
            match replica.accepts_leader_term(req.vote.leader_id().term) {
                Ok(()) => json(&replica.raft.install_snapshot(req).await),
                Err(why) => refuse(StatusCode::SERVICE_UNAVAILABLE, &why),
            }
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
        (Method::POST, "/internal/forward-batch") => {
            let commands: Vec<crate::state::Command> = parse!(_);
            json(&crate::consensus::raft::forward::serve_batch(&replica.raft, commands).await)
        }
        (Method::GET, "/internal/read-index") => match replica.leader_read_index().await {
            Ok(index) => json(&ReadIndexReply { index }),
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
            match crate::service::sd::local_transfer_key(app).await {
                Some(k) => json(&k),
                None => refuse(StatusCode::NOT_FOUND, "no pending exchange key here"),
            }
        }
        (Method::POST, "/internal/sd/upload") => {
            let r: UploadRequest = parse!(_);
            match crate::service::sd::upload_here(app, &r.value).await {
                Ok(Some(fingerprint)) => {
                    tracing::info!(peer = %peer, fingerprint = %fingerprint, "pool activated by a security-domain upload forwarded by a peer");
                    json(&UploadReply { error: None })
                }
                Ok(None) => refuse(StatusCode::NOT_FOUND, "no pending exchange key here"),
                Err(e) => json(&UploadReply {
                    error: Some(UploadError {
                        status: e.kind.status(),
                        code: e.code,
                        message: e.message,
                    }),
                }),
            }
        }
        (Method::GET, p) if p.starts_with(crate::service::backup::job::JOBS_PATH) => {
            let id = &p[crate::service::backup::job::JOBS_PATH.len()..];
            let pool_id = app.store.read().settings.pool_id.clone();
            match app.jobs.get_for_peer(&pool_id, id) {
                Some(j) => json(&j),
                None => refuse(StatusCode::NOT_FOUND, "no such job on this partition"),
            }
        }
        _ => refuse(StatusCode::NOT_FOUND, "no such peer operation"),
    };
    (response, Some(peer), what)
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
