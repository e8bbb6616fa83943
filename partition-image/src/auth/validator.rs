//! Bearer JWT validation against the pool's configured issuers: the token's form and
//! algorithm, its signature over the issuer's keys (`issuer_keys`), `exp`, `nbf`, `aud`, the
//! principal it names, and a short-lived cache of verified tokens.

use std::sync::Arc;

use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};
use keystead_core::b64;
use keystead_core::principal::IssuerPrefix;
use serde_json::Value;

use super::config::{AuthConfig, AuthError, Principal, clip};
use super::issuer_keys::IssuerState;

/// Longest token accepted.
const MAX_TOKEN_LEN: usize = 16 * 1024;

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
            .map(|issuer| Arc::new(IssuerState::new(issuer, &config.audience)))
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
            .and_then(|s| s.snapshot().0)
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
