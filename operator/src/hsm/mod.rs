//! The ManagedHsm controller (`controller`: the pipeline of one reconcile), its reads
//! (`observe`), its writes (`write`), soft delete and purge (`soft_delete`), and its pure
//! plan (`plan/`). It uses `pool`, `context` and the Backup plan (a pool's status reports its
//! backups); nothing below imports it.

pub mod controller;
pub mod observe;
pub mod plan;
pub mod soft_delete;
pub mod write;
