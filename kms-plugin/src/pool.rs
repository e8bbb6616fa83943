//! The plugin's client of a Keystead pool: the Key Vault REST API over TLS (the pool's CA
//! only), a bearer token re-read from its file when the file changes, and failover across the
//! pool's endpoints within one deadline. Every call it makes (get a key, wrap, unwrap) reads
//! the key without changing it, so a call that timed out may safely be sent again to another
//! partition.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use keystead_core::error::ErrorBody;
use keystead_core::keys::{Base64Url, KeyBundle, KeyOperationResult, KeyOperationsParameters};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The Key Vault API version the plugin speaks.
pub const API_VERSION: &str = "7.4";

/// Why a call to the pool failed.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// No endpoint answered in time (connection refused, TLS failure, timeout, 5xx, 429).
    #[error("the pool is unreachable ({0})")]
    Unreachable(String),
    /// A partition answered with a definitive refusal (4xx): another would answer the same.
    #[error("the pool refused the request: HTTP {status} {code}: {message}")]
    Refused {
        status: u16,
        code: String,
        message: String,
    },
    /// The token file cannot be read or is empty.
    #[error("cannot read the token file {0}: {1}")]
    Token(String, String),
    /// A 2xx answer that is not what the Key Vault API returns.
    #[error("unexpected answer from {0}: {1}")]
    BadAnswer(String, String),
}

/// A bearer token file (a projected service-account token, or a local pool's admin token),
/// read again whenever its modification time, size or inode changes — kubelet replaces
/// projected tokens by swapping a symlink, which changes all three.
#[derive(Debug)]
pub struct TokenFile {
    path: PathBuf,
    cached: Mutex<Option<(Stamp, String)>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    ino: u64,
}

impl TokenFile {
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            cached: Mutex::new(None),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The current token.
    pub fn get(&self) -> Result<String, PoolError> {
        use std::os::unix::fs::MetadataExt;
        let err = |e: String| PoolError::Token(self.path.display().to_string(), e);
        let meta = std::fs::metadata(&self.path).map_err(|e| err(e.to_string()))?;
        let stamp = Stamp {
            modified: meta.modified().ok(),
            len: meta.len(),
            ino: meta.ino(),
        };
        let mut cached = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((s, token)) = cached.as_ref()
            && *s == stamp
        {
            return Ok(token.clone());
        }
        let token = std::fs::read_to_string(&self.path)
            .map_err(|e| err(e.to_string()))?
            .trim()
            .to_string();
        if token.is_empty() {
            return Err(err("the file is empty".into()));
        }
        *cached = Some((stamp, token.clone()));
        Ok(token)
    }
}

/// Where the pool is and how to reach it.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    /// Base URLs of the partitions (`https://host:port`), tried in turn.
    pub endpoints: Vec<String>,
    /// The pool's CA bundle (PEM); the only roots trusted.
    pub ca_file: PathBuf,
    pub token_file: PathBuf,
    /// Longest wait for one partition (connect, TLS and answer) before the next is tried.
    pub attempt_timeout: Duration,
}

/// The client. Cheap to share (`Arc`); connections are pooled per endpoint.
#[derive(Debug)]
pub struct PoolClient {
    endpoints: Vec<String>,
    http: reqwest::Client,
    token: TokenFile,
    attempt_timeout: Duration,
    /// The endpoint that answered last: tried first next time, so a partition that is down
    /// costs one timeout, not one per request.
    preferred: AtomicUsize,
}

impl PoolClient {
    pub fn new(settings: PoolSettings) -> anyhow::Result<Self> {
        anyhow::ensure!(
            !settings.endpoints.is_empty(),
            "no pool endpoint given (--endpoint or --pool-file)"
        );
        for e in &settings.endpoints {
            let url = url::Url::parse(e)
                .map_err(|err| anyhow::anyhow!("endpoint {e} is not a URL: {err}"))?;
            anyhow::ensure!(
                url.scheme() == "https",
                "endpoint {e} must be https:// (the plugin sends a bearer token)"
            );
        }
        let pem = std::fs::read(&settings.ca_file).map_err(|e| {
            anyhow::anyhow!(
                "cannot read the pool CA bundle {}: {e}",
                settings.ca_file.display()
            )
        })?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| anyhow::anyhow!("{}: {e}", settings.ca_file.display()))?;
        anyhow::ensure!(
            !certs.is_empty(),
            "{} holds no certificate",
            settings.ca_file.display()
        );
        // The pool's CA only: no system roots.
        let builder = reqwest::Client::builder()
            .tls_certs_only(certs)
            .connect_timeout(settings.attempt_timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .redirect(reqwest::redirect::Policy::none());
        Ok(Self {
            endpoints: settings
                .endpoints
                .iter()
                .map(|e| e.trim_end_matches('/').to_string())
                .collect(),
            http: builder.build()?,
            token: TokenFile::new(settings.token_file),
            attempt_timeout: settings.attempt_timeout,
            preferred: AtomicUsize::new(0),
        })
    }

    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// `GET /keys/{name}`: the current version of a key.
    pub async fn get_key(&self, name: &str, deadline: Instant) -> Result<KeyBundle, PoolError> {
        self.call::<(), _>(
            reqwest::Method::GET,
            &format!("/keys/{name}"),
            None,
            deadline,
        )
        .await
    }

    /// `POST /keys/{name}[/{version}]/wrapkey`; returns the wrapped key and the `kid` of the
    /// version used (the current one when `version` is `None`).
    pub async fn wrap(
        &self,
        name: &str,
        version: Option<&str>,
        alg: &str,
        key: &[u8],
        deadline: Instant,
    ) -> Result<(Vec<u8>, String), PoolError> {
        let path = match version {
            Some(v) => format!("/keys/{name}/{v}/wrapkey"),
            None => format!("/keys/{name}/wrapkey"),
        };
        let res = self.key_op(&path, alg, key, deadline).await?;
        let kid = res.kid.clone().unwrap_or_default();
        Ok((
            res.value.map(Base64Url::into_inner).unwrap_or_default(),
            kid,
        ))
    }

    /// `POST /keys/{name}/{version}/unwrapkey`.
    pub async fn unwrap(
        &self,
        name: &str,
        version: &str,
        alg: &str,
        wrapped: &[u8],
        deadline: Instant,
    ) -> Result<Vec<u8>, PoolError> {
        let path = format!("/keys/{name}/{version}/unwrapkey");
        let res = self.key_op(&path, alg, wrapped, deadline).await?;
        Ok(res.value.map(Base64Url::into_inner).unwrap_or_default())
    }

    async fn key_op(
        &self,
        path: &str,
        alg: &str,
        value: &[u8],
        deadline: Instant,
    ) -> Result<KeyOperationResult, PoolError> {
        let body = KeyOperationsParameters {
            alg: alg.to_string(),
            value: Base64Url::from(value),
            ..Default::default()
        };
        let res: KeyOperationResult = self
            .call(reqwest::Method::POST, path, Some(&body), deadline)
            .await?;
        if res.value.as_ref().is_none_or(|v| v.as_bytes().is_empty()) {
            return Err(PoolError::BadAnswer(path.into(), "no value".into()));
        }
        Ok(res)
    }

    /// One request, tried on each endpoint in turn (starting with the one that answered last)
    /// until one answers or `deadline` passes. A 4xx answer is final; connection errors,
    /// timeouts, 408, 429 and 5xx move on to the next endpoint.
    async fn call<B: Serialize, R: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&B>,
        deadline: Instant,
    ) -> Result<R, PoolError> {
        let token = self.token.get()?;
        let n = self.endpoints.len();
        let first = self.preferred.load(Ordering::Relaxed) % n;
        let mut failures = Vec::new();
        for i in 0..n {
            let idx = (first + i) % n;
            let endpoint = &self.endpoints[idx];
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                failures.push(format!("{endpoint}: not tried, the deadline passed"));
                continue;
            }
            let mut req = self
                .http
                .request(
                    method.clone(),
                    format!("{endpoint}{path}?api-version={API_VERSION}"),
                )
                .bearer_auth(&token)
                .timeout(left.min(self.attempt_timeout));
            if let Some(b) = body {
                req = req.json(b);
            }
            let resp = match req.send().await {
                Ok(r) => r,
                Err(e) => {
                    failures.push(format!("{endpoint}: {}", describe(&e)));
                    continue;
                }
            };
            let status = resp.status();
            let bytes = match resp.bytes().await {
                Ok(b) => b,
                Err(e) => {
                    failures.push(format!("{endpoint}: {}", describe(&e)));
                    continue;
                }
            };
            if status.is_success() {
                self.preferred.store(idx, Ordering::Relaxed);
                return serde_json::from_slice(&bytes)
                    .map_err(|e| PoolError::BadAnswer(format!("{endpoint}{path}"), e.to_string()));
            }
            let (code, message) = match serde_json::from_slice::<ErrorBody>(&bytes) {
                Ok(b) => (b.error.code, b.error.message),
                Err(_) => (String::new(), String::from_utf8_lossy(&bytes).into_owned()),
            };
            let transient = status.is_server_error()
                || status == reqwest::StatusCode::TOO_MANY_REQUESTS
                || status == reqwest::StatusCode::REQUEST_TIMEOUT;
            if transient {
                failures.push(format!(
                    "{endpoint}: HTTP {} {code} {message}",
                    status.as_u16()
                ));
                continue;
            }
            self.preferred.store(idx, Ordering::Relaxed);
            return Err(PoolError::Refused {
                status: status.as_u16(),
                code,
                message,
            });
        }
        Err(PoolError::Unreachable(failures.join("; ")))
    }
}

/// A reqwest error in a few words (its source chain says why: refused, TLS, timeout).
fn describe(e: &reqwest::Error) -> String {
    let mut out = if e.is_timeout() {
        "timed out".to_string()
    } else if e.is_connect() {
        "cannot connect".to_string()
    } else {
        "request failed".to_string()
    };
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
