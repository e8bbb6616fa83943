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
pub mod keygen;
pub mod keyring;
pub mod local;
pub mod pki;
pub mod replica;
pub mod server;
pub mod state;
pub mod store;
pub mod tls;
