//! `keystead-bench calls`: a fixed number of requests of one operation against a running pool,
//! for instruction-count profiles (callgrind) rather than timings.
//!
//! The clients first warm up (TLS handshakes, caches, the verified-token cache), then a
//! command given with `--before` runs (e.g. `callgrind_control -i on PID`), then exactly
//! `--requests` requests are sent (spread over the clients), then `--after` runs (e.g.
//! `callgrind_control -d PID`). Instructions counted between the two divided by the request
//! count is the pool's cost per request; the time taken means nothing under valgrind.

use crate::load::{self, Pool};
use crate::stats::{CpuSample, server_pids};
use anyhow::Context;
use reqwest::Method;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The operations `calls` can send.
pub const CALL_OPS: [&str; 5] = [
    "es256-sign",
    "rs256-sign",
    "rsa-oaep-256-wrap",
    "rsa-oaep-256-encrypt",
    "get-key",
];

#[derive(Debug, Clone)]
pub struct CallOptions {
    pub dir: PathBuf,
    pub op: String,
    pub clients: usize,
    pub warmup_requests: usize,
    pub requests: usize,
    pub before: Option<String>,
    pub after: Option<String>,
    /// Partition index in `pool.json` to send to (0 = the first endpoint); `None`: the
    /// Raft leader (the same role in every run, so that runs compare).
    pub partition: Option<usize>,
}

fn hook(cmd: Option<&str>) -> anyhow::Result<()> {
    if let Some(c) = cmd {
        let st = std::process::Command::new("sh")
            .args(["-c", c])
            .status()
            .with_context(|| format!("cannot run `{c}`"))?;
        anyhow::ensure!(st.success(), "`{c}` failed ({st})");
    }
    Ok(())
}

/// The newest version's path of `name` (`/keys/NAME/VERSION`), created if missing.
async fn key_path(pool: &Pool, name: &str, create: Value) -> anyhow::Result<String> {
    let (s, v) = pool
        .call(Method::GET, &format!("/keys/{name}"), None)
        .await?;
    let v = if s.is_success() {
        v
    } else {
        pool.ok(Method::POST, &format!("/keys/{name}/create"), Some(&create))
            .await?
    };
    let kid = v["key"]["kid"].as_str().context("the key has no kid")?;
    let version = kid.rsplit('/').next().context("the kid has no version")?;
    Ok(format!("/keys/{name}/{version}"))
}

/// `USER_HZ`, the unit of /proc/PID/stat times (100 on Linux unless the kernel says
/// otherwise through `getconf CLK_TCK`).
fn clock_ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// The index of the partition that says it is the Raft leader.
async fn leader(pool: &Pool) -> anyhow::Result<usize> {
    for (i, e) in pool.endpoints.iter().enumerate() {
        if let Ok((s, v)) = pool.via(e).call(Method::GET, "/admin/status", None).await
            && s.is_success()
            && v["replication"]["role"] == "leader"
        {
            return Ok(i);
        }
    }
    anyhow::bail!("no partition says it is the leader")
}

/// Send `n` requests over `clients`, each client taking the next request number until
/// none is left (with `each`, every client sends exactly `n` itself); returns the non-200
/// answers.
async fn send(
    clients: &[reqwest::Client],
    method: Method,
    url: Arc<str>,
    auth: Arc<str>,
    body: bytes::Bytes,
    n: usize,
    each: bool,
) -> anyhow::Result<usize> {
    let shared = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for c in clients {
        let (c, method, url, auth, body, next) = (
            c.clone(),
            method.clone(),
            url.clone(),
            auth.clone(),
            body.clone(),
            if each {
                Arc::new(AtomicUsize::new(0))
            } else {
                shared.clone()
            },
        );
        tasks.push(tokio::spawn(async move {
            let mut bad = 0usize;
            while next.fetch_add(1, Ordering::Relaxed) < n {
                let mut req = c
                    .request(method.clone(), &*url)
                    .header(reqwest::header::AUTHORIZATION, &*auth);
                if !body.is_empty() {
                    req = req
                        .header(reqwest::header::CONTENT_TYPE, "application/json")
                        .body(body.clone());
                }
                match req.send().await {
                    Ok(r) if r.status().is_success() => {
                        let _ = r.bytes().await;
                    }
                    Ok(r) => {
                        bad += 1;
                        let s = r.status();
                        let t = r.text().await.unwrap_or_default();
                        eprintln!("HTTP {s}: {}", &t[..t.len().min(300)]);
                    }
                    Err(e) => {
                        bad += 1;
                        eprintln!("request failed: {e}");
                    }
                }
            }
            bad
        }));
    }
    let mut bad = 0;
    for t in tasks {
        bad += t.await.context("a client task failed")?;
    }
    Ok(bad)
}

/// `f` until it succeeds or `secs` have passed (a pool just started, perhaps under valgrind).
async fn retry<T, F, Fut>(what: &str, secs: u64, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if std::time::Instant::now() >= deadline => {
                return Err(e.context(format!("{what}: not done within {secs} s")));
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(500)).await,
        }
    }
}

pub async fn run(o: &CallOptions) -> anyhow::Result<()> {
    anyhow::ensure!(
        CALL_OPS.contains(&o.op.as_str()),
        "unknown operation `{}`; choose from {}",
        o.op,
        CALL_OPS.join(", ")
    );
    anyhow::ensure!(o.clients > 0, "--clients must be at least 1");
    let pool = retry("reading pool.json", 300, || async { Pool::load(&o.dir) }).await?;
    let index = match o.partition {
        Some(i) => i,
        None => retry("finding the leader", 300, || leader(&pool)).await?,
    };
    let endpoint = pool
        .endpoints
        .get(index)
        .with_context(|| format!("pool.json has no partition {index}"))?
        .clone();
    let pool = pool.via(&endpoint);
    let value = base64::Engine::encode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b"keystead calls").as_ref(),
    );
    let rsa = || {
        json!({"kty": "RSA-HSM", "key_size": 2048,
               "key_ops": ["sign", "verify", "encrypt", "decrypt", "wrapKey", "unwrapKey"]})
    };
    let (method, path, body) = retry("finding the benchmark key", 300, || async {
        Ok(match o.op.as_str() {
            "es256-sign" => {
                let p = key_path(
                    &pool,
                    "bench-p256",
                    json!({"kty": "EC-HSM", "crv": "P-256", "key_ops": ["sign", "verify"]}),
                )
                .await?;
                (
                    Method::POST,
                    format!("{p}/sign"),
                    json!({"alg": "ES256", "value": value}),
                )
            }
            "rs256-sign" => (
                Method::POST,
                format!("{}/sign", key_path(&pool, "bench-rsa-2048", rsa()).await?),
                json!({"alg": "RS256", "value": value}),
            ),
            "rsa-oaep-256-wrap" => (
                Method::POST,
                format!(
                    "{}/wrapkey",
                    key_path(&pool, "bench-rsa-2048", rsa()).await?
                ),
                json!({"alg": "RSA-OAEP-256", "value": value}),
            ),
            "rsa-oaep-256-encrypt" => (
                Method::POST,
                format!(
                    "{}/encrypt",
                    key_path(&pool, "bench-rsa-2048", rsa()).await?
                ),
                json!({"alg": "RSA-OAEP-256", "value": value}),
            ),
            _ => (
                Method::GET,
                key_path(
                    &pool,
                    "bench-p256",
                    json!({"kty": "EC-HSM", "crv": "P-256"}),
                )
                .await?,
                Value::Null,
            ),
        })
    })
    .await?;
    let body = if body.is_null() {
        bytes::Bytes::new()
    } else {
        bytes::Bytes::from(serde_json::to_vec(&body)?)
    };
    let clients: Vec<reqwest::Client> = (0..o.clients)
        .map(|_| load::https_client(&pool.ca_pem))
        .collect::<anyhow::Result<_>>()?;
    let url: Arc<str> = Arc::from(pool.url(&path));
    let auth: Arc<str> = Arc::from(format!("Bearer {}", pool.token));
    // Every client makes its connection (and the pool its caches) before counting starts.
    let warm = o.warmup_requests.div_ceil(o.clients).max(1);
    retry("a warm-up without a failed request", 300, || async {
        let bad = send(
            &clients,
            method.clone(),
            url.clone(),
            auth.clone(),
            body.clone(),
            warm,
            true,
        )
        .await?;
        anyhow::ensure!(bad == 0, "{bad} warm-up requests failed");
        Ok(())
    })
    .await?;
    hook(o.before.as_deref())?;
    // The pool's own CPU accounting (user + system, every partition): a figure that holds
    // on a busy machine better than a rate does (not under valgrind).
    let pids = server_pids(&o.dir.to_string_lossy());
    let cpu0 = CpuSample::now(&pids);
    let t = std::time::Instant::now();
    let bad = send(&clients, method, url, auth, body, o.requests, false).await?;
    let took = t.elapsed();
    let cpu1 = CpuSample::now(&pids);
    hook(o.after.as_deref())?;
    let ticks = cpu1.server.saturating_sub(cpu0.server);
    println!(
        "{} {} requests to {} over {} clients in {:.1} s, {} not 200; pool CPU (user+system, {} partition processes) {:.1} µs per request",
        o.requests,
        o.op,
        endpoint,
        o.clients,
        took.as_secs_f64(),
        bad,
        pids.len(),
        ticks as f64 * 1e6 / clock_ticks_per_second() / o.requests.max(1) as f64
    );
    anyhow::ensure!(bad == 0, "{bad} requests failed");
    Ok(())
}
