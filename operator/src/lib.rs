//! The Keystead operator library, in layers that only point down (docs/architecture.md):
//! `run` starts the controllers; one folder per resource family — `hsm` (ManagedHsm),
//! `security_domain` (SecurityDomain), `backup` (Backup, Restore, BackupSchedule), each a
//! controller beside its pure plan, and `replication` (a ManagedHsm's region topology, run
//! by the ManagedHsm reconcile); below them `context` (the shared context and error),
//! `cache` (the shared watch caches), `pool` (names, addresses and the HTTPS client of a pool), `conditions`, `metrics`,
//! `leader`; at the ground the API contract `crd` and its generator `crdgen`.

#![forbid(unsafe_code)]

pub mod backup;
pub mod cache;
pub mod conditions;
pub mod context;
pub mod crd;
pub mod crdgen;
pub mod hsm;
pub mod leader;
pub mod metrics;
pub mod pool;
pub mod replication;
pub mod run;
pub mod security_domain;
