//! Region replication (docs/regions.md): the runtime a partition holds for it — its region
//! configuration, the CAs of accepted regions, the link to the primary (a replica region),
//! what each replica region acknowledged here (a primary), snapshot sessions — and the
//! region view of `/admin/status` and `/metrics`. The primary's side of the protocol is
//! `peer::region`; the replica's is [`follow`].

pub mod follow;
pub mod link;
pub mod snapshot;

use crate::region_trust::RegionTrust;
use crate::state::PoolState;
use keystead_core::region::{
    AcceptedRegion, PeerRegionStatus, RegionConfig, RegionRole, RegionStatus,
};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// The epoch of every region until switchover and failover exist (docs/regions.md).
pub const EPOCH: u64 = 1;

/// What a partition holds for region replication.
#[derive(Default)]
pub struct Regions {
    /// `serve --region-config`: this region's name and (a replica) its primary.
    pub config: Option<RegionConfig>,
    /// The accepted regions' CAs (a primary's listener classifies client certificates).
    pub trust: Arc<RegionTrust>,
    /// A replica region: the link to the primary.
    pub link: Option<Arc<link::PrimaryLink>>,
    /// A primary: each replica region's last acknowledged position seen here, and when.
    pub peers: Mutex<BTreeMap<String, (u64, Instant)>>,
    /// A primary: consistent copies of the state being streamed to regions.
    pub sessions: snapshot::Sessions,
}

impl std::fmt::Debug for Regions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Regions")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Regions {
    /// The runtime of a partition with region configuration `config`.
    pub fn new(
        config: Option<RegionConfig>,
        cfg: &crate::config::PartitionConfig,
    ) -> anyhow::Result<Regions> {
        let link = match config.as_ref().and_then(|c| c.primary.as_ref()) {
            Some(p) => Some(Arc::new(link::PrimaryLink::new(cfg, p)?)),
            None => None,
        };
        Ok(Regions {
            config,
            link,
            ..Regions::default()
        })
    }

    /// A primary partition: region `name` asked for entries after `after`.
    pub fn acknowledged(&self, name: &str, after: u64) {
        self.peers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string(), (after, Instant::now()));
    }

    /// The region view of this partition (`applied` is its applied log index).
    pub fn status(&self, st: &PoolState, applied: u64) -> Option<RegionStatus> {
        let accepted: Vec<AcceptedRegion> = st
            .region
            .accepted
            .iter()
            .map(|(name, r)| AcceptedRegion {
                name: name.clone(),
                ca_sha256: ca_sha256(&r.ca_pem),
                added: r.added,
            })
            .collect();
        if self.config.is_none() && st.region.is_empty() {
            return None;
        }
        let mut s = RegionStatus {
            name: self.config.as_ref().map(|c| c.name.clone()),
            role: RegionRole::Primary,
            epoch: EPOCH,
            ..RegionStatus::default()
        };
        if st.region.replica.is_none() && self.link.is_none() {
            s.primary_index = applied;
        }
        if let Some(r) = &st.region.replica {
            s.role = RegionRole::Replica;
            s.epoch = r.epoch;
            s.primary = Some(r.primary.clone());
            s.joined = true;
            s.applied_primary_index = r.applied_primary_index;
        }
        if let Some(link) = &self.link {
            s.role = RegionRole::Replica;
            s.primary.get_or_insert_with(|| link.primary.name.clone());
            s.primary_endpoints = link.primary.endpoints.clone();
            let p = link.progress();
            s.primary_index = p.primary_index.max(s.applied_primary_index);
            s.lag_entries = s.primary_index.saturating_sub(s.applied_primary_index);
            s.lag_ms = if s.lag_entries == 0 {
                0
            } else {
                p.behind_since.map(millis_since).unwrap_or(0)
            };
            s.primary_reachable = p.reachable;
            s.last_contact_ms_ago = p.last_contact.map(millis_since);
        }
        s.regions = self
            .peers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(name, (ack, at))| PeerRegionStatus {
                name: name.clone(),
                acknowledged_index: *ack,
                lag_entries: applied.saturating_sub(*ack),
                last_seen_seconds_ago: Some(at.elapsed().as_secs()),
            })
            .collect();
        s.accepted = accepted;
        Some(s)
    }
}

fn millis_since(t: Instant) -> u64 {
    u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// SHA-256 (hex) of the first certificate of a PEM text (of the text itself if it holds none).
pub fn ca_sha256(pem_text: &str) -> String {
    use rustls::pki_types::pem::PemObject;
    let der = rustls::pki_types::CertificateDer::from_pem_slice(pem_text.as_bytes())
        .map(|c| c.to_vec())
        .unwrap_or_else(|_| pem_text.as_bytes().to_vec());
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &der))
}
