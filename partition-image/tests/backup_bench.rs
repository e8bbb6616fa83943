//! Benchmark (not a test; `#[ignore]`): full backup and restore of N keys (default 100,000;
//! `KEYSTEAD_BENCH_KEYS`) to the filesystem store. Prints time and peak RSS.
//! Run: `cargo test -p keystead-partition --test backup_bench -- --ignored --nocapture`.

mod common;

use common::TestPool;
use keystead_partition::backup::{self, dest};
use keystead_partition::state::{Attributes, Command, KeyRecord, KeyVersion, WrappedBytes};
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
    let jwk: keystead_core::keys::JsonWebKey = serde_json::from_value(serde_json::json!({
        "kty": "EC-HSM", "crv": "P-256",
        "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
        "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"
    }))
    .unwrap();
    let keys: Vec<KeyRecord> = (0..n)
        .map(|i| KeyRecord {
            name: format!("key-{i:07}"),
            versions: vec![KeyVersion {
                version: format!("{:032x}", i as u128 * 7919),
                kty: "EC-HSM".into(),
                key_ops: vec!["sign".into(), "verify".into()],
                public_jwk: jwk.clone(),
                wrapped: WrappedBytes(vec![7u8; 180]),
                attributes: Attributes {
                    enabled: true,
                    nbf: None,
                    exp: None,
                    created: 1_700_000_000,
                    updated: 1_700_000_000,
                    exportable: false,
                },
                tags: [("team".to_string(), "bench".to_string())].into(),
                release_policy: None,
            }],
            rotation_policy: None,
        })
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
    let d = dest::open(
        &dest::StorageParameters {
            storage_resource_uri: format!("file://{}", root.path().display()),
            ..Default::default()
        },
        &dest::LocalPaths::anywhere(),
    )
    .unwrap();

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
