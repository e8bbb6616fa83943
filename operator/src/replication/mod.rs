//! Region replication of a ManagedHsm (`spec.replication`, docs/regions.md "The operator"):
//! `plan` decides (pure: the partitions' region configuration, the next admin call, the
//! status, the condition, the Events), `controller` reads and calls. The ManagedHsm
//! reconcile runs it; it points down only (`crd`, `conditions`, `context`, `pool`).

pub mod controller;
pub mod plan;
