//! "A full restore is all or nothing", on three partition processes, for the failures that
//! happen after the backup was checked. A chunk that changes in the store while the restore
//! is staged: the pool is left exactly as it was (its own keys served by every partition, no
//! key of the backup on any), it keeps taking writes, and the same restore succeeds
//! afterwards (nothing staged is left in the way). The Raft leader killed while the restore
//! is staged: either the restore completes through the new leader (every partition serves
//! the whole backup) or it fails and the pool is as it was.

mod backup_util;
mod cluster;
mod common;

use cluster::Cluster;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

/// Keys in the backup: large enough (~20 MiB) that staging takes seconds.
const KEYS: usize = 5_000;

/// The keys of the pool before any restore.
const OWN: [&str; 3] = ["own-a", "own-b", "own-c"];

/// An activated pool with its own keys, and a big backup of the same domain: the pool, the
/// store's directory (kept alive), its URI, the backup's folder.
async fn pool_and_backup() -> (Cluster, tempfile::TempDir, String, String) {
    let c = Cluster::start().await;
    c.activate().await;
    for (i, name) in OWN.iter().enumerate() {
        c.create(i % cluster::N, name).await.expect("a create");
    }
    let file = c.domain_file().await;
    let (root, uri, m) = backup_util::big_backup(&file, KEYS).await;
    (c, root, uri, m.body.folder)
}

/// The folders (with a manifest) under the store's directory.
fn folders(root: &Path) -> BTreeSet<String> {
    std::fs::read_dir(root)
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().join("manifest.json").is_file())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Wait until the restore point (a new folder with its manifest) is written: the backup was
/// checked and staging begins.
async fn staging_begins(root: &Path, before: &BTreeSet<String>) -> String {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        if let Some(f) = folders(root).difference(before).next() {
            return f.clone();
        }
        assert!(Instant::now() < deadline, "no restore point was written");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The partition answers `want` for `GET /keys/{name}` (waiting until it has caught up).
async fn answers(c: &Cluster, i: usize, name: &str, want: StatusCode) {
    c.until(
        &format!("partition {i} answers {want} for {name}"),
        60,
        || async {
            c.call(i, Method::GET, &format!("/keys/{name}"), None)
                .await
                .0
                == want
        },
    )
    .await;
}

/// Every partition serves the pool's own keys and none of the backup's (first, middle,
/// last), once it has applied everything committed (a write through it is answered).
async fn unchanged(c: &Cluster, probe: &str) {
    for i in 0..cluster::N {
        c.until(&format!("a write through partition {i}"), 60, || async {
            c.create(i, &format!("{probe}-{i}")).await.is_ok()
        })
        .await;
        for name in OWN {
            answers(c, i, name, StatusCode::OK).await;
        }
        for k in [0, KEYS / 2, KEYS - 1] {
            let (s, v) = c
                .call(i, Method::GET, &format!("/keys/key-{k:07}"), None)
                .await;
            assert_eq!(
                s,
                StatusCode::NOT_FOUND,
                "partition {i} serves key-{k:07}: {v}"
            );
        }
    }
}

/// The restore, run again, succeeds and every partition serves the backup's keys (and not
/// the pool's own: a full restore replaces them).
async fn restored(c: &Cluster, via: usize, uri: &str, folder: &str) {
    let job = c.start_restore(via, uri, folder).await;
    let st = c.restore_outcome(via, &job).await;
    assert_eq!(st["status"], "Succeeded", "{st}");
    for i in 0..cluster::N {
        answers(c, i, &format!("key-{:07}", KEYS - 1), StatusCode::OK).await;
        answers(c, i, OWN[0], StatusCode::NOT_FOUND).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_chunk_changed_in_the_store_while_the_restore_is_staged_changes_nothing() {
    let (c, root, uri, folder) = pool_and_backup().await;
    let before = folders(root.path());
    let leader = c.leader(&[0, 1, 2]).await;
    let via = (leader + 1) % cluster::N;
    // The last chunk is the last one staged.
    let manifest: Value = serde_json::from_slice(
        &std::fs::read(root.path().join(&folder).join("manifest.json")).unwrap(),
    )
    .unwrap();
    let chunks = manifest["chunks"].as_array().expect("chunks");
    assert!(
        chunks.len() >= 3,
        "a backup of several chunks: {}",
        chunks.len()
    );
    let last = root
        .path()
        .join(&folder)
        .join(chunks.last().unwrap()["name"].as_str().unwrap());
    let original = std::fs::read(&last).unwrap();

    let job = c.start_restore(via, &uri, &folder).await;
    // The backup verified (the restore point is written); the last chunk changes under the
    // staging restore.
    staging_begins(root.path(), &before).await;
    let mut changed = original.clone();
    let mid = changed.len() / 2;
    changed[mid] ^= 0x5a;
    std::fs::write(&last, &changed).unwrap();
    let st = c.restore_outcome(via, &job).await;
    assert_eq!(st["status"], "Failed", "{st}");
    let error = st["error"].to_string();
    assert!(
        error.contains("digest") || error.contains("chunk"),
        "the error names the changed chunk: {error}"
    );
    unchanged(&c, "after-failed-staging").await;

    // With the chunk as it was, the same restore succeeds.
    std::fs::write(&last, &original).unwrap();
    restored(&c, via, &uri, &folder).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_leader_killed_while_the_restore_is_staged_leaves_all_or_nothing() {
    let (c, root, uri, folder) = pool_and_backup().await;
    let before = folders(root.path());
    let leader = c.leader(&[0, 1, 2]).await;
    let via = (leader + 1) % cluster::N;
    let job = c.start_restore(via, &uri, &folder).await;
    staging_begins(root.path(), &before).await;
    c.kill(leader);
    let st = c.restore_outcome(via, &job).await;
    c.spawn(leader);
    if st["status"] == "Succeeded" {
        // The stages the lost leader had not confirmed were proposed again to the new one
        // (a stage is safe to repeat): the whole backup, on every partition.
        eprintln!("the restore survived the loss of its leader: {st}");
        for i in 0..cluster::N {
            for k in [0, KEYS / 2, KEYS - 1] {
                answers(&c, i, &format!("key-{k:07}"), StatusCode::OK).await;
            }
            answers(&c, i, OWN[0], StatusCode::NOT_FOUND).await;
        }
    } else {
        eprintln!("the restore failed with its leader: {st}");
        unchanged(&c, "after-leader-killed").await;
        restored(&c, via, &uri, &folder).await;
    }
}
