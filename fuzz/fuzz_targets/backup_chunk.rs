//! Backup chunks (`backup::format::open_chunk` under a fixed backup key) and the records a
//! chunk holds. Mode byte: 0 a sealed chunk (then an index byte, a record-count byte, the
//! chunk; its manifest entry is computed from the bytes so the AEAD is what is tested);
//! 1 the plaintext records (JSON), which must round-trip and seal/open to themselves;
//! 0xff an edit script over a chunk sealed at start-up: a chunk that opens holds its records.
#![no_main]

use std::sync::OnceLock;

use keystead_fuzz::{BACKUP_KEY, EDIT_MODE, FOLDER, apply_edits, json_round_trip};
use keystead_partition::backup::format::{self, ChunkInfo, Record};
use keystead_partition::state::Settings;
use libfuzzer_sys::fuzz_target;

fn info_for(bytes: &[u8], index: usize, records: u64) -> ChunkInfo {
    ChunkInfo {
        name: format::chunk_name(index),
        size: bytes.len() as u64,
        sha256: format::sha256_hex(bytes),
        records,
    }
}

fn base() -> &'static (Vec<Record>, Vec<u8>) {
    static B: OnceLock<(Vec<Record>, Vec<u8>)> = OnceLock::new();
    B.get_or_init(|| {
        let records = vec![
            Record::Settings(Settings::default()),
            Record::Rbac(keystead_core::rbac::RbacState::new()),
        ];
        let sealed = format::seal_chunk(&BACKUP_KEY, FOLDER, 3, &records).expect("seal");
        (records, sealed)
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode == EDIT_MODE {
        let (records, sealed) = base();
        let edited = apply_edits(sealed, rest);
        let info = info_for(&edited, 3, records.len() as u64);
        if let Ok(got) = format::open_chunk(&BACKUP_KEY, FOLDER, 3, &info, &edited) {
            assert_eq!(&got, records, "an altered chunk opened to other records");
        }
        // The manifest entry of the original never accepts altered bytes.
        let original = info_for(sealed, 3, records.len() as u64);
        if edited != *sealed {
            assert!(format::check_chunk_digest(&original, &edited).is_err());
        }
        return;
    }
    match mode % 2 {
        0 => {
            let [index, count, chunk @ ..] = rest else {
                return;
            };
            let index = usize::from(*index);
            let info = info_for(chunk, index, u64::from(*count));
            if let Ok(records) = format::open_chunk(&BACKUP_KEY, FOLDER, index, &info, chunk) {
                assert_eq!(records.len(), usize::from(*count));
                // Bound to its folder and index.
                assert!(format::open_chunk(&BACKUP_KEY, "other", index, &info, chunk).is_err());
            }
        }
        _ => {
            if let Some(records) = json_round_trip::<Vec<Record>>(rest) {
                let sealed = format::seal_chunk(&BACKUP_KEY, FOLDER, 0, &records)
                    .expect("parsed records seal");
                let info = info_for(&sealed, 0, records.len() as u64);
                let back = format::open_chunk(&BACKUP_KEY, FOLDER, 0, &info, &sealed)
                    .expect("a sealed chunk opens");
                assert_eq!(back, records, "seal/open round trip changed the records");
            }
        }
    }
});
