//! The partition's in-memory keyring: the unsealed security domain, the keys derived from
//! it, and a cache of unwrapped key versions ready for cryptographic operations.
//!
//! Key material at rest (state, log, snapshots, backups) is always
//! `aead::seal(KDF(master, "keystead/v1/key-wrap"), aad = "keystead/v1/key|{name}|{version}", storage bytes)`.
//! The master key exists only here, in memory (or sealed on disk under a sealing key, see
//! `seal`).

use crate::crypto::KeyMaterial;
use crate::state::StateChange;
use crate::state::{Command, Outcome, WrappedBytes};
use keystead_core::aead;
use keystead_core::kdf;
use keystead_core::sd::DomainSecret;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use zeroize::Zeroizing;

/// Keys derived from an unsealed domain.
pub struct Unsealed {
    pub secret: DomainSecret,
    wrap_key: Zeroizing<[u8; 32]>,
    key_backup_key: Zeroizing<[u8; 32]>,
    backup_key: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for Unsealed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Unsealed")
            .field("fingerprint", &self.secret.fingerprint())
            .finish_non_exhaustive()
    }
}

impl Unsealed {
    pub fn new(secret: DomainSecret) -> Self {
        let master = secret.master_key();
        Self {
            wrap_key: kdf::derive_key(master, kdf::LABEL_KEY_WRAP, b""),
            key_backup_key: kdf::derive_key(master, kdf::LABEL_KEY_BACKUP_BLOB, b""),
            backup_key: kdf::derive_key(master, kdf::LABEL_BACKUP, b""),
            secret,
        }
    }

    pub fn fingerprint(&self) -> String {
        self.secret.fingerprint()
    }

    pub fn key_backup_key(&self) -> &[u8; 32] {
        &self.key_backup_key
    }

    pub fn backup_key(&self) -> &[u8; 32] {
        &self.backup_key
    }
}

fn key_aad(name: &str, version: &str) -> Vec<u8> {
    format!("keystead/v1/key|{name}|{version}").into_bytes()
}

/// Why a key cannot be used right now.
#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    #[error("the partition does not hold the security domain yet")]
    Sealed,
    #[error(
        "stored material of key '{name}' version '{version}' failed its integrity check; the key cannot be used (restore it from a backup)"
    )]
    Integrity { name: String, version: String },
    #[error("stored material of key '{name}' version '{version}' could not be loaded: {reason}")]
    Load {
        name: String,
        version: String,
        reason: String,
    },
}

#[derive(Default)]
pub struct Keyring {
    unsealed: RwLock<Option<Arc<Unsealed>>>,
    cache: RwLock<HashMap<(String, String), Arc<KeyMaterial>>>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("unsealed", &self.is_unsealed())
            .finish()
    }
}

impl Keyring {
    pub fn install(&self, secret: DomainSecret) {
        let u = Arc::new(Unsealed::new(secret));
        *self.unsealed.write().unwrap_or_else(|p| p.into_inner()) = Some(u);
        self.cache
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    pub fn unsealed(&self) -> Option<Arc<Unsealed>> {
        self.unsealed
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn is_unsealed(&self) -> bool {
        self.unsealed().is_some()
    }

    /// Wrap a key version's storage bytes for the state.
    pub fn wrap(
        &self,
        name: &str,
        version: &str,
        material: &KeyMaterial,
    ) -> Result<WrappedBytes, KeyringError> {
        let u = self.unsealed().ok_or(KeyringError::Sealed)?;
        let bytes = material.to_storage_bytes();
        aead::seal(&u.wrap_key, &key_aad(name, version), &bytes)
            .map(WrappedBytes)
            .map_err(|_| KeyringError::Sealed)
    }

    /// Unwrap the key of (name, version) without keeping it (a restore checks a backup's
    /// versions before committing; a rotation reads the current version's spec).
    pub fn unwrap_uncached(
        &self,
        name: &str,
        version: &str,
        wrapped: &WrappedBytes,
    ) -> Result<KeyMaterial, KeyringError> {
        let u = self.unsealed().ok_or(KeyringError::Sealed)?;
        let plain = aead::open(&u.wrap_key, &key_aad(name, version), &wrapped.0).map_err(|_| {
            KeyringError::Integrity {
                name: name.into(),
                version: version.into(),
            }
        })?;
        KeyMaterial::from_storage_bytes(&plain).map_err(|e| KeyringError::Load {
            name: name.into(),
            version: version.into(),
            reason: e.to_string(),
        })
    }

    /// The usable key of (name, version), unwrapping it on first use and keeping it. Call
    /// it while holding the state's read lock, with `wrapped` read under that lock: a purge
    /// (which evicts under the state's write lock, [`Keyring::forget`]) then either comes
    /// before (the key is not found) or after (it evicts what this call kept).
    pub fn load(
        &self,
        name: &str,
        version: &str,
        wrapped: &WrappedBytes,
    ) -> Result<Arc<KeyMaterial>, KeyringError> {
        let id = (name.to_string(), version.to_string());
        if let Some(k) = self
            .cache
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
        {
            return Ok(k.clone());
        }
        let material = Arc::new(self.unwrap_uncached(name, version, wrapped)?);
        self.cache
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, material.clone());
        Ok(material)
    }

    /// How many key versions are held unwrapped in memory (a count for `/metrics`).
    pub fn cached_versions(&self) -> usize {
        self.cache.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Forget cached material of a key.
    pub fn evict(&self, name: &str) {
        self.cache
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(n, _), _| n != name);
    }

    /// Drop the domain and every cached key (a region its primary removed: its pool is
    /// purged).
    pub fn shred(&self) {
        *self.unsealed.write().unwrap_or_else(|p| p.into_inner()) = None;
        self.clear();
    }

    /// Forget every cached key.
    pub fn clear(&self) {
        self.cache
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// Drop what a state change makes stale, on every partition as it applies the change:
    /// a deleted, purged or replaced key's material (a soft-deleted key's material stays
    /// wrapped in the state for recovery, never unwrapped in memory).
    pub fn forget(&self, change: StateChange<'_>) {
        match change {
            StateChange::Applied(cmd, outcome) => match (cmd, outcome) {
                (Command::DeleteKey { name, .. }, _) | (Command::PurgeKey { name, .. }, _) => {
                    self.evict(name)
                }
                (Command::RestoreKey { key }, _) => self.evict(&key.name),
                (Command::PurgeExpired { .. }, Outcome::Purged(names)) => {
                    for n in names {
                        self.evict(n);
                    }
                }
                (Command::RestoreAll { .. } | Command::RestoreCommit { .. }, _) => self.clear(),
                (Command::RegionPurge { .. }, _) => self.shred(),
                _ => {}
            },
            StateChange::Replaced => self.clear(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::KeySpec;
    use crate::state::Outcome;

    #[test]
    fn applied_deletes_purges_and_restores_evict_and_other_changes_do_not() {
        let k = Keyring::default();
        k.install(DomainSecret::generate("pool"));
        let m = KeyMaterial::generate(&KeySpec::Oct { bits: 128 }).unwrap();
        let load = |name: &str| {
            let w = k.wrap(name, "v1", &m).unwrap();
            k.load(name, "v1", &w).unwrap();
        };
        load("a");
        load("b");
        assert_eq!(k.cached_versions(), 2);
        let other = Command::RecoverKey { name: "a".into() };
        k.forget(StateChange::Applied(&other, &Outcome::None));
        assert_eq!(k.cached_versions(), 2);
        let purge = Command::PurgeKey {
            name: "a".into(),
            now: 0,
        };
        k.forget(StateChange::Applied(&purge, &Outcome::None));
        assert_eq!(k.cached_versions(), 1);
        let expired = Command::PurgeExpired { now: 0 };
        k.forget(StateChange::Applied(
            &expired,
            &Outcome::Purged(vec!["b".into()]),
        ));
        assert_eq!(k.cached_versions(), 0);
        load("c");
        k.forget(StateChange::Replaced);
        assert_eq!(k.cached_versions(), 0);
        // Checking a version does not keep it.
        let w = k.wrap("d", "v1", &m).unwrap();
        k.unwrap_uncached("d", "v1", &w).unwrap();
        assert_eq!(k.cached_versions(), 0);
    }
}
