//! Region replication's services (docs/regions.md): a replica region following its primary
//! ([`follow`]), the planned switchover and failover ([`switchover`]) and the other regions
//! re-pointed after a failover ([`failover`]). The runtime they
//! drive (configuration, link to the primary, accepted regions' CAs, region status) is
//! `crate::region`, below the services; the primary's side of the protocol is `peer::region`.

pub mod failover;
pub mod follow;
pub mod lease;
pub mod switchover;
