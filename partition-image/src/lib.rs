//! A Keystead HSM partition: the Azure Key Vault-compatible data plane over HTTPS, the
//! security-domain lifecycle, local RBAC, the audit log, and the local pool runner.

#![forbid(unsafe_code)]

pub mod api;
pub mod app;
pub mod audit;
pub mod auth;
pub mod backup;
pub mod config;
pub mod crypto;
pub(crate) mod jsonl;
pub mod keygen;
pub mod keyring;
pub mod local;
pub mod pki;
pub mod replica;
pub mod server;
pub mod state;
pub mod store;
pub mod tls;

/// Entry points for the fuzz targets (`fuzz/`) of parsers that are otherwise private. Not an
/// API: each item only forwards to the function the partition itself uses.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::api::keys::{
        KeyBlobError, iso8601_duration_secs, open_key_backup_blob, seal_key_backup_blob,
        split_key_backup_blob, validate_name,
    };

    /// The JWKS parser of the token validator (file and discovery sources).
    pub fn parse_jwks(bytes: &[u8]) -> Result<Vec<crate::auth::Jwk>, String> {
        crate::auth::parse_jwks(bytes)
    }
}
