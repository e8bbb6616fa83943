//! The primary's region API (`/internal/region/...`, docs/regions.md), server side: join
//! (the domain sealed to the joiner's transfer key), the ordered feed of committed changes,
//! snapshot pages, the position, and writes forwarded by a replica region.
//!
//! The caller is a partition of an accepted region: its client certificate chains to the
//! CA the primary's administrator named for that region (`PUT /admin/regions/{name}`),
//! checked after the TLS handshake (`region_trust`). Joins, forwarded writes and every
//! refusal of a presented certificate are audited.

use super::json;
use crate::audit::AuditRecord;
use crate::region_trust::ClientChain;
use crate::service::app::App;
use crate::state::{Activation, Command};
use crate::tls::ClientAddr;
use axum::extract::Request;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use keystead_core::region::{
    Feed, FeedEntry, FenceRequest, ForwardReply, JoinReply, JoinRequest, NOT_ACCEPTED, REMOVED,
    RemovedAnswer, ReplicatedSettings,
};
use keystead_core::region_token::RemovalNotice;
use keystead_core::sd::{ExchangeCertificate, seal_to_exchange_key};
use openraft::EntryPayload;
use std::sync::Arc;
use std::time::Duration;

/// Largest region request (a forwarded command).
const BODY_LIMIT: usize = 32 * 1024 * 1024;
/// Longest long poll of the feed.
const MAX_WAIT: Duration = Duration::from_secs(5);
const MAX_ENTRIES: usize = 1024;

fn refuse(status: StatusCode, code: &str, msg: &str) -> Response {
    let body = keystead_core::error::ErrorBody::new(code, msg);
    (status, axum::Json(body)).into_response()
}

/// A refused request (small, unlike a `Response`, for `Result`s).
struct Refusal(StatusCode, &'static str, String);

impl Refusal {
    fn bad(msg: String) -> Refusal {
        Refusal(StatusCode::BAD_REQUEST, "BadParameter", msg)
    }

    fn into_response(self) -> Response {
        refuse(self.0, self.1, &self.2)
    }
}

fn audited(path: &str) -> bool {
    matches!(
        path,
        "/internal/region/join" | "/internal/region/forward" | "/internal/region/fence"
    )
}

/// Entry point of `/internal/region/...`.
pub async fn handle(app: Arc<App>, req: Request) -> Response {
    let started = std::time::Instant::now();
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let client = req
        .extensions()
        .get::<ClientAddr>()
        .map(|c| c.0.to_string())
        .unwrap_or_else(|| "unknown".into());
    let chain = req
        .extensions()
        .get::<ClientChain>()
        .cloned()
        .unwrap_or_default();
    // The accepted regions as the state has them now (rebuilt only on a change).
    app.regions
        .trust
        .sync(&app.store.read().region.known_regions());
    let region = app.regions.trust.region_of(&chain.0);
    let (response, operation, key) = match &region {
        Some(region) => serve(&app, region, req).await,
        None if chain.presented() => (
            refuse(
                StatusCode::FORBIDDEN,
                NOT_ACCEPTED,
                "the client certificate was not issued by the CA of a region this pool accepts; its administrator names regions with PUT /admin/regions/{name}",
            ),
            "RegionRefused",
            None,
        ),
        None => (
            refuse(
                StatusCode::UNAUTHORIZED,
                "Unauthorized",
                "the region API requires a client certificate of an accepted region",
            ),
            "RegionRefused",
            None,
        ),
    };
    let status = response.status();
    if audited(&path) || (chain.presented() && region.is_none()) || status == StatusCode::GONE {
        app.audit.record(AuditRecord {
            request_id: uuid::Uuid::new_v4().to_string(),
            partition: app.cfg.partition_id.clone(),
            caller: region
                .as_ref()
                .map(|r| format!("region:{r}"))
                .unwrap_or_else(|| "anonymous".into()),
            client_address: client,
            method: method.to_string(),
            path,
            operation: operation.into(),
            member: region.clone(),
            key_name: key,
            status: status.as_u16(),
            latency_ms: started.elapsed().as_secs_f64() * 1000.0,
            ..AuditRecord::default()
        });
    }
    response
}

/// Serve an authenticated region's request: (response, audit operation, key name).
async fn serve(
    app: &Arc<App>,
    region: &str,
    req: Request,
) -> (Response, &'static str, Option<String>) {
    let Some(replica) = app.store.replica().cloned() else {
        return (
            refuse(StatusCode::NOT_FOUND, "NotFound", "not a replicated pool"),
            "Region",
            None,
        );
    };
    if let Some(r) = removed_answer(app, region) {
        return (r, "RegionRemovedNotice", None);
    }
    let handed_over = {
        let st = app.store.read();
        (!app.regions.serves_regions(&st))
            .then(|| crate::service::regions::switchover::handover(&st))
            .flatten()
    };
    if let Some(h) = handed_over {
        // A demoted primary that follows its successor now: it tells the regions it fed
        // where to go (at its old epoch, which they follow), and nothing else.
        let path = req.uri().path();
        if path == "/internal/region/feed" || path == "/internal/region/position" {
            let f: Feed<Command> = Feed {
                epoch: h.epoch.saturating_sub(1),
                primary_index: h.last_index,
                entries: Vec::new(),
                through: 0,
                snapshot_required: false,
                pool_id: app.store.read().settings.pool_id.clone(),
                promoted_at: None,
                promotion: None,
                handover: Some(h),
                write_lease_ms: None,
            };
            return (json(&f), "RegionFeed", None);
        }
    }
    if !app.regions.serves_regions(&app.store.read()) {
        return (
            refuse(
                StatusCode::CONFLICT,
                "RegionNotPrimary",
                "this pool is a replica region, not a primary: join its primary instead",
            ),
            "Region",
            None,
        );
    }
    let path = req.uri().path().to_string();
    let query: Vec<(String, String)> = req
        .uri()
        .query()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default();
    let q = |n: &str| query.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
    let method = req.method().clone();
    let write_lease_ms = app
        .regions
        .lease
        .as_ref()
        .map(|l| u64::try_from(l.ttl.as_millis()).unwrap_or(u64::MAX));
    let (epoch, pool_id, promoted_at, promotion, handover) = {
        let st = app.store.read();
        (
            st.region.epoch(),
            st.settings.pool_id.clone(),
            st.region.promoted_at,
            st.region.promotion,
            crate::service::regions::switchover::handover(&st),
        )
    };
    let body = match axum::body::to_bytes(req.into_body(), BODY_LIMIT).await {
        Ok(b) => b,
        Err(_) => {
            return (
                refuse(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "BadParameter",
                    "request too large",
                ),
                "Region",
                None,
            );
        }
    };
    let num = |n: &str, default: u64| -> Result<u64, Refusal> {
        match q(n) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| {
                Refusal::bad(format!("{n} must be a non-negative integer, got '{v}'"))
            }),
        }
    };
    macro_rules! tri {
        ($e:expr, $op:expr) => {
            match $e {
                Ok(v) => v,
                Err(r) => return (r.into_response(), $op, None),
            }
        };
    }
    match (method, path.as_str()) {
        (Method::POST, "/internal/region/join") => {
            let r: JoinRequest = tri!(parse(&body), "RegionJoin");
            (join(app, region, &r), "RegionJoin", None)
        }
        (Method::GET, "/internal/region/feed") => {
            let after = tri!(num("after", 0), "RegionFeed");
            let max = tri!(num("max", 256), "RegionFeed").min(MAX_ENTRIES as u64) as usize;
            let wait = Duration::from_millis(tri!(num("waitMs", 0), "RegionFeed")).min(MAX_WAIT);
            app.regions.acknowledged(region, after);
            arm_lease(app);
            let mut f = feed(&replica, after, max, wait).await;
            (f.epoch, f.pool_id, f.promoted_at, f.promotion) =
                (epoch, pool_id, promoted_at, promotion);
            // Read after the long poll: a demotion committed meanwhile is announced.
            f.handover = crate::service::regions::switchover::handover(&app.store.read());
            f.write_lease_ms = write_lease_ms;
            (json(&f), "RegionFeed", None)
        }
        (Method::GET, "/internal/region/position") => {
            let primary_index = replica.sm.applied().map(|l| l.index).unwrap_or(0);
            let f: Feed<Command> = Feed {
                epoch,
                primary_index,
                entries: Vec::new(),
                through: 0,
                snapshot_required: false,
                pool_id,
                promoted_at,
                promotion,
                handover,
                write_lease_ms,
            };
            (json(&f), "RegionPosition", None)
        }
        (Method::GET, "/internal/region/snapshot") => {
            let r = match q("session") {
                None => {
                    // One consistent copy: the state and its applied index under one lock.
                    let (state, through) = {
                        let st = replica.sm.state.read().unwrap_or_else(|p| p.into_inner());
                        (
                            st.clone(),
                            replica.sm.applied().map(|l| l.index).unwrap_or(0),
                        )
                    };
                    json(&app.regions.sessions.start(state, through, epoch))
                }
                Some(s) => {
                    let page = tri!(num("page", 0), "RegionSnapshot");
                    match app.regions.sessions.page(s, page, epoch) {
                        Some(p) => json(&p),
                        None => refuse(
                            StatusCode::NOT_FOUND,
                            "NotFound",
                            "no such snapshot session or page (sessions end after 5 minutes or at their last page): start again",
                        ),
                    }
                }
            };
            (r, "RegionSnapshot", None)
        }
        (Method::POST, "/internal/region/fence") => {
            let r: FenceRequest = tri!(parse(&body), "RegionFenced");
            let (response, discarded) = fence(app, &replica, region, &r).await;
            (response, "RegionFenced", discarded)
        }
        (Method::POST, "/internal/region/forward") => {
            let cmd: Command = tri!(parse(&body), "RegionWriteForwarded");
            let key = command_key(&cmd);
            (
                forward(app, &replica, cmd).await,
                "RegionWriteForwarded",
                key,
            )
        }
        _ => (
            refuse(
                StatusCode::NOT_FOUND,
                "NotFound",
                "no such region operation",
            ),
            "Region",
            None,
        ),
    }
}

/// A primary with a write lease: the first poll of a region at this epoch arms it
/// (committed in the background; a duplicate changes nothing).
fn arm_lease(app: &Arc<App>) {
    let epoch = {
        let st = app.store.read();
        if app.regions.lease.is_none()
            || st.region.replica.is_some()
            || crate::region::lease::armed(&st)
        {
            return;
        }
        st.region.epoch()
    };
    let app = app.clone();
    tokio::spawn(async move {
        if let Err(e) = app
            .store
            .propose_local(Command::RegionLeaseArmed { epoch })
            .await
        {
            tracing::debug!(error = %e, "the write lease is not armed yet");
        }
    });
}

/// A region this pool removed (and has not named again): 410 with the removal notice,
/// sealed under the domain, on which the region purges its pool.
fn removed_answer(app: &App, region: &str) -> Option<Response> {
    let notice = {
        let st = app.store.read();
        if st.region.accepted.contains_key(region) {
            return None;
        }
        let r = st.region.removed.get(region)?;
        RemovalNotice {
            primary: app.regions.name(&st),
            pool_id: st.settings.pool_id.clone(),
            fingerprint: st.fingerprint().unwrap_or_default().to_string(),
            region: region.to_string(),
            removed_at: r.removed_at,
        }
    };
    let Some(unsealed) = app.keyring.unsealed() else {
        return Some(refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "PartitionSealed",
            "this partition does not hold the security domain; retry on another partition",
        ));
    };
    let body = RemovedAnswer {
        error: keystead_core::error::ErrorBody::new(
            REMOVED,
            format!(
                "region '{region}' was removed by this primary: it purges its pool (keys and security domain) on this notice; name it again (PUT /admin/regions/{region}) to have it join anew"
            ),
        )
        .error,
        removal_notice: notice.seal(unsealed.secret.master_key()),
    };
    Some((StatusCode::GONE, axum::Json(body)).into_response())
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Refusal> {
    serde_json::from_slice(body)
        .map_err(|e| Refusal::bad(format!("the region request does not parse: {e}")))
}

/// The key a forwarded command names (for the audit record).
fn command_key(cmd: &Command) -> Option<String> {
    match cmd {
        Command::AddKeyVersion { name, .. }
        | Command::UpdateKeyVersion { name, .. }
        | Command::DeleteKey { name, .. }
        | Command::RecoverKey { name }
        | Command::PurgeKey { name, .. }
        | Command::SetRotationPolicy { name, .. } => Some(name.clone()),
        Command::RestoreKey { key } => Some(key.name.clone()),
        _ => None,
    }
}

/// This primary's demotion, if it was demoted.
fn demotion(replica: &crate::consensus::raft::Replica) -> Option<crate::state::Demotion> {
    replica
        .sm
        .state
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .region
        .demoted
        .clone()
}

/// A failover replaced this primary: stop taking changes, list the ones the new primary
/// never had (the audit record names them), re-seed from it and follow it.
async fn fence(
    app: &App,
    replica: &crate::consensus::raft::Replica,
    region: &str,
    r: &FenceRequest,
) -> (Response, Option<String>) {
    let (ca_pem, already) = {
        let st = app.store.read();
        let already = st
            .region
            .demoted
            .as_ref()
            .is_some_and(|d| d.to == r.primary && d.epoch == r.epoch);
        (
            st.region.accepted.get(region).map(|a| a.ca_pem.clone()),
            already,
        )
    };
    if already {
        return (json(&serde_json::json!({"fenced": true})), None);
    }
    let Some(ca_pem) = ca_pem.filter(|_| r.primary == region) else {
        return (
            refuse(
                StatusCode::FORBIDDEN,
                NOT_ACCEPTED,
                "a fence names the region whose certificate sends it",
            ),
            None,
        );
    };
    let applied = replica.sm.applied().map(|l| l.index).unwrap_or(0);
    let mut discarded: Vec<String> = match replica.log.entries_after(
        r.common_index,
        applied,
        usize::MAX,
    ) {
        Some(entries) => entries
            .iter()
            .filter_map(|e| match &e.payload {
                EntryPayload::Normal(c) => c.describe_change(),
                _ => None,
            })
            .collect(),
        None => vec![format!(
            "changes after index {} (this partition's log was compacted past it; see the audit log of that period)",
            r.common_index
        )],
    };
    discarded.dedup();
    // The new primary sends its members' URLs, which may be internal to its cluster; when
    // this pool's region configuration names that region (as the primary it was created to
    // follow), its endpoints there come first.
    let mut endpoints: Vec<String> = app
        .regions
        .config
        .as_ref()
        .and_then(|c| c.primary.as_ref())
        .filter(|p| p.name == r.primary)
        .map(|p| p.endpoints.clone())
        .unwrap_or_default();
    for e in &r.endpoints {
        if !endpoints.contains(e) {
            endpoints.push(e.clone());
        }
    }
    match app
        .store
        .propose_local(Command::RegionFenced {
            to: r.primary.clone(),
            endpoints,
            ca_pem,
            epoch: r.epoch,
            discarded: discarded.clone(),
        })
        .await
    {
        Ok(_) => {
            app.regions.reconcile(&app.store);
            tracing::warn!(new_primary = %r.primary, epoch = r.epoch, discarded = ?discarded, "fenced by a failover: this pool takes no more changes, drops the listed ones and follows the new primary");
            (
                json(&serde_json::json!({"fenced": true, "discarded": discarded})),
                Some(discarded.join(", ")),
            )
        }
        Err(e) => (
            refuse(
                StatusCode::CONFLICT,
                "Conflict",
                &format!("the fence was not committed: {e}"),
            ),
            None,
        ),
    }
}

/// Seal the domain to the joining region's transfer key.
fn join(app: &App, region: &str, r: &JoinRequest) -> Response {
    if r.region != region {
        return refuse(
            StatusCode::FORBIDDEN,
            NOT_ACCEPTED,
            &format!(
                "the join names region '{}' but the client certificate belongs to region '{region}'",
                r.region
            ),
        );
    }
    let (domain_id, fingerprint, pool, settings) = {
        let st = app.store.read();
        let Activation::Activated {
            domain_id,
            fingerprint,
            ..
        } = &st.activation
        else {
            return refuse(
                StatusCode::CONFLICT,
                "PoolNotActivated",
                "the primary is not activated yet: download its security domain first",
            );
        };
        (
            domain_id.clone(),
            fingerprint.clone(),
            (
                app.regions.name(&st),
                st.settings.pool_id.clone(),
                st.region.epoch(),
            ),
            ReplicatedSettings {
                soft_delete_retention_days: st.settings.soft_delete_retention_days,
                purge_protection: st.settings.purge_protection,
            },
        )
    };
    let Some(unsealed) = app.keyring.unsealed() else {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "PartitionSealed",
            "this partition does not hold the security domain; retry on another partition",
        );
    };
    let cert = match ExchangeCertificate::from_pem(&r.exchange_certificate) {
        Ok(c) => c,
        Err(e) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "BadParameter",
                &format!("the transfer certificate does not parse: {e}"),
            );
        }
    };
    match seal_to_exchange_key(&unsealed.secret, &cert) {
        Ok(blob) => {
            tracing::info!(region = %region, thumbprint = %cert.thumbprint(), "security domain sealed to a joining region's transfer key");
            json(&JoinReply {
                blob,
                fingerprint,
                domain_id,
                primary: pool.0,
                primary_pool_id: pool.1,
                epoch: pool.2,
                settings,
            })
        }
        Err(e) => refuse(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            &format!("cannot seal the domain to the transfer key: {e}"),
        ),
    }
}

/// The committed, region-replicated entries after `after` this partition has applied (the
/// caller fills in the epoch, pool id and promotion index).
async fn feed(
    replica: &crate::consensus::raft::Replica,
    after: u64,
    max: usize,
    wait: Duration,
) -> Feed<Command> {
    let applied = || replica.sm.applied().map(|l| l.index).unwrap_or(0);
    if applied() <= after && !wait.is_zero() {
        let _ = replica
            .raft
            .wait(Some(wait))
            .applied_index_at_least(Some(after + 1), "region feed")
            .await;
    }
    // A demoted primary took no change after its demotion index (every later one was refused
    // by its fence): its regions get nothing beyond it, so none of them applies one.
    let demoted_at = demotion(replica).map(|d| d.last_index);
    let upto = demoted_at.map_or(applied(), |l| applied().min(l));
    if demoted_at.is_some_and(|l| after >= l) {
        // Nothing will come: answer after the long poll, not at once (no busy loop).
        tokio::time::sleep(wait).await;
    }
    let Some(entries) = replica.log.entries_after(after, upto, max) else {
        return Feed {
            epoch: 0,
            primary_index: upto,
            entries: Vec::new(),
            through: after,
            snapshot_required: true,
            pool_id: String::new(),
            promoted_at: None,
            promotion: None,
            handover: None,
            write_lease_ms: None,
        };
    };
    let through = entries.last().map(|e| e.log_id.index).unwrap_or(after);
    let entries = entries
        .into_iter()
        .filter_map(|e| match e.payload {
            EntryPayload::Normal(cmd) if cmd.is_region_replicated() => Some(FeedEntry {
                index: e.log_id.index,
                command: cmd,
            }),
            _ => None,
        })
        .collect();
    Feed {
        epoch: 0,
        primary_index: upto,
        entries,
        through,
        snapshot_required: false,
        pool_id: String::new(),
        promoted_at: None,
        promotion: None,
        handover: None,
        write_lease_ms: None,
    }
}

/// Commit a replica region's write here and answer its primary index.
async fn forward(app: &App, replica: &crate::consensus::raft::Replica, cmd: Command) -> Response {
    if !cmd.is_region_replicated() {
        return refuse(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "only changes of keys and RBAC are forwarded by a region",
        );
    }
    if let Some(d) = demotion(replica) {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "RegionDemoted",
            &format!(
                "this primary was demoted and hands over to region '{}': retry once it is promoted",
                d.to
            ),
        );
    }
    if let Some(why) = app.store.lease_refusal(&cmd) {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            keystead_core::region::WRITE_LEASE_EXPIRED,
            &why,
        );
    }
    match replica.propose_indexed(cmd).await {
        // A refusal is committed too: the region applies the same refusal at that index.
        Ok((index, _)) => json(&ForwardReply { index }),
        Err(e) => refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            &format!("the primary could not commit the change: {e}"),
        ),
    }
}
