//! `keystead-bench scale`: a replicated pool at growing key counts (issue 15, docs/benchmarks.md
//! "Scale").
//!
//! Starts three `keystead-partition serve` processes (the local runner's files, as the
//! replication benchmark), activates the pool, then for each size of `--sizes` fills the
//! pool up to that many keys — a mix of EC P-256, EC P-384 and AES-256 (oct-HSM) keys, and
//! `--rsa-percent` RSA-2048 keys, one version each, created through the API and replicated
//! like any other write — and measures at that size:
//!
//! - how fast the keys went in (creates/s, 32 concurrent creators spread over the partitions);
//! - each partition's resident memory (VmRSS) and what it grew by per key;
//! - the Raft snapshot on disk (`snapshot.json`) of each partition;
//! - ES256 sign and GET key latency on the leader (16 closed-loop clients), to see whether
//!   the cost per request stays flat as the pool grows.
//!
//! Then, at the largest size: a follower restarted (start-up and log replay until it serves),
//! a follower wiped (healed from a snapshot of the leader until it signs), a full backup to a
//! file store through the API, and a full restore of that backup through a follower.

use crate::load::{self, Pool, Window};
use crate::replication::{Procs, RunOptions, leader, sign_body, status, until};
use crate::stats::OpResult;
use anyhow::Context;
use reqwest::Method;
use serde::Serialize;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub struct Options {
    pub run: RunOptions,
    /// Pool sizes (keys), ascending.
    pub sizes: Vec<usize>,
    /// Share of RSA-2048 keys (their key generation dominates the fill time).
    pub rsa_percent: f64,
}

/// The figures at one size.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SizeRow {
    pub keys: usize,
    pub fill_s: f64,
    pub creates_per_s: f64,
    /// VmRSS of each partition (MiB).
    pub rss_mib: Vec<f64>,
    /// (VmRSS − VmRSS of the empty pool) / keys, per partition (bytes).
    pub bytes_per_key: Vec<f64>,
    /// `snapshot.json` of each partition (MiB; 0: none built yet).
    pub snapshot_mib: Vec<f64>,
    pub sign: OpResult,
    pub get: OpResult,
}

/// What happens to a pool of the largest size.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Recovery {
    pub keys: usize,
    /// A follower restarted: until it answers, holds the domain, has caught up.
    pub restart_answers_s: f64,
    pub restart_serving_s: f64,
    /// A follower wiped: until it signs again.
    pub heal_serving_s: f64,
    pub backup_s: f64,
    pub backup_mib: f64,
    /// The full restore through a follower (staged through the group, committed at once).
    pub restore_s: f64,
}

fn vm_rss_kib(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

fn file_mib(path: &std::path::Path) -> f64 {
    std::fs::metadata(path)
        .map(|m| m.len() as f64 / 1048576.0)
        .unwrap_or(0.0)
}

/// `snapshot.json` somewhere under a partition's data directory.
fn snapshot_file(dir: &std::path::Path) -> Option<std::path::PathBuf> {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).ok()?.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().is_some_and(|n| n == "snapshot.json") {
                return Some(p);
            }
        }
    }
    None
}

fn dir_mib(dir: &std::path::Path) -> f64 {
    let mut total = 0u64;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                total += e.metadata().map(|m| m.len()).unwrap_or(0);
            }
        }
    }
    total as f64 / 1048576.0
}

/// The body that creates key `k` of the mix.
fn create_body(k: usize, rsa_every: usize) -> Value {
    if rsa_every > 0 && k.is_multiple_of(rsa_every) {
        return json!({"kty": "RSA-HSM", "key_size": 2048});
    }
    match k % 3 {
        0 => json!({"kty": "EC-HSM", "crv": "P-256"}),
        1 => json!({"kty": "EC-HSM", "crv": "P-384"}),
        _ => json!({"kty": "oct-HSM", "key_size": 256}),
    }
}

/// Create keys `from..to` (`scale-{k}`) with 32 concurrent creators over the partitions.
async fn fill(pool: &Pool, from: usize, to: usize, rsa_every: usize) -> anyhow::Result<()> {
    let next = Arc::new(AtomicUsize::new(from));
    let mut tasks = Vec::new();
    for w in 0..32 {
        let p = pool.via(&pool.endpoints[w % pool.endpoints.len()]);
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                if k >= to {
                    return anyhow::Ok(());
                }
                p.ok(
                    Method::POST,
                    &format!("/keys/scale-{k}/create"),
                    Some(&create_body(k, rsa_every)),
                )
                .await?;
            }
        }));
    }
    for t in tasks {
        t.await.context("a creator task failed")??;
    }
    Ok(())
}

/// Wait until every partition has applied the leader's commit index.
async fn caught_up(pool: &Pool, lead: usize) -> anyhow::Result<()> {
    let commit = status(pool, lead)
        .await
        .and_then(|v| v["replication"]["commitIndex"].as_u64())
        .context("the leader does not report its commit index")?;
    until("every partition has caught up", 600, || async {
        for i in 0..3 {
            match status(pool, i).await {
                Some(v) if v["replication"]["appliedIndex"].as_u64() >= Some(commit) => {}
                _ => return false,
            }
        }
        true
    })
    .await
}

/// Start a job (`POST /backup` or `PUT /restore`) and poll it until it ends; its final status.
async fn job(
    pool: &Pool,
    method: Method,
    path: &str,
    body: &Value,
    kind: &str,
) -> anyhow::Result<Value> {
    let v = pool.ok(method, path, Some(body)).await?;
    let id = v["jobId"]
        .as_str()
        .with_context(|| format!("the {kind} answer names no job: {v}"))?
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(1800);
    loop {
        let st = pool
            .ok(Method::GET, &format!("/{kind}/{id}/pending"), None)
            .await?;
        if st["status"] != "InProgress" {
            anyhow::ensure!(st["status"] == "Succeeded", "the {kind} failed: {st}");
            return Ok(st);
        }
        anyhow::ensure!(Instant::now() < deadline, "the {kind} runs past 30 minutes");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub async fn run(opts: &Options) -> anyhow::Result<(Vec<SizeRow>, Recovery)> {
    anyhow::ensure!(!opts.sizes.is_empty(), "give at least one size (--sizes)");
    anyhow::ensure!(
        opts.sizes.windows(2).all(|w| w[0] < w[1]),
        "--sizes must be ascending"
    );
    anyhow::ensure!(
        (0.0..=100.0).contains(&opts.rsa_percent),
        "--rsa-percent must be within 0..100"
    );
    let rsa_every = if opts.rsa_percent > 0.0 {
        (100.0 / opts.rsa_percent).round() as usize
    } else {
        0
    };
    let (mut procs, pool, mut lead) =
        crate::replication::fresh_pool(&opts.run, "bench-scale").await?;
    // The probe keys (created first: the same keys are measured at every size).
    load::create_key(
        &pool,
        "scale-probe-ec",
        json!({"kty": "EC-HSM", "crv": "P-256", "key_ops": ["sign", "verify"]}),
    )
    .await?;
    caught_up(&pool, lead).await?;
    let pids = |procs: &Procs| -> Vec<u32> {
        procs
            .children
            .iter()
            .map(|c| c.as_ref().map_or(0, |c| c.id()))
            .collect()
    };
    let empty: Vec<f64> = pids(&procs)
        .iter()
        .map(|p| vm_rss_kib(*p).unwrap_or(0.0))
        .collect();
    eprintln!(
        "pool ready: leader p{lead}; empty pool RSS {:?} KiB; sizes {:?}, {}% RSA",
        empty, opts.sizes, opts.rsa_percent
    );
    let clients: Vec<reqwest::Client> = (0..16)
        .map(|_| load::https_client(&pool.ca_pem))
        .collect::<anyhow::Result<_>>()?;
    let auth: Arc<str> = Arc::from(format!("Bearer {}", pool.token));
    let mut rows = Vec::new();
    let mut have = 0;
    for &size in &opts.sizes {
        let t = Instant::now();
        fill(&pool, have, size, rsa_every).await?;
        let fill_s = t.elapsed().as_secs_f64();
        let added = size - have;
        have = size;
        lead = leader(&pool).await?;
        caught_up(&pool, lead).await?;
        let ps = pids(&procs);
        let rss: Vec<f64> = ps.iter().map(|p| vm_rss_kib(*p).unwrap_or(0.0)).collect();
        let bytes_per_key = rss
            .iter()
            .zip(&empty)
            .map(|(r, e)| (r - e) * 1024.0 / size as f64)
            .collect();
        let snapshot_mib = procs
            .data_dirs
            .iter()
            .map(|d| snapshot_file(d).map_or(0.0, |p| file_mib(&p)))
            .collect();
        let leader_pool = pool.via(&pool.endpoints[lead]);
        let window = |url: String, body: bytes::Bytes| Window {
            clients: &clients,
            urls: vec![Arc::from(url)],
            auth: auth.clone(),
            body,
            warmup: opts.run.warmup,
            measure: opts.run.measure,
            pids: ps.clone(),
            threads: opts.run.threads,
            rate: None,
        };
        let sign = load::measure(
            "es256-sign",
            window(
                leader_pool.url("/keys/scale-probe-ec/sign"),
                sign_body("ES256"),
            ),
        )
        .await?;
        let get = load::measure_get(
            "get-key",
            window(leader_pool.url("/keys/scale-probe-ec"), bytes::Bytes::new()),
        )
        .await?;
        let row = SizeRow {
            keys: size,
            fill_s,
            creates_per_s: added as f64 / fill_s,
            rss_mib: rss.iter().map(|k| k / 1024.0).collect(),
            bytes_per_key,
            snapshot_mib,
            sign,
            get,
        };
        println!(
            "scale: {} keys (filled at {:.0}/s): RSS MiB {:.0?}, bytes/key {:.0?}, snapshot MiB {:.1?}; sign p50 {:.2} ms p99 {:.2} ms ({:.0}/s); get p50 {:.2} ms p99 {:.2} ms ({:.0}/s)",
            row.keys,
            row.creates_per_s,
            row.rss_mib,
            row.bytes_per_key,
            row.snapshot_mib,
            row.sign.p50_ms,
            row.sign.p99_ms,
            row.sign.ops_per_sec,
            row.get.p50_ms,
            row.get.p99_ms,
            row.get.ops_per_sec
        );
        rows.push(row);
    }
    drop(clients);
    let keys = have;
    let f = (lead + 1) % 3;
    // A follower restarted: start-up, log replay, catch-up.
    procs.kill(f);
    let t0 = Instant::now();
    procs.spawn(f)?;
    until("the restarted follower answers", 600, || async {
        status(&pool, f).await.is_some()
    })
    .await?;
    let restart_answers_s = t0.elapsed().as_secs_f64();
    let via = pool.via(&pool.endpoints[f]);
    let sign_json: Value = serde_json::from_slice(&sign_body("ES256"))?;
    let signs = |via: &Pool| {
        let via = via.via(&via.endpoint);
        let body = sign_json.clone();
        async move {
            matches!(via.call(Method::POST, "/keys/scale-probe-ec/sign", Some(&body)).await, Ok((s, _)) if s.is_success())
        }
    };
    until("the restarted follower signs", 600, || signs(&via)).await?;
    let restart_serving_s = t0.elapsed().as_secs_f64();
    // A follower wiped: healed from the leader.
    procs.kill(f);
    std::fs::remove_dir_all(&procs.data_dirs[f])
        .with_context(|| format!("cannot wipe {}", procs.data_dirs[f].display()))?;
    let t0 = Instant::now();
    procs.spawn(f)?;
    until("the wiped follower signs", 1200, || signs(&via)).await?;
    let heal_serving_s = t0.elapsed().as_secs_f64();
    lead = leader(&pool).await?;
    caught_up(&pool, lead).await?;
    // Full backup to a file store, then a full restore of it through a follower.
    let store = opts.run.dir.join("backups");
    std::fs::create_dir_all(&store)?;
    let params = json!({"storageResourceUri": format!("file://{}", store.display())});
    let t0 = Instant::now();
    let st = job(
        &pool.via(&pool.endpoints[lead]),
        Method::POST,
        "/backup",
        &params,
        "backup",
    )
    .await?;
    let backup_s = t0.elapsed().as_secs_f64();
    let folder = st["azureStorageBlobContainerUri"]
        .as_str()
        .and_then(|u| u.trim_end_matches('/').rsplit('/').next())
        .with_context(|| format!("the backup names no folder: {st}"))?
        .to_string();
    let backup_mib = dir_mib(&store);
    let f = (lead + 1) % 3;
    let t0 = Instant::now();
    job(
        &pool.via(&pool.endpoints[f]),
        Method::PUT,
        "/restore",
        &json!({"sasTokenParameters": params, "folderToRestore": folder}),
        "restore",
    )
    .await?;
    let restore_s = t0.elapsed().as_secs_f64();
    let rec = Recovery {
        keys,
        restart_answers_s,
        restart_serving_s,
        heal_serving_s,
        backup_s,
        backup_mib,
        restore_s,
    };
    println!(
        "scale recovery at {keys} keys: restarted follower answers after {restart_answers_s:.2} s, signs after {restart_serving_s:.2} s; wiped follower signs after {heal_serving_s:.2} s; full backup {backup_s:.2} s ({backup_mib:.0} MiB); full restore through a follower {restore_s:.2} s"
    );
    drop(procs);
    Ok((rows, rec))
}
