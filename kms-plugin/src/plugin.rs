//! The KMS v2 service: Status reads the pool key's current version (that is `key_id`), Encrypt
//! wraps the API server's DEK seed with it, Decrypt unwraps with the version `key_id` names.
//! Input is checked here before anything reaches the pool; pool errors become gRPC codes once,
//! in [`to_status`]. Nothing secret is logged or put in an error.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tonic::{Request, Response, Status};

use crate::pool::{PoolClient, PoolError};
use crate::proto::*;

/// The annotation naming the wrap algorithm (not secret; what Decrypt needs besides `key_id`).
pub const ALG_ANNOTATION: &str = "alg.kms.keystead.io";
/// The largest DEK / seed Encrypt accepts (the API server sends 32 bytes).
pub const MAX_PLAINTEXT: usize = 512;
/// The largest ciphertext (the KMS v2 contract: under 1 kB).
pub const MAX_CIPHERTEXT: usize = 1024;
/// The largest gRPC request the codec decodes (annotations may reach 32 kB).
pub const MAX_MESSAGE: usize = 64 * 1024;
/// The longest `key_id` (the KMS v2 contract: under 1 kB).
const MAX_KEY_ID: usize = 1023;

/// The wrap algorithm, from the pool key's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WrapAlg {
    /// AES key wrap (RFC 3394) with a 256-bit oct-HSM key.
    A256Kw,
    /// RSA-OAEP with SHA-256 (an RSA-HSM key).
    RsaOaep256,
}

impl WrapAlg {
    pub fn as_str(self) -> &'static str {
        match self {
            WrapAlg::A256Kw => "A256KW",
            WrapAlg::RsaOaep256 => "RSA-OAEP-256",
        }
    }

    pub fn parse(s: &str) -> Option<WrapAlg> {
        match s {
            "A256KW" => Some(WrapAlg::A256Kw),
            "RSA-OAEP-256" => Some(WrapAlg::RsaOaep256),
            _ => None,
        }
    }

    /// The algorithm for a key type (`kty`), or why the key cannot wrap.
    pub fn for_kty(kty: &str) -> Result<WrapAlg, String> {
        match kty {
            "oct-HSM" | "oct" => Ok(WrapAlg::A256Kw),
            "RSA-HSM" | "RSA" => Ok(WrapAlg::RsaOaep256),
            other => Err(format!(
                "a {other} key cannot wrap keys; configure an oct-HSM (256-bit) or RSA-HSM key"
            )),
        }
    }
}

/// `key_id`: the pool key's name and version (`<name>/<version>`), not secret and stable
/// across partitions (a `kid` URL would name whichever partition answered).
pub fn key_id(name: &str, version: &str) -> String {
    format!("{name}/{version}")
}

/// Splits a `key_id` into the key it names and its version, if that key is one this plugin
/// decrypts with (`keys`: the configured key first, then the `--decrypt-key` keys).
pub fn parse_key_id<'a>(key_id: &'a str, keys: &[String]) -> Result<(&'a str, &'a str), Status> {
    let listed = keys.join(", ");
    let Some((name, version)) = key_id.split_once('/') else {
        return Err(Status::invalid_argument(format!(
            "unknown key id {:?}: expected <key name>/<version> of key {listed}",
            truncate(key_id)
        )));
    };
    let version_ok = !version.is_empty()
        && version.len() <= 64
        && version
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !version_ok {
        return Err(Status::invalid_argument(format!(
            "unknown key id {:?}: not <key name>/<version> (the version is 1 to 64 letters, digits, - or _)",
            truncate(key_id)
        )));
    }
    if !keys.iter().any(|k| k == name) {
        return Err(Status::invalid_argument(format!(
            "unknown key id {:?}: this plugin decrypts only with versions of key {listed}; data written under another pool key needs that key named with --decrypt-key",
            truncate(key_id)
        )));
    }
    Ok((name, version))
}

/// The version from a `kid` (`https://host/keys/<name>/<version>`).
fn version_of_kid(kid: &str) -> Option<&str> {
    let mut parts = kid.trim_end_matches('/').rsplit('/');
    let version = parts.next()?;
    let _name = parts.next()?;
    (parts.next()? == "keys" && !version.is_empty()).then_some(version)
}

fn truncate(s: &str) -> String {
    s.chars().take(80).collect()
}

/// The plugin: the pool key it encrypts with, the keys it decrypts with, a pool client and the
/// time budget of one call.
#[derive(Debug)]
pub struct Plugin {
    pool: PoolClient,
    key_name: String,
    /// `key_name` first, then keys data was written under before the plugin moved to
    /// `key_name` (`--decrypt-key`): Decrypt only.
    decrypt_keys: Vec<String>,
    budget: Duration,
    /// The wrap algorithm of the key, learnt from its type by Status or the first Encrypt
    /// (a rotation keeps the key type).
    alg: Mutex<Option<WrapAlg>>,
}

impl Plugin {
    /// `budget`: the longest a call may take in all (below the API server's KMS `timeout`);
    /// a shorter `grpc-timeout` from the caller wins.
    /// `older_keys`: pool keys Decrypt also accepts (a move to a new key), never used to
    /// encrypt.
    pub fn new(
        pool: PoolClient,
        key_name: String,
        older_keys: Vec<String>,
        budget: Duration,
    ) -> Arc<Self> {
        let mut decrypt_keys = vec![key_name.clone()];
        for k in older_keys {
            if !decrypt_keys.contains(&k) {
                decrypt_keys.push(k);
            }
        }
        Arc::new(Self {
            pool,
            key_name,
            decrypt_keys,
            budget,
            alg: Mutex::new(None),
        })
    }

    pub fn key_name(&self) -> &str {
        &self.key_name
    }

    fn deadline<T>(&self, req: &Request<T>) -> Instant {
        let asked = req
            .metadata()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout)
            // Leave the caller time to receive the answer.
            .map(|d| d.mul_f64(0.9));
        Instant::now() + asked.map_or(self.budget, |d| d.min(self.budget))
    }

    /// The current version of the key and its algorithm (`GET /keys/{name}`).
    async fn current(&self, deadline: Instant) -> Result<(String, WrapAlg), Status> {
        let bundle = self
            .pool
            .get_key(&self.key_name, deadline)
            .await
            .map_err(|e| to_status(&self.key_name, e))?;
        let key = bundle.key.unwrap_or_default();
        let kid = key.kid.unwrap_or_default();
        let version = version_of_kid(&kid).ok_or_else(|| {
            Status::internal(format!(
                "the pool answered a key without a version: {kid:?}"
            ))
        })?;
        let alg = WrapAlg::for_kty(key.kty.as_deref().unwrap_or(""))
            .map_err(|m| Status::failed_precondition(format!("key {}: {m}", self.key_name)))?;
        if bundle.attributes.and_then(|a| a.enabled) == Some(false) {
            return Err(Status::failed_precondition(format!(
                "key {} (version {version}) is disabled in the pool",
                self.key_name
            )));
        }
        if let Some(ops) = &key.key_ops
            && !ops.iter().any(|o| o == "wrapKey")
        {
            return Err(Status::failed_precondition(format!(
                "key {} does not allow wrapKey (key_ops {ops:?})",
                self.key_name
            )));
        }
        *self.alg.lock().unwrap_or_else(|p| p.into_inner()) = Some(alg);
        Ok((version.to_string(), alg))
    }
}

impl KeyManagementService for Plugin {
    /// Healthy when the pool answers for the key; an unreachable pool is an error (not a
    /// response with a non-`ok` healthz), because the API server extends the life of its
    /// write DEK on any Status that carries a key id — an error lets its 3-minute bound on
    /// writes without a reachable KMS apply.
    async fn status(
        &self,
        req: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        let deadline = self.deadline(&req);
        match self.current(deadline).await {
            Ok((version, _)) => Ok(Response::new(StatusResponse {
                version: "v2".into(),
                healthz: "ok".into(),
                key_id: key_id(&self.key_name, &version),
            })),
            Err(e) => {
                tracing::warn!(code = ?e.code(), message = e.message(), "Status: unhealthy");
                Err(e)
            }
        }
    }

    async fn encrypt(
        &self,
        req: Request<EncryptRequest>,
    ) -> Result<Response<EncryptResponse>, Status> {
        let deadline = self.deadline(&req);
        let EncryptRequest { plaintext, uid } = req.into_inner();
        let result = async {
            if plaintext.is_empty() || plaintext.len() > MAX_PLAINTEXT {
                return Err(Status::invalid_argument(format!(
                    "the plaintext is {} bytes; a data-encryption key of 1..={MAX_PLAINTEXT} bytes is expected",
                    plaintext.len()
                )));
            }
            let cached = *self.alg.lock().unwrap_or_else(|p| p.into_inner());
            let alg = match cached {
                Some(a) => a,
                None => self.current(deadline).await?.1,
            };
            if alg == WrapAlg::A256Kw && (plaintext.len() < 16 || plaintext.len() % 8 != 0) {
                return Err(Status::invalid_argument(format!(
                    "A256KW wraps keys of 16 bytes or more in multiples of 8; got {} bytes",
                    plaintext.len()
                )));
            }
            let (ciphertext, kid) = self
                .pool
                .wrap(&self.key_name, None, alg.as_str(), &plaintext, deadline)
                .await
                .map_err(|e| to_status(&self.key_name, e))?;
            let version = version_of_kid(&kid).ok_or_else(|| {
                Status::internal(format!("the pool's wrapkey answer names no version: {kid:?}"))
            })?;
            if ciphertext.len() > MAX_CIPHERTEXT {
                return Err(Status::internal(format!(
                    "the wrapped key is {} bytes, over the KMS v2 limit of 1 kB; use a smaller key",
                    ciphertext.len()
                )));
            }
            let id = key_id(&self.key_name, version);
            if id.len() > MAX_KEY_ID {
                return Err(Status::internal("the key id is over the 1 kB limit"));
            }
            Ok(EncryptResponse {
                ciphertext,
                key_id: id,
                annotations: HashMap::from([(
                    ALG_ANNOTATION.to_string(),
                    alg.as_str().as_bytes().to_vec(),
                )]),
            })
        }
        .await;
        log_outcome("Encrypt", &uid, &result);
        result.map(Response::new)
    }

    async fn decrypt(
        &self,
        req: Request<DecryptRequest>,
    ) -> Result<Response<DecryptResponse>, Status> {
        let deadline = self.deadline(&req);
        let DecryptRequest {
            ciphertext,
            uid,
            key_id,
            annotations,
        } = req.into_inner();
        let result = async {
            let (key_name, version) = parse_key_id(&key_id, &self.decrypt_keys)?;
            if ciphertext.is_empty() || ciphertext.len() > MAX_CIPHERTEXT {
                return Err(Status::invalid_argument(format!(
                    "the ciphertext is {} bytes; 1..={MAX_CIPHERTEXT} bytes are expected",
                    ciphertext.len()
                )));
            }
            let alg = annotations
                .get(ALG_ANNOTATION)
                .and_then(|v| std::str::from_utf8(v).ok())
                .and_then(WrapAlg::parse)
                .ok_or_else(|| {
                    Status::invalid_argument(format!(
                        "annotation {ALG_ANNOTATION} is missing or not A256KW / RSA-OAEP-256: this ciphertext was not made by the Keystead plugin"
                    ))
                })?;
            let plaintext = self
                .pool
                .unwrap(key_name, version, alg.as_str(), &ciphertext, deadline)
                .await
                .map_err(|e| match e {
                    PoolError::Refused { status: 400, message, .. } => Status::invalid_argument(format!(
                        "the ciphertext does not unwrap under key {key_id} ({}): it was altered or made with another key; the pool said: {message}",
                        alg.as_str()
                    )),
                    other => to_status(key_name, other),
                })?;
            Ok(DecryptResponse { plaintext })
        }
        .await;
        log_outcome("Decrypt", &uid, &result);
        result.map(Response::new)
    }
}

fn log_outcome<T>(method: &str, uid: &str, result: &Result<T, Status>) {
    match result {
        Ok(_) => tracing::debug!(method, uid, "ok"),
        Err(e) => tracing::warn!(method, uid, code = ?e.code(), message = e.message(), "failed"),
    }
}

/// A pool error as a gRPC status (the one place where errors change form).
pub fn to_status(key: &str, e: PoolError) -> Status {
    match e {
        PoolError::Unreachable(why) => {
            Status::unavailable(format!("no partition of the Keystead pool answered: {why}"))
        }
        PoolError::Token(..) => Status::unauthenticated(e.to_string()),
        PoolError::Refused {
            status: 401 | 403, ..
        } => Status::permission_denied(format!(
            "{e}; give the plugin's identity the Managed HSM Crypto User role on /keys/{key}"
        )),
        PoolError::Refused { status: 404, .. } => Status::not_found(format!(
            "{e}; the key or key version is not in the pool (deleted or purged?)"
        )),
        PoolError::Refused { status: 400, .. } => Status::invalid_argument(e.to_string()),
        PoolError::Refused { .. } => Status::failed_precondition(e.to_string()),
        PoolError::BadAnswer(..) => Status::internal(e.to_string()),
    }
}

/// `grpc-timeout` (an integer of at most 8 digits and a unit H, M, S, m, u or n).
pub fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (n, unit) = v.split_at(v.len() - 1);
    let n: u64 = n.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_ids_of_other_keys_or_malformed_are_refused() {
        let k1 = ["k1".to_string()];
        assert_eq!(parse_key_id("k1/abc-123", &k1).unwrap(), ("k1", "abc-123"));
        for bad in ["", "k1", "k2/abc", "k1/", "k1/a/b", "k1/../x", "k1/a b"] {
            let e = parse_key_id(bad, &k1).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad}");
            assert!(e.message().contains("unknown key id"), "{}", e.message());
        }
        let e = parse_key_id("k2/abc", &k1).unwrap_err();
        assert!(e.message().contains("--decrypt-key"), "{}", e.message());
        let long = format!("k1/{}", "a".repeat(5000));
        let e = parse_key_id(&long, &k1).unwrap_err();
        assert!(e.message().len() < 300, "the error quotes a bounded prefix");
    }

    #[test]
    fn key_ids_of_older_keys_named_for_decrypt_are_accepted() {
        let keys = ["new".to_string(), "old".to_string()];
        assert_eq!(parse_key_id("old/v1", &keys).unwrap(), ("old", "v1"));
        assert_eq!(parse_key_id("new/v2", &keys).unwrap(), ("new", "v2"));
        assert!(parse_key_id("other/v1", &keys).is_err());
    }

    #[test]
    fn versions_come_from_kids() {
        assert_eq!(
            version_of_kid("https://127.0.0.1:1/keys/k1/0123abcd"),
            Some("0123abcd")
        );
        assert_eq!(version_of_kid("https://h/keys/k1"), None);
        assert_eq!(version_of_kid(""), None);
    }

    #[test]
    fn algorithms_follow_the_key_type() {
        assert_eq!(WrapAlg::for_kty("oct-HSM"), Ok(WrapAlg::A256Kw));
        assert_eq!(WrapAlg::for_kty("RSA-HSM"), Ok(WrapAlg::RsaOaep256));
        assert!(WrapAlg::for_kty("EC-HSM").is_err());
        for a in [WrapAlg::A256Kw, WrapAlg::RsaOaep256] {
            assert_eq!(WrapAlg::parse(a.as_str()), Some(a));
        }
        assert_eq!(WrapAlg::parse("RSA1_5"), None);
    }

    #[test]
    fn grpc_timeouts_parse() {
        assert_eq!(
            parse_grpc_timeout("2999m"),
            Some(Duration::from_millis(2999))
        );
        assert_eq!(parse_grpc_timeout("3S"), Some(Duration::from_secs(3)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        for bad in ["", "m", "12", "123456789m", "-1S", "5x"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad}");
        }
    }

    #[test]
    fn pool_errors_map_to_codes_without_secrets() {
        use tonic::Code;
        let cases = [
            (PoolError::Unreachable("x".into()), Code::Unavailable),
            (
                PoolError::Refused {
                    status: 403,
                    code: "Forbidden".into(),
                    message: "no".into(),
                },
                Code::PermissionDenied,
            ),
            (
                PoolError::Refused {
                    status: 404,
                    code: "KeyNotFound".into(),
                    message: "no".into(),
                },
                Code::NotFound,
            ),
            (
                PoolError::Refused {
                    status: 400,
                    code: "BadParameter".into(),
                    message: "no".into(),
                },
                Code::InvalidArgument,
            ),
        ];
        for (e, code) in cases {
            assert_eq!(to_status("k1", e).code(), code);
        }
    }
}
