//! The region part of the pool state (docs/regions.md): the regions a primary accepts, a
//! replica region's position in its primary's log, and how the region commands apply.

use super::*;
use keystead_core::region::{FeedEntry, ReplicatedSettings};

/// A region this pool (as a primary) accepts: its pool CA.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AcceptedRegionRecord {
    pub ca_pem: String,
    pub added: i64,
}

/// A region a primary removed: the CA it was accepted with (its partitions are still
/// recognised, to be told they were removed).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RemovedRegionRecord {
    pub ca_pem: String,
    pub removed_at: i64,
}

/// A former replica region its primary removed: its pool was purged.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Purged {
    pub primary: String,
    pub removed_at: i64,
}

/// What a replica region follows.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaOf {
    pub primary: String,
    pub primary_pool_id: String,
    pub epoch: u64,
    /// The last primary log index this region has applied (or skipped as not replicated).
    pub applied_primary_index: u64,
    /// The primary's write lease (ms), as it announces it: a failover waits it out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_write_lease_ms: Option<u64>,
}

/// A primary demoted for a planned switchover.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Demotion {
    /// The region to promote, its endpoints and CA (this pool follows it once promoted).
    pub to: String,
    pub endpoints: Vec<String>,
    pub ca_pem: String,
    /// The epoch the promoted region starts.
    pub epoch: u64,
    /// The log index of the demotion: no change of keys or RBAC was made here after it.
    pub last_index: u64,
    /// Every region this pool accepted has applied `last_index` (`RegionHandoverReady`):
    /// the demotion token is published from then on. (Absent in states written before
    /// the wait existed: ready.)
    #[serde(default = "ready_by_default")]
    pub ready: bool,
    /// A region re-pointed by hand after a failover (`POST /admin/regions/follow`): it
    /// compares its position with the promoted region's before following in place.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub failover: bool,
}

fn ready_by_default() -> bool {
    true
}

/// A demoted primary that follows its successor now: what it tells the regions it fed
/// (those that had not seen the hand-over yet), and their CAs (it still knows them).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct HandedOver {
    pub demotion: Demotion,
    pub regions: BTreeMap<String, AcceptedRegionRecord>,
}

/// An old primary a failover left behind: the new primary tells it (docs/regions.md).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct FenceTarget {
    pub name: String,
    pub endpoints: Vec<String>,
    pub ca_pem: String,
    pub epoch: u64,
    pub common_index: u64,
}

/// The region state of a pool.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RegionState {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub accepted: BTreeMap<String, AcceptedRegionRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica: Option<ReplicaOf>,
    /// This pool's epoch as a primary (0: the first, reported as 1).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub epoch: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub demoted: Option<Demotion>,
    /// The log index at which this pool was promoted to primary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promoted_at: Option<u64>,
    /// The epoch it was promoted from and the old primary's index it had applied then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promotion: Option<keystead_core::region::Promotion>,
    /// Promoted by failover: the old primary still to be fenced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fence_old: Option<FenceTarget>,
    /// Fenced old primary: its changes the new primary never had (listed, then dropped by
    /// the re-seed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub discarded: Vec<String>,
    /// Fenced old primary: re-seed from a snapshot of the new primary before following it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reseed: bool,
    /// A replica region whose primary handed over (planned switchover): the region it
    /// follows once that one is promoted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repoint: Option<Demotion>,
    /// A demoted primary that follows its successor: the hand-over it still answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handed_over: Option<HandedOver>,
    /// A primary: the regions it removed (answered with a removal notice).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub removed: BTreeMap<String, RemovedRegionRecord>,
    /// A former replica region its primary removed: purged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purged: Option<Purged>,
    /// A primary with a write lease: the epoch at which a region first polled it (the
    /// lease applies at that epoch only).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub lease_armed_epoch: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl RegionState {
    pub fn is_empty(&self) -> bool {
        self.accepted.is_empty()
            && self.replica.is_none()
            && self.epoch == 0
            && self.demoted.is_none()
            && self.promoted_at.is_none()
            && self.promotion.is_none()
            && self.fence_old.is_none()
            && self.discarded.is_empty()
            && self.repoint.is_none()
            && self.handed_over.is_none()
            && self.removed.is_empty()
            && self.purged.is_none()
            && self.lease_armed_epoch == 0
    }

    /// The regions whose client certificates this pool recognises: the accepted ones, and
    /// those a demoted primary handed over (they may still ask where to go).
    pub fn known_regions(&self) -> BTreeMap<String, AcceptedRegionRecord> {
        let mut all = self.accepted.clone();
        if let Some(h) = &self.handed_over {
            for (name, r) in &h.regions {
                all.entry(name.clone()).or_insert_with(|| r.clone());
            }
        }
        for (name, r) in &self.removed {
            all.entry(name.clone())
                .or_insert_with(|| AcceptedRegionRecord {
                    ca_pem: r.ca_pem.clone(),
                    added: 0,
                });
        }
        all
    }

    /// The epoch this pool is in: its own as a primary, its primary's as a replica.
    pub fn epoch(&self) -> u64 {
        match &self.replica {
            Some(r) => r.epoch,
            None => self.epoch.max(1),
        }
    }

    /// Record the log index of a committed demotion or promotion (called by the replicated
    /// state machine, which knows the index, right after applying `cmd` successfully).
    pub fn note_committed(&mut self, cmd: &Command, index: u64) {
        match cmd {
            Command::RegionDemote { .. } | Command::RegionFenced { .. } => {
                if let Some(d) = &mut self.demoted {
                    d.last_index = index;
                }
            }
            Command::RegionPromote { .. } => self.promoted_at = Some(index),
            _ => {}
        }
    }

    /// The applied primary index of a replica region (0 for a primary).
    pub fn applied_primary_index(&self) -> u64 {
        self.replica
            .as_ref()
            .map(|r| r.applied_primary_index)
            .unwrap_or(0)
    }
}

/// The outcome of each primary entry a `RegionApply` applied, by primary index.
pub type RegionOutcomes = Vec<(u64, Result<Outcome, StateError>)>;

/// The region commands (carried by [`Command`]).
pub type RegionEntry = FeedEntry<Command>;

impl Command {
    /// What a change does, in the user's terms (key name and version): how a discarded
    /// change is listed (a fenced old primary, a region re-seeded after a failover).
    pub fn describe_change(&self) -> Option<String> {
        Some(match self {
            Command::AddKeyVersion { name, version, .. } => format!("{name}/{}", version.version),
            Command::UpdateKeyVersion { name, version, .. } => {
                format!(
                    "{name}/{} (update)",
                    version.as_deref().unwrap_or("current")
                )
            }
            Command::DeleteKey { name, .. } => format!("{name} (delete)"),
            Command::RecoverKey { name } => format!("{name} (recover)"),
            Command::PurgeKey { name, .. } => format!("{name} (purge)"),
            Command::RestoreKey { key } => format!("{} (restore)", key.name),
            Command::SetRotationPolicy { name, .. } => format!("{name} (rotation policy)"),
            Command::PutRoleAssignment { name, .. } => format!("role assignment {name}"),
            Command::DeleteRoleAssignment { name, .. } => {
                format!("role assignment {name} (delete)")
            }
            Command::PutRoleDefinition { name, .. } => format!("role definition {name}"),
            Command::DeleteRoleDefinition { name, .. } => {
                format!("role definition {name} (delete)")
            }
            c if c.is_region_replicated() => "a restore or purge of the pool".to_string(),
            _ => return None,
        })
    }

    /// Whether the command is a change of the pool's keys or RBAC that a primary replicates
    /// to its regions (and a replica region forwards to its primary). Bootstrap, activation,
    /// recovery, re-download records and the region commands themselves stay local.
    pub fn is_region_replicated(&self) -> bool {
        match self {
            Command::AddKeyVersion { .. }
            | Command::UpdateKeyVersion { .. }
            | Command::DeleteKey { .. }
            | Command::RecoverKey { .. }
            | Command::PurgeKey { .. }
            | Command::PurgeExpired { .. }
            | Command::RestoreKey { .. }
            | Command::SetRotationPolicy { .. }
            | Command::PutRoleAssignment { .. }
            | Command::DeleteRoleAssignment { .. }
            | Command::PutRoleDefinition { .. }
            | Command::DeleteRoleDefinition { .. }
            | Command::RestoreAll { .. }
            | Command::RestoreBegin { .. }
            | Command::RestoreStage { .. }
            | Command::RestoreCommit { .. }
            | Command::RestoreAbort { .. } => true,
            Command::Bootstrap { .. }
            | Command::BeginRecovery { .. }
            | Command::Activate { .. }
            | Command::RecordDomainRedownload { .. }
            | Command::PutRegion { .. }
            | Command::DeleteRegion { .. }
            | Command::RegionJoined { .. }
            | Command::RegionApply { .. }
            | Command::RegionInstall { .. }
            | Command::RegionStage { .. }
            | Command::RegionDemote { .. }
            | Command::RegionPromote { .. }
            | Command::RegionFollow { .. }
            | Command::RegionHandoverReady { .. }
            | Command::RegionPurge { .. }
            | Command::RegionRejoin
            | Command::RegionPrimaryLease { .. }
            | Command::RegionLeaseArmed { .. }
            | Command::RegionRepoint { .. }
            | Command::RegionFenced { .. }
            | Command::RegionFenceDone => false,
        }
    }
}

impl PoolState {
    /// A replica region or a demoted primary takes changes of keys and RBAC only from its
    /// primary: one made directly in it (a write racing a switchover) is refused, the same
    /// way on every partition.
    pub(super) fn region_fence(&self, cmd: &Command) -> Result<(), StateError> {
        if !cmd.is_region_replicated() {
            return Ok(());
        }
        if let Some(r) = &self.region.replica {
            return Err(StateError::RegionFenced(format!(
                "this pool is a replica region of '{}': changes are made on the primary (retry: they are forwarded)",
                r.primary
            )));
        }
        if let Some(d) = &self.region.demoted {
            return Err(StateError::RegionFenced(format!(
                "this pool was demoted and hands over to region '{}' ({}): writes resume once '{}' is promoted with the demotion token (GET /admin/status, region.demotionToken)",
                d.to,
                d.endpoints.join(", "),
                d.to
            )));
        }
        Ok(())
    }

    /// Apply a region command (the caller has matched it).
    pub(super) fn apply_region(&mut self, cmd: &Command) -> Result<Outcome, StateError> {
        match cmd {
            Command::PutRegion { name, ca_pem, now } => {
                if self.region.replica.is_some() {
                    return Err(StateError::RegionRole(
                        "a replica region does not accept regions; name them on the primary".into(),
                    ));
                }
                let added = self
                    .region
                    .accepted
                    .get(name)
                    .filter(|r| r.ca_pem == *ca_pem)
                    .map(|r| r.added)
                    .unwrap_or(*now);
                self.region.accepted.insert(
                    name.clone(),
                    AcceptedRegionRecord {
                        ca_pem: ca_pem.clone(),
                        added,
                    },
                );
                self.region.removed.remove(name);
                Ok(Outcome::None)
            }
            Command::DeleteRegion { name, now } => match self.region.accepted.remove(name) {
                Some(r) => {
                    self.region.removed.insert(
                        name.clone(),
                        RemovedRegionRecord {
                            ca_pem: r.ca_pem,
                            removed_at: *now,
                        },
                    );
                    Ok(Outcome::None)
                }
                None => Err(StateError::RegionNotFound(name.clone())),
            },
            Command::RegionPurge {
                primary,
                removed_at,
            } => {
                let r = self.joined()?;
                if r.primary != *primary {
                    return Err(StateError::RegionRole(format!(
                        "a removal by '{primary}' does not apply to a region of '{}'",
                        r.primary
                    )));
                }
                // Keys and deleted keys go; the pool keeps its name, id, membership and role
                // assignments (they name principals, no secret: its administrators still
                // read its status), and reads as not activated (its partitions drop the
                // domain).
                self.keys.clear();
                self.deleted.clear();
                self.restore_staging = None;
                self.activation = Activation::default();
                let purged = Purged {
                    primary: primary.clone(),
                    removed_at: *removed_at,
                };
                self.region = RegionState {
                    purged: Some(purged),
                    ..RegionState::default()
                };
                Ok(Outcome::None)
            }
            Command::RegionRejoin => match self.region.purged.take() {
                Some(_) => Ok(Outcome::None),
                None => Err(StateError::RegionRole(
                    "this pool was not purged by a removal".into(),
                )),
            },
            Command::RegionJoined {
                primary,
                primary_pool_id,
                epoch,
                domain_id,
                fingerprint,
                settings,
                now,
            } => {
                self.check_activation(fingerprint)?;
                if !self.region.accepted.is_empty() {
                    return Err(StateError::RegionRole(
                        "this pool accepts regions (it is a primary); it cannot join another"
                            .into(),
                    ));
                }
                self.activation = Activation::Activated {
                    domain_id: domain_id.clone(),
                    fingerprint: fingerprint.clone(),
                    since: *now,
                };
                self.copy_settings(settings);
                let applied = self
                    .region
                    .replica
                    .as_ref()
                    .filter(|r| r.primary_pool_id == *primary_pool_id)
                    .map(|r| r.applied_primary_index)
                    .unwrap_or(0);
                self.region.replica = Some(ReplicaOf {
                    primary: primary.clone(),
                    primary_pool_id: primary_pool_id.clone(),
                    epoch: *epoch,
                    primary_write_lease_ms: None,
                    applied_primary_index: applied,
                });
                Ok(Outcome::None)
            }
            Command::RegionApply { entries, through } => {
                let mut applied = self.joined()?.applied_primary_index;
                let mut results: RegionOutcomes = Vec::new();
                for e in entries {
                    if e.index <= applied {
                        continue; // applied before: exactly once by primary index
                    }
                    let r = if e.command.is_region_replicated() {
                        self.apply_command(&e.command)
                    } else {
                        Err(StateError::RegionRole(format!(
                            "primary entry {} is not a replicated change; skipped",
                            e.index
                        )))
                    };
                    results.push((e.index, r));
                    applied = e.index;
                }
                let replica = self.joined_mut()?;
                replica.applied_primary_index = applied.max(*through);
                Ok(Outcome::Region(results))
            }
            Command::RegionInstall {
                id,
                key_count,
                deleted_count,
                through,
                settings,
            } => {
                self.joined()?;
                self.apply_command(&Command::RestoreCommit {
                    id: id.clone(),
                    key_count: *key_count,
                    deleted_count: *deleted_count,
                })?;
                self.copy_settings(settings);
                self.joined_mut()?.applied_primary_index = *through;
                self.region.reseed = false;
                Ok(Outcome::None)
            }
            Command::RegionStage { command } => {
                self.joined()?;
                match **command {
                    Command::RestoreBegin { .. } | Command::RestoreStage { .. } => {
                        self.apply_command(command)
                    }
                    _ => Err(StateError::RegionRole(
                        "only snapshot staging is carried by RegionStage".into(),
                    )),
                }
            }
            Command::RegionDemote {
                to,
                endpoints,
                ca_pem,
                epoch,
            } => {
                if self.region.replica.is_some() || self.region.demoted.is_some() {
                    return Err(StateError::RegionRole(
                        "only a primary that is not demoted yet can be demoted".into(),
                    ));
                }
                if !self.region.accepted.contains_key(to) {
                    return Err(StateError::RegionNotFound(to.clone()));
                }
                self.region.demoted = Some(Demotion {
                    to: to.clone(),
                    endpoints: endpoints.clone(),
                    ca_pem: ca_pem.clone(),
                    epoch: *epoch,
                    last_index: 0,
                    ready: false,
                    failover: false,
                });
                self.region.handed_over = None;
                Ok(Outcome::None)
            }
            Command::RegionHandoverReady { epoch } => match &mut self.region.demoted {
                Some(d) if d.epoch == *epoch && self.region.replica.is_none() => {
                    d.ready = true;
                    Ok(Outcome::None)
                }
                _ => Err(StateError::RegionRole(format!(
                    "no hand-over of epoch {epoch} is in progress here"
                ))),
            },
            Command::RegionLeaseArmed { epoch } => {
                if self.region.replica.is_some() || *epoch != self.region.epoch() {
                    return Err(StateError::RegionRole(format!(
                        "the write lease is armed by a primary at its epoch ({}), not at epoch {epoch}",
                        self.region.epoch()
                    )));
                }
                self.region.lease_armed_epoch = *epoch;
                Ok(Outcome::None)
            }
            Command::RegionPrimaryLease { ms } => {
                self.joined_mut()?.primary_write_lease_ms = *ms;
                Ok(Outcome::None)
            }
            Command::RegionRepoint {
                to,
                endpoints,
                ca_pem,
                epoch,
                last_index,
                failover,
            } => {
                let r = self.joined()?;
                if *failover && (*epoch <= r.epoch || *to == r.primary) {
                    return Err(StateError::RegionRole(format!(
                        "region '{to}' at epoch {epoch} did not replace this region's primary '{}' (epoch {})",
                        r.primary, r.epoch
                    )));
                }
                if !*failover && (*epoch != r.epoch + 1 || r.applied_primary_index < *last_index) {
                    return Err(StateError::RegionRole(format!(
                        "a hand-over to '{to}' at epoch {epoch} after index {last_index} does not fit this region (epoch {}, applied {})",
                        r.epoch, r.applied_primary_index
                    )));
                }
                self.region.repoint = Some(Demotion {
                    to: to.clone(),
                    endpoints: endpoints.clone(),
                    ca_pem: ca_pem.clone(),
                    epoch: *epoch,
                    last_index: *last_index,
                    ready: true,
                    failover: *failover,
                });
                Ok(Outcome::None)
            }
            Command::RegionPromote {
                epoch,
                old_primary,
                old_primary_ca,
                now,
                fence,
                also_accept,
            } => {
                let r = self.joined()?;
                if *epoch <= r.epoch {
                    return Err(StateError::RegionRole(format!(
                        "promotion to epoch {epoch} is not after this region's epoch {}",
                        r.epoch
                    )));
                }
                // The common index is the position applied when the promotion applies (a
                // page of the old primary may have been applied since it was proposed).
                let common_index = r.applied_primary_index;
                self.region.promotion = Some(keystead_core::region::Promotion {
                    from_epoch: r.epoch,
                    common_index,
                });
                self.region.replica = None;
                self.region.epoch = *epoch;
                self.region.demoted = None;
                self.region.repoint = None;
                self.region.handed_over = None;
                self.region.fence_old = fence.clone().map(|f| FenceTarget { common_index, ..f });
                let accept = std::iter::once((old_primary, old_primary_ca)).chain(
                    also_accept
                        .iter()
                        .map(|(name, ca)| (name, ca))
                        .filter(|(name, _)| *name != old_primary),
                );
                for (name, ca_pem) in accept {
                    self.region.accepted.insert(
                        name.clone(),
                        AcceptedRegionRecord {
                            ca_pem: ca_pem.clone(),
                            added: *now,
                        },
                    );
                }
                Ok(Outcome::None)
            }
            Command::RegionFollow {
                primary,
                primary_pool_id,
                epoch,
                from,
                reseed,
                discarded,
            } => {
                let Some(d) = self
                    .region
                    .repoint
                    .clone()
                    .or_else(|| self.region.demoted.clone())
                else {
                    return Err(StateError::RegionRole(
                        "only a demoted primary, or a region it handed over, follows the region promoted next".into(),
                    ));
                };
                if d.to != *primary || d.epoch != *epoch {
                    return Err(StateError::RegionRole(format!(
                        "this pool moves to '{}' at epoch {}, not to '{primary}' at epoch {epoch}",
                        d.to, d.epoch
                    )));
                }
                if self.region.repoint.take().is_some() {
                    // A replica region of the demoted primary: it holds everything up to the
                    // demoted primary's last index, as the promoted region did when promoted.
                    // (`demoted` names the region a pool follows after a switchover.) After a
                    // failover it may not: then it re-seeds first.
                    if *reseed && !d.failover {
                        return Err(StateError::RegionRole(
                            "only a region re-pointed after a failover re-seeds when it follows"
                                .into(),
                        ));
                    }
                    self.region.demoted = Some(d.clone());
                    self.region.reseed = *reseed;
                    if *reseed {
                        self.region.discarded = discarded.clone();
                    }
                    self.region.replica = Some(ReplicaOf {
                        primary: primary.clone(),
                        primary_pool_id: primary_pool_id.clone(),
                        epoch: *epoch,
                        primary_write_lease_ms: None,
                        applied_primary_index: if *reseed { 0 } else { *from },
                    });
                    return Ok(Outcome::None);
                }
                if !self.region.reseed {
                    // Still answer the regions it fed where to go (a fenced primary's regions
                    // were not waited for: they re-point by hand).
                    let mut regions = self.region.accepted.clone();
                    regions.remove(&d.to);
                    self.region.handed_over = Some(HandedOver {
                        demotion: d.clone(),
                        regions,
                    });
                }
                self.region.replica = Some(ReplicaOf {
                    primary: primary.clone(),
                    primary_pool_id: primary_pool_id.clone(),
                    epoch: *epoch,
                    // A fenced old primary re-seeds from a snapshot first.
                    primary_write_lease_ms: None,
                    applied_primary_index: if self.region.reseed { 0 } else { *from },
                });
                self.region.accepted.clear();
                self.region.promoted_at = None;
                self.region.promotion = None;
                Ok(Outcome::None)
            }
            Command::RegionFenced {
                to,
                endpoints,
                ca_pem,
                epoch,
                discarded,
            } => {
                if self.region.replica.is_some() || *epoch <= self.region.epoch() {
                    return Err(StateError::RegionRole(format!(
                        "a fence of epoch {epoch} does not apply to this pool (epoch {}, {})",
                        self.region.epoch(),
                        if self.region.replica.is_some() {
                            "a replica"
                        } else {
                            "a primary"
                        }
                    )));
                }
                self.region.demoted = Some(Demotion {
                    to: to.clone(),
                    endpoints: endpoints.clone(),
                    ca_pem: ca_pem.clone(),
                    epoch: *epoch,
                    last_index: 0,
                    ready: true,
                    failover: false,
                });
                self.region.discarded = discarded.clone();
                self.region.reseed = true;
                Ok(Outcome::None)
            }
            Command::RegionFenceDone => {
                self.region.fence_old = None;
                Ok(Outcome::None)
            }
            _ => Err(StateError::RegionRole("not a region command".into())),
        }
    }

    fn copy_settings(&mut self, s: &ReplicatedSettings) {
        self.settings.soft_delete_retention_days = s.soft_delete_retention_days;
        self.settings.purge_protection = s.purge_protection;
    }

    fn joined(&self) -> Result<&ReplicaOf, StateError> {
        self.region.replica.as_ref().ok_or_else(|| {
            StateError::RegionRole("this pool has not joined a primary region".into())
        })
    }

    fn joined_mut(&mut self) -> Result<&mut ReplicaOf, StateError> {
        self.region.replica.as_mut().ok_or_else(|| {
            StateError::RegionRole("this pool has not joined a primary region".into())
        })
    }
}
