//! The on-store format of a full backup: a folder of AEAD-sealed chunks plus a MAC'd manifest
//! (the manifest, its MAC and the chunk digests are the shared contract in
//! `keystead_core::backup_format`; the records inside the chunks are the partition's).
//!
//! ```text
//! <prefix>/<folder>/chunk-00000.bin   aead::seal(backup_key, "keystead/v1/backup-chunk|<folder>|<index>", JSON [Record, ...])
//! <prefix>/<folder>/chunk-00001.bin   ...
//! <prefix>/<folder>/manifest.json     ManifestBody fields + "mac": hex HMAC-SHA256(mac_key, JSON(ManifestBody))
//! ```
//!
//! `backup_key = KDF(master, "keystead/v1/backup")`; `mac_key = HMAC-SHA256(backup_key,
//! "keystead/v1/backup/manifest-mac")`. Key material inside the records is still wrapped
//! under the domain's key-wrapping key (the backup adds a second layer). See docs/backup.md.

use crate::state::{DeletedKey, KeyRecord, Settings};
use keystead_core::aead;
pub use keystead_core::backup_format::*;
use keystead_core::rbac::RbacState;
use serde::{Deserialize, Serialize};

/// One record of a backup. Chunk 0 starts with the settings and the RBAC state.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(tag = "type", content = "value", rename_all = "camelCase")]
pub enum Record {
    Settings(Settings),
    Rbac(RbacState),
    Key(KeyRecord),
    DeletedKey(DeletedKey),
}

/// Serialize and seal the records of chunk `index` of `folder`.
pub fn seal_chunk(
    backup_key: &[u8; 32],
    folder: &str,
    index: usize,
    records: &[Record],
) -> Result<Vec<u8>, FormatError> {
    let chunk_err = |reason: String| FormatError::Chunk {
        name: chunk_name(index),
        reason,
    };
    let plain =
        zeroize::Zeroizing::new(serde_json::to_vec(records).map_err(|e| chunk_err(e.to_string()))?);
    aead::seal(backup_key, &chunk_aad(folder, index), &plain).map_err(|e| chunk_err(e.to_string()))
}

/// Check a chunk's digest, then open and parse it.
pub fn open_chunk(
    backup_key: &[u8; 32],
    folder: &str,
    index: usize,
    info: &ChunkInfo,
    bytes: &[u8],
) -> Result<Vec<Record>, FormatError> {
    check_chunk_digest(info, bytes)?;
    let chunk_err = |reason: &str| FormatError::Chunk {
        name: info.name.clone(),
        reason: reason.into(),
    };
    let plain = aead::open(backup_key, &chunk_aad(folder, index), bytes)
        .map_err(|_| chunk_err("it does not decrypt under this pool's backup key"))?;
    let records: Vec<Record> =
        serde_json::from_slice(&plain).map_err(|_| chunk_err("its content does not parse"))?;
    if records.len() as u64 != info.records {
        return Err(chunk_err("its record count does not match the manifest"));
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body() -> ManifestBody {
        ManifestBody {
            format: FORMAT.into(),
            version: VERSION,
            pool: "p".into(),
            pool_id: "id".into(),
            folder: "p-1".into(),
            domain_fingerprint: "fp".into(),
            created: 1,
            applied_index: 2,
            key_count: 0,
            deleted_key_count: 0,
            role_assignment_count: 0,
            role_definition_count: 0,
            restore_point: false,
            key_name: None,
            chunks: vec![],
        }
    }

    /// Found by the backup_manifest fuzz target: the MAC in upper-case hex verified, so a
    /// manifest could be altered (re-spelled) and still be accepted.
    #[test]
    fn a_manifest_mac_in_another_spelling_is_refused() {
        let key = [7u8; 32];
        let mut m = sign_manifest(&key, body());
        assert!(verify_manifest(&key, &m).is_ok());
        m.mac = m.mac.to_ascii_uppercase();
        assert!(verify_manifest(&key, &m).is_err());
    }

    #[test]
    fn manifest_mac_round_trip_and_tamper() {
        let k = [3u8; 32];
        let m = sign_manifest(&k, body());
        let bytes = serde_json::to_vec(&m).unwrap();
        let parsed = parse_manifest(&bytes).unwrap();
        verify_manifest(&k, &parsed).unwrap();
        assert_eq!(
            verify_manifest(&[4u8; 32], &parsed),
            Err(FormatError::ManifestMac)
        );
        let mut t = parsed.clone();
        t.body.key_count = 5;
        assert_eq!(verify_manifest(&k, &t), Err(FormatError::ManifestMac));
        let mut v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        v["version"] = 9.into();
        assert_eq!(
            parse_manifest(v.to_string().as_bytes()),
            Err(FormatError::UnsupportedVersion(9))
        );
    }

    #[test]
    fn chunks_are_bound_to_folder_and_index() {
        let k = [5u8; 32];
        let recs = vec![Record::Settings(Settings::default())];
        let sealed = seal_chunk(&k, "f", 0, &recs).unwrap();
        let info = ChunkInfo {
            name: chunk_name(0),
            size: sealed.len() as u64,
            sha256: sha256_hex(&sealed),
            records: 1,
        };
        assert_eq!(open_chunk(&k, "f", 0, &info, &sealed).unwrap(), recs);
        assert!(open_chunk(&k, "g", 0, &info, &sealed).is_err());
        assert!(open_chunk(&k, "f", 1, &info, &sealed).is_err());
        let mut bad = sealed.clone();
        bad[20] ^= 1;
        let err = open_chunk(&k, "f", 0, &info, &bad).unwrap_err();
        assert!(err.to_string().contains("SHA-256"), "{err}");
    }
}
