//! Client authentication: bearer JWTs over TLS.
//!
//! - [`challenge_header`] / [`bearer_token`]: the 401 challenge the Azure SDKs expect and the
//!   token extraction, both to be used *before* the request body is looked at.
//! - [`TokenValidator`]: checks signature, issuer, audience, expiry and not-before against
//!   the issuers configured for the pool (static JWKS, a JWKS file, or OIDC discovery — which
//!   covers Kubernetes service-account tokens).
//! - [`LocalIssuer`]: the generated ES256 issuer of local mode (a development credential).
//!
//! The principal id is the token's `oid` claim when present (what Azure role assignments
//! use), else its `sub`. See `docs/authentication.md`.

mod config;
mod issuer_keys;
mod local;
mod validator;

pub use config::{AuthConfig, AuthError, IssuerConfig, Jwk, Jwks, JwksSource, Principal};
pub use issuer_keys::JWKS_REFRESH_MIN_INTERVAL;
pub(crate) use issuer_keys::parse_jwks;
pub use local::{LocalIssuer, LocalIssuerError};
pub use validator::TokenValidator;

/// The `WWW-Authenticate` value of a 401: `Bearer authorization="<authority>", resource="<resource>"`.
///
/// The Azure SDKs take the tenant from the first path segment of `authority` and request a
/// token for `<resource>/.default`.
pub fn challenge_header(authority: &str, resource: &str) -> String {
    let clean = |s: &str| s.replace(['"', '\\', '\r', '\n'], "");
    format!(
        "Bearer authorization=\"{}\", resource=\"{}\"",
        clean(authority),
        clean(resource)
    )
}

/// The token of an `Authorization: Bearer <token>` header (scheme case-insensitive), or
/// `None` when the header is missing, not valid text, not Bearer, or empty.
pub fn bearer_token(headers: &axum::http::HeaderMap) -> Option<&str> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .trim();
    let (scheme, token) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = token.trim();
    (!token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{HeaderMap, HeaderValue, header::AUTHORIZATION};

    #[test]
    fn challenge_has_the_sdk_shape() {
        assert_eq!(
            challenge_header("https://login.example/tenant", "https://hsm.example"),
            "Bearer authorization=\"https://login.example/tenant\", resource=\"https://hsm.example\""
        );
        assert_eq!(
            challenge_header("a\"b", "c\r\nd"),
            "Bearer authorization=\"ab\", resource=\"cd\""
        );
    }

    #[test]
    fn bearer_token_extraction() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer_token(&h), None);
        h.insert(
            AUTHORIZATION,
            HeaderValue::from_static("Bearer abc.def.ghi"),
        );
        assert_eq!(bearer_token(&h), Some("abc.def.ghi"));
        h.insert(AUTHORIZATION, HeaderValue::from_static("bearer   xyz "));
        assert_eq!(bearer_token(&h), Some("xyz"));
        h.insert(
            AUTHORIZATION,
            HeaderValue::from_static("Basic dXNlcjpwdw=="),
        );
        assert_eq!(bearer_token(&h), None);
        h.insert(AUTHORIZATION, HeaderValue::from_static("Bearer "));
        assert_eq!(bearer_token(&h), None);
    }
}
