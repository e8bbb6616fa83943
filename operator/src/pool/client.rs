//! The operator's client of a pool's admin and security-domain APIs.
//!
//! It authenticates with a short-lived token of its own ServiceAccount (TokenRequest, audience
//! = the pool's audience) and trusts only the pool's CA. It moves encrypted blobs only.

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use keystead_core::backup_job::JobStatus;
use keystead_core::status::PoolStatus;
use kube::Api;
use kube::api::PostParams;
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use zeroize::Zeroizing;

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("cannot reach {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("{url} answered {status}: {message}")]
    Refused {
        url: String,
        status: u16,
        message: String,
    },
    #[error("{url} answered an unexpected body: {reason}")]
    BadAnswer { url: String, reason: String },
    #[error("the pool CA bundle is not PEM: {0}")]
    BadCa(String),
    #[error(
        "cannot get a token for the pool audience {audience:?} (TokenRequest on the operator's ServiceAccount): {reason}"
    )]
    Token { audience: String, reason: String },
}

/// Where the operator's own identity lives.
#[derive(Clone, Debug)]
pub struct Identity {
    pub namespace: String,
    pub service_account: String,
}

/// A bearer token; Debug redacts it.
#[derive(Clone)]
struct Token {
    value: Zeroizing<String>,
    expires: Instant,
}

/// Tokens per audience, refreshed before they expire.
pub struct TokenSource {
    client: kube::Client,
    identity: Option<Identity>,
    cache: Mutex<HashMap<String, Token>>,
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSource")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

const TOKEN_SECONDS: i64 = 600;

impl TokenSource {
    pub fn new(client: kube::Client, identity: Option<Identity>) -> Self {
        Self {
            client,
            identity,
            cache: Mutex::new(HashMap::new()),
        }
    }

    pub async fn token(&self, audience: &str) -> Result<Zeroizing<String>, PoolError> {
        if let Ok(cache) = self.cache.lock()
            && let Some(t) = cache.get(audience)
            && t.expires > Instant::now()
        {
            return Ok(t.value.clone());
        }
        let err = |reason: String| PoolError::Token {
            audience: audience.to_string(),
            reason,
        };
        let id = self
            .identity
            .as_ref()
            .ok_or_else(|| err("KEYSTEAD_SERVICE_ACCOUNT and POD_NAMESPACE are not set".into()))?;
        let api: Api<ServiceAccount> = Api::namespaced(self.client.clone(), &id.namespace);
        let req = TokenRequest {
            spec: TokenRequestSpec {
                audiences: vec![audience.to_string()],
                expiration_seconds: Some(TOKEN_SECONDS),
                ..TokenRequestSpec::default()
            },
            ..TokenRequest::default()
        };
        let answer = api
            .create_token_request(&id.service_account, &PostParams::default(), &req)
            .await
            .map_err(|e| err(e.to_string()))?;
        let value = Zeroizing::new(answer.status.map(|s| s.token).unwrap_or_default());
        if value.is_empty() {
            return Err(err("the API server returned no token".into()));
        }
        // Refresh well before expiry.
        let token = Token {
            value: value.clone(),
            expires: Instant::now() + Duration::from_secs(TOKEN_SECONDS as u64 / 2),
        };
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(audience.to_string(), token);
        }
        Ok(value)
    }
}

/// A client of one pool: its CA and a bearer token.
pub struct PoolClient {
    http: reqwest::Client,
    token: Zeroizing<String>,
}

impl std::fmt::Debug for PoolClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolClient")
            .field("token", &"<redacted>")
            .finish()
    }
}

/// Which job family a job id belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobPath {
    Backup,
    Restore,
}

impl JobPath {
    fn as_str(self) -> &'static str {
        match self {
            Self::Backup => "backup",
            Self::Restore => "restore",
        }
    }
}

impl PoolError {
    /// The pool answered and refused the request for good (a 4xx other than 404/408/429);
    /// other errors are worth retrying.
    pub fn is_refusal(&self) -> bool {
        matches!(self, Self::Refused { status, .. }
            if (400..500).contains(status) && ![404, 408, 429].contains(status))
    }
}

/// The exchange key a pool publishes for an upload.
#[derive(Clone, Debug, Deserialize)]
pub struct ExchangeKey {
    pub key_format: String,
    pub transfer_key: String,
}

impl PoolClient {
    /// `addresses`: partition host names (as in the URLs called) → the pod's IP, taken from
    /// `status.podIP`. The connection goes to that address while TLS still verifies the host
    /// name, so the operator does not depend on cluster DNS (or its lag after a pod change).
    /// Hosts not listed are resolved normally.
    pub fn new(
        ca_pem: &str,
        token: Zeroizing<String>,
        addresses: &[(String, IpAddr)],
    ) -> Result<Self, PoolError> {
        let ca = reqwest::Certificate::from_pem(ca_pem.as_bytes())
            .map_err(|e| PoolError::BadCa(e.to_string()))?;
        let mut builder = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .tls_certs_only([ca]);
        for (host, ip) in addresses {
            // Port 0: the URL's port is used.
            builder = builder.resolve(host, SocketAddr::new(*ip, 0));
        }
        let http = builder
            .build()
            .map_err(|e| PoolError::BadCa(e.to_string()))?;
        Ok(Self { http, token })
    }

    async fn call(
        &self,
        method: reqwest::Method,
        url: &str,
        body: Option<&Value>,
    ) -> Result<Value, PoolError> {
        let mut req = self
            .http
            .request(method, url)
            .bearer_auth(self.token.as_str());
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|e| PoolError::Unreachable {
            url: url.to_string(),
            reason: e.to_string(),
        })?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| PoolError::Unreachable {
            url: url.to_string(),
            reason: e.to_string(),
        })?;
        if !status.is_success() {
            let message = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
                .unwrap_or_else(|| text.chars().take(200).collect());
            return Err(PoolError::Refused {
                url: url.to_string(),
                status: status.as_u16(),
                message,
            });
        }
        if text.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text).map_err(|e| PoolError::BadAnswer {
            url: url.to_string(),
            reason: e.to_string(),
        })
    }

    /// `GET {partition}/admin/status`.
    pub async fn admin_status(&self, base: &str) -> Result<PoolStatus, PoolError> {
        let url = format!("{base}/admin/status");
        let v = self.call(reqwest::Method::GET, &url, None).await?;
        serde_json::from_value(v).map_err(|e| PoolError::BadAnswer {
            url,
            reason: e.to_string(),
        })
    }

    /// `POST /securitydomain/download`: returns the encrypted domain file (JSON text).
    pub async fn download(
        &self,
        base: &str,
        certificates: Vec<Value>,
        required: i32,
    ) -> Result<String, PoolError> {
        let url = format!("{base}/securitydomain/download");
        let v = self
            .call(
                reqwest::Method::POST,
                &url,
                Some(&json!({"certificates": certificates, "required": required})),
            )
            .await?;
        match &v["value"] {
            Value::String(s) => Ok(s.clone()),
            Value::Null => Err(PoolError::BadAnswer {
                url,
                reason: "no `value` in the answer".into(),
            }),
            other => Ok(other.to_string()),
        }
    }

    /// `GET /securitydomain/upload`: the pool's one-time exchange key.
    pub async fn exchange_key(&self, base: &str) -> Result<ExchangeKey, PoolError> {
        let url = format!("{base}/securitydomain/upload");
        let v = self.call(reqwest::Method::GET, &url, None).await?;
        serde_json::from_value(v).map_err(|e| PoolError::BadAnswer {
            url,
            reason: e.to_string(),
        })
    }

    /// Start a job (`POST /backup`, `PUT /restore`, `PUT /keys/{name}/restore`): the 202 body.
    pub async fn start_job(
        &self,
        base: &str,
        method: reqwest::Method,
        path: &str,
        body: &Value,
    ) -> Result<JobStatus, PoolError> {
        let url = format!("{base}{path}");
        let v = self.call(method, &url, Some(body)).await?;
        serde_json::from_value(v).map_err(|e| PoolError::BadAnswer {
            url,
            reason: e.to_string(),
        })
    }

    /// A job's status (`GET /backup/{id}/pending` or `/restore/{id}/pending`); `None` when
    /// the partition does not know the job (404: it restarted since).
    pub async fn job(
        &self,
        base: &str,
        kind: JobPath,
        job_id: &str,
    ) -> Result<Option<JobStatus>, PoolError> {
        let url = format!("{base}/{}/{job_id}/pending", kind.as_str());
        match self.call(reqwest::Method::GET, &url, None).await {
            Ok(v) => serde_json::from_value(v)
                .map(Some)
                .map_err(|e| PoolError::BadAnswer {
                    url,
                    reason: e.to_string(),
                }),
            Err(PoolError::Refused { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `POST /backup/delete`: delete a backup folder of this pool; how many objects went.
    /// `job_id`: the backup job that wrote it (lets the pool delete the leftovers of a failed
    /// job, which have no manifest).
    pub async fn delete_backup(
        &self,
        base: &str,
        storage: &keystead_core::store::StorageParameters,
        folder: &str,
        job_id: Option<&str>,
    ) -> Result<usize, PoolError> {
        let url = format!("{base}/backup/delete");
        let mut body = json!({"sasTokenParameters": storage, "folder": folder});
        if let Some(id) = job_id {
            body["jobId"] = json!(id);
        }
        let v = self.call(reqwest::Method::POST, &url, Some(&body)).await?;
        v["deletedObjects"]
            .as_u64()
            .map(|n| n as usize)
            .ok_or_else(|| PoolError::BadAnswer {
                url,
                reason: "no deletedObjects".into(),
            })
    }

    /// `POST /securitydomain/upload` with the transfer blob.
    pub async fn upload(&self, base: &str, transfer_blob: &str) -> Result<(), PoolError> {
        let url = format!("{base}/securitydomain/upload");
        self.call(
            reqwest::Method::POST,
            &url,
            Some(&json!({"value": transfer_blob})),
        )
        .await?;
        Ok(())
    }

    /// `PUT /admin/regions/{name}`: name a region this primary accepts, by its pool CA.
    pub async fn accept_region(
        &self,
        base: &str,
        name: &str,
        ca_pem: &str,
    ) -> Result<(), PoolError> {
        let body = keystead_core::region::AcceptRegionRequest {
            ca_certificate: ca_pem.to_string(),
        };
        let url = format!("{base}/admin/regions/{name}");
        self.call(reqwest::Method::PUT, &url, Some(&json!(body)))
            .await
            .map(drop)
    }

    /// `DELETE /admin/regions/{name}`: the region's partitions are refused from now on.
    pub async fn remove_region(&self, base: &str, name: &str) -> Result<(), PoolError> {
        let url = format!("{base}/admin/regions/{name}");
        self.call(reqwest::Method::DELETE, &url, None)
            .await
            .map(drop)
    }

    /// `POST /admin/regions/demote` (switchover, step 1): the demotion token.
    pub async fn demote(
        &self,
        base: &str,
        req: &keystead_core::region::DemoteRequest,
    ) -> Result<keystead_core::region::DemoteReply, PoolError> {
        let url = format!("{base}/admin/regions/demote");
        let v = self
            .call(reqwest::Method::POST, &url, Some(&json!(req)))
            .await?;
        serde_json::from_value(v).map_err(|e| PoolError::BadAnswer {
            url,
            reason: e.to_string(),
        })
    }

    /// `POST /admin/regions/promote` (switchover with a token, failover with `force`).
    pub async fn promote(
        &self,
        base: &str,
        req: &keystead_core::region::PromoteRequest,
    ) -> Result<(), PoolError> {
        let url = format!("{base}/admin/regions/promote");
        self.call(reqwest::Method::POST, &url, Some(&json!(req)))
            .await
            .map(drop)
    }

    /// `POST /admin/regions/follow` (a replica region after a failover elsewhere).
    pub async fn follow(
        &self,
        base: &str,
        req: &keystead_core::region::FollowRequest,
    ) -> Result<(), PoolError> {
        let url = format!("{base}/admin/regions/follow");
        self.call(reqwest::Method::POST, &url, Some(&json!(req)))
            .await
            .map(drop)
    }
}
