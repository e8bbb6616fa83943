//! Property tests: every tampered single-key backup blob, backup manifest and backup chunk
//! is rejected with an error (never a panic, never a success with other contents). That
//! nothing is stored when one is rejected is checked on real processes by
//! `backup_integrity::corruption_is_detected_and_nothing_changes`; here the formats
//! themselves. The fuzz targets `key_backup_blob`, `backup_manifest` and `backup_chunk`
//! (fuzz/) explore the same properties with coverage guidance.

use keystead_core::rbac::RbacState;
use keystead_partition::backup::format::{self, ChunkInfo, ManifestBody, Record};
use keystead_partition::fuzzing::{
    KeyBlobError, open_key_backup_blob, seal_key_backup_blob, split_key_backup_blob,
};
use keystead_partition::state::{KeyRecord, Settings};
use proptest::prelude::*;

const KEY: [u8; 32] = [7; 32];
const FP: &str = "3f1c0ffee3f1c0ffee3f1c0ffee3f1c0ffee3f1c0ffee3f1c0ffee3f1c0ffee00";
const FOLDER: &str = "pool-20260101T000000Z";

fn record() -> KeyRecord {
    serde_json::from_value(serde_json::json!({
        "name": "k1",
        "versions": [{"version": "v1", "kty": "oct-HSM", "keyOps": ["wrapKey"],
            "publicJwk": {}, "wrapped": "AAECAwQFBgcICQoLDA0ODw",
            "attributes": {"enabled": true, "created": 1, "updated": 2},
            "tags": {"a": "b"}}],
    }))
    .unwrap()
}

/// What `POST /keys/restore` does with a blob before anything is proposed: the header, the
/// pool's domain, the AEAD, the record.
fn restore(blob: &[u8]) -> Result<KeyRecord, KeyBlobError> {
    let (fp, sealed) = split_key_backup_blob(blob)?;
    if fp != FP {
        return Err(KeyBlobError::Malformed);
    }
    open_key_backup_blob(&KEY, fp, sealed)
}

fn flip(bytes: &[u8], edits: &[(usize, u8)]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    for (i, x) in edits {
        let i = i % out.len();
        out[i] ^= x;
    }
    out
}

fn edits() -> impl Strategy<Value = Vec<(usize, u8)>> {
    prop::collection::vec((any::<usize>(), 1u8..=255), 1..4)
}

#[test]
fn every_byte_of_a_key_backup_blob_is_protected() {
    let blob = seal_key_backup_blob(&KEY, FP, &record()).unwrap();
    assert_eq!(restore(&blob).unwrap(), record());
    for i in 0..blob.len() {
        for x in [0x01, 0x80, 0xff] {
            let t = flip(&blob, &[(i, x)]);
            assert!(
                restore(&t).is_err(),
                "flip {x:#x} at byte {i} was not detected"
            );
        }
    }
    for n in 0..blob.len() {
        assert!(restore(&blob[..n]).is_err(), "truncation to {n} bytes");
    }
    let mut longer = blob.clone();
    longer.push(0);
    assert!(restore(&longer).is_err(), "an appended byte");
}

#[test]
fn every_byte_of_a_chunk_is_protected_even_with_a_matching_manifest_entry() {
    let records = vec![
        Record::Settings(Settings::default()),
        Record::Rbac(RbacState::default()),
        Record::Key(record()),
    ];
    let sealed = format::seal_chunk(&KEY, FOLDER, 0, &records).unwrap();
    let info = |b: &[u8]| ChunkInfo {
        name: format::chunk_name(0),
        size: b.len() as u64,
        sha256: format::sha256_hex(b),
        records: 3,
    };
    let original = info(&sealed);
    assert_eq!(
        format::open_chunk(&KEY, FOLDER, 0, &original, &sealed).unwrap(),
        records
    );
    for i in 0..sealed.len() {
        let t = flip(&sealed, &[(i, 0x01)]);
        // Against the manifest's entry: the digest differs.
        assert!(format::open_chunk(&KEY, FOLDER, 0, &original, &t).is_err());
        // Against an entry rewritten for the altered bytes: the AEAD tag fails.
        assert!(
            format::open_chunk(&KEY, FOLDER, 0, &info(&t), &t).is_err(),
            "flip at byte {i} opened"
        );
    }
}

fn manifest_body() -> ManifestBody {
    ManifestBody {
        format: format::FORMAT.into(),
        version: format::VERSION,
        pool: "pool".into(),
        pool_id: "pool-id".into(),
        folder: FOLDER.into(),
        domain_fingerprint: FP.into(),
        created: 1_700_000_000,
        applied_index: 12,
        key_count: 3,
        deleted_key_count: 1,
        role_assignment_count: 2,
        role_definition_count: 1,
        restore_point: false,
        chunks: vec![ChunkInfo {
            name: format::chunk_name(0),
            size: 1234,
            sha256: format::sha256_hex(b"chunk"),
            records: 7,
        }],
        key_name: Some("k1".into()),
    }
}

/// Parse and verify as a restore does; a manifest that passes must say what was signed.
fn manifest_accepted(bytes: &[u8]) -> Option<ManifestBody> {
    let m = format::parse_manifest(bytes).ok()?;
    format::verify_manifest(&KEY, &m).ok()?;
    Some(m.body)
}

#[test]
fn every_byte_of_a_manifest_is_protected() {
    let body = manifest_body();
    let bytes =
        keystead_partition::backup::manifest_bytes(&format::sign_manifest(&KEY, body.clone()))
            .unwrap();
    assert_eq!(manifest_accepted(&bytes), Some(body.clone()));
    for i in 0..bytes.len() {
        for x in [0x01, 0x20, 0x80] {
            let t = flip(&bytes, &[(i, x)]);
            if let Some(got) = manifest_accepted(&t) {
                // Only a change of the JSON layout (whitespace) keeps the manifest valid.
                assert_eq!(
                    got, body,
                    "flip {x:#x} at byte {i} verified with other contents"
                );
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn tampered_key_backup_blobs_are_rejected(edits in edits()) {
        let blob = seal_key_backup_blob(&KEY, FP, &record()).unwrap();
        let t = flip(&blob, &edits);
        prop_assert!(restore(&t).is_err());
    }

    #[test]
    fn tampered_chunks_are_rejected(edits in edits(), index in 0usize..4) {
        let records = vec![Record::Key(record())];
        let sealed = format::seal_chunk(&KEY, FOLDER, index, &records).unwrap();
        let t = flip(&sealed, &edits);
        let info = ChunkInfo {
            name: format::chunk_name(index),
            size: t.len() as u64,
            sha256: format::sha256_hex(&t),
            records: 1,
        };
        prop_assert!(format::open_chunk(&KEY, FOLDER, index, &info, &t).is_err());
    }

    #[test]
    fn tampered_manifests_are_rejected_or_unchanged(edits in edits()) {
        let body = manifest_body();
        let bytes = serde_json::to_vec(&format::sign_manifest(&KEY, body.clone())).unwrap();
        let t = flip(&bytes, &edits);
        if let Some(got) = manifest_accepted(&t) {
            prop_assert_eq!(got, body);
        }
    }
}
