//! The local-mode token issuer: an ES256 key generated on first start and kept at
//! `<dir>/issuer-key.p8` (PKCS#8, mode 0600). The partition trusts it (its
//! `auth::LocalIssuer` adds the JWKS and issuer configuration); `kubectl hsm token` mints
//! with it.
//!
//! This is a **development credential** for local mode, not HSM key material: whoever can read
//! the file can mint tokens for any principal of the local pool. Production pools trust
//! external issuers (Kubernetes service-account tokens, OIDC) instead.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::b64;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use serde_json::{Value, json};
use zeroize::Zeroize;

/// File name of the local issuer's signing key inside its directory.
pub const ISSUER_KEY_FILE: &str = "issuer-key.p8";

#[derive(Debug, thiserror::Error)]
pub enum LocalIssuerError {
    #[error("cannot read or write the local issuer key {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the local issuer key {path} is not a PKCS#8 P-256 key; remove it to generate a new one (tokens issued with the old key stop working)"
    )]
    BadKey { path: PathBuf },
    #[error("generating or using the local issuer key failed")]
    Crypto,
    #[error("token lifetime must be at least one second")]
    InvalidTtl,
    #[error("claims must be a JSON object")]
    InvalidClaims,
}

/// The generated issuer of local mode.
pub struct LocalIssuer {
    issuer: String,
    kid: String,
    tenant: String,
    key: EcdsaKeyPair,
    x: String,
    y: String,
}

impl std::fmt::Debug for LocalIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalIssuer")
            .field("issuer", &self.issuer)
            .field("kid", &self.kid)
            .field("key", &"<redacted>")
            .finish()
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl LocalIssuer {
    /// Loads `dir/issuer-key.p8`, or generates it (mode 0600) on first use.
    pub fn load_or_create(dir: &Path, issuer_url: &str) -> Result<Self, LocalIssuerError> {
        let path = dir.join(ISSUER_KEY_FILE);
        let io = |source| LocalIssuerError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let mut der = match OpenOptions::new().read(true).open(&path) {
            Ok(mut f) => {
                let mode = f.metadata().map_err(io)?.permissions().mode();
                if mode & 0o077 != 0 {
                    f.set_permissions(std::fs::Permissions::from_mode(0o600))
                        .map_err(io)?;
                }
                let mut buf = Vec::new();
                f.read_to_end(&mut buf).map_err(io)?;
                buf
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING)
                    .map_err(|_| LocalIssuerError::Crypto)?;
                let doc = key.to_pkcs8v1().map_err(|_| LocalIssuerError::Crypto)?;
                let buf = doc.as_ref().to_vec();
                let mut f = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                    .map_err(io)?;
                f.write_all(&buf).and_then(|()| f.sync_all()).map_err(io)?;
                buf
            }
            Err(e) => return Err(io(e)),
        };
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der);
        der.zeroize();
        let key = key.map_err(|_| LocalIssuerError::BadKey { path: path.clone() })?;
        let point = key.public_key().as_ref();
        if point.len() != 65 || point[0] != 4 {
            return Err(LocalIssuerError::BadKey { path });
        }
        let x = b64::encode_url(&point[1..33]);
        let y = b64::encode_url(&point[33..65]);
        // RFC 7638 thumbprint as key id.
        let thumb_input = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
        let kid = b64::encode_url(aws_lc_rs::digest::digest(
            &aws_lc_rs::digest::SHA256,
            thumb_input.as_bytes(),
        ));
        let issuer = issuer_url.trim_end_matches('/').to_owned();
        let h = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, issuer.as_bytes());
        let mut t = [0u8; 16];
        t.copy_from_slice(&h.as_ref()[..16]);
        let tenant = uuid::Builder::from_random_bytes(t).into_uuid().to_string();
        Ok(Self {
            issuer,
            kid,
            tenant,
            key,
            x,
            y,
        })
    }

    /// The `iss` of issued tokens (the URL given, without a trailing slash).
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The `kid` of the signing key (its RFC 7638 thumbprint).
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The `tid` claim of issued tokens (derived from the issuer URL).
    pub fn tenant_id(&self) -> &str {
        &self.tenant
    }

    /// Issues a token for `subject` (also its `oid`) valid for `ttl` from now.
    pub fn issue(
        &self,
        subject: &str,
        audience: &str,
        ttl: Duration,
    ) -> Result<String, LocalIssuerError> {
        if ttl.as_secs() == 0 {
            return Err(LocalIssuerError::InvalidTtl);
        }
        let now = now_secs();
        self.sign_claims(&json!({
            "iss": self.issuer,
            "sub": subject,
            "oid": subject,
            "aud": audience,
            "tid": self.tenant,
            "iat": now,
            "nbf": now,
            "exp": now.saturating_add(ttl.as_secs()),
            "jti": uuid::Uuid::new_v4().to_string(),
        }))
    }

    /// Signs arbitrary claims with the issuer key (ES256, `kid` set). For tools and tests
    /// that need unusual tokens; [`LocalIssuer::issue`] is the normal path.
    pub fn sign_claims(&self, claims: &Value) -> Result<String, LocalIssuerError> {
        if !claims.is_object() {
            return Err(LocalIssuerError::InvalidClaims);
        }
        let header = json!({"alg": "ES256", "typ": "JWT", "kid": self.kid});
        let signing_input = format!(
            "{}.{}",
            b64::encode_url(header.to_string()),
            b64::encode_url(claims.to_string())
        );
        let sig = self
            .key
            .sign(&SystemRandom::new(), signing_input.as_bytes())
            .map_err(|_| LocalIssuerError::Crypto)?;
        Ok(format!("{signing_input}.{}", b64::encode_url(sig.as_ref())))
    }

    /// The public key as one JSON Web Key (ES256).
    pub fn jwk(&self) -> Value {
        json!({
            "kty": "EC", "crv": "P-256", "x": self.x, "y": self.y,
            "kid": self.kid, "alg": "ES256", "use": "sig",
        })
    }

    /// An OpenID discovery document for this issuer, pointing at `jwks_uri`.
    pub fn openid_configuration(&self, jwks_uri: &str) -> Value {
        json!({
            "issuer": self.issuer,
            "jwks_uri": jwks_uri,
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["ES256"],
        })
    }
}
