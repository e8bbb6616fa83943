//! Key derivation from the security-domain master key.
//!
//! Everything Keystead derives from the domain (key-wrapping keys, backup keys, internal
//! identities, audit keys, ...) comes from the 32-byte domain master key through one KDF,
//! HKDF-SHA256 (RFC 5869, computed with `aws-lc-rs`), separated by distinct labels:
//!
//! ```text
//! PRK = HKDF-Extract(salt = "keystead/v1/kdf", IKM = master_key)
//! OKM = HKDF-Expand(PRK, info = label || 0x00 || context, L = 32)
//! ```
//!
//! Labels are ASCII and never contain a NUL byte, so `label || 0x00 || context` is
//! unambiguous for any context bytes. The context binds the derived key to what it protects
//! (for example a key name and version); an empty context is allowed.
//!
//! The labels are part of the on-disk and backup formats: changing one makes existing data
//! unreadable. Add a new label (a new version) instead of changing an old one.

use aws_lc_rs::hkdf;
use zeroize::Zeroizing;

/// HKDF salt: a fixed, public domain-separation string for this KDF version.
pub const KDF_SALT: &str = "keystead/v1/kdf";

/// Keys that wrap key material at rest (Raft log, snapshots, PVC). Context: key identity.
pub const LABEL_KEY_WRAP: &str = "keystead/v1/key-wrap";
/// Full-backup encryption key. Context: backup identity.
pub const LABEL_BACKUP: &str = "keystead/v1/backup";
/// Single-key backup blob encryption (`POST /keys/{name}/backup`). Context: key name.
pub const LABEL_KEY_BACKUP_BLOB: &str = "keystead/v1/key-backup-blob";
/// Wrapping the domain for a healing peer over the internal channel.
pub const LABEL_PEER_TRANSFER: &str = "keystead/v1/peer-transfer";
/// Seeds of the pool's internal identities (internal CA, partition identities).
pub const LABEL_INTERNAL_IDENTITY: &str = "keystead/v1/internal-identity";
/// Audit-log chain MAC key.
pub const LABEL_AUDIT: &str = "keystead/v1/audit";
/// Sealing the domain at rest on a partition (with a seal provider's key).
pub const LABEL_DOMAIN_SEAL: &str = "keystead/v1/domain-seal";
/// The MAC of a region demotion token (docs/regions.md, switchover).
pub const LABEL_REGION_DEMOTION: &str = "keystead/v1/region-demotion";
/// The MAC of a region removal notice (docs/regions.md, removal).
pub const LABEL_REGION_REMOVAL: &str = "keystead/v1/region-removal";

/// Every label defined by this version, for documentation and uniqueness tests.
pub const ALL_LABELS: &[&str] = &[
    LABEL_KEY_WRAP,
    LABEL_BACKUP,
    LABEL_KEY_BACKUP_BLOB,
    LABEL_PEER_TRANSFER,
    LABEL_INTERNAL_IDENTITY,
    LABEL_AUDIT,
    LABEL_DOMAIN_SEAL,
    LABEL_REGION_DEMOTION,
    LABEL_REGION_REMOVAL,
];

/// HKDF output length marker for a 32-byte key.
struct Len32;

impl hkdf::KeyType for Len32 {
    fn len(&self) -> usize {
        32
    }
}

/// Derive a 32-byte key from the domain master key for `label` (one of the `LABEL_*`
/// constants) and `context`.
///
/// `label` must not contain a NUL byte (all `LABEL_*` constants satisfy this); a label
/// containing one is a programming error and is rejected in debug builds.
pub fn derive_key(master: &[u8; 32], label: &str, context: &[u8]) -> Zeroizing<[u8; 32]> {
    debug_assert!(
        !label.is_empty() && !label.as_bytes().contains(&0),
        "KDF labels are non-empty and contain no NUL byte"
    );
    let salt = hkdf::Salt::new(hkdf::HKDF_SHA256, KDF_SALT.as_bytes());
    let prk = salt.extract(master);
    let info: [&[u8]; 3] = [label.as_bytes(), &[0u8], context];
    let mut out = Zeroizing::new([0u8; 32]);
    // Expanding to 32 bytes (< 255 * 32) with a non-empty info cannot fail.
    prk.expand(&info, Len32)
        .and_then(|okm| okm.fill(&mut out[..]))
        .expect("HKDF-SHA256 expand to 32 bytes never fails");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_distinct_and_nul_free() {
        let mut seen = std::collections::HashSet::new();
        for l in ALL_LABELS {
            assert!(seen.insert(*l), "duplicate label {l}");
            assert!(!l.as_bytes().contains(&0));
            assert!(l.starts_with("keystead/v1/"));
        }
    }
}
