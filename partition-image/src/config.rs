//! The partition's configuration: the shared contract `keystead_core::partition_config`
//! (the operator and the local runner write it, the partition reads it).

pub use keystead_core::partition_config::*;
