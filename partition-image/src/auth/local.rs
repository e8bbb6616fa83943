//! The local-mode token issuer as the partition trusts it: the signing key and tokens are
//! `keystead_core::local_issuer` (so `kubectl hsm token` needs only the core library); this
//! adds its JWKS and the issuer configuration that trusts it.
//!
//! This is a **development credential** for local mode, not HSM key material: whoever can read
//! the key file can mint tokens for any principal of the local pool. Production pools trust
//! external issuers (Kubernetes service-account tokens, OIDC) instead.

use std::path::Path;

pub use keystead_core::local_issuer::LocalIssuerError;

use super::config::{IssuerConfig, Jwks, JwksSource};

/// The generated issuer of local mode (every method of
/// [`keystead_core::local_issuer::LocalIssuer`] is available through `Deref`).
#[derive(Debug)]
pub struct LocalIssuer(keystead_core::local_issuer::LocalIssuer);

impl std::ops::Deref for LocalIssuer {
    type Target = keystead_core::local_issuer::LocalIssuer;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl LocalIssuer {
    /// Load the issuer key from `dir`, or generate and store it there.
    pub fn load_or_create(dir: &Path, issuer_url: &str) -> Result<Self, LocalIssuerError> {
        keystead_core::local_issuer::LocalIssuer::load_or_create(dir, issuer_url).map(LocalIssuer)
    }

    /// The public key as a JWKS.
    pub fn jwks(&self) -> Jwks {
        Jwks {
            keys: serde_json::from_value(self.jwk())
                .ok()
                .into_iter()
                .collect(),
        }
    }

    /// An [`IssuerConfig`] that trusts this issuer with its static JWKS (pool audience, no
    /// principal prefix).
    pub fn issuer_config(&self) -> IssuerConfig {
        IssuerConfig {
            issuer: self.issuer().to_string(),
            audiences: Vec::new(),
            jwks: JwksSource::Static(self.jwks()),
            principal_prefix: None,
        }
    }
}
