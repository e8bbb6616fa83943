//! Keystead's shared library: the one place for wire types and formats used by the
//! operator, the partition and the `kubectl hsm` plugin.
//!
//! - [`b64`]: base64url (no padding) helpers used by every JSON field of the Key Vault API.
//! - [`error`]: the Key Vault error body.
//! - [`members`]: the membership admin API of a replicated pool.
//! - [`log`]: the log-filter variable of every binary (`KEYSTEAD_LOG`).
//! - [`principal`]: principal namespaces of the trusted token issuers.
//! - [`status`]: a partition's `GET /admin/status`.
//! - [`pool_file`]: the pool file of a local pool.
//! - [`region`]: region replication (configuration, the primary's region API, status).

pub mod aead;
pub mod audit;
mod audit_record;
pub mod b64;
pub mod backup_format;
pub mod backup_job;
#[cfg(feature = "store")]
pub mod backup_read;
pub mod error;
pub mod kdf;
pub mod keys;
pub mod local_issuer;
pub mod log;
pub mod members;
pub mod partition_config;
pub mod pool_file;
pub mod principal;
pub mod rbac;
pub mod region;
pub mod region_token;
pub mod sd;
pub mod status;
#[cfg(feature = "store")]
pub mod store;
