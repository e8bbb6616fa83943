//! A Keystead HSM partition: the Azure Key Vault-compatible data plane over HTTPS, the
//! security-domain lifecycle, local RBAC, the audit log, and the local pool runner.

#![forbid(unsafe_code)]

// The layers, from the edge down (each only imports the ones below it):
pub mod background; // long work off the runtime, at a lower CPU priority
pub mod consensus; // the Store: a pool of one's log, or the Raft group
pub mod http; // the data plane: listener, router, the request chain, thin handlers
pub mod peer; // the internal API between partitions (and the primary's region API)
pub mod region; // region replication: both sides (docs/regions.md)
pub mod service; // the domain work: keys, security domain, backup, members
pub mod state; // Command and PoolState::apply
// Beside them, used by every layer above:
pub mod audit;
pub mod auth;
pub mod config;
pub mod crypto;
pub mod fsutil;
pub(crate) mod jsonl;
pub mod keygen;
pub mod keyring;
pub mod local;
pub mod pki;
pub mod region_trust;
pub mod tls;

/// The backup service, under the path other crates have always used.
pub use service::backup;

/// Entry points for the fuzz targets (`fuzz/`) of parsers that are otherwise private. Not an
/// API: each item only forwards to the function the partition itself uses.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::service::keys::{
        KeyBlobError, iso8601_duration_secs, open_key_backup_blob, seal_key_backup_blob,
        split_key_backup_blob, validate_name,
    };

    /// The JWKS parser of the token validator (file and discovery sources).
    pub fn parse_jwks(bytes: &[u8]) -> Result<Vec<crate::auth::Jwk>, String> {
        crate::auth::parse_jwks(bytes)
    }
}
