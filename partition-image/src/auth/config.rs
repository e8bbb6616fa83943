//! What a pool trusts — its audience and its token issuers, each with where its keys come
//! from — and what checking a token yields: the [`Principal`], or why not ([`AuthError`]).

use std::path::PathBuf;

use keystead_core::error::ErrorBody;

/// A JSON Web Key Set (`{"keys":[...]}`), as served at an issuer's `jwks_uri`.
pub type Jwks = jsonwebtoken::jwk::JwkSet;
/// One JSON Web Key.
pub type Jwk = jsonwebtoken::jwk::Jwk;

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

/// Unverified strings from a token end up in error messages: keep them short and printable.
pub(super) fn clip(s: &str) -> String {
    let printable = s.chars().filter(|c| !c.is_control());
    let mut out: String = printable.clone().take(200).collect();
    if printable.count() > 200 {
        out.push_str("...");
    }
    out
}
