//! Region replication (docs/regions.md): the runtime a partition holds for it — its region
//! configuration, the CAs of accepted regions, the link to the primary it follows (a replica
//! region, or a primary demoted for a switchover), what each replica region acknowledged
//! here (a primary), snapshot sessions — and the region view of `/admin/status` and
//! `/metrics`. Below the services: the primary's side of the protocol is `peer::region`;
//! the replica's is `service::regions::follow`; switchover is `service::regions::switchover`.

pub mod lease;
pub mod link;
pub mod snapshot;

use crate::consensus::Store;
use crate::region_trust::RegionTrust;
use crate::state::PoolState;
use keystead_core::region::{
    AcceptedRegion, PeerRegionStatus, RegionConfig, RegionRole, RegionStatus,
};
use link::{PrimaryLink, Target};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

/// What a partition holds for region replication.
#[derive(Default)]
pub struct Regions {
    /// `serve --region-config`: this region's name and (a replica) its primary.
    pub config: Option<RegionConfig>,
    /// The configured primary, its CA read at start.
    configured: Option<Target>,
    /// This partition's TLS files (its client certificate towards a primary).
    tls: Option<crate::config::TlsFiles>,
    /// The accepted regions' CAs (a primary's listener classifies client certificates).
    pub trust: Arc<RegionTrust>,
    /// The link to the primary this pool follows now (see [`Regions::reconcile`]).
    link: RwLock<Option<Arc<PrimaryLink>>>,
    /// A primary: each replica region's last acknowledged position seen here, and when.
    pub peers: Mutex<BTreeMap<String, (u64, Instant)>>,
    /// A primary: consistent copies of the state being streamed to regions.
    pub sessions: snapshot::Sessions,
    /// `writeLeaseMs` of the region configuration (docs/regions.md "Write lease").
    pub lease: Option<Arc<lease::Lease>>,
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
        let configured = match config.as_ref().and_then(|c| c.primary.as_ref()) {
            Some(p) => Some(Target {
                name: p.name.clone(),
                endpoints: p.endpoints.clone(),
                ca_pem: std::fs::read_to_string(&p.ca_file).map_err(|e| {
                    anyhow::anyhow!(
                        "cannot read the primary region's CA {}: {e}",
                        p.ca_file.display()
                    )
                })?,
            }),
            None => None,
        };
        let lease = config
            .as_ref()
            .and_then(|c| c.write_lease_ms)
            .map(|ms| Arc::new(lease::Lease::new(std::time::Duration::from_millis(ms))));
        Ok(Regions {
            config,
            configured,
            tls: Some(cfg.tls.clone()),
            lease,
            ..Regions::default()
        })
    }

    /// The link to the primary this pool follows now, if any.
    pub fn link(&self) -> Option<Arc<PrimaryLink>> {
        self.link.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// A link to another region's `target`, with this partition's certificate.
    pub fn link_to(&self, target: Target) -> anyhow::Result<PrimaryLink> {
        let tls = self
            .tls
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("no TLS files for a region link"))?;
        PrimaryLink::new(tls, target)
    }

    /// This region's name: configured, else the pool's name.
    pub fn name(&self, st: &PoolState) -> String {
        self.config
            .as_ref()
            .map(|c| c.name.clone())
            .unwrap_or_else(|| st.settings.pool_name.clone())
    }

    /// What this pool follows, by its state and configuration: nothing once promoted; the
    /// region it moves to once its primary handed over, or it was demoted; else the
    /// configured primary.
    fn desired(&self, st: &PoolState) -> Option<Target> {
        self.desired_ref(st)
            .map(|(name, endpoints, ca_pem)| Target {
                name: name.to_string(),
                endpoints: endpoints.to_vec(),
                ca_pem: ca_pem.to_string(),
            })
    }

    /// [`Regions::desired`], borrowed: (name, endpoints, CA).
    fn desired_ref<'a>(&'a self, st: &'a PoolState) -> Option<(&'a str, &'a [String], &'a str)> {
        if let Some(d) = st.region.repoint.as_ref().or(st.region.demoted.as_ref()) {
            return Some((&d.to, &d.endpoints, &d.ca_pem));
        }
        if st.region.promoted_at.is_some() && st.region.replica.is_none() {
            return None;
        }
        self.configured
            .as_ref()
            .map(|t| (t.name.as_str(), t.endpoints.as_slice(), t.ca_pem.as_str()))
    }

    /// Whether the link this partition holds is the one the state asks for (cheap: nothing
    /// is copied; the write path asks before every change of keys or RBAC).
    fn up_to_date(&self, st: &PoolState) -> bool {
        let link = self.link.read().unwrap_or_else(|p| p.into_inner());
        match (self.desired_ref(st), link.as_ref()) {
            (None, None) => true,
            (Some((name, endpoints, ca)), Some(l)) => {
                l.primary.name == name && l.primary.endpoints == endpoints && l.primary.ca_pem == ca
            }
            _ => false,
        }
    }

    /// Follow the state: (re)build the link when what this pool follows changed, and route
    /// the store's region-replicated writes through it (or nowhere: a primary). Every
    /// partition calls it (its follower task, after a switchover step it served, and before
    /// each write it takes — a write never goes to a primary the state has moved away from).
    pub fn reconcile(&self, store: &Store) {
        if self.up_to_date(&store.read()) {
            return;
        }
        let desired = self.desired(&store.read());
        let current = self.link().map(|l| l.primary.clone());
        if desired == current {
            return;
        }
        let link = match (&desired, &self.tls) {
            (Some(t), Some(tls)) => match PrimaryLink::new(tls, t.clone()) {
                Ok(l) => Some(Arc::new(l)),
                Err(e) => {
                    tracing::error!(primary = %t.name, error = %format!("{e:#}"), "cannot build the link to the primary region");
                    return;
                }
            },
            _ => None,
        };
        tracing::info!(
            from = ?current.map(|t| t.name),
            to = ?desired.map(|t| t.name),
            "this pool now follows another primary region"
        );
        store.set_primary_forwarder(
            link.clone()
                .map(|l| l as Arc<dyn crate::consensus::region::PrimaryForwarder>),
        );
        *self.link.write().unwrap_or_else(|p| p.into_inner()) = link;
    }

    /// Whether this pool answers other regions' feed, join and forwarded writes: a primary
    /// (including a demoted one, until the promoted region has drained its log).
    pub fn serves_regions(&self, st: &PoolState) -> bool {
        st.region.replica.is_none() && (self.link().is_none() || st.region.demoted.is_some())
    }

    /// The position each region acknowledged at this partition.
    pub fn acks(&self) -> BTreeMap<String, u64> {
        self.peers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(name, (at, _))| (name.clone(), *at))
            .collect()
    }

    /// A primary partition: region `name` asked for entries after `after`.
    pub fn acknowledged(&self, name: &str, after: u64) {
        self.peers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string(), (after, Instant::now()));
        if let Some(l) = &self.lease {
            l.touch(std::time::Duration::ZERO);
        }
    }

    /// Milliseconds since a region last polled this partition (None: none has).
    pub fn region_contact_ms(&self) -> Option<u64> {
        self.peers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|(_, at)| millis_since(*at))
            .min()
    }

    /// Milliseconds since this partition last reached the primary it follows (None: it
    /// follows none, or has not reached it since it started).
    pub fn primary_contact_ms(&self) -> Option<u64> {
        self.link()
            .and_then(|l| l.progress().last_contact)
            .map(millis_since)
    }

    /// The region view of this partition (`applied` is its applied log index; `token` the
    /// demotion token, when this partition can make it).
    pub fn status(
        &self,
        st: &PoolState,
        applied: u64,
        token: Option<String>,
    ) -> Option<RegionStatus> {
        if self.config.is_none() && st.region.is_empty() {
            return None;
        }
        let mut s = RegionStatus {
            name: Some(self.name(st)),
            role: RegionRole::Primary,
            epoch: st.region.epoch(),
            primary_index: applied,
            demoted_to: st
                .region
                .demoted
                .as_ref()
                .filter(|_| st.region.replica.is_none())
                .map(|d| d.to.clone()),
            demotion_token: token,
            discarded_writes: st.region.discarded.clone(),
            removed_by: st.region.purged.as_ref().map(|p| p.primary.clone()),
            removed_at: st.region.purged.as_ref().map(|p| p.removed_at),
            ..RegionStatus::default()
        };
        let link = self.link();
        if let Some(r) = &st.region.replica {
            s.role = RegionRole::Replica;
            s.primary = Some(r.primary.clone());
            s.joined = true;
            s.applied_primary_index = r.applied_primary_index;
            s.primary_write_lease_ms = r.primary_write_lease_ms;
        }
        if let Some(l) = &self.lease {
            use crate::consensus::region::WriteLease;
            s.write_lease_ms = Some(u64::try_from(l.ttl.as_millis()).unwrap_or(u64::MAX));
            s.writes_refused_by_lease = l.refusal(st).is_some();
        }
        if let Some(link) = link.filter(|_| st.region.demoted.is_none() || s.joined) {
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
            s.primary_refuses = p.refused;
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
        s.accepted = st
            .region
            .accepted
            .iter()
            .map(|(name, r)| AcceptedRegion {
                name: name.clone(),
                ca_sha256: ca_sha256(&r.ca_pem),
                added: r.added,
            })
            .collect();
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
