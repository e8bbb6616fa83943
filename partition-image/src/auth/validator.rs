//! Bearer JWT validation against the pool's configured issuers.
//!
//! Over ~600 lines on purpose for now: the key-set cache of each issuer (`IssuerState`) and
//! the token checks share private state; splitting them first wants the configuration and
//! error types in a file of their own (open in issue 13).

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};
use keystead_core::b64;
use keystead_core::error::ErrorBody;
use keystead_core::principal::IssuerPrefix;
use serde_json::Value;

use super::Jwks;

/// An unknown `kid` triggers a JWKS refresh at most this often per issuer.
pub const JWKS_REFRESH_MIN_INTERVAL: Duration = Duration::from_secs(30);
/// Fetched key sets are refreshed in the background of a request when older than this.
const JWKS_MAX_AGE: Duration = Duration::from_secs(3600);
/// Longest token accepted.
const MAX_TOKEN_LEN: usize = 16 * 1024;
/// Largest discovery document or JWKS accepted.
const MAX_DOC_LEN: usize = 1024 * 1024;
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Authentication settings of a pool.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// The pool's audience: the `aud` tokens must carry unless an issuer overrides it.
    pub audience: String,
    pub issuers: Vec<IssuerConfig>,
    /// Allowed clock skew for `exp` and `nbf`, in seconds.
    pub leeway_secs: u64,
}

/// One trusted token issuer.
#[derive(Debug, Clone)]
pub struct IssuerConfig {
    /// Must equal the tokens' `iss` exactly.
    pub issuer: String,
    /// Accepted audiences; empty means the pool audience.
    pub audiences: Vec<String>,
    pub jwks: JwksSource,
    /// Put before the subject to form the principal (`None`: the subject alone). See
    /// [`keystead_core::principal`] for the rules a set of issuers must follow.
    pub principal_prefix: Option<String>,
}

/// Where an issuer's public keys come from.
#[derive(Debug, Clone)]
pub enum JwksSource {
    /// A fixed key set (local mode, tests).
    Static(Jwks),
    /// A JWKS JSON file, re-read when a token names an unknown `kid` (rate limited) and hourly.
    File(PathBuf),
    /// OIDC discovery: `{issuer}/.well-known/openid-configuration` → `jwks_uri`, over HTTPS
    /// only. `ca_file` (PEM bundle) replaces the system roots; `bearer_token_file` is sent as
    /// `Authorization: Bearer` to both URLs (a pod reading the Kubernetes API server's
    /// service-account issuer keys uses its own projected token here).
    Discovery {
        ca_file: Option<PathBuf>,
        bearer_token_file: Option<PathBuf>,
    },
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The principal id used by RBAC: the issuer's principal prefix (if it has one)
    /// followed by the token's `oid` if present, else its `sub`.
    pub subject: String,
    /// The token's `iss`.
    pub issuer: String,
    /// The token's `exp` (Unix seconds).
    pub expires_at: u64,
    /// The pod a Kubernetes service-account token is bound to (its `kubernetes.io.pod.name`
    /// claim; projected tokens carry it): how partitions tell their peers apart.
    pub kubernetes_pod: Option<String>,
}

/// Why a token was refused. Messages never contain the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("the bearer token is not a well-formed JWT: {0}")]
    Malformed(String),
    #[error("token algorithm {0:?} is not accepted; use RS256/384/512, PS256/384/512 or ES256/384")]
    UnsupportedAlgorithm(String),
    #[error("token issuer {0:?} is not trusted by this HSM pool")]
    UnknownIssuer(String),
    #[error(
        "no signing key with kid {kid:?} is published by issuer {issuer:?}; if the issuer rotated its keys, retry in a minute"
    )]
    UnknownKey { issuer: String, kid: String },
    #[error("the token signature is not valid for any key of issuer {0:?}")]
    BadSignature(String),
    #[error("the token expired at {0}; get a new token")]
    Expired(String),
    #[error("the token is not valid before {0}; check the clocks")]
    NotYetValid(String),
    #[error("wrong audience: got {got:?}, expected one of {expected:?}")]
    WrongAudience {
        got: Vec<String>,
        expected: Vec<String>,
    },
    #[error("the token has no valid {0:?} claim")]
    MissingClaim(String),
    #[error("cannot get the signing keys of issuer {issuer:?}: {reason}")]
    JwksUnavailable { issuer: String, reason: String },
    #[error(
        "the token's subject {subject:?} starts with {prefix:?}, the principal prefix of issuer {owner:?}: principals with that prefix belong to that issuer, so issuer {issuer:?} may not use them"
    )]
    ForeignNamespace {
        subject: String,
        issuer: String,
        owner: String,
        prefix: String,
    },
}

impl AuthError {
    /// HTTP status: 401, or 503 when the issuer's keys cannot be fetched.
    pub fn status(&self) -> u16 {
        match self {
            AuthError::JwksUnavailable { .. } => 503,
            _ => 401,
        }
    }

    /// The Key Vault error body.
    pub fn error_body(&self) -> ErrorBody {
        let code = match self {
            AuthError::JwksUnavailable { .. } => "ServiceUnavailable",
            _ => "Unauthorized",
        };
        ErrorBody::new(code, self.to_string())
    }
}

#[derive(Default)]
struct Cache {
    keys: Option<Arc<Vec<Jwk>>>,
    fetched_at: Option<Instant>,
    last_kid_refresh: Option<Instant>,
}

struct IssuerState {
    config: IssuerConfig,
    audiences: Vec<String>,
    cache: RwLock<Cache>,
    fetch_lock: tokio::sync::Mutex<()>,
}

/// Validates bearer tokens. Cheap to clone; share one per pool.
#[derive(Clone)]
pub struct TokenValidator {
    issuers: Arc<Vec<Arc<IssuerState>>>,
    /// Every issuer with its principal prefix (the namespaces principals are formed in).
    prefixes: Arc<Vec<(String, Option<String>)>>,
    leeway: u64,
    /// Tokens already verified: SHA-256 of the token (never the token) -> principal and
    /// the time until which the verdict may be reused.
    verified: Arc<std::sync::Mutex<VerifiedTokens>>,
}

/// SHA-256 of a token -> its principal, the time until which the verdict holds, and the
/// issuer key set it was verified with (a refreshed key set invalidates the verdict, so a
/// key the issuer dropped stops working at the next refresh).
type VerifiedTokens = std::collections::HashMap<[u8; 32], (Principal, u64, Option<Arc<Vec<Jwk>>>)>;

/// How long a verified token is trusted without re-checking its signature (bounded by its
/// own `exp`). A JWKS key removed by its issuer stops working after at most this long.
const VERIFIED_TTL_SECS: u64 = 300;
/// Cache bound: when full, the cache is cleared (tokens are simply verified again).
const VERIFIED_MAX: usize = 10_000;

impl std::fmt::Debug for TokenValidator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let issuers: Vec<&str> = self
            .issuers
            .iter()
            .map(|i| i.config.issuer.as_str())
            .collect();
        f.debug_struct("TokenValidator")
            .field("issuers", &issuers)
            .field("leeway", &self.leeway)
            .finish()
    }
}

fn parse_algorithm(alg: &str) -> Result<Algorithm, AuthError> {
    Ok(match alg {
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        other => return Err(AuthError::UnsupportedAlgorithm(clip(other))),
    })
}

fn rfc3339(secs: Option<u64>) -> String {
    secs.and_then(|s| i64::try_from(s).ok())
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "an unknown time".to_owned())
}

/// Unverified strings from a token end up in error messages: keep them short and printable.
fn clip(s: &str) -> String {
    let printable = s.chars().filter(|c| !c.is_control());
    let mut out: String = printable.clone().take(200).collect();
    if printable.count() > 200 {
        out.push_str("...");
    }
    out
}

fn decode_part(part: &str, what: &str) -> Result<Value, AuthError> {
    let bytes = b64::decode_url(part)
        .map_err(|_| AuthError::Malformed(format!("the {what} is not base64url")))?;
    let value: Value = serde_json::from_slice(&bytes)
        .map_err(|_| AuthError::Malformed(format!("the {what} is not JSON")))?;
    if value.is_object() {
        Ok(value)
    } else {
        Err(AuthError::Malformed(format!(
            "the {what} is not a JSON object"
        )))
    }
}

fn string_list(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    }
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
    fn snapshot(&self) -> (Option<Arc<Vec<Jwk>>>, Option<Instant>) {
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
    async fn candidate_keys(&self, kid: Option<&str>, alg: &str) -> Result<Vec<Jwk>, AuthError> {
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

impl TokenValidator {
    pub fn new(config: AuthConfig) -> Self {
        let prefixes = config
            .issuers
            .iter()
            .map(|i| (i.issuer.clone(), i.principal_prefix.clone()))
            .collect();
        let issuers = config
            .issuers
            .into_iter()
            .map(|issuer| {
                let audiences = if issuer.audiences.is_empty() {
                    vec![config.audience.clone()]
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
                Arc::new(IssuerState {
                    config: issuer,
                    audiences,
                    cache: RwLock::new(cache),
                    fetch_lock: tokio::sync::Mutex::new(()),
                })
            })
            .collect();
        Self {
            issuers: Arc::new(issuers),
            prefixes: Arc::new(prefixes),
            leeway: config.leeway_secs,
            verified: Default::default(),
        }
    }

    /// [`validate_uncached`](Self::validate_uncached), reusing the verdict for a token seen
    /// in the last few minutes (a signature check costs about three times an ES256 sign).
    pub async fn validate(&self, token: &str) -> Result<Principal, AuthError> {
        let digest: [u8; 32] =
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes())
                .as_ref()
                .try_into()
                .unwrap_or([0u8; 32]);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let hit = self
            .verified
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&digest)
            .cloned();
        if let Some((p, until, keys)) = hit
            && now < until
            && self.key_set(&p.issuer).as_ref().map(Arc::as_ptr) == keys.as_ref().map(Arc::as_ptr)
        {
            return Ok(p);
        }
        let principal = self.validate_uncached(token).await?;
        let until = principal.expires_at.min(now + VERIFIED_TTL_SECS);
        let keys = self.key_set(&principal.issuer);
        let mut cache = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= VERIFIED_MAX {
            cache.clear();
        }
        cache.insert(digest, (principal.clone(), until, keys));
        Ok(principal)
    }

    /// The key set currently held for `issuer`.
    fn key_set(&self, issuer: &str) -> Option<Arc<Vec<Jwk>>> {
        self.issuers
            .iter()
            .find(|s| s.config.issuer == issuer)
            .and_then(|s| {
                s.cache
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .keys
                    .clone()
            })
    }

    /// Checks a bearer token: algorithm, issuer, signature, `exp`, `nbf`, `aud`, `sub`.
    pub async fn validate_uncached(&self, token: &str) -> Result<Principal, AuthError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(AuthError::Malformed(format!(
                "longer than {MAX_TOKEN_LEN} bytes"
            )));
        }
        let parts: Vec<&str> = token.split('.').collect();
        if parts.len() != 3 {
            return Err(AuthError::Malformed(
                "a JWT has three dot-separated parts".into(),
            ));
        }
        let header = decode_part(parts[0], "header")?;
        let alg_name = header
            .get("alg")
            .and_then(Value::as_str)
            .ok_or_else(|| AuthError::Malformed("the header has no \"alg\"".into()))?;
        let alg = parse_algorithm(alg_name)?;
        if header.get("crit").is_some() {
            return Err(AuthError::Malformed(
                "critical header extensions are not supported".into(),
            ));
        }
        let kid = match header.get("kid") {
            None => None,
            Some(Value::String(k)) => Some(k.as_str()),
            Some(_) => return Err(AuthError::Malformed("\"kid\" is not a string".into())),
        };
        // Unverified claims: only to pick the issuer and to word errors.
        let claims = decode_part(parts[1], "payload")?;
        let iss = claims
            .get("iss")
            .and_then(Value::as_str)
            .ok_or_else(|| AuthError::MissingClaim("iss".into()))?;
        let state = self
            .issuers
            .iter()
            .find(|s| s.config.issuer == iss)
            .ok_or_else(|| AuthError::UnknownIssuer(clip(iss)))?;
        let candidates = state.candidate_keys(kid, alg_name).await?;

        let mut validation = Validation::new(alg);
        validation.leeway = self.leeway;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.validate_aud = true;
        validation.set_audience(&state.audiences);
        validation.set_issuer(&[&state.config.issuer]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);

        let mut last_err = AuthError::BadSignature(state.config.issuer.clone());
        for jwk in &candidates {
            let Ok(key) = DecodingKey::from_jwk(jwk) else {
                continue;
            };
            match jsonwebtoken::decode::<Value>(token, &key, &validation) {
                Ok(data) => return self.principal_from(&data.claims, &state.config.issuer),
                Err(e) => match e.kind() {
                    ErrorKind::InvalidSignature
                    | ErrorKind::InvalidAlgorithm
                    | ErrorKind::InvalidEcdsaKey
                    | ErrorKind::InvalidRsaKey(_)
                    | ErrorKind::InvalidKeyFormat => {
                        last_err = AuthError::BadSignature(state.config.issuer.clone());
                    }
                    ErrorKind::ExpiredSignature => {
                        return Err(AuthError::Expired(rfc3339(
                            claims.get("exp").and_then(Value::as_u64),
                        )));
                    }
                    ErrorKind::ImmatureSignature => {
                        return Err(AuthError::NotYetValid(rfc3339(
                            claims.get("nbf").and_then(Value::as_u64),
                        )));
                    }
                    ErrorKind::InvalidAudience => {
                        return Err(AuthError::WrongAudience {
                            got: string_list(claims.get("aud")),
                            expected: state.audiences.clone(),
                        });
                    }
                    ErrorKind::InvalidIssuer => {
                        return Err(AuthError::UnknownIssuer(iss.to_owned()));
                    }
                    ErrorKind::MissingRequiredClaim(c) => {
                        return Err(AuthError::MissingClaim(c.clone()));
                    }
                    ErrorKind::InvalidClaimFormat(c) => {
                        return Err(AuthError::MissingClaim(c.clone()));
                    }
                    _ => {
                        return Err(AuthError::Malformed(
                            "the token could not be decoded".into(),
                        ));
                    }
                },
            }
        }
        Err(last_err)
    }
}

impl TokenValidator {
    /// The principal of verified `claims` of `issuer`: its prefix and the subject, refused
    /// when it falls into another issuer's namespace.
    fn principal_from(&self, claims: &Value, issuer: &str) -> Result<Principal, AuthError> {
        let mut p = principal_from(claims, issuer)?;
        let set: Vec<IssuerPrefix<'_>> = self
            .prefixes
            .iter()
            .map(|(issuer, prefix)| IssuerPrefix {
                issuer,
                prefix: prefix.as_deref(),
            })
            .collect();
        p.subject = keystead_core::principal::principal(&set, issuer, &p.subject).map_err(
            |(owner, prefix)| AuthError::ForeignNamespace {
                subject: clip(&p.subject),
                issuer: issuer.to_owned(),
                owner: owner.to_owned(),
                prefix: prefix.to_owned(),
            },
        )?;
        Ok(p)
    }
}

/// The principal of verified claims, before the issuer's prefix is applied.
fn principal_from(claims: &Value, issuer: &str) -> Result<Principal, AuthError> {
    let non_empty = |name: &str| {
        claims
            .get(name)
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    let sub = non_empty("sub").ok_or_else(|| AuthError::MissingClaim("sub".into()))?;
    let expires_at = claims
        .get("exp")
        .and_then(Value::as_u64)
        .ok_or_else(|| AuthError::MissingClaim("exp".into()))?;
    Ok(Principal {
        subject: non_empty("oid").unwrap_or(sub),
        issuer: issuer.to_owned(),
        expires_at,
        kubernetes_pod: claims
            .pointer("/kubernetes.io/pod/name")
            .and_then(Value::as_str)
            .map(str::to_owned),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_bounds_untrusted_strings() {
        assert_eq!(clip("abc"), "abc");
        assert_eq!(clip("a\r\nb"), "ab");
        let long = "x".repeat(500);
        assert_eq!(clip(&long).len(), 203);
    }

    #[test]
    fn a_pod_bound_service_account_token_names_its_pod() {
        let bound = serde_json::json!({
            "sub": "system:serviceaccount:hsm:pool-partition", "exp": 10,
            "kubernetes.io": {"namespace": "hsm", "pod": {"name": "pool-1", "uid": "u"},
                              "serviceaccount": {"name": "pool-partition", "uid": "v"}},
        });
        let p = principal_from(&bound, "https://issuer").unwrap();
        assert_eq!(p.subject, "system:serviceaccount:hsm:pool-partition");
        assert_eq!(p.kubernetes_pod.as_deref(), Some("pool-1"));
        let plain = serde_json::json!({"sub": "alice", "exp": 10});
        assert_eq!(
            principal_from(&plain, "https://issuer")
                .unwrap()
                .kubernetes_pod,
            None
        );
    }

    #[test]
    fn only_asymmetric_algorithms_are_accepted() {
        for ok in [
            "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384",
        ] {
            assert!(parse_algorithm(ok).is_ok(), "{ok}");
        }
        for bad in [
            "none", "None", "HS256", "HS384", "HS512", "EdDSA", "ES512", "",
        ] {
            assert!(
                matches!(
                    parse_algorithm(bad),
                    Err(AuthError::UnsupportedAlgorithm(_))
                ),
                "{bad}"
            );
        }
    }
}
