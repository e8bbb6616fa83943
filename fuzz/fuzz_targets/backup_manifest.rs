//! Backup manifests (`backup::format::parse_manifest`, `verify_manifest` under a fixed
//! backup key, `backup::summary`). A parsed manifest round-trips; inputs starting with 0xff
//! are edit scripts over a manifest signed at start-up, and a manifest whose MAC verifies
//! must say exactly what was signed.
#![no_main]

use std::sync::OnceLock;

use keystead_fuzz::{BACKUP_KEY, EDIT_MODE, FOLDER, POOL_ID, SEED_NAME_PREFIX, apply_edits};
use keystead_partition::backup::format::{self, ChunkInfo, Manifest, ManifestBody};
use libfuzzer_sys::fuzz_target;

fn base() -> &'static (ManifestBody, Vec<u8>) {
    static B: OnceLock<(ManifestBody, Vec<u8>)> = OnceLock::new();
    B.get_or_init(|| {
        let body = ManifestBody {
            format: format::FORMAT.into(),
            version: format::VERSION,
            pool: format!("{SEED_NAME_PREFIX}-pool"),
            pool_id: POOL_ID.into(),
            folder: FOLDER.into(),
            domain_fingerprint: "fp".into(),
            created: 1_700_000_000,
            applied_index: 9,
            key_count: 3,
            deleted_key_count: 1,
            role_assignment_count: 2,
            role_definition_count: 0,
            restore_point: false,
            chunks: vec![ChunkInfo {
                name: format::chunk_name(0),
                size: 100,
                sha256: format::sha256_hex(b"chunk"),
                records: 6,
            }],
            key_name: None,
        };
        let m = format::sign_manifest(&BACKUP_KEY, body.clone());
        let bytes = keystead_partition::backup::manifest_bytes(&m).expect("manifest bytes");
        (body, bytes)
    })
}

fn check(bytes: &[u8]) -> Option<Manifest> {
    let m = format::parse_manifest(bytes).ok()?;
    let text = serde_json::to_vec(&m).expect("a parsed manifest serializes");
    assert_eq!(
        format::parse_manifest(&text).as_ref(),
        Ok(&m),
        "manifest round trip"
    );
    for (i, c) in m.body.chunks.iter().enumerate() {
        assert_eq!(c.name, format::chunk_name(i));
    }
    let _ = keystead_partition::backup::summary(&m);
    Some(m)
}

fuzz_target!(|data: &[u8]| {
    if data.first() == Some(&EDIT_MODE) {
        let (body, bytes) = base();
        let edited = apply_edits(bytes, &data[1..]);
        if let Some(m) = check(&edited)
            && format::verify_manifest(&BACKUP_KEY, &m).is_ok()
        {
            assert_eq!(&m.body, body, "an altered manifest verified");
        }
        return;
    }
    if let Some(m) = check(data)
        && format::verify_manifest(&BACKUP_KEY, &m).is_ok()
    {
        assert!(
            m.body.pool.starts_with(SEED_NAME_PREFIX),
            "a forged manifest verified"
        );
        assert_eq!(format::sign_manifest(&BACKUP_KEY, m.body.clone()), m);
    }
});
