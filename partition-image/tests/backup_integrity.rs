//! Backup integrity and restore atomicity on the filesystem store: a corrupted chunk, a
//! swapped chunk, an edited manifest and a missing chunk are detected and leave the pool
//! exactly as it was; a selective restore brings back one key with all its versions.

mod backup_util;
mod common;

use backup_util::*;
use common::TestPool;
use keystead_partition::backup;
use reqwest::{Method, StatusCode};
use serde_json::json;

async fn populated() -> TestPool {
    let a = TestPool::start().await;
    a.activate().await;
    assign(&a, CRYPTO_USER, "user").await;
    for i in 0..5 {
        create_key(
            &a,
            &format!("k{i}"),
            json!({"kty": "EC-HSM", "crv": "P-256"}),
        )
        .await;
    }
    create_key(
        &a,
        "k0",
        json!({"kty": "EC-HSM", "crv": "P-256", "tags": {"v": "2"}}),
    )
    .await;
    a
}

/// Delete key `name` (as the Crypto User "user") and purge it (as a Crypto Officer).
async fn delete_and_purge(a: &TestPool, name: &str) {
    let (s, v) = a
        .call(Some("user"), Method::DELETE, &format!("/keys/{name}"), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assign(a, "515eb02d-2335-4d2d-92f2-b1cbdf9c3778", "officer").await;
    let (s, v) = a
        .call(
            Some("officer"),
            Method::DELETE,
            &format!("/deletedkeys/{name}"),
            None,
        )
        .await;
    assert!(s.is_success(), "{s} {v}");
}

/// A multi-chunk backup (2 records per chunk) into `root`; returns (params, folder).
async fn small_chunk_backup(a: &TestPool, root: &std::path::Path) -> (serde_json::Value, String) {
    let uri = format!("file://{}", root.display());
    let d = file_store(&uri);
    let m = backup::write_backup_with(&a.app, &d, false, 2, None)
        .await
        .unwrap();
    assert!(m.body.chunks.len() >= 3, "{}", m.body.chunks.len());
    assert_eq!(m.body.key_count, 5);
    (json!({"storageResourceUri": uri}), m.body.folder)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corruption_is_detected_and_nothing_changes() {
    let a = populated().await;
    let root = tempfile::tempdir().unwrap();
    let (params, folder) = small_chunk_backup(&a, root.path()).await;
    let dir = root.path().join(&folder);
    // What `kubectl hsm backup list` and `verify` (without the pool) see.
    let d = file_store(params["storageResourceUri"].as_str().unwrap());
    let listed = backup::list_backups(&d).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].folder, folder);
    assert_eq!(listed[0].manifest.as_ref().unwrap().body.key_count, 5);
    backup::verify_digests(&d, &folder).await.unwrap();
    // Change the pool after the backup: a failed restore must leave this state.
    create_key(&a, "after", json!({"kty": "EC-HSM", "crv": "P-256"})).await;
    let before = a.app.store.read().clone();
    let files_before = std::fs::read_dir(root.path()).unwrap().count();

    let check = |st: &serde_json::Value, code: &str, needle: &str| {
        assert_eq!(st["status"], "Failed", "{st}");
        assert_eq!(st["error"]["code"], code, "{st}");
        let msg = st["error"]["message"].as_str().unwrap();
        assert!(msg.contains(needle), "{needle}: {msg}");
    };

    // A flipped byte in the last chunk: detected after the first chunks were read.
    let last = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("chunk-"))
        .max()
        .unwrap();
    let original = std::fs::read(dir.join(&last)).unwrap();
    let mut bad = original.clone();
    bad[40] ^= 0x01;
    std::fs::write(dir.join(&last), &bad).unwrap();
    let st = restore(&a, "/restore", &params, &folder).await;
    check(&st, "BackupIntegrity", "SHA-256");
    let err = backup::verify_digests(&d, &folder).await.unwrap_err();
    assert!(err.to_string().contains(&last), "{err}");
    assert_eq!(*a.app.store.read(), before);

    // Two chunks swapped (digests fixed up in the manifest would break its MAC; here the
    // chunks keep their manifest digests so the swap shows as digest mismatches).
    std::fs::write(dir.join(&last), &original).unwrap();
    let c0 = std::fs::read(dir.join("chunk-00000.bin")).unwrap();
    let c1 = std::fs::read(dir.join("chunk-00001.bin")).unwrap();
    std::fs::write(dir.join("chunk-00000.bin"), &c1).unwrap();
    std::fs::write(dir.join("chunk-00001.bin"), &c0).unwrap();
    let st = restore(&a, "/restore", &params, &folder).await;
    check(&st, "BackupIntegrity", "chunk-00000.bin");
    std::fs::write(dir.join("chunk-00000.bin"), &c0).unwrap();
    std::fs::write(dir.join("chunk-00001.bin"), &c1).unwrap();

    // An edited manifest (one count changed): the MAC does not verify.
    let manifest = std::fs::read(dir.join("manifest.json")).unwrap();
    let mut m: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
    m["keyCount"] = json!(4);
    std::fs::write(dir.join("manifest.json"), m.to_string()).unwrap();
    let st = restore(&a, "/restore", &params, &folder).await;
    check(&st, "BackupIntegrity", "MAC");
    // The check-only restore says the same.
    let st = restore(&a, "/prerestore", &params, &folder).await;
    check(&st, "BackupIntegrity", "MAC");
    std::fs::write(dir.join("manifest.json"), &manifest).unwrap();

    // An interrupted restore (a chunk that cannot be read midway): nothing changes.
    std::fs::remove_file(dir.join(&last)).unwrap();
    let st = restore(&a, "/restore", &params, &folder).await;
    check(&st, "StorageError", "does not exist");
    assert_eq!(*a.app.store.read(), before);
    // No restore point was written by any failed restore.
    assert_eq!(
        std::fs::read_dir(root.path()).unwrap().count(),
        files_before
    );

    // Intact again: the restore succeeds, takes a restore point, drops the later key.
    std::fs::write(dir.join(&last), &original).unwrap();
    let st = restore(&a, "/restore", &params, &folder).await;
    assert_eq!(st["status"], "Succeeded", "{st}");
    let after = a.app.store.read().clone();
    assert!(!after.keys.contains_key("after"));
    assert_eq!(after.keys.len(), 5);
    let names: Vec<String> = std::fs::read_dir(root.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    let rp = names
        .iter()
        .find(|n| n.contains("restore-point"))
        .expect("a restore point folder");
    // The restore point holds the pre-restore state (with "after") and restores it.
    let st = restore(&a, "/restore", &params, rp).await;
    assert_eq!(st["status"], "Succeeded", "{st}");
    assert_eq!(a.app.store.read().keys, before.keys);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn selective_restore_brings_back_one_key_with_all_versions() {
    let a = populated().await;
    let root = tempfile::tempdir().unwrap();
    let (params, folder) = small_chunk_backup(&a, root.path()).await;
    let k0 = a.app.store.read().keys["k0"].clone();
    assert_eq!(k0.versions.len(), 2);

    // Refused while the key exists; nothing changes.
    let st = restore_key(&a, "k0", &params, &folder).await;
    assert_eq!(st["status"], "Failed", "{st}");
    assert!(
        st["error"]["message"]
            .as_str()
            .unwrap()
            .contains("already exists")
    );

    delete_and_purge(&a, "k0").await;
    let others = a.app.store.read().keys.clone();

    let st = restore_key(&a, "k0", &params, &folder).await;
    assert_eq!(st["status"], "Succeeded", "{st}");
    let after = a.app.store.read().clone();
    assert_eq!(after.keys["k0"], k0);
    assert_eq!(after.keys.len(), others.len() + 1);

    // A key the backup does not hold.
    let st = restore_key(&a, "nope", &params, &folder).await;
    assert_eq!(st["status"], "Failed", "{st}");
    assert_eq!(st["error"]["code"], "KeyNotFound");

    // Bad destinations are refused before a job starts.
    let (s, v) = a
        .call(
            Some(common::ADMIN),
            Method::PUT,
            "/restore",
            Some(json!({"sasTokenParameters": {"storageResourceUri": "ftp://x/y"}, "folderToRestore": "f"})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (s, _) = a
        .call(
            Some(common::ADMIN),
            Method::GET,
            "/restore/nojob/pending",
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_key_backup_restores_only_selectively_and_reports_its_figures() {
    let a = populated().await;
    let root = tempfile::tempdir().unwrap();
    let params = json!({"storageResourceUri": format!("file://{}", root.path().display())});

    // A full backup's job body carries the folder's figures (Keystead extension).
    let st = backup(&a, common::ADMIN, &params).await;
    let full = folder_of(&st);
    assert_eq!(st["backup"]["folder"], full.as_str(), "{st}");
    assert_eq!(st["backup"]["keyCount"], 5);
    let manifest = std::fs::read(root.path().join(&full).join("manifest.json")).unwrap();
    assert_eq!(
        st["backup"]["manifestSha256"],
        backup::format::sha256_hex(&manifest)
    );
    let on_disk: u64 = std::fs::read_dir(root.path().join(&full))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert_eq!(st["backup"]["sizeBytes"], on_disk);
    assert!(st["backup"].get("keyName").is_none(), "{st}");

    // One key, by name.
    let mut one = params.clone();
    one["keyName"] = json!("k0");
    let st = backup(&a, common::ADMIN, &one).await;
    let folder = folder_of(&st);
    assert!(folder.contains("-key-k0-"), "{folder}");
    assert_eq!(st["backup"]["keyCount"], 1);
    assert_eq!(st["backup"]["keyName"], "k0");

    // A key the pool does not have: the job fails with KeyNotFound.
    let mut missing = params.clone();
    missing["keyName"] = json!("nope");
    let st = backup(&a, common::ADMIN, &missing).await;
    assert_eq!(st["status"], "Failed", "{st}");
    assert_eq!(st["error"]["code"], "KeyNotFound", "{st}");

    // A full restore of a single-key backup is refused and changes nothing.
    let before = a.app.store.read().clone();
    let st = restore(&a, "/restore", &params, &folder).await;
    assert_eq!(st["status"], "Failed", "{st}");
    assert!(
        st["error"]["message"]
            .as_str()
            .unwrap()
            .contains("selective restore"),
        "{st}"
    );
    assert_eq!(a.app.store.read().keys, before.keys);

    // It restores selectively once the key is gone.
    let k0 = before.keys["k0"].clone();
    delete_and_purge(&a, "k0").await;
    let st = restore_key(&a, "k0", &params, &folder).await;
    assert_eq!(st["status"], "Succeeded", "{st}");
    assert_eq!(a.app.store.read().keys["k0"], k0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_stay_where_the_partition_allows_and_a_pool_deletes_only_its_own() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, claim) = (tmp.path().join("root"), tmp.path().join("claim"));
    let claims = std::collections::BTreeMap::from([("hsm-backups".to_string(), claim.clone())]);
    let opts = || common::Options {
        backup_root: Some(root.clone()),
        backup_claims: claims.clone(),
        ..Default::default()
    };
    let a = TestPool::start_with(opts()).await;
    a.activate().await;
    assign(&a, CRYPTO_USER, "user").await;
    assign(&a, BACKUP_ROLE, "backup-operator").await;
    create_key(&a, "k0", json!({"kty": "EC-HSM", "crv": "P-256"})).await;
    let start = |uri: String| {
        let a = &a;
        async move {
            a.call(
                Some(common::ADMIN),
                Method::POST,
                "/backup",
                Some(json!({"storageResourceUri": uri})),
            )
            .await
        }
    };

    // file:// only inside the configured root; claims only if mounted.
    let outside = tmp.path().join("outside");
    let (s, v) = start(format!("file://{}", outside.display())).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("outside"),
        "{v}"
    );
    let (s, v) = start(format!("file://{}/../outside", root.display())).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(!outside.exists(), "nothing written outside the root");
    let (s, v) = start("pvc://other-claim/x".into()).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert_eq!(v["error"]["code"], "ClaimNotMounted", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("spec.backupVolumes"),
        "{v}"
    );

    // A backup to the mounted claim lands in its directory, named by a pvc:// URL.
    let params = json!({"storageResourceUri": "pvc://hsm-backups/nightly"});
    let st = backup(&a, common::ADMIN, &params).await;
    let folder = folder_of(&st);
    assert_eq!(
        st["azureStorageBlobContainerUri"],
        format!("pvc://hsm-backups/nightly/{folder}"),
        "{st}"
    );
    let dir = claim.join("nightly").join(&folder);
    assert!(dir.join("manifest.json").is_file());
    let files = std::fs::read_dir(&dir).unwrap().count();

    let delete = |subject: &'static str, folder: String| {
        let a = &a;
        let params = params.clone();
        async move {
            a.call(
                Some(subject),
                Method::POST,
                "/backup/delete",
                Some(json!({"sasTokenParameters": params, "folder": folder})),
            )
            .await
        }
    };
    // Deleting takes backup/delete/action: a Crypto User may not.
    let (s, v) = delete("user", folder.clone()).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert!(dir.join("manifest.json").is_file());

    // Another pool's backup (another domain) in the same store is not this pool's to delete.
    let b = TestPool::start_with(opts()).await;
    b.activate().await;
    let theirs = folder_of(&backup(&b, common::ADMIN, &params).await);
    let (s, v) = delete("backup-operator", theirs.clone()).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("a pool deletes only its own backups"),
        "{v}"
    );
    assert!(
        claim
            .join("nightly")
            .join(&theirs)
            .join("manifest.json")
            .is_file()
    );

    // A folder holding something no backup has is left alone.
    let odd = claim.join("nightly/pool-odd");
    std::fs::create_dir_all(&odd).unwrap();
    std::fs::write(odd.join("notes.txt"), b"keep me").unwrap();
    let (s, v) = delete("backup-operator", "pool-odd".into()).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert!(odd.join("notes.txt").is_file());

    // Chunks without a manifest: nothing shows whose they are, so they stay (only the
    // failed job of this pool that wrote them can have them deleted: tests/security.rs).
    let unfinished = claim.join("nightly/pool-unfinished");
    std::fs::create_dir_all(&unfinished).unwrap();
    std::fs::write(unfinished.join("chunk-00000.bin"), b"sealed").unwrap();
    let (s, v) = delete("backup-operator", "pool-unfinished".into()).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert!(unfinished.join("chunk-00000.bin").is_file());

    // Its own backup: every file goes, the directory too; again is not an error.
    let (s, v) = delete("backup-operator", folder.clone()).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["deletedObjects"].as_u64(), Some(files as u64), "{v}");
    assert_eq!(v["folder"], format!("pvc://hsm-backups/nightly/{folder}"));
    assert!(!dir.exists());
    let (s, v) = delete("backup-operator", folder.clone()).await;
    assert_eq!(
        (s, v["deletedObjects"].as_u64()),
        (StatusCode::OK, Some(0)),
        "{v}"
    );
    // Bad folder names are refused before the store is touched.
    let (s, v) = delete("backup-operator", "../claim".into()).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
}
