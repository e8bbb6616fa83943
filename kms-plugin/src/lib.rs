//! keystead-kms-plugin: a Kubernetes KMS v2 plugin whose key-encryption key is a key of a
//! Keystead pool (docs/kms-plugin.md). `proto` is the gRPC interface, `pool` the Key Vault
//! client with failover, `plugin` the service between them, `serve` the unix-socket server.

pub mod plugin;
pub mod pool;
pub mod proto;
pub mod serve;

/// The gRPC library the interface is built on (its `Status` and `Code` for clients).
pub use tonic;
