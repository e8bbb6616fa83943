//! Single-key backup blobs (`POST /keys/{name}/backup` → `POST /keys/restore`): the header
//! split and the sealed record, under a fixed key-backup key. Inputs starting with 0xff are
//! edit scripts over a blob sealed at start-up; a blob that opens must hold the record it
//! was sealed with, and re-seals and re-opens to the same record.
#![no_main]

use std::sync::OnceLock;

use keystead_fuzz::{
    EDIT_MODE, KEY_BACKUP_FINGERPRINT, KEY_BACKUP_KEY, SEED_NAME_PREFIX, apply_edits,
};
use keystead_partition::fuzzing::{
    open_key_backup_blob, seal_key_backup_blob, split_key_backup_blob,
};
use keystead_partition::state::KeyRecord;
use libfuzzer_sys::fuzz_target;

fn base() -> &'static (KeyRecord, Vec<u8>) {
    static B: OnceLock<(KeyRecord, Vec<u8>)> = OnceLock::new();
    B.get_or_init(|| {
        let rec: KeyRecord = serde_json::from_value(serde_json::json!({
            "name": format!("{SEED_NAME_PREFIX}-key"),
            "versions": [{"version": "v1", "kty": "oct-HSM", "keyOps": ["wrapKey"],
                "publicJwk": {}, "wrapped": "AAECAwQ",
                "attributes": {"enabled": true, "created": 1, "updated": 2}}],
        }))
        .expect("fixture record");
        let blob =
            seal_key_backup_blob(&KEY_BACKUP_KEY, KEY_BACKUP_FINGERPRINT, &rec).expect("seal");
        (rec, blob)
    })
}

fn open(blob: &[u8]) -> Option<KeyRecord> {
    let (fp, sealed) = split_key_backup_blob(blob).ok()?;
    if fp != KEY_BACKUP_FINGERPRINT {
        return None;
    }
    let rec = open_key_backup_blob(&KEY_BACKUP_KEY, fp, sealed).ok()?;
    // Opens under the same key only.
    assert!(open_key_backup_blob(&[0u8; 32], fp, sealed).is_err());
    Some(rec)
}

fuzz_target!(|data: &[u8]| {
    if data.first() == Some(&EDIT_MODE) {
        let (rec, blob) = base();
        let edited = apply_edits(blob, &data[1..]);
        if let Some(got) = open(&edited) {
            assert_eq!(&got, rec, "an altered blob opened to another record");
        }
        return;
    }
    if let Some(rec) = open(data) {
        assert!(
            rec.name.starts_with(SEED_NAME_PREFIX),
            "a forged blob opened"
        );
        let again = seal_key_backup_blob(&KEY_BACKUP_KEY, KEY_BACKUP_FINGERPRINT, &rec)
            .expect("an opened record re-seals");
        assert_eq!(
            open(&again).as_ref(),
            Some(&rec),
            "re-sealed blob round trip"
        );
    }
});
