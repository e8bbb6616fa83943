//! A full restore into a replicated pool of three partition processes, of a backup larger
//! than what one peer request may carry (`PEER_BODY_LIMIT`): the restore is replicated in
//! bounded pieces and committed at once, every partition serves the restored keys, and the
//! pool keeps taking writes afterwards.

mod backup_util;
mod cluster;
mod common;

use cluster::Cluster;
use reqwest::{Method, StatusCode};
use std::time::Instant;

/// Keys in the backup (~4 KiB a key, ~40 MiB in all).
const KEYS: usize = 10_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restore_larger_than_a_peer_request_replicates_and_commits_at_once() {
    let c = Cluster::start().await;
    c.activate().await;
    // The pool's security domain file, to build a backup of this domain elsewhere.
    let file = c.domain_file().await;

    // A one-partition pool recovered with that domain holds many large keys and makes the
    // backup.
    let (_root, uri, m) = backup_util::big_backup(&file, KEYS).await;
    let size: u64 = m.body.chunks.iter().map(|c| c.size).sum();
    assert!(
        size > 40 * 1024 * 1024,
        "the backup is larger than one peer request may be ({size} bytes)"
    );

    // Restore it through a follower (the command goes to the leader in pieces).
    let leader = c.leader(&[0, 1, 2]).await;
    let via = (leader + 1) % cluster::N;
    let started = Instant::now();
    let job = c.start_restore(via, &uri, &m.body.folder).await;
    let st = c.restore_outcome(via, &job).await;
    assert_eq!(st["status"], "Succeeded", "{st}");
    eprintln!(
        "restored {KEYS} keys ({size} bytes of backup) into 3 partitions in {:?}",
        started.elapsed()
    );
    // Every partition serves the restored keys, with their tags.
    let last = format!("/keys/key-{:07}", KEYS - 1);
    for i in 0..cluster::N {
        c.until("the last restored key on every partition", 120, || async {
            c.call(i, Method::GET, &last, None).await.0 == StatusCode::OK
        })
        .await;
        let (s, v) = c.call(i, Method::GET, &last, None).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v["tags"].as_object().map(|t| t.len()), Some(15), "{v}");
    }
    // The pool still takes writes (its log is not stuck behind the restore).
    for i in 0..cluster::N {
        c.create(i, &format!("after-restore-{i}"))
            .await
            .unwrap_or_else(|e| panic!("a create on {i} after the restore: {e:?}"));
    }
}
