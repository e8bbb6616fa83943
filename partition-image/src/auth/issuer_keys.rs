//! The public keys of each trusted issuer: a static set, a JWKS file, or OIDC discovery over
//! HTTPS; cached, refreshed hourly and — rate limited — when a token names an unknown `kid`.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{Jwk, PublicKeyUse};
use serde_json::Value;

use super::config::{AuthError, IssuerConfig, JwksSource, clip};

/// An unknown `kid` triggers a JWKS refresh at most this often per issuer.
pub const JWKS_REFRESH_MIN_INTERVAL: Duration = Duration::from_secs(30);
/// Fetched key sets are refreshed in the background of a request when older than this.
const JWKS_MAX_AGE: Duration = Duration::from_secs(3600);
/// Largest discovery document or JWKS accepted.
const MAX_DOC_LEN: usize = 1024 * 1024;
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Default)]
pub(super) struct Cache {
    keys: Option<Arc<Vec<Jwk>>>,
    fetched_at: Option<Instant>,
    last_kid_refresh: Option<Instant>,
}

/// One trusted issuer with its accepted audiences and its cached key set.
pub(super) struct IssuerState {
    pub(super) config: IssuerConfig,
    pub(super) audiences: Vec<String>,
    cache: RwLock<Cache>,
    fetch_lock: tokio::sync::Mutex<()>,
}

/// Parses a JWKS leniently: keys this library cannot use are skipped.
pub(crate) fn parse_jwks(bytes: &[u8]) -> Result<Vec<Jwk>, String> {
    let v: Value = serde_json::from_slice(bytes).map_err(|e| format!("JWKS is not JSON: {e}"))?;
    let keys = v
        .get("keys")
        .and_then(Value::as_array)
        .ok_or("JWKS has no \"keys\" array")?;
    let usable: Vec<Jwk> = keys
        .iter()
        .filter_map(|k| serde_json::from_value::<Jwk>(k.clone()).ok())
        .collect();
    if usable.is_empty() {
        return Err("JWKS has no usable signing key".to_owned());
    }
    Ok(usable)
}

fn key_alg_name(jwk: &Jwk) -> Option<String> {
    jwk.common
        .key_algorithm
        .and_then(|a| serde_json::to_value(a).ok())
        .and_then(|v| v.as_str().map(str::to_owned))
}

impl IssuerState {
    /// The state of `issuer`, whose tokens carry `pool_audience` unless it names its own.
    pub(super) fn new(issuer: IssuerConfig, pool_audience: &str) -> Self {
        let audiences = if issuer.audiences.is_empty() {
            vec![pool_audience.to_owned()]
        } else {
            issuer.audiences.clone()
        };
        let cache = match &issuer.jwks {
            JwksSource::Static(jwks) => Cache {
                keys: Some(Arc::new(jwks.keys.clone())),
                fetched_at: Some(Instant::now()),
                last_kid_refresh: None,
            },
            _ => Cache::default(),
        };
        IssuerState {
            config: issuer,
            audiences,
            cache: RwLock::new(cache),
            fetch_lock: tokio::sync::Mutex::new(()),
        }
    }

    pub(super) fn snapshot(&self) -> (Option<Arc<Vec<Jwk>>>, Option<Instant>) {
        let c = self.cache.read().unwrap_or_else(|e| e.into_inner());
        (c.keys.clone(), c.fetched_at)
    }

    fn store(&self, keys: Vec<Jwk>, kid_refresh: bool) {
        let mut c = self.cache.write().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        c.keys = Some(Arc::new(keys));
        c.fetched_at = Some(now);
        if kid_refresh {
            c.last_kid_refresh = Some(now);
        }
    }

    async fn fetch(&self) -> Result<Vec<Jwk>, AuthError> {
        let unavailable = |reason: String| AuthError::JwksUnavailable {
            issuer: self.config.issuer.clone(),
            reason,
        };
        match &self.config.jwks {
            JwksSource::Static(jwks) => Ok(jwks.keys.clone()),
            JwksSource::File(path) => {
                let bytes = tokio::fs::read(path)
                    .await
                    .map_err(|e| unavailable(format!("cannot read {}: {e}", path.display())))?;
                parse_jwks(&bytes).map_err(unavailable)
            }
            JwksSource::Discovery {
                ca_file,
                bearer_token_file,
            } => self
                .discover(ca_file.as_ref(), bearer_token_file.as_ref())
                .await
                .map_err(unavailable),
        }
    }

    async fn discover(
        &self,
        ca_file: Option<&PathBuf>,
        bearer_token_file: Option<&PathBuf>,
    ) -> Result<Vec<Jwk>, String> {
        let mut builder = reqwest::Client::builder()
            .https_only(true)
            .timeout(FETCH_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none());
        if let Some(ca) = ca_file {
            let pem = tokio::fs::read(ca)
                .await
                .map_err(|e| format!("cannot read CA file {}: {e}", ca.display()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| format!("CA file {} is not a PEM bundle: {e}", ca.display()))?;
            builder = builder.tls_certs_only(certs);
        }
        let client = builder
            .build()
            .map_err(|e| format!("cannot build the HTTPS client: {e}"))?;
        let token = match bearer_token_file {
            Some(path) => Some(
                tokio::fs::read_to_string(path)
                    .await
                    .map_err(|e| format!("cannot read token file {}: {e}", path.display()))?
                    .trim()
                    .to_owned(),
            ),
            None => None,
        };
        let get = |url: String| {
            let mut req = client.get(url);
            if let Some(t) = &token {
                req = req.bearer_auth(t);
            }
            req
        };
        let discovery_url = format!(
            "{}/.well-known/openid-configuration",
            self.config.issuer.trim_end_matches('/')
        );
        let doc = fetch_body(get(discovery_url.clone()), &discovery_url).await?;
        let doc: Value = serde_json::from_slice(&doc)
            .map_err(|e| format!("{discovery_url} did not return JSON: {e}"))?;
        let doc_issuer = doc.get("issuer").and_then(Value::as_str).unwrap_or("");
        if doc_issuer.trim_end_matches('/') != self.config.issuer.trim_end_matches('/') {
            return Err(format!(
                "{discovery_url} names issuer {doc_issuer:?}, not {:?}",
                self.config.issuer
            ));
        }
        let jwks_uri = doc
            .get("jwks_uri")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("{discovery_url} has no jwks_uri"))?
            .to_owned();
        let jwks = fetch_body(get(jwks_uri.clone()), &jwks_uri).await?;
        parse_jwks(&jwks)
    }

    /// Keys to try for a token with `kid` and `alg`, loading or refreshing the set as needed.
    pub(super) async fn candidate_keys(
        &self,
        kid: Option<&str>,
        alg: &str,
    ) -> Result<Vec<Jwk>, AuthError> {
        let select = |keys: &[Jwk]| -> Vec<Jwk> {
            keys.iter()
                .filter(|k| match kid {
                    Some(kid) => k.common.key_id.as_deref() == Some(kid),
                    None => true,
                })
                .filter(|k| key_alg_name(k).is_none_or(|a| a == alg))
                .filter(|k| !matches!(k.common.public_key_use, Some(PublicKeyUse::Encryption)))
                .cloned()
                .collect()
        };
        // Load on first use, and refresh an old set (keeping it if the refresh fails).
        let (keys, fetched_at) = self.snapshot();
        let stale = fetched_at.is_none_or(|t| t.elapsed() > JWKS_MAX_AGE);
        let mut just_loaded = false;
        let keys = if keys.is_none() || stale {
            let _guard = self.fetch_lock.lock().await;
            let (again, at) = self.snapshot();
            if again.is_some() && at != fetched_at {
                again
            } else {
                match self.fetch().await {
                    Ok(fresh) => {
                        self.store(fresh, false);
                        just_loaded = true;
                        self.snapshot().0
                    }
                    Err(e) if again.is_none() => return Err(e),
                    Err(e) => {
                        tracing::warn!(issuer = %self.config.issuer, error = %e, "JWKS refresh failed; keeping the previous keys");
                        again
                    }
                }
            }
        } else {
            keys
        };
        let keys = keys.unwrap_or_default();
        let chosen = select(&keys);
        if !chosen.is_empty() {
            return Ok(chosen);
        }
        let Some(kid) = kid else {
            return Err(AuthError::BadSignature(self.config.issuer.clone()));
        };
        let unknown = || AuthError::UnknownKey {
            issuer: self.config.issuer.clone(),
            kid: clip(kid),
        };
        if just_loaded || matches!(self.config.jwks, JwksSource::Static(_)) {
            return Err(unknown());
        }
        // Unknown kid: the issuer may have rotated. Refresh, at most once per interval.
        let _guard = self.fetch_lock.lock().await;
        let (current, _) = self.snapshot();
        if let Some(current) = &current {
            let chosen = select(current);
            if !chosen.is_empty() {
                return Ok(chosen);
            }
        }
        let recently = {
            let c = self.cache.read().unwrap_or_else(|e| e.into_inner());
            c.last_kid_refresh
                .is_some_and(|t| t.elapsed() < JWKS_REFRESH_MIN_INTERVAL)
        };
        if recently {
            return Err(unknown());
        }
        let fresh = match self.fetch().await {
            Ok(fresh) => fresh,
            Err(e) => {
                // Count the attempt so that a flood of bad kids cannot hammer the issuer.
                let mut c = self.cache.write().unwrap_or_else(|e| e.into_inner());
                c.last_kid_refresh = Some(Instant::now());
                return Err(e);
            }
        };
        let chosen = select(&fresh);
        self.store(fresh, true);
        if chosen.is_empty() {
            Err(unknown())
        } else {
            Ok(chosen)
        }
    }
}

async fn fetch_body(req: reqwest::RequestBuilder, url: &str) -> Result<Vec<u8>, String> {
    let resp = req
        .send()
        .await
        .map_err(|e| format!("GET {url} failed: {e}"))?;
    let status = resp.status();
    if !status.is_success() {
        return Err(format!("GET {url} answered {status}"));
    }
    if resp
        .content_length()
        .is_some_and(|l| l > MAX_DOC_LEN as u64)
    {
        return Err(format!(
            "GET {url}: response larger than {MAX_DOC_LEN} bytes"
        ));
    }
    let body = resp
        .bytes()
        .await
        .map_err(|e| format!("GET {url}: reading the body failed: {e}"))?;
    if body.len() > MAX_DOC_LEN {
        return Err(format!(
            "GET {url}: response larger than {MAX_DOC_LEN} bytes"
        ));
    }
    Ok(body.to_vec())
}
