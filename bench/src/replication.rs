//! `keystead-bench replication`: what the Raft group costs and what it gives.
//!
//! Prepares a three-partition pool with the local runner's files (`local::prepare`) but runs
//! the three `keystead-partition serve` processes itself, so that it can kill one and wipe its
//! data directory. Then, after activation (a throwaway security-domain download):
//!
//! 1. **replicated creates** — closed-loop clients each adding versions to their own EC P-256
//!    key (`POST /keys/{name}/create`; fresh keys for each measurement), every create
//!    committed through the group, then the same at fixed rates (open loop): clients
//!    talking to the leader, and clients spread over the three partitions (two thirds of the
//!    writes forwarded by a follower);
//! 2. **sign** (ES256 and RS256) with every client on one partition, and spread over three
//!    (each partition signs with its own copy of the key);
//! 3. **healing** — with `--heal-keys` keys in the pool, a follower is SIGKILLed, its data
//!    directory deleted and the process restarted with the same identity; the times from the
//!    restart until it answers, holds the domain again (handed over by a peer), has caught up
//!    with the group's commit index, and serves a signature.

use crate::load::{self, BenchKey, Pool, Window};
use crate::stats::{OpResult, server_pids};
use anyhow::Context;
use keystead_partition::config::PartitionConfig;
use keystead_partition::local::{LocalOptions, prepare};
use reqwest::Method;
use serde::Serialize;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct Options {
    pub run: RunOptions,
    /// Keys created before the healing measurement.
    pub heal_keys: usize,
    /// Fixed create rates (per second, open loop) measured besides the closed loop.
    pub create_rates: Vec<f64>,
}

/// What the benchmarks that start their own pools share (this one and `regions`).
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The `keystead-partition` binary.
    pub bin: PathBuf,
    /// A new directory for the pools' files (removed first if it holds a previous run).
    pub dir: PathBuf,
    pub clients: usize,
    pub threads: usize,
    pub warmup: Duration,
    pub measure: Duration,
}

/// The healing measurement (seconds from the restart of the wiped partition).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HealResult {
    pub keys: usize,
    pub commit_index: u64,
    pub answers_s: f64,
    pub domain_s: f64,
    pub caught_up_s: f64,
    pub serving_s: f64,
}

/// Three partition processes, killed when dropped.
pub(crate) struct Procs {
    pub bin: PathBuf,
    pub configs: Vec<PathBuf>,
    pub data_dirs: Vec<PathBuf>,
    pub children: Vec<Option<Child>>,
    /// A replica region's `serve --region-config` file.
    pub region_config: Option<PathBuf>,
}

impl Procs {
    /// The processes of the pool whose partition configurations are `configs` (not started).
    pub fn of(
        bin: PathBuf,
        configs: Vec<PathBuf>,
        region_config: Option<PathBuf>,
    ) -> anyhow::Result<Procs> {
        let data_dirs = configs
            .iter()
            .map(|c| PartitionConfig::load(c).map(|c| c.data_dir))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Procs {
            bin,
            children: (0..configs.len()).map(|_| None).collect(),
            configs,
            data_dirs,
            region_config,
        })
    }

    pub fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.configs[i].with_file_name("stderr.log"))?;
        let mut cmd = Command::new(&self.bin);
        cmd.arg("serve").arg("--config").arg(&self.configs[i]);
        if let Some(r) = &self.region_config {
            cmd.arg("--region-config").arg(r);
        }
        let child = cmd
            .env("KEYSTEAD_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", self.bin.display()))?;
        self.children[i] = Some(child);
        Ok(())
    }

    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.children[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        for i in 0..self.children.len() {
            self.kill(i);
        }
    }
}

pub(crate) async fn status(pool: &Pool, i: usize) -> Option<Value> {
    match pool
        .via(&pool.endpoints[i])
        .call(Method::GET, "/admin/status", None)
        .await
    {
        Ok((s, v)) if s.is_success() => Some(v),
        _ => None,
    }
}

/// Poll `cond` every 20 ms until it holds; the error names `what` after `secs` seconds.
pub(crate) async fn until<F, Fut>(what: &str, secs: u64, mut cond: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond().await {
        anyhow::ensure!(Instant::now() < deadline, "{what}: not within {secs} s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

pub(crate) async fn leader(pool: &Pool) -> anyhow::Result<usize> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        for i in 0..pool.endpoints.len() {
            if let Some(v) = status(pool, i).await
                && v["replication"]["role"] == "leader"
            {
                return Ok(i);
            }
        }
        anyhow::ensure!(Instant::now() < deadline, "no leader within 60 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Create `n` EC keys (`{prefix}-{k}`) with 32 concurrent creators spread over the partitions.
pub(crate) async fn preload(pool: &Pool, prefix: &str, n: usize) -> anyhow::Result<()> {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for w in 0..32 {
        let p = pool.via(&pool.endpoints[w % pool.endpoints.len()]);
        let next = next.clone();
        let prefix = prefix.to_string();
        tasks.push(tokio::spawn(async move {
            loop {
                let k = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if k >= n {
                    return anyhow::Ok(());
                }
                p.ok(
                    Method::POST,
                    &format!("/keys/{prefix}-{k}/create"),
                    Some(&json!({"kty": "EC-HSM", "crv": "P-256"})),
                )
                .await?;
            }
        }));
    }
    for t in tasks {
        t.await.context("a preload task failed")??;
    }
    Ok(())
}

/// A new activated three-partition pool `name` in `run.dir` (a previous run there removed):
/// its processes, the pool and its leader.
pub(crate) async fn fresh_pool(
    run: &RunOptions,
    name: &str,
) -> anyhow::Result<(Procs, Pool, usize)> {
    if run.dir.join("pool.json").exists() {
        std::fs::remove_dir_all(&run.dir)
            .with_context(|| format!("cannot remove the previous run in {}", run.dir.display()))?;
    }
    let (configs, _) = prepare(&LocalOptions {
        dir: run.dir.clone(),
        partitions: 3,
        pool_name: name.into(),
        extend: None,
        read_consistency: None,
    })?;
    let mut procs = Procs::of(run.bin.clone(), configs, None)?;
    let pool = start_pool(&mut procs, &run.dir).await?;
    let lead = activate(&pool).await?;
    Ok((procs, pool, lead))
}

/// Start `procs` and wait until its three partitions answer (the pool's files in `dir`).
pub(crate) async fn start_pool(procs: &mut Procs, dir: &Path) -> anyhow::Result<Pool> {
    for i in 0..procs.configs.len() {
        procs.spawn(i)?;
    }
    let pool = Pool::load(dir)?;
    until("the three partitions answer", 120, || async {
        for i in 0..3 {
            if status(&pool, i).await.is_none() {
                return false;
            }
        }
        true
    })
    .await?;
    Ok(pool)
}

/// Activate the pool (a throwaway download), grant the admin Crypto User, wait until every
/// partition holds the domain; the leader's index.
pub(crate) async fn activate(pool: &Pool) -> anyhow::Result<usize> {
    load::ensure_active(pool).await?;
    load::ensure_crypto_user(pool).await?;
    until("every partition holds the domain", 60, || async {
        for i in 0..3 {
            match status(pool, i).await {
                Some(v) if v["domainLoaded"] == true => {}
                _ => return false,
            }
        }
        true
    })
    .await?;
    leader(pool).await
}

pub(crate) fn sign_body(alg: &str) -> bytes::Bytes {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b"replication bench");
    use base64::Engine;
    let value = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest.as_ref());
    bytes::Bytes::from(json!({"alg": alg, "value": value}).to_string())
}

pub async fn run(opts: &Options) -> anyhow::Result<(Vec<OpResult>, HealResult)> {
    anyhow::ensure!(opts.run.clients > 0, "--clients must be at least 1");
    let (mut procs, pool, lead) = fresh_pool(&opts.run, "bench-replication").await?;
    eprintln!(
        "pool ready: leader p{lead}; {} clients, {} generator thread(s), {:?} + {:?} per run",
        opts.run.clients, opts.run.threads, opts.run.warmup, opts.run.measure
    );

    let clients: Vec<reqwest::Client> = (0..opts.run.clients)
        .map(|_| load::https_client(&pool.ca_pem))
        .collect::<anyhow::Result<_>>()?;
    let auth: Arc<str> = Arc::from(format!("Bearer {}", pool.token));
    let pids = server_pids(&opts.run.dir.to_string_lossy());
    let window = |urls: Vec<Arc<str>>, body: bytes::Bytes, rate: Option<f64>| Window {
        clients: &clients,
        urls,
        auth: auth.clone(),
        body,
        warmup: opts.run.warmup,
        measure: opts.run.measure,
        pids: pids.clone(),
        threads: opts.run.threads,
        rate,
    };
    let mut rows = Vec::new();
    let mut push = |mut r: OpResult, label: &str| {
        r.label = Some(label.to_string());
        println!("{} [{label}]", r.line());
        rows.push(r);
    };

    // 1. Replicated creates: each client its own key (new versions), so no two clients
    //    contend on one name; fresh keys for each measurement, so that one does not start
    //    with the versions the previous ones piled up (a key's history is part of what a
    //    write costs).
    let create = bytes::Bytes::from(json!({"kty": "EC-HSM", "crv": "P-256"}).to_string());
    let per_client = |phase: usize, endpoint_of: &dyn Fn(usize) -> usize| -> Vec<Arc<str>> {
        (0..opts.run.clients)
            .map(|c| {
                Arc::from(
                    pool.via(&pool.endpoints[endpoint_of(c)])
                        .url(&format!("/keys/bench-create-{phase}-{c}/create")),
                )
            })
            .collect()
    };
    // Closed loop, then at each fixed rate (open loop: the latency a steady write load
    // sees), on the leader and spread (two thirds forwarded).
    let rates = std::iter::once(None).chain(opts.create_rates.iter().map(|&r| Some(r)));
    let mut phase = 0;
    for rate in rates {
        for (spread, whom) in [
            (false, "all clients on the leader"),
            (true, "clients spread over 3 partitions"),
        ] {
            phase += 1;
            let urls = per_client(phase, &|c| if spread { c % 3 } else { lead });
            let label = match rate {
                None => format!("replicated create, {whom}"),
                Some(r) => format!("replicated create at {r}/s, {whom}"),
            };
            let w = window(urls, create.clone(), rate);
            push(load::measure("ec-p256-create", w).await?, &label);
        }
    }

    // 2. Sign on one partition vs spread over three.
    let ops = json!(["sign", "verify"]);
    let ec: BenchKey = load::create_key(
        &pool,
        "bench-p256",
        json!({"kty": "EC-HSM", "crv": "P-256", "key_ops": ops}),
    )
    .await?;
    let rsa: BenchKey = load::create_key(
        &pool,
        "bench-rsa-2048",
        json!({"kty": "RSA-HSM", "key_size": 2048, "key_ops": ops}),
    )
    .await?;
    for (op, key, alg) in [("es256-sign", &ec, "ES256"), ("rs256-sign", &rsa, "RS256")] {
        let path = format!("{}/sign", key.path);
        let one: Vec<Arc<str>> = vec![Arc::from(pool.via(&pool.endpoints[lead]).url(&path))];
        push(
            load::measure(op, window(one, sign_body(alg), None)).await?,
            "sign, all clients on 1 partition",
        );
        let three: Vec<Arc<str>> = pool
            .endpoints
            .iter()
            .map(|e| Arc::from(pool.via(e).url(&path)))
            .collect();
        push(
            load::measure(op, window(three, sign_body(alg), None)).await?,
            "sign, clients spread over 3 partitions",
        );
    }
    drop(clients);

    // 3. Healing of a wiped follower.
    preload(&pool, "heal", opts.heal_keys).await?;
    let lead = leader(&pool).await?;
    let f = (lead + 1) % 3;
    let commit = status(&pool, lead)
        .await
        .and_then(|v| v["replication"]["commitIndex"].as_u64())
        .context("the leader does not report its commit index")?;
    procs.kill(f);
    std::fs::remove_dir_all(&procs.data_dirs[f]).with_context(|| {
        format!(
            "cannot wipe {} (the follower's data directory)",
            procs.data_dirs[f].display()
        )
    })?;
    let t0 = Instant::now();
    procs.spawn(f)?;
    until("the wiped partition answers", 120, || async {
        status(&pool, f).await.is_some()
    })
    .await?;
    let answers = t0.elapsed();
    until("the wiped partition holds the domain", 300, || async {
        status(&pool, f)
            .await
            .is_some_and(|v| v["domainLoaded"] == true)
    })
    .await?;
    let domain = t0.elapsed();
    until("the wiped partition has caught up", 300, || async {
        status(&pool, f).await.is_some_and(|v| {
            v["replication"]["appliedIndex"].as_u64() >= Some(commit)
                && v["replication"]["recovering"] == false
        })
    })
    .await?;
    let caught_up = t0.elapsed();
    let via = pool.via(&pool.endpoints[f]);
    let sign_path = format!("{}/sign", ec.path);
    let body: Value = serde_json::from_slice(&sign_body("ES256"))?;
    until("the wiped partition signs", 300, || async {
        matches!(via.call(Method::POST, &sign_path, Some(&body)).await, Ok((s, _)) if s.is_success())
    })
    .await?;
    let serving = t0.elapsed();
    let heal = HealResult {
        keys: opts.heal_keys,
        commit_index: commit,
        answers_s: answers.as_secs_f64(),
        domain_s: domain.as_secs_f64(),
        caught_up_s: caught_up.as_secs_f64(),
        serving_s: serving.as_secs_f64(),
    };
    println!(
        "heal: {} keys (commit index {}): answers after {:.2} s, domain after {:.2} s, caught up after {:.2} s, signs after {:.2} s",
        heal.keys,
        heal.commit_index,
        heal.answers_s,
        heal.domain_s,
        heal.caught_up_s,
        heal.serving_s
    );
    drop(procs);
    Ok((rows, heal))
}

/// The partition binary next to this one (release or debug build of the same workspace).
pub fn default_bin() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("keystead-partition")))
        .unwrap_or_else(|| Path::new("target/release/keystead-partition").to_path_buf())
}
