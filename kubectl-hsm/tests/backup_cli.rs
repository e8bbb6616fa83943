//! `kubectl hsm backup list` and `verify` (without the pool) on a filesystem store.

use keystead_partition::backup::format::{self, ChunkInfo, ManifestBody, Record};
use keystead_partition::state::Settings;
use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kubectl-hsm"))
}

/// Write a one-chunk backup folder the way a partition does.
fn write_folder(root: &std::path::Path, folder: &str) -> std::path::PathBuf {
    let key = [9u8; 32];
    let dir = root.join(folder);
    std::fs::create_dir_all(&dir).unwrap();
    let records = vec![Record::Settings(Settings::default())];
    let sealed = format::seal_chunk(&key, folder, 0, &records).unwrap();
    std::fs::write(dir.join(format::chunk_name(0)), &sealed).unwrap();
    let m = format::sign_manifest(
        &key,
        ManifestBody {
            format: format::FORMAT.into(),
            version: format::VERSION,
            pool: "p".into(),
            pool_id: "id".into(),
            folder: folder.into(),
            domain_fingerprint: "fp-test".into(),
            created: 1_700_000_000,
            applied_index: 1,
            key_count: 0,
            deleted_key_count: 0,
            role_assignment_count: 0,
            role_definition_count: 0,
            restore_point: false,
            chunks: vec![ChunkInfo {
                name: format::chunk_name(0),
                size: sealed.len() as u64,
                sha256: format::sha256_hex(&sealed),
                records: 1,
            }],
            key_name: None,
        },
    );
    std::fs::write(dir.join(format::MANIFEST), serde_json::to_vec(&m).unwrap()).unwrap();
    dir
}

#[test]
fn list_and_verify_a_filesystem_backup() {
    let root = tempfile::tempdir().unwrap();
    let dir = write_folder(root.path(), "p-20260101T000000000Z");
    let store = format!("file://{}", root.path().display());

    let out = bin().args(["backup", "list", &store]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("p-20260101T000000000Z") && text.contains("fp-test"),
        "{text}"
    );

    let folder_url = format!("{store}/p-20260101T000000000Z");
    let out = bin()
        .args(["backup", "verify", &folder_url])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("match their SHA-256"));

    // A corrupted chunk fails verification and names the chunk.
    let chunk = dir.join(format::chunk_name(0));
    let mut bytes = std::fs::read(&chunk).unwrap();
    bytes[13] ^= 0x80;
    std::fs::write(&chunk, &bytes).unwrap();
    let out = bin()
        .args(["backup", "verify", &folder_url])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("chunk-00000.bin") && err.contains("SHA-256"),
        "{err}"
    );

    // A missing folder says so.
    let out = bin()
        .args(["backup", "verify", &format!("{store}/nope")])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));
}
