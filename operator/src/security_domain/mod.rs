//! The SecurityDomain controller (`controller`: the Download and Upload ceremonies carried
//! out) and its pure plan (`plan`: every decision of a reconcile over what was observed).
//! It uses `pool` and `context`; it imports neither the ManagedHsm nor the Backup
//! controllers.

pub mod controller;
pub mod plan;
