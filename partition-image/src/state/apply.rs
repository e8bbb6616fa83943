//! `PoolState::apply`: the one pure, deterministic function from a state and a command to
//! the next state (and its refusals), run identically on every partition.

use super::*;

/// How many different names `names` holds.
fn distinct<'a>(names: impl Iterator<Item = &'a String>) -> u64 {
    names.collect::<std::collections::HashSet<_>>().len() as u64
}

impl PoolState {
    pub fn is_activated(&self) -> bool {
        matches!(self.activation, Activation::Activated { .. })
    }

    pub fn fingerprint(&self) -> Option<&str> {
        match &self.activation {
            Activation::Activated { fingerprint, .. } => Some(fingerprint),
            _ => None,
        }
    }

    /// Activation by the domain `fingerprint` is possible: not activated by another one.
    pub(super) fn check_activation(&self, fingerprint: &str) -> Result<(), StateError> {
        match &self.activation {
            Activation::Activated {
                fingerprint: current,
                ..
            } if current != fingerprint => Err(StateError::AlreadyActivated(current.clone())),
            _ => Ok(()),
        }
    }

    fn retention_secs(&self) -> i64 {
        // Saturating: a command from a peer or from disk may carry any number (fuzz target
        // `state_apply`); an overflow must not panic or wrap into the past.
        self.settings
            .soft_delete_retention_days
            .saturating_mul(86_400)
    }

    /// Apply one command. Pure and deterministic; on error the state is unchanged.
    /// For commands whose refusal can be decided without applying them (the staged-restore
    /// commands, which touch only the staging), that decision; `None` for the others. Lets a
    /// single-partition store skip its trial copy of the whole state for them.
    pub fn precheck(&self, cmd: &Command) -> Option<Result<(), StateError>> {
        let staged = |id: &String| self.restore_staging.as_ref().filter(|st| st.id == *id);
        Some(match cmd {
            Command::RestoreBegin { .. } | Command::RestoreAbort { .. } => Ok(()),
            Command::RestoreStage { id, .. } => staged(id)
                .map(|_| ())
                .ok_or_else(|| StateError::RestoreNotStaged(id.clone())),
            Command::RestoreCommit {
                id,
                key_count,
                deleted_count,
            } => match staged(id) {
                None => Err(StateError::RestoreNotStaged(id.clone())),
                // Distinct names: a stage proposed again after an unknown outcome (it may
                // have landed) stages the same records twice, and the commit keeps one.
                Some(st)
                    if distinct(st.keys.iter().map(|k| &k.name)) != *key_count
                        || distinct(st.deleted.iter().map(|d| &d.key.name)) != *deleted_count
                        || st.rbac.is_none() =>
                {
                    Err(StateError::RestoreIncomplete {
                        id: id.clone(),
                        keys: distinct(st.keys.iter().map(|k| &k.name)),
                        deleted: distinct(st.deleted.iter().map(|d| &d.key.name)),
                        rbac: if st.rbac.is_some() { "the" } else { "no" },
                        want_keys: *key_count,
                        want_deleted: *deleted_count,
                    })
                }
                Some(_) => Ok(()),
            },
            _ => return None,
        })
    }

    /// Apply one command. Pure and deterministic; on error the state is unchanged. A replica
    /// region or a demoted primary refuses changes of keys and RBAC made directly in it (they
    /// come from the primary, inside `RegionApply`): docs/regions.md.
    pub fn apply(&mut self, cmd: &Command) -> Result<Outcome, StateError> {
        self.region_fence(cmd)?;
        self.apply_command(cmd)
    }

    /// [`PoolState::apply`] without the region fence.
    pub(super) fn apply_command(&mut self, cmd: &Command) -> Result<Outcome, StateError> {
        match cmd {
            Command::Bootstrap {
                settings,
                administrators,
            } => {
                if self.bootstrapped {
                    return Err(StateError::AlreadyBootstrapped);
                }
                // RBAC first (all or nothing): a refused bootstrap changes nothing.
                self.rbac.bootstrap_administrators(administrators)?;
                self.settings = settings.clone();
                self.bootstrapped = true;
                Ok(Outcome::None)
            }
            Command::AddKeyVersion {
                name,
                version,
                must_be_new,
            } => {
                if self.deleted.contains_key(name) {
                    return Err(StateError::KeyIsDeleted(name.clone()));
                }
                match self.keys.get_mut(name) {
                    Some(_) if *must_be_new => Err(StateError::KeyExists(name.clone())),
                    Some(rec) => {
                        if rec.version(&version.version).is_some() {
                            return Err(StateError::VersionExists {
                                name: name.clone(),
                                version: version.version.clone(),
                            });
                        }
                        rec.versions.push_back((**version).clone());
                        // Not the record: copying every version of a key on every new
                        // version made a write's cost grow with the key's history (the
                        // proposer has the version it proposed).
                        Ok(Outcome::None)
                    }
                    None => {
                        let rec = KeyRecord {
                            name: name.clone(),
                            versions: imbl::vector![(**version).clone()],
                            rotation_policy: None,
                        };
                        self.keys.insert(name.clone(), rec);
                        Ok(Outcome::None)
                    }
                }
            }
            Command::UpdateKeyVersion {
                name,
                version,
                key_ops,
                attributes,
                tags,
                release_policy,
                now,
            } => {
                let rec = self
                    .keys
                    .get_mut(name)
                    .ok_or_else(|| StateError::KeyNotFound(name.clone()))?;
                let v = match version {
                    Some(ver) => rec
                        .versions
                        .iter_mut()
                        .find(|v| &v.version == ver)
                        .ok_or_else(|| StateError::VersionNotFound {
                            name: name.clone(),
                            version: ver.clone(),
                        })?,
                    None => {
                        let last = rec.versions.len().checked_sub(1);
                        last.and_then(|i| rec.versions.get_mut(i))
                            .ok_or_else(|| StateError::KeyNotFound(name.clone()))?
                    }
                };
                if let Some(ops) = key_ops {
                    v.key_ops = ops.clone();
                }
                if let Some(a) = attributes {
                    if let Some(e) = a.enabled {
                        v.attributes.enabled = e;
                    }
                    if a.nbf.is_some() {
                        v.attributes.nbf = a.nbf;
                    }
                    if a.exp.is_some() {
                        v.attributes.exp = a.exp;
                    }
                }
                if let Some(t) = tags {
                    v.tags = t.clone();
                }
                if let Some(p) = release_policy {
                    v.release_policy = Some(p.clone());
                }
                v.attributes.updated = *now;
                Ok(Outcome::Key(Box::new(rec.clone())))
            }
            Command::DeleteKey { name, now } => {
                let key = self
                    .keys
                    .remove(name)
                    .ok_or_else(|| StateError::KeyNotFound(name.clone()))?;
                let deleted = DeletedKey {
                    key,
                    deleted_date: *now,
                    scheduled_purge_date: now.saturating_add(self.retention_secs()),
                };
                self.deleted.insert(name.clone(), deleted.clone());
                Ok(Outcome::Deleted(Box::new(deleted)))
            }
            Command::RecoverKey { name } => {
                if self.keys.contains_key(name) {
                    return Err(StateError::KeyExists(name.clone()));
                }
                let deleted = self
                    .deleted
                    .remove(name)
                    .ok_or_else(|| StateError::DeletedKeyNotFound(name.clone()))?;
                self.keys.insert(name.clone(), deleted.key.clone());
                Ok(Outcome::Key(Box::new(deleted.key)))
            }
            Command::PurgeKey { name, now } => {
                let d = self
                    .deleted
                    .get(name)
                    .ok_or_else(|| StateError::DeletedKeyNotFound(name.clone()))?;
                if self.settings.purge_protection && *now < d.scheduled_purge_date {
                    return Err(StateError::PurgeProtected {
                        name: name.clone(),
                        purge_date: d.scheduled_purge_date,
                    });
                }
                self.deleted.remove(name);
                Ok(Outcome::Purged(vec![name.clone()]))
            }
            Command::PurgeExpired { now } => {
                let expired: Vec<String> = self
                    .deleted
                    .iter()
                    .filter(|(_, d)| d.scheduled_purge_date <= *now)
                    .map(|(n, _)| n.clone())
                    .collect();
                for n in &expired {
                    self.deleted.remove(n);
                }
                Ok(Outcome::Purged(expired))
            }
            Command::RestoreKey { key } => {
                if self.keys.contains_key(&key.name) {
                    return Err(StateError::KeyExists(key.name.clone()));
                }
                if self.deleted.contains_key(&key.name) {
                    return Err(StateError::KeyIsDeleted(key.name.clone()));
                }
                self.keys.insert(key.name.clone(), key.clone());
                Ok(Outcome::Key(Box::new(key.clone())))
            }
            Command::SetRotationPolicy { name, policy, now } => {
                let rec = self
                    .keys
                    .get_mut(name)
                    .ok_or_else(|| StateError::KeyNotFound(name.clone()))?;
                let created = rec.rotation_policy.as_ref().map_or(*now, |p| p.created);
                rec.rotation_policy = Some(RotationPolicyRecord {
                    policy: policy.clone(),
                    created,
                    updated: *now,
                });
                Ok(Outcome::None)
            }
            Command::PutRoleAssignment {
                scope,
                name,
                params,
            } => {
                let a = self.rbac.put_assignment(scope, name, params)?;
                Ok(Outcome::RoleAssignment(Box::new(a)))
            }
            Command::DeleteRoleAssignment { scope, name } => {
                let a = self.rbac.delete_assignment(scope, name)?;
                Ok(Outcome::RoleAssignment(Box::new(a)))
            }
            Command::PutRoleDefinition {
                scope,
                name,
                params,
            } => {
                let d = self.rbac.put_definition(scope, name, params)?;
                Ok(Outcome::RoleDefinition(Box::new(d)))
            }
            Command::DeleteRoleDefinition { scope, name } => {
                let d = self.rbac.delete_definition(scope, name)?;
                Ok(Outcome::RoleDefinition(Box::new(d)))
            }
            Command::RestoreAll {
                keys,
                deleted,
                rbac,
            } => {
                self.keys = keys.iter().map(|k| (k.name.clone(), k.clone())).collect();
                self.deleted = deleted
                    .iter()
                    .map(|d| (d.key.name.clone(), d.clone()))
                    .collect();
                self.rbac = (**rbac).clone();
                Ok(Outcome::None)
            }
            Command::RestoreBegin { id } => {
                self.restore_staging = Some(Box::new(RestoreStaging {
                    id: id.clone(),
                    ..Default::default()
                }));
                Ok(Outcome::None)
            }
            Command::RestoreStage {
                id,
                keys,
                deleted,
                rbac,
            } => {
                let st = self
                    .restore_staging
                    .as_mut()
                    .filter(|st| st.id == *id)
                    .ok_or_else(|| StateError::RestoreNotStaged(id.clone()))?;
                st.keys.extend(keys.iter().cloned());
                st.deleted.extend(deleted.iter().cloned());
                if let Some(r) = rbac {
                    st.rbac = Some((**r).clone());
                }
                Ok(Outcome::None)
            }
            Command::RestoreCommit { id, .. } => {
                if let Some(Err(e)) = self.precheck(cmd) {
                    return Err(e);
                }
                let Some(st) = self.restore_staging.take() else {
                    return Err(StateError::RestoreNotStaged(id.clone()));
                };
                let st = *st;
                self.keys = st.keys.into_iter().map(|k| (k.name.clone(), k)).collect();
                self.deleted = st
                    .deleted
                    .into_iter()
                    .map(|d| (d.key.name.clone(), d))
                    .collect();
                self.rbac = st.rbac.unwrap_or_default();
                Ok(Outcome::None)
            }
            Command::RestoreAbort { id } => {
                if self.restore_staging.as_ref().is_some_and(|st| st.id == *id) {
                    self.restore_staging = None;
                }
                Ok(Outcome::None)
            }
            Command::BeginRecovery {
                exchange_thumbprint,
                now,
            } => {
                if let Activation::Activated { fingerprint, .. } = &self.activation {
                    return Err(StateError::AlreadyActivated(fingerprint.clone()));
                }
                self.activation = Activation::RecoveryPending {
                    exchange_thumbprint: exchange_thumbprint.clone(),
                    since: *now,
                };
                Ok(Outcome::None)
            }
            Command::Activate {
                domain_id,
                fingerprint,
                now,
            } => {
                self.check_activation(fingerprint)?;
                self.activation = Activation::Activated {
                    domain_id: domain_id.clone(),
                    fingerprint: fingerprint.clone(),
                    since: *now,
                };
                Ok(Outcome::None)
            }
            Command::RecordDomainRedownload { download } => {
                self.domain_redownloads += 1;
                self.last_domain_redownload = Some(download.clone());
                Ok(Outcome::None)
            }
            Command::PutRegion { .. }
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
            | Command::RegionFenceDone => self.apply_region(cmd),
        }
    }
}
