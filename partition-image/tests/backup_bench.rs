//! Benchmark (not a test; `#[ignore]`): full backup and restore of N keys (default 100,000;
//! `KEYSTEAD_BENCH_KEYS`) to the filesystem store. Prints time and peak RSS.
//! Run: `cargo test -p keystead-partition --test backup_bench -- --ignored --nocapture`.

mod backup_util;
mod common;

use common::TestPool;
use keystead_partition::backup;
use keystead_partition::state::{Command, KeyRecord};
use std::time::Instant;

fn vm(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with --ignored --nocapture"]
async fn backup_and_restore_many_keys() {
    let n: usize = std::env::var("KEYSTEAD_BENCH_KEYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let pool = TestPool::start().await;
    pool.activate().await;
    // Records shaped like real EC P-256 keys (wrapped material is opaque to backup/restore).
    let keys: Vec<KeyRecord> = (0..n)
        .map(|i| backup_util::ec_record(i, [("team".to_string(), "bench".to_string())].into()))
        .collect();
    let rbac = pool.app.store.read().rbac.clone();
    pool.app
        .store
        .propose(Command::RestoreAll {
            keys,
            deleted: vec![],
            rbac: Box::new(rbac),
        })
        .await
        .unwrap();
    let rss_loaded = vm("VmRSS:");
    let root = tempfile::tempdir().unwrap();
    let d = backup_util::file_store(&format!("file://{}", root.path().display()));

    let t = Instant::now();
    let m = backup::write_backup(&pool.app, &d, false).await.unwrap();
    let backup_s = t.elapsed().as_secs_f64();
    let hwm_backup = vm("VmHWM:");
    let bytes: u64 = m.body.chunks.iter().map(|c| c.size).sum();

    let t = Instant::now();
    let r = backup::restore_full(&pool.app, &d, &m.body.folder)
        .await
        .unwrap();
    let restore_s = t.elapsed().as_secs_f64();
    let hwm_restore = vm("VmHWM:");
    assert_eq!(r.keys, n);
    println!(
        "BENCH keys={n} chunks={} backup_bytes={bytes} backup_s={backup_s:.2} restore_s={restore_s:.2} (incl. restore point) rss_after_load_kib={rss_loaded} peak_rss_after_backup_kib={hwm_backup} peak_rss_after_restore_kib={hwm_restore}",
        m.body.chunks.len()
    );
}
