//! Shared fixtures of Keystead's fuzz targets (`fuzz_targets/`) and of the seed writer
//! (`seeds/`): fixed test keys, the names the seeds were made with, and small helpers.
//!
//! The files under `fixtures/` are test-only keys written once by `seeds`
//! (`cargo run -p keystead-fuzz-seeds` in this directory); they protect nothing.

use std::path::PathBuf;

/// Key of the backup fixtures (chunks sealed, manifests MAC'd under it).
pub const BACKUP_KEY: [u8; 32] = [0x42; 32];
/// Key-backup key of the single-key backup blob fixtures.
pub const KEY_BACKUP_KEY: [u8; 32] = [0x24; 32];
/// Sealing key of the sealed-domain fixtures.
pub const SEAL_KEY: [u8; 32] = [0x5e; 32];
/// Domain fingerprint named in the single-key backup blob fixtures.
pub const KEY_BACKUP_FINGERPRINT: &str =
    "f00dfeedf00dfeedf00dfeedf00dfeedf00dfeedf00dfeedf00dfeedf00dfeed";
/// Backup folder the chunk fixtures are bound to.
pub const FOLDER: &str = "fuzz-pool-20260101T000000Z";
/// Pool of the fixtures (transfer blobs, exchange keys, manifests).
pub const POOL_ID: &str = "fuzz-pool-id";
/// Issuer and audience of the bearer-token fixtures.
pub const ISSUER: &str = "https://issuer.fuzz.keystead.invalid";
pub const AUDIENCE: &str = "https://hsm.fuzz.keystead.invalid";
/// Prefix of every principal, key name and backup folder the seeds write: an input that
/// verifies or decrypts must be one of them (the fuzzer cannot forge a MAC or a signature).
pub const SEED_NAME_PREFIX: &str = "fuzz-seed";
/// Number of custodian key pairs under `fixtures/`.
pub const CUSTODIANS: usize = 3;

/// First byte of an input that is an edit script over a valid document made at start-up
/// (see [`apply_edits`]) rather than the document itself.
pub const EDIT_MODE: u8 = 0xff;

/// `fuzz/fixtures/<name>`.
pub fn fixture_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

/// The text of a fixture.
///
/// # Panics
/// When the fixture is missing: run `cargo run -p keystead-fuzz-seeds` in `fuzz/`.
pub fn fixture(name: &str) -> String {
    std::fs::read_to_string(fixture_path(name)).unwrap_or_else(|e| {
        panic!(
            "fuzz fixture {name} cannot be read ({e}); run `cargo run -p keystead-fuzz-seeds` in fuzz/"
        )
    })
}

/// Apply an edit script to `base`: 3-byte operations `(pos_hi, pos_lo, x)` at position
/// `pos % len`; `x == 0` deletes that byte, otherwise it is XORed with `x`. Reaches the
/// checks behind a document's syntax (MACs, AEAD tags, cross-field checks) that random
/// bytes rarely get past.
pub fn apply_edits(base: &[u8], script: &[u8]) -> Vec<u8> {
    let mut out = base.to_vec();
    for op in script.chunks_exact(3) {
        if out.is_empty() {
            break;
        }
        let pos = usize::from(u16::from_be_bytes([op[0], op[1]])) % out.len();
        if op[2] == 0 {
            out.remove(pos);
        } else {
            out[pos] ^= op[2];
        }
    }
    out
}

/// A scratch directory of this process, emptied: under `$KEYSTEAD_FUZZ_SCRATCH` (set by
/// scripts/fuzz.sh to a directory on tmpfs that it removes when it ends), else the system's
/// temporary directory.
pub fn scratch_dir(name: &str) -> PathBuf {
    let base = std::env::var_os("KEYSTEAD_FUZZ_SCRATCH")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = base.join(format!("keystead-fuzz-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("the fuzz scratch directory can be created");
    dir
}

/// Parse `bytes` as `T`; when it parses, check that its serialization is a fixed point
/// (serialize, parse again, serialize again: the same bytes) and return it.
///
/// # Panics
/// When the round trip fails or changes the value: that is the finding.
pub fn json_round_trip<T>(bytes: &[u8]) -> Option<T>
where
    T: serde::de::DeserializeOwned + serde::Serialize,
{
    let value: T = serde_json::from_slice(bytes).ok()?;
    let first = serde_json::to_vec(&value).expect("a parsed value serializes");
    let again: T = serde_json::from_slice(&first).unwrap_or_else(|e| {
        panic!(
            "the serialization of a parsed {} does not parse ({e}): {}",
            std::any::type_name::<T>(),
            String::from_utf8_lossy(&first)
        )
    });
    let second = serde_json::to_vec(&again).expect("a parsed value serializes");
    assert_eq!(
        String::from_utf8_lossy(&first),
        String::from_utf8_lossy(&second),
        "{} round trip is not stable",
        std::any::type_name::<T>()
    );
    Some(value)
}
