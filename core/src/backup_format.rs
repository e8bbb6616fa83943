//! The on-store format of a full backup (the contract between the partition that writes
//! it, and the partition, the operator and `kubectl hsm` that read it): the manifest, its MAC
//! and the chunk names and digests. The records inside the sealed chunks are the
//! partition's (`keystead_partition::backup::format::Record`). See docs/backup.md.
//!
//! ```text
//! <prefix>/<folder>/chunk-00000.bin   aead::seal(backup_key, "keystead/v1/backup-chunk|<folder>|<index>", JSON [Record, ...])
//! <prefix>/<folder>/manifest.json     ManifestBody fields + "mac": hex HMAC-SHA256(mac_key, JSON(ManifestBody))
//! ```

use aws_lc_rs::{digest, hmac};
use serde::{Deserialize, Serialize};

/// `format` field of every manifest.
pub const FORMAT: &str = "keystead-backup";
/// Version of the format this build writes and reads.
pub const VERSION: u32 = 1;
/// Name of the manifest in a backup folder.
pub const MANIFEST: &str = "manifest.json";
/// Records (keys or soft-deleted keys) per chunk.
pub const RECORDS_PER_CHUNK: usize = 1000;
/// Largest chunk accepted when reading (a chunk of 1000 keys is far smaller).
pub const MAX_CHUNK_BYTES: u64 = 256 * 1024 * 1024;
/// Largest manifest accepted when reading.
pub const MAX_MANIFEST_BYTES: u64 = 64 * 1024 * 1024;

const MAC_LABEL: &[u8] = b"keystead/v1/backup/manifest-mac";

/// One chunk file as listed in the manifest.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ChunkInfo {
    pub name: String,
    pub size: u64,
    /// Lowercase hex SHA-256 of the chunk file (the sealed bytes).
    pub sha256: String,
    pub records: u64,
}

/// Everything the manifest says, in the order it is MAC'd.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ManifestBody {
    pub format: String,
    pub version: u32,
    pub pool: String,
    pub pool_id: String,
    pub folder: String,
    pub domain_fingerprint: String,
    /// Unix seconds.
    pub created: i64,
    /// Index of the last command applied to the state the backup was taken from.
    pub applied_index: u64,
    pub key_count: u64,
    pub deleted_key_count: u64,
    pub role_assignment_count: u64,
    pub role_definition_count: u64,
    pub restore_point: bool,
    pub chunks: Vec<ChunkInfo>,
    /// Set on a single-key backup: the one key it holds (with all its versions). Absent on
    /// full backups, so manifests written before this field existed keep their MAC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_name: Option<String>,
}

/// The manifest file: the body plus its MAC.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    #[serde(flatten)]
    pub body: ManifestBody,
    /// Hex HMAC-SHA256 over the JSON serialization of `body`.
    pub mac: String,
}

/// Why a backup's bytes cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("the manifest is not a Keystead backup manifest: {0}")]
    ManifestParse(String),
    #[error(
        "the manifest has format version {0}, this build reads version {VERSION}; restore with a matching Keystead version"
    )]
    UnsupportedVersion(u32),
    #[error(
        "the manifest's MAC does not verify: the manifest was altered, or it was written under another security domain; nothing was restored"
    )]
    ManifestMac,
    #[error(
        "chunk {name} failed its check ({reason}): the backup is corrupt or was tampered with; nothing was restored"
    )]
    Chunk { name: String, reason: String },
}

fn mac_key(backup_key: &[u8; 32]) -> hmac::Key {
    let k = hmac::Key::new(hmac::HMAC_SHA256, backup_key);
    let derived = hmac::sign(&k, MAC_LABEL);
    hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref())
}

fn body_bytes(body: &ManifestBody) -> Vec<u8> {
    // Serializing a struct is deterministic (field order is the declaration order).
    serde_json::to_vec(body).unwrap_or_default()
}

/// Sign a manifest body under the backup key.
pub fn sign_manifest(backup_key: &[u8; 32], body: ManifestBody) -> Manifest {
    let tag = hmac::sign(&mac_key(backup_key), &body_bytes(&body));
    Manifest {
        mac: hex::encode(tag.as_ref()),
        body,
    }
}

/// Parse a manifest file (no MAC check: that needs the domain).
pub fn parse_manifest(bytes: &[u8]) -> Result<Manifest, FormatError> {
    let m: Manifest =
        serde_json::from_slice(bytes).map_err(|e| FormatError::ManifestParse(e.to_string()))?;
    if m.body.format != FORMAT {
        return Err(FormatError::ManifestParse(format!(
            "format is '{}', expected '{FORMAT}'",
            m.body.format
        )));
    }
    if m.body.version != VERSION {
        return Err(FormatError::UnsupportedVersion(m.body.version));
    }
    for (i, c) in m.body.chunks.iter().enumerate() {
        if c.name != chunk_name(i) {
            return Err(FormatError::ManifestParse(format!(
                "chunk {i} is named '{}', expected '{}'",
                c.name,
                chunk_name(i)
            )));
        }
    }
    Ok(m)
}

/// Check a manifest's MAC under the backup key.
pub fn verify_manifest(backup_key: &[u8; 32], m: &Manifest) -> Result<(), FormatError> {
    // Only the canonical (lowercase) encoding: a manifest is written once and never
    // re-encoded, so any other spelling of the tag is an alteration (found by fuzzing).
    if m.mac.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(FormatError::ManifestMac);
    }
    let tag = hex::decode(&m.mac).map_err(|_| FormatError::ManifestMac)?;
    hmac::verify(&mac_key(backup_key), &body_bytes(&m.body), &tag)
        .map_err(|_| FormatError::ManifestMac)
}

/// File name of chunk `index`.
pub fn chunk_name(index: usize) -> String {
    format!("chunk-{index:05}.bin")
}

/// Associated data of chunk `index` of `folder`.
pub fn chunk_aad(folder: &str, index: usize) -> Vec<u8> {
    format!("keystead/v1/backup-chunk|{folder}|{index}").into_bytes()
}

/// Lowercase hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(digest::digest(&digest::SHA256, bytes).as_ref())
}

/// Check a chunk file against its manifest entry (size and digest), without the domain.
pub fn check_chunk_digest(info: &ChunkInfo, bytes: &[u8]) -> Result<(), FormatError> {
    if bytes.len() as u64 != info.size {
        return Err(FormatError::Chunk {
            name: info.name.clone(),
            reason: format!(
                "size is {} bytes, the manifest says {}",
                bytes.len(),
                info.size
            ),
        });
    }
    if sha256_hex(bytes) != info.sha256 {
        return Err(FormatError::Chunk {
            name: info.name.clone(),
            reason: "SHA-256 does not match the manifest".into(),
        });
    }
    Ok(())
}
