//! `keystead-bench regions`: what a replica region costs the primary and how far behind it is
//! (docs/regions.md, docs/benchmarks.md).
//!
//! Prepares primary pool A (three `serve` processes, the local runner's files) and, later,
//! replica region B extending it (`local::prepare` with `extend`, named on A, three more
//! processes with `--region-config`). Then:
//!
//! 1. A holds `--bootstrap-keys` EC keys (32 concurrent creators);
//! 2. **primary write throughput without a region**: closed-loop replicated creates on A's
//!    leader (each client adding versions to its own key);
//! 3. **bootstrap**: B is started; the time until every partition of B has joined (holds the
//!    domain sealed to its transfer key) and has applied A's position (lag 0) — snapshot
//!    catch-up of every key;
//! 4. **primary write throughput with the region**: the same creates on A while B follows;
//! 5. **replication lag under sustained writes**: during (4), and during the same creates at
//!    each fixed `--rates` (open loop), probes create a key on A every 100 ms and measure
//!    from A's answer until a partition of B (in turn) serves it.

use crate::load::{self, Window};
use crate::replication::{Procs, activate, preload, start_pool, status, until};
use crate::stats::{OpResult, server_pids};
use anyhow::Context;
use keystead_partition::local::{
    LocalOptions, PoolFile, REGION_CONFIG, name_region_on_primary, prepare,
};
use reqwest::Method;
use serde::Serialize;
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct Options {
    /// The scratch directory holds the primary in `A/`, the region in `B/`.
    pub run: super::replication::RunOptions,
    pub bootstrap_keys: usize,
    /// Fixed create rates (per second, open loop) at which the lag is measured too, besides
    /// the saturating closed loop.
    pub rates: Vec<f64>,
}

/// Lag probes running at once beside the load.
const LAG_PROBES: usize = 8;

/// The figures that are not throughput rows.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RegionFigures {
    pub bootstrap_keys: usize,
    /// After the preload: the largest resident set of A's partitions, and the size of the
    /// leader's latest snapshot on disk (what a bootstrapping region receives, in pages).
    pub primary_rss_mb: f64,
    pub snapshot_mb: f64,
    /// From the start of B's processes until every partition of B joined and reached lag 0.
    pub bootstrap_s: f64,
    /// The lag under the saturating closed loop.
    pub lag_samples: usize,
    pub lag_p50_ms: f64,
    pub lag_p99_ms: f64,
    pub lag_max_ms: f64,
    /// The lag at each fixed rate.
    pub lag_at_rates: Vec<Lag>,
}

/// Replication lag under one load.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Lag {
    /// Creates per second on A (`None`: closed loop, as many as A takes).
    pub rate: Option<f64>,
    pub samples: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Lag {
    fn of(rate: Option<f64>, mut lags: Vec<f64>) -> Lag {
        lags.sort_by(f64::total_cmp);
        Lag {
            rate,
            samples: lags.len(),
            p50_ms: percentile(&lags, 0.50),
            p99_ms: percentile(&lags, 0.99),
            max_ms: lags.last().copied().unwrap_or(f64::NAN),
        }
    }
}

/// Resident set of a process (MiB), from `/proc/PID/status`.
fn rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let k = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[k.min(sorted.len() - 1)]
}

pub async fn run(opts: &Options) -> anyhow::Result<(Vec<OpResult>, RegionFigures)> {
    anyhow::ensure!(opts.run.clients > 0, "--clients must be at least 1");
    if opts.run.dir.exists() {
        std::fs::remove_dir_all(&opts.run.dir).with_context(|| {
            format!(
                "cannot remove the previous run in {}",
                opts.run.dir.display()
            )
        })?;
    }
    let (dir_a, dir_b) = (opts.run.dir.join("A"), opts.run.dir.join("B"));
    let (configs, _) = prepare(&LocalOptions {
        dir: dir_a.clone(),
        partitions: 3,
        pool_name: "east".into(),
        extend: None,
        read_consistency: None,
    })?;
    let mut procs_a = Procs::of(opts.run.bin.clone(), configs, None)?;
    let a = start_pool(&mut procs_a, &dir_a).await?;
    let lead = activate(&a).await?;

    // 1. The keys B will bootstrap.
    let t = Instant::now();
    preload(&a, "boot", opts.bootstrap_keys).await?;
    let primary_rss_mb = server_pids(&dir_a.to_string_lossy())
        .into_iter()
        .map(rss_mb)
        .fold(0.0, f64::max);
    let snapshot_mb = std::fs::metadata(procs_a.data_dirs[lead].join("raft/snapshot.json"))
        .map_or(f64::NAN, |m| m.len() as f64 / (1024.0 * 1024.0));
    println!(
        "primary: {} keys created in {:.1} s; largest partition RSS {primary_rss_mb:.0} MiB; leader's snapshot {snapshot_mb:.1} MiB",
        opts.bootstrap_keys,
        t.elapsed().as_secs_f64()
    );

    let clients: Vec<reqwest::Client> = (0..opts.run.clients)
        .map(|_| load::https_client(&a.ca_pem))
        .collect::<anyhow::Result<_>>()?;
    let auth: Arc<str> = Arc::from(format!("Bearer {}", a.token));
    let create = bytes::Bytes::from(json!({"kty": "EC-HSM", "crv": "P-256"}).to_string());
    // Fresh keys for each measurement (each client adds versions to its own key).
    let window = |pids: Vec<u32>, rate: Option<f64>, phase: usize| Window {
        clients: &clients,
        urls: (0..opts.run.clients)
            .map(|c| {
                Arc::from(
                    a.via(&a.endpoints[lead])
                        .url(&format!("/keys/bench-create-{phase}-{c}/create")),
                )
            })
            .collect(),
        auth: auth.clone(),
        body: create.clone(),
        warmup: opts.run.warmup,
        measure: opts.run.measure,
        pids,
        threads: opts.run.threads,
        rate,
    };
    let mut rows = Vec::new();
    let mut push = |mut r: OpResult, label: &str| {
        r.label = Some(label.to_string());
        println!("{} [{label}]", r.line());
        rows.push(r);
    };

    // 2. Without a region.
    push(
        load::measure(
            "ec-p256-create",
            window(server_pids(&dir_a.to_string_lossy()), None, 0),
        )
        .await?,
        "primary creates on the leader, no region",
    );

    // 3. B joins and bootstraps.
    let (configs_b, pool_b) = prepare(&LocalOptions {
        dir: dir_b.clone(),
        partitions: 3,
        pool_name: "west".into(),
        extend: Some(dir_a.join("pool.json")),
        read_consistency: None,
    })?;
    let primary = PoolFile::load(&dir_a.join("pool.json"))?;
    let ca_b = std::fs::read_to_string(&pool_b.ca_file)?;
    name_region_on_primary(&primary, "west", &ca_b).await?;
    let target = status(&a, lead)
        .await
        .and_then(|v| v["appliedIndex"].as_u64())
        .context("the primary's leader does not report its applied index")?;
    let mut procs_b = Procs::of(
        opts.run.bin.clone(),
        configs_b,
        Some(dir_b.join(REGION_CONFIG)),
    )?;
    let t0 = Instant::now();
    let b = start_pool(&mut procs_b, &dir_b).await?;
    until(
        "every partition of B joined and caught up",
        1800,
        || async {
            for i in 0..3 {
                match status(&b, i).await {
                    Some(v)
                        if v["region"]["joined"] == true
                            && v["domainLoaded"] == true
                            && v["region"]["appliedPrimaryIndex"].as_u64() >= Some(target) => {}
                    _ => return false,
                }
            }
            true
        },
    )
    .await?;
    let bootstrap = t0.elapsed();
    println!(
        "bootstrap: region B joined and applied {} keys (primary index {target}) in {:.2} s",
        opts.bootstrap_keys,
        bootstrap.as_secs_f64()
    );

    // 4 and 5. With the region: the closed loop, then each fixed rate, with the lag probes
    // beside each load: each creates a key on A, then reads it on B until B serves it (the
    // lag from A's acknowledgement), one after the other; several probes run at once so
    // that a lag of seconds still yields many samples.
    let mut pids = server_pids(&dir_a.to_string_lossy());
    pids.extend(server_pids(&dir_b.to_string_lossy()));
    let mut lags = Vec::new();
    let loads = std::iter::once(None).chain(opts.rates.iter().map(|&r| Some(r)));
    for (phase, rate) in loads.enumerate() {
        let stop = Arc::new(AtomicBool::new(false));
        let probes: Vec<_> = (0..LAG_PROBES)
            .map(|p| {
                let (a, b, stop) = (
                    a.via(&a.endpoints[lead]),
                    b.via(&b.endpoints[0]),
                    stop.clone(),
                );
                tokio::spawn(probe(a, b, stop, p, phase, opts.run.warmup))
            })
            .collect();
        let label = match rate {
            None => "primary creates on the leader, one replica region following".to_string(),
            Some(r) => {
                format!("primary creates at {r}/s on the leader, one replica region following")
            }
        };
        push(
            load::measure("ec-p256-create", window(pids.clone(), rate, phase + 1)).await?,
            &label,
        );
        stop.store(true, Ordering::Relaxed);
        let mut samples = Vec::new();
        for probe in probes {
            samples.extend(probe.await.context("a lag probe panicked")??);
        }
        let lag = Lag::of(rate, samples);
        println!(
            "replication lag under {}: {} samples, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            match rate {
                None => format!("saturating creates ({} clients on A)", opts.run.clients),
                Some(r) => format!("{r} creates/s on A"),
            },
            lag.samples,
            lag.p50_ms,
            lag.p99_ms,
            lag.max_ms
        );
        lags.push(lag);
    }
    let saturated = lags.remove(0);
    let figures = RegionFigures {
        bootstrap_keys: opts.bootstrap_keys,
        primary_rss_mb,
        snapshot_mb,
        bootstrap_s: bootstrap.as_secs_f64(),
        lag_samples: saturated.samples,
        lag_p50_ms: saturated.p50_ms,
        lag_p99_ms: saturated.p99_ms,
        lag_max_ms: saturated.max_ms,
        lag_at_rates: lags,
    };
    drop(clients);
    drop(procs_b);
    drop(procs_a);
    Ok((rows, figures))
}

/// One lag probe: create a key on A, wait until B serves it, every 100 ms, until `stop`.
async fn probe(
    a: crate::load::Pool,
    b: crate::load::Pool,
    stop: Arc<AtomicBool>,
    p: usize,
    phase: usize,
    warmup: Duration,
) -> anyhow::Result<Vec<f64>> {
    tokio::time::sleep(warmup).await;
    let mut lags = Vec::new();
    let mut n = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let name = format!("probe-{phase}-{p}-{n}");
        let started = Instant::now();
        let created = a
            .call(
                Method::POST,
                &format!("/keys/{name}/create"),
                Some(&json!({"kty": "EC-HSM", "crv": "P-256"})),
            )
            .await;
        if !matches!(&created, Ok((s, _)) if s.is_success()) {
            anyhow::bail!("probe create {name} on A failed: {created:?}");
        }
        let acked = Instant::now();
        let via = b.via(&b.endpoints[(p + n) % b.endpoints.len()]);
        loop {
            if let Ok((s, _)) = via.call(Method::GET, &format!("/keys/{name}"), None).await
                && s.is_success()
            {
                break;
            }
            anyhow::ensure!(
                acked.elapsed() < Duration::from_secs(60),
                "B did not serve {name} within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        lags.push(acked.elapsed().as_secs_f64() * 1000.0);
        n += 1;
        let next = started + Duration::from_millis(100);
        tokio::time::sleep_until(next.into()).await;
    }
    Ok(lags)
}
