//! The client of the peer API: HTTPS to the other partitions with this partition's
//! pool-CA certificate and workload token (Raft RPCs, forwarded writes, read-index, and the
//! calls the services make to their peers), and the group state a member reports.

use crate::config::PartitionConfig;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

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
    /// The term this partition is in (what a recovering peer learns before it accepts
    /// replication: `Replica::term_floor`).
    #[serde(default)]
    pub term: u64,
    /// A primary: the position each replica region acknowledged at this partition.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub region_acks: std::collections::BTreeMap<String, u64>,
    /// A primary: milliseconds since a region last polled this partition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region_contact_ms: Option<u64>,
    /// A replica region: milliseconds since this partition last reached its primary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_contact_ms: Option<u64>,
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
    /// The token as last read and when: re-read at most every [`PEER_TOKEN_REREAD`] (a
    /// Raft heartbeat is sent to each follower several times a second under load).
    token: std::sync::Mutex<Option<(String, std::time::Instant)>>,
}

/// How long a read peer token is used before its file is read again. Kubernetes renews a
/// projected token long before it expires (at 80 % of its lifetime, at least an hour here).
const PEER_TOKEN_REREAD: Duration = Duration::from_secs(10);

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
            token: std::sync::Mutex::new(None),
        })
    }

    fn build(
        cert: &str,
        key: &str,
        ca: &str,
        host_addresses: &[(String, std::net::IpAddr)],
    ) -> anyhow::Result<reqwest::Client> {
        let tls = crate::tls::client_config(ca, Some((cert, key)))?;
        // A connection whose packets vanish (a network partition drops them; it does not
        // close connections) must be given up quickly, or every later request queues on it
        // while TCP retransmits with a backoff of tens of seconds after the partition has
        // healed — the long fault run saw a partition without a leader for over 90 s after a
        // 4 s one-way cut. HTTP/2 pings close a silent connection within ~3 s, and the
        // kernel aborts one whose sent data stays unacknowledged for 3 s; the next request
        // opens a fresh connection.
        let mut builder = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .connect_timeout(Duration::from_secs(2))
            .pool_idle_timeout(Duration::from_secs(30))
            .http2_keep_alive_interval(Duration::from_secs(1))
            .http2_keep_alive_timeout(Duration::from_secs(2))
            .http2_keep_alive_while_idle(true)
            .tcp_user_timeout(Duration::from_secs(3));
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
        let mut cached = self.token.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((t, at)) = cached.as_ref()
            && at.elapsed() < PEER_TOKEN_REREAD
        {
            return Ok(t.clone());
        }
        let t = std::fs::read_to_string(f)
            .map(|t| t.trim().to_string())
            .map_err(|e| PeerError::Token(format!("{}: {e}", f.display())))?;
        *cached = Some((t.clone(), std::time::Instant::now()));
        Ok(t)
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
        if status == reqwest::StatusCode::CONFLICT {
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
        let bytes = serde_json::to_vec(body).map_err(|e| {
            PeerError::Transport(
                format!("{}{path}", base.trim_end_matches('/')),
                e.to_string(),
            )
        })?;
        self.post_raw(base, path, bytes, timeout).await
    }

    /// [`PeerClient::post`] with a body already serialized (JSON).
    pub async fn post_raw<Resp: DeserializeOwned>(
        &self,
        base: &str,
        path: &str,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<Resp, PeerError> {
        let url = format!("{}{path}", base.trim_end_matches('/'));
        let req = self
            .http()
            .post(&url)
            .header("content-type", "application/json")
            .body(body);
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
