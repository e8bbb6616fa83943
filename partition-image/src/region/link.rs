//! A replica region's link to its primary: HTTPS with mutual TLS (this partition's own
//! certificate, which chains to this region's pool CA; the primary's CA as the only root),
//! trying the primary's endpoints in turn (the last one that answered first), and what the
//! link has learnt (primary index, reachability) for the status and metrics.

use crate::consensus::ProposeError;
use crate::consensus::region::{Forwarded, PrimaryForwarder};
use crate::state::Command;
use keystead_core::region::{
    Feed, FenceRequest, ForwardReply, Handover, JoinReply, JoinRequest, NOT_ACCEPTED,
    PRIMARY_UNREACHABLE, REMOVED, RemovedAnswer, SnapshotPage,
};
use serde::de::DeserializeOwned;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Pause after a failure of the link (the primary unreachable, no leader here).
pub const RETRY: std::time::Duration = std::time::Duration::from_millis(500);

/// A page of the primary's state as it streams (key records, deleted keys, RBAC).
pub type StatePage =
    SnapshotPage<crate::state::KeyRecord, crate::state::DeletedKey, keystead_core::rbac::RbacState>;

/// Why a call to the primary failed.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// No endpoint could be reached: nothing was sent.
    #[error("no endpoint of primary region '{primary}' answers ({detail})")]
    Unreachable { primary: String, detail: String },
    /// The primary answered with an error.
    #[error("primary region endpoint {url} answered {status}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
    },
    /// The request may have reached the primary but no answer came back.
    #[error("the request to primary region endpoint {url} failed: {detail}")]
    Transport { url: String, detail: String },
    /// The primary removed this region (410): its removal notice, sealed.
    #[error("the primary region removed this region ({REMOVED})")]
    Removed { notice: String },
}

/// What the link has learnt.
#[derive(Clone, Copy, Debug, Default)]
pub struct Progress {
    /// The primary's applied index as last reported.
    pub primary_index: u64,
    pub reachable: bool,
    /// The primary answered that it does not accept this region (`RegionNotAccepted`).
    pub refused: bool,
    pub last_contact: Option<Instant>,
    /// Since when this region has been behind the primary (None: caught up).
    pub behind_since: Option<Instant>,
}

/// The primary a link goes to: its region name, endpoints and CA (PEM).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub name: String,
    pub endpoints: Vec<String>,
    pub ca_pem: String,
}

pub struct PrimaryLink {
    pub primary: Target,
    http: reqwest::Client,
    preferred: AtomicUsize,
    progress: Mutex<Progress>,
    /// The hand-over the primary last announced (a planned switchover).
    handover: Mutex<Option<Handover>>,
}

impl PrimaryLink {
    /// A link to `primary` presenting this partition's certificate (`tls`).
    pub fn new(tls: &crate::config::TlsFiles, primary: Target) -> anyhow::Result<PrimaryLink> {
        let (cert, key, _) = crate::tls::read_files(tls)?;
        let tls = crate::tls::client_config(&primary.ca_pem, Some((&cert, &key)))?;
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .connect_timeout(Duration::from_secs(2))
            .pool_idle_timeout(Duration::from_secs(30))
            .build()?;
        Ok(PrimaryLink {
            primary,
            http,
            preferred: AtomicUsize::new(0),
            progress: Mutex::new(Progress::default()),
            handover: Mutex::new(None),
        })
    }

    /// The hand-over the primary last announced, if any.
    pub fn handover(&self) -> Option<Handover> {
        self.handover
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Remember the hand-over the primary announced.
    pub fn note_handover(&self, h: &Handover) {
        *self.handover.lock().unwrap_or_else(|p| p.into_inner()) = Some(h.clone());
    }

    pub fn progress(&self) -> Progress {
        *self.progress.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Record a feed answer: the primary's index and this region's position after it.
    pub fn saw(&self, primary_index: u64, position: u64) {
        let mut p = self.progress.lock().unwrap_or_else(|p| p.into_inner());
        p.primary_index = p.primary_index.max(primary_index);
        if position >= p.primary_index {
            p.behind_since = None;
        } else if p.behind_since.is_none() {
            p.behind_since = Some(Instant::now());
        }
    }

    fn contact(&self, ok: bool) {
        let mut p = self.progress.lock().unwrap_or_else(|p| p.into_inner());
        p.reachable = ok;
        if ok {
            p.last_contact = Some(Instant::now());
        }
    }

    fn refused(&self, refused: bool) {
        self.progress
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .refused = refused;
    }

    /// One call, on the endpoints in turn until one is reached.
    async fn call<T: DeserializeOwned>(
        &self,
        path: &str,
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<T, LinkError> {
        let n = self.primary.endpoints.len();
        let first = self.preferred.load(Ordering::Relaxed) % n.max(1);
        let mut failures = Vec::new();
        for k in 0..n {
            let i = (first + k) % n;
            let url = format!("{}{path}", self.primary.endpoints[i].trim_end_matches('/'));
            let req = match &body {
                Some(b) => self
                    .http
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(b.clone()),
                None => self.http.get(&url),
            };
            let resp = match req.timeout(timeout).send().await {
                Ok(r) => r,
                Err(e) if e.is_connect() => {
                    failures.push(format!("{url}: cannot connect"));
                    continue;
                }
                Err(e) => {
                    self.contact(false);
                    return Err(LinkError::Transport {
                        url,
                        detail: e.to_string(),
                    });
                }
            };
            self.preferred.store(i, Ordering::Relaxed);
            self.contact(true);
            let status = resp.status();
            let bytes = resp.bytes().await.map_err(|e| LinkError::Transport {
                url: url.clone(),
                detail: e.to_string(),
            })?;
            self.refused(
                status == reqwest::StatusCode::GONE
                    || (status == reqwest::StatusCode::FORBIDDEN
                        && String::from_utf8_lossy(&bytes).contains(NOT_ACCEPTED)),
            );
            if status == reqwest::StatusCode::GONE
                && let Ok(r) = serde_json::from_slice::<RemovedAnswer>(&bytes)
            {
                return Err(LinkError::Removed {
                    notice: r.removal_notice,
                });
            }
            if !status.is_success() {
                let text = String::from_utf8_lossy(&bytes[..bytes.len().min(512)]).to_string();
                return Err(LinkError::Status {
                    url,
                    status: status.as_u16(),
                    body: text,
                });
            }
            return serde_json::from_slice(&bytes).map_err(|e| LinkError::Transport {
                url,
                detail: format!("the answer does not parse: {e}"),
            });
        }
        self.contact(false);
        Err(LinkError::Unreachable {
            primary: self.primary.name.clone(),
            detail: failures.join("; "),
        })
    }

    pub async fn join(&self, req: &JoinRequest) -> Result<JoinReply, LinkError> {
        let body = serde_json::to_vec(req).unwrap_or_default();
        self.call("/internal/region/join", Some(body), Duration::from_secs(30))
            .await
    }

    /// Entries after `after` (long poll up to `wait`).
    pub async fn feed(
        &self,
        after: u64,
        max: usize,
        wait: Duration,
    ) -> Result<Feed<Command>, LinkError> {
        let path = format!(
            "/internal/region/feed?after={after}&max={max}&waitMs={}",
            wait.as_millis()
        );
        self.call(&path, None, wait + Duration::from_secs(10)).await
    }

    /// Tell an old primary it was replaced by a failover.
    pub async fn fence(&self, req: &FenceRequest) -> Result<serde_json::Value, LinkError> {
        let body = serde_json::to_vec(req).unwrap_or_default();
        self.call(
            "/internal/region/fence",
            Some(body),
            Duration::from_secs(30),
        )
        .await
    }

    /// The primary's epoch and index (no entries; not an acknowledgement).
    pub async fn position(&self) -> Result<Feed<Command>, LinkError> {
        self.call("/internal/region/position", None, Duration::from_secs(5))
            .await
    }

    /// Page `page` of snapshot session `session` (None: start a session).
    pub async fn snapshot_page(
        &self,
        session: Option<&str>,
        page: u64,
    ) -> Result<StatePage, LinkError> {
        let path = match session {
            Some(s) => format!("/internal/region/snapshot?session={s}&page={page}"),
            None => "/internal/region/snapshot".to_string(),
        };
        self.call(&path, None, Duration::from_secs(60)).await
    }

    /// The 503 message of a write this region cannot forward.
    fn unreachable_message(&self, detail: &str) -> String {
        format!(
            "the primary region '{}' is unreachable ({detail}; endpoints: {}): this replica region refuses writes ({PRIMARY_UNREACHABLE}) and keeps serving reads and cryptographic operations. Writes resume when the primary answers again. To take writes here instead, promote this region: planned, with the primary's demotion token, or as a failover (kubectl hsm region promote --force; docs/regions.md)",
            self.primary.name,
            self.primary.endpoints.join(", ")
        )
    }
}

impl PrimaryForwarder for PrimaryLink {
    fn forward<'a>(&'a self, cmd: &'a Command) -> Forwarded<'a> {
        Box::pin(async move {
            let body = serde_json::to_vec(cmd)
                .map_err(|e| ProposeError::Storage(format!("cannot encode the change: {e}")))?;
            match self
                .call::<ForwardReply>(
                    "/internal/region/forward",
                    Some(body),
                    Duration::from_secs(15),
                )
                .await
            {
                Ok(r) => Ok(r.index),
                Err(LinkError::Unreachable { detail, .. }) => Err(
                    ProposeError::PrimaryUnreachable(self.unreachable_message(&detail)),
                ),
                // Unavailable, or not (yet) taking this region's writes: a switchover in
                // progress (the next primary is not promoted yet), a region removed.
                Err(LinkError::Status {
                    status: status @ (403 | 409 | 503),
                    body,
                    ..
                }) => Err(ProposeError::PrimaryUnreachable(self.unreachable_message(
                    &format!("it cannot commit this region's changes now ({status}): {body}"),
                ))),
                Err(e @ LinkError::Status { .. }) => Err(ProposeError::Storage(format!(
                    "the primary region refused the forwarded change: {e}"
                ))),
                Err(e @ LinkError::Removed { .. }) => Err(ProposeError::PrimaryUnreachable(
                    format!("this region takes no writes: {e}; its pool is purged"),
                )),
                Err(e @ LinkError::Transport { .. }) => Err(ProposeError::Uncertain(format!(
                    "the change was sent to the primary region but no answer came back: {e}"
                ))),
            }
        })
    }
}
