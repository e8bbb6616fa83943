//! `keystead-bench load`: the keys data plane over HTTPS, the way Key Vault clients use it.
//!
//! Optionally starts a local pool (`keystead-partition local --dir DIR`), activates it if
//! needed (security-domain download with three throwaway custodians), gives the
//! administrator the Crypto User role, creates an RSA-2048 and a P-256 key, checks each
//! operation once for a correct result, then runs N closed-loop clients per operation —
//! each its own HTTP/1.1 keep-alive connection over rustls (aws-lc-rs) — for a fixed time.
//!
//! One file on purpose (~660 lines of code): one command, its pool set-up and its report.

use crate::stats::{CpuSample, OpResult, machine_cores, server_pids};
use anyhow::Context;
use aws_lc_rs::digest;
use aws_lc_rs::signature;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use keystead_partition::local::{ADMIN_SUBJECT, PoolFile};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const SOURCE: &str = "keystead";
const API_VERSION: &str = "7.5";
/// Managed HSM Crypto User.
const CRYPTO_USER_ROLE: &str = "21dbd100-6940-42c2-9190-5d6cb909625b";
const RSA_KEY: &str = "bench-rsa-2048";
const EC_KEY: &str = "bench-p256";

/// The operations measured over HTTPS, in report order. P-256 keys have no wrap or
/// encrypt in Key Vault (ECDH is not offered), so those two run on the RSA key only.
pub const OPS: [&str; 4] = [
    "rs256-sign",
    "es256-sign",
    "rsa-oaep-256-wrap",
    "rsa-oaep-256-encrypt",
];

#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// The pool directory (`DIR/pool.json`).
    pub dir: PathBuf,
    /// Start `keystead-partition local --dir DIR` with this binary (else the pool must run).
    pub start_with: Option<PathBuf>,
    /// CPU list for the started pool (`taskset -c LIST`).
    pub server_cpus: Option<String>,
    /// Client counts: each operation is measured at each, in order.
    pub clients: Vec<usize>,
    /// `--read-consistency` of the started pool (`read-index`, `lease`); else its default.
    pub read_consistency: Option<String>,
    pub threads: usize,
    pub warmup: Duration,
    pub measure: Duration,
    pub ops: Vec<String>,
}

/// A started local pool; stopped with SIGTERM when dropped.
struct Runner {
    child: Child,
    stopped: bool,
}

impl Runner {
    fn start(
        bin: &Path,
        dir: &Path,
        cpus: Option<&str>,
        read_consistency: Option<&str>,
    ) -> anyhow::Result<Runner> {
        let _ = std::fs::remove_file(dir.join("pool.json"));
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the pool directory {}", dir.display()))?;
        let log = std::fs::File::create(dir.join("bench-runner.log"))
            .with_context(|| format!("cannot write {}/bench-runner.log", dir.display()))?;
        let mut cmd = match cpus {
            Some(list) => {
                let mut c = Command::new("taskset");
                c.args(["-c", list]).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        cmd.args(["local", "--dir"]).arg(dir);
        if let Some(r) = read_consistency {
            cmd.args(["--read-consistency", r]);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        Ok(Runner {
            child,
            stopped: false,
        })
    }

    /// SIGTERM, then wait (bounded) for the runner to stop its partitions.
    fn stop(&mut self) {
        if std::mem::replace(&mut self.stopped, true) {
            return;
        }
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One HTTPS client with its own connection pool (one keep-alive connection in use).
pub(crate) fn https_client(ca_pem: &[u8]) -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .http1_only()
        .pool_max_idle_per_host(1)
        .pool_idle_timeout(None)
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(60))
        .add_root_certificate(
            reqwest::Certificate::from_pem(ca_pem).context("the pool's CA file is not PEM")?,
        )
        .build()
        .context("cannot build the HTTPS client")
}

/// The pool as seen by the administrator token.
pub(crate) struct Pool {
    pub endpoint: String,
    /// Every partition's endpoint, from `pool.json` (`endpoint` is the first).
    pub endpoints: Vec<String>,
    pub token: String,
    pub ca_pem: Vec<u8>,
    admin: reqwest::Client,
}

impl Pool {
    pub(crate) fn load(dir: &Path) -> anyhow::Result<Pool> {
        let pf = PoolFile::load(&dir.join("pool.json"))?;
        let endpoint = pf
            .endpoints
            .first()
            .context("pool.json lists no endpoint")?
            .trim_end_matches('/')
            .to_string();
        let token = std::fs::read_to_string(&pf.admin_token_file)
            .with_context(|| format!("cannot read {}", pf.admin_token_file.display()))?
            .trim()
            .to_string();
        let ca_pem = std::fs::read(&pf.ca_file)
            .with_context(|| format!("cannot read {}", pf.ca_file.display()))?;
        let admin = https_client(&ca_pem)?;
        Ok(Pool {
            endpoints: pf
                .endpoints
                .iter()
                .map(|e| e.trim_end_matches('/').to_string())
                .collect(),
            endpoint,
            token,
            ca_pem,
            admin,
        })
    }

    /// The same pool, addressed through another partition's endpoint.
    pub(crate) fn via(&self, endpoint: &str) -> Pool {
        Pool {
            endpoint: endpoint.to_string(),
            endpoints: self.endpoints.clone(),
            token: self.token.clone(),
            ca_pem: self.ca_pem.clone(),
            admin: self.admin.clone(),
        }
    }

    /// Why the pool should not be used yet: a partition that does not answer `/readyz`
    /// with 200 (`None`: every partition is ready).
    pub(crate) async fn not_ready(&self) -> Option<String> {
        for ep in &self.endpoints {
            match self.admin.get(format!("{ep}/readyz")).send().await {
                Ok(r) if r.status().is_success() => {}
                Ok(r) => {
                    let s = r.status();
                    return Some(format!(
                        "{ep}/readyz answered {s}: {}",
                        r.text().await.unwrap_or_default()
                    ));
                }
                Err(e) => return Some(format!("{ep}/readyz: {e}")),
            }
        }
        None
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}?api-version={API_VERSION}", self.endpoint)
    }

    pub(crate) async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<(StatusCode, Value)> {
        let mut req = self
            .admin
            .request(method.clone(), self.url(path))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.with_context(|| {
            format!(
                "{method} {path}: cannot reach the pool at {}",
                self.endpoint
            )
        })?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        let v = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Ok((status, v))
    }

    pub(crate) async fn ok(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Value> {
        let (s, v) = self.call(method.clone(), path, body).await?;
        anyhow::ensure!(
            s.is_success(),
            "{method} {path} answered {s}: {}",
            error_message(&v)
        );
        Ok(v)
    }
}

pub(crate) fn error_message(v: &Value) -> String {
    v["error"]["message"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| v.to_string().chars().take(300).collect())
}

/// Wait until `DIR/pool.json` exists and every partition answers `/readyz` (a resumed
/// partition is ready once it has caught up and holds the security domain; a new pool is
/// ready for its activation).
async fn wait_ready(dir: &Path, runner: &mut Option<Runner>) -> anyhow::Result<Pool> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut last = String::from("pool.json not written yet");
    loop {
        if let Some(r) = runner.as_mut()
            && let Ok(Some(status)) = r.child.try_wait()
        {
            anyhow::bail!(
                "the local pool exited ({status}) before it was ready; see {}/bench-runner.log",
                dir.display()
            );
        }
        if dir.join("pool.json").exists() {
            match Pool::load(dir) {
                Ok(p) => match p.not_ready().await {
                    None => return Ok(p),
                    Some(why) => last = why,
                },
                Err(e) => last = format!("{e:#}"),
            }
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the pool in {} did not become ready within 120 s: {last}",
            dir.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Activate the pool if it is not: a security-domain download with three custodian
/// certificates made here and thrown away (a benchmark pool; the local pool unseals itself
/// from its sealing-key file across restarts).
pub(crate) async fn ensure_active(pool: &Pool) -> anyhow::Result<()> {
    let status = pool.ok(Method::GET, "/admin/status", None).await?;
    if status["activation"] == "Activated" {
        return Ok(());
    }
    let mut jwks = Vec::new();
    for name in [
        "bench-custodian-1",
        "bench-custodian-2",
        "bench-custodian-3",
    ] {
        let (cert_pem, _private_key) = keystead_core::sd::generate_custodian(name, 2048, None)
            .context("cannot generate a custodian key")?;
        let key = keystead_core::sd::CustodianKey::from_pem(&cert_pem)
            .context("the generated custodian certificate is not usable")?;
        jwks.push(serde_json::to_value(key.to_jwk()?)?);
    }
    pool.ok(
        Method::POST,
        "/securitydomain/download",
        Some(&json!({"certificates": jwks, "required": 2})),
    )
    .await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let v = pool
            .ok(Method::GET, "/securitydomain/download/pending", None)
            .await?;
        match v["status"].as_str() {
            Some("Success") => return Ok(()),
            Some("Failed") => anyhow::bail!("activation failed: {}", v["statusDetails"]),
            _ => {}
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the pool did not finish activating within 60 s: {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Give the administrator the Crypto User role at `/` (a duplicate is harmless).
pub(crate) async fn ensure_crypto_user(pool: &Pool) -> anyhow::Result<()> {
    let path = format!(
        "/providers/Microsoft.Authorization/roleAssignments/{}",
        uuid::Uuid::new_v4()
    );
    let body =
        json!({"properties": {"roleDefinitionId": CRYPTO_USER_ROLE, "principalId": ADMIN_SUBJECT}});
    let (s, v) = pool.call(Method::PUT, &path, Some(&body)).await?;
    anyhow::ensure!(
        s.is_success() || s == StatusCode::CONFLICT,
        "assigning the Crypto User role answered {s}: {}",
        error_message(&v)
    );
    Ok(())
}

/// A created key: its versioned path (`/keys/NAME/VERSION`) and public JWK.
pub(crate) struct BenchKey {
    pub path: String,
    pub jwk: Value,
}

pub(crate) async fn create_key(pool: &Pool, name: &str, body: Value) -> anyhow::Result<BenchKey> {
    let v = pool
        .ok(Method::POST, &format!("/keys/{name}/create"), Some(&body))
        .await?;
    let kid = v["key"]["kid"]
        .as_str()
        .context("the created key has no kid")?;
    let version = kid
        .rsplit('/')
        .next()
        .filter(|s| !s.is_empty())
        .context("the kid has no version")?;
    Ok(BenchKey {
        path: format!("/keys/{name}/{version}"),
        jwk: v["key"].clone(),
    })
}

fn b64(v: &Value, field: &str) -> anyhow::Result<Vec<u8>> {
    let s = v[field]
        .as_str()
        .with_context(|| format!("the answer has no `{field}`"))?;
    B64.decode(s)
        .with_context(|| format!("`{field}` is not base64url"))
}

/// The request (path and JSON body) of each operation.
fn request_for(
    op: &str,
    rsa: &BenchKey,
    ec: &BenchKey,
    digest32: &[u8],
) -> anyhow::Result<(String, Vec<u8>)> {
    let value = B64.encode(digest32);
    let (path, body) = match op {
        "rs256-sign" => (
            format!("{}/sign", rsa.path),
            json!({"alg": "RS256", "value": value}),
        ),
        "es256-sign" => (
            format!("{}/sign", ec.path),
            json!({"alg": "ES256", "value": value}),
        ),
        "rsa-oaep-256-wrap" => (
            format!("{}/wrapkey", rsa.path),
            json!({"alg": "RSA-OAEP-256", "value": value}),
        ),
        "rsa-oaep-256-encrypt" => (
            format!("{}/encrypt", rsa.path),
            json!({"alg": "RSA-OAEP-256", "value": value}),
        ),
        other => anyhow::bail!(
            "unknown operation `{other}`; choose from {}",
            OPS.join(", ")
        ),
    };
    Ok((path, serde_json::to_vec(&body)?))
}

/// Check each operation once: signatures verify locally against the public JWK; wrap and
/// encrypt round-trip through unwrap and decrypt.
async fn self_check(pool: &Pool, rsa: &BenchKey, ec: &BenchKey, msg: &[u8]) -> anyhow::Result<()> {
    let d = digest::digest(&digest::SHA256, msg);
    let digest32 = d.as_ref();
    let value = B64.encode(digest32);

    let v = pool
        .ok(
            Method::POST,
            &format!("{}/sign", rsa.path),
            Some(&json!({"alg": "RS256", "value": value})),
        )
        .await?;
    let sig = b64(&v, "value")?;
    let pk = signature::RsaPublicKeyComponents {
        n: b64(&rsa.jwk, "n")?,
        e: b64(&rsa.jwk, "e")?,
    };
    pk.verify(&signature::RSA_PKCS1_2048_8192_SHA256, msg, &sig)
        .ok()
        .context("the pool's RS256 signature does not verify with the key's public JWK")?;

    let v = pool
        .ok(
            Method::POST,
            &format!("{}/sign", ec.path),
            Some(&json!({"alg": "ES256", "value": value})),
        )
        .await?;
    let sig = b64(&v, "value")?;
    let mut point = vec![0x04];
    point.extend(b64(&ec.jwk, "x")?);
    point.extend(b64(&ec.jwk, "y")?);
    signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
        .verify(msg, &sig)
        .ok()
        .context("the pool's ES256 signature does not verify with the key's public JWK")?;

    for (fwd, back) in [("wrapkey", "unwrapkey"), ("encrypt", "decrypt")] {
        let v = pool
            .ok(
                Method::POST,
                &format!("{}/{fwd}", rsa.path),
                Some(&json!({"alg": "RSA-OAEP-256", "value": value})),
            )
            .await?;
        let ct = v["value"].as_str().context("no value in the answer")?;
        let v = pool
            .ok(
                Method::POST,
                &format!("{}/{back}", rsa.path),
                Some(&json!({"alg": "RSA-OAEP-256", "value": ct})),
            )
            .await?;
        anyhow::ensure!(
            b64(&v, "value")? == digest32,
            "{fwd} then {back} did not give back the value"
        );
    }
    Ok(())
}

struct ClientResult {
    latencies_ns: Vec<u64>,
    errors: u64,
    first_error: Option<String>,
}

/// An open-loop client's schedule: its first send and the interval between sends.
#[derive(Clone, Copy)]
struct Schedule {
    first: Instant,
    every: Duration,
}

/// What one client sends, again and again.
struct ClientRequest {
    method: reqwest::Method,
    url: Arc<str>,
    auth: Arc<str>,
    body: bytes::Bytes,
}

/// One client: send, read the whole answer, repeat until `end` — at once (closed loop) or
/// when the next send is due (`schedule`).
async fn client_loop(
    http: reqwest::Client,
    request: ClientRequest,
    measure_from: Instant,
    end: Instant,
    schedule: Option<Schedule>,
) -> ClientResult {
    let ClientRequest {
        method,
        url,
        auth,
        body,
    } = request;
    let mut r = ClientResult {
        latencies_ns: Vec::with_capacity(4096),
        errors: 0,
        first_error: None,
    };
    let mut next = schedule.map(|s| s.first);
    loop {
        // Open loop: a request's latency counts from when it was due, so a late answer
        // delays the next request's start and shows in that request's latency too (no
        // coordinated omission).
        let t0 = match (&mut next, schedule) {
            (Some(due), Some(s)) => {
                let t = *due;
                *due += s.every;
                if t >= end {
                    break;
                }
                tokio::time::sleep_until(t.into()).await;
                t
            }
            _ => Instant::now(),
        };
        if t0 >= end {
            break;
        }
        let req = http
            .request(method.clone(), &*url)
            .header(reqwest::header::AUTHORIZATION, &*auth);
        let req = if method == reqwest::Method::GET {
            req
        } else {
            req.header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.clone())
        };
        let res = req.send().await;
        let outcome = match res {
            Ok(resp) => {
                let status = resp.status();
                match resp.bytes().await {
                    Ok(_) if status == StatusCode::OK => Ok(()),
                    Ok(b) => Err(format!(
                        "HTTP {status}: {}",
                        String::from_utf8_lossy(&b[..b.len().min(300)])
                    )),
                    Err(e) => Err(format!("reading the answer failed: {e}")),
                }
            }
            Err(e) => Err(format!("request failed: {e}")),
        };
        let t1 = Instant::now();
        if t0 < measure_from || t1 > end {
            continue;
        }
        match outcome {
            Ok(()) => r
                .latencies_ns
                .push(u64::try_from((t1 - t0).as_nanos()).unwrap_or(u64::MAX)),
            Err(e) => {
                r.errors += 1;
                r.first_error.get_or_insert(e);
            }
        }
    }
    r
}

/// What one measured window runs: each client posts `body` to its URL (clients take the
/// URLs in turn) in a closed loop for `warmup + measure` — or, with `rate`, at a fixed
/// total rate (requests per second, spread evenly over the clients: an open loop whose
/// latencies count from when each request was due); CPU is sampled for `pids`.
pub(crate) struct Window<'a> {
    pub clients: &'a [reqwest::Client],
    pub urls: Vec<Arc<str>>,
    pub auth: Arc<str>,
    pub body: bytes::Bytes,
    pub warmup: Duration,
    pub measure: Duration,
    pub pids: Vec<u32>,
    pub threads: usize,
    pub rate: Option<f64>,
}

pub(crate) async fn measure(op: &str, w: Window<'_>) -> anyhow::Result<OpResult> {
    measure_with(op, w, reqwest::Method::POST).await
}

/// [`measure`] with GET requests (the body is not sent).
pub(crate) async fn measure_get(op: &str, w: Window<'_>) -> anyhow::Result<OpResult> {
    measure_with(op, w, reqwest::Method::GET).await
}

async fn measure_with(
    op: &str,
    w: Window<'_>,
    method: reqwest::Method,
) -> anyhow::Result<OpResult> {
    anyhow::ensure!(!w.urls.is_empty(), "no URL to measure {op} against");
    let start = Instant::now();
    let measure_from = start + w.warmup;
    let end = measure_from + w.measure;
    if let Some(rate) = w.rate {
        anyhow::ensure!(rate > 0.0, "the rate must be above 0, got {rate}");
    }
    let n = w.clients.len();
    let mut tasks = Vec::with_capacity(n);
    for (i, c) in w.clients.iter().enumerate() {
        let schedule = w.rate.map(|rate| Schedule {
            first: start + Duration::from_secs_f64(i as f64 / rate),
            every: Duration::from_secs_f64(n as f64 / rate),
        });
        tasks.push(tokio::spawn(client_loop(
            c.clone(),
            ClientRequest {
                method: method.clone(),
                url: w.urls[i % w.urls.len()].clone(),
                auth: w.auth.clone(),
                body: w.body.clone(),
            },
            measure_from,
            end,
            schedule,
        )));
    }
    tokio::time::sleep_until(measure_from.into()).await;
    let cpu0 = CpuSample::now(&w.pids);
    tokio::time::sleep_until(end.into()).await;
    let cpu1 = CpuSample::now(&w.pids);
    let mut lat = Vec::new();
    let mut errors = 0;
    let mut first_error = None;
    for t in tasks {
        let r = t.await.context("a client task failed")?;
        lat.extend(r.latencies_ns);
        errors += r.errors;
        if first_error.is_none() {
            first_error = r.first_error;
        }
    }
    let mut res = OpResult::new(SOURCE, op, w.threads, lat, errors, w.measure);
    res.clients = Some(w.clients.len());
    res.cpu = cpu0.split(&cpu1, machine_cores());
    res.first_error = first_error;
    Ok(res)
}

async fn run_op(
    pool: &Pool,
    clients: &[reqwest::Client],
    op: &str,
    path: &str,
    body: &[u8],
    opts: &LoadOptions,
) -> anyhow::Result<OpResult> {
    measure(
        op,
        Window {
            clients,
            urls: vec![Arc::from(pool.url(path))],
            auth: Arc::from(format!("Bearer {}", pool.token)),
            body: bytes::Bytes::copy_from_slice(body),
            warmup: opts.warmup,
            measure: opts.measure,
            pids: server_pids(&opts.dir.to_string_lossy()),
            threads: opts.threads,
            rate: None,
        },
    )
    .await
}

/// Set up the pool and keys, then measure each requested operation.
pub async fn run(opts: &LoadOptions) -> anyhow::Result<Vec<OpResult>> {
    anyhow::ensure!(
        !opts.clients.is_empty() && opts.clients.iter().all(|&c| c > 0),
        "--clients must list counts of at least 1, got {:?}",
        opts.clients
    );
    for op in &opts.ops {
        anyhow::ensure!(
            OPS.contains(&op.as_str()),
            "unknown operation `{op}`; choose from {}",
            OPS.join(", ")
        );
    }
    let mut runner = match &opts.start_with {
        Some(bin) => Some(Runner::start(
            bin,
            &opts.dir,
            opts.server_cpus.as_deref(),
            opts.read_consistency.as_deref(),
        )?),
        None => None,
    };
    let pool = wait_ready(&opts.dir, &mut runner).await?;
    ensure_active(&pool).await?;
    ensure_crypto_user(&pool).await?;
    let ops = json!([
        "sign",
        "verify",
        "encrypt",
        "decrypt",
        "wrapKey",
        "unwrapKey"
    ]);
    let rsa = create_key(
        &pool,
        RSA_KEY,
        json!({"kty": "RSA-HSM", "key_size": 2048, "key_ops": ops}),
    )
    .await?;
    let ec = create_key(
        &pool,
        EC_KEY,
        json!({"kty": "EC-HSM", "crv": "P-256", "key_ops": ["sign", "verify"]}),
    )
    .await?;
    self_check(&pool, &rsa, &ec, b"keystead benchmark self-check").await?;
    eprintln!(
        "pool ready at {}; {:?} clients, {} generator thread(s), {:?} warm-up + {:?} per operation",
        pool.endpoint, opts.clients, opts.threads, opts.warmup, opts.measure
    );

    let most = opts.clients.iter().copied().max().unwrap_or(1);
    let clients: Vec<reqwest::Client> = (0..most)
        .map(|_| https_client(&pool.ca_pem))
        .collect::<anyhow::Result<_>>()?;
    let digest32 = digest::digest(&digest::SHA256, b"keystead benchmark payload");
    let mut out = Vec::new();
    for op in &opts.ops {
        let (path, body) = request_for(op, &rsa, &ec, digest32.as_ref())?;
        for &n in &opts.clients {
            let r = run_op(&pool, &clients[..n], op, &path, &body, opts).await?;
            println!("{}", r.line());
            out.push(r);
        }
    }
    drop(clients);
    if let Some(mut r) = runner.take() {
        r.stop();
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(path: &str) -> BenchKey {
        BenchKey {
            path: path.to_string(),
            jwk: Value::Null,
        }
    }

    #[test]
    fn requests_target_the_right_key_and_algorithm() {
        let (rsa, ec) = (key("/keys/r/1"), key("/keys/e/2"));
        let d = [1u8; 32];
        let (p, b) = request_for("rs256-sign", &rsa, &ec, &d).unwrap();
        assert_eq!(p, "/keys/r/1/sign");
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["alg"], "RS256");
        assert_eq!(B64.decode(v["value"].as_str().unwrap()).unwrap(), d);
        let (p, b) = request_for("es256-sign", &rsa, &ec, &d).unwrap();
        assert_eq!(p, "/keys/e/2/sign");
        assert!(String::from_utf8(b).unwrap().contains("ES256"));
        let (p, _) = request_for("rsa-oaep-256-wrap", &rsa, &ec, &d).unwrap();
        assert_eq!(p, "/keys/r/1/wrapkey");
        let (p, b) = request_for("rsa-oaep-256-encrypt", &rsa, &ec, &d).unwrap();
        assert_eq!(p, "/keys/r/1/encrypt");
        assert!(String::from_utf8(b).unwrap().contains("RSA-OAEP-256"));
        let e = request_for("es256-wrap", &rsa, &ec, &d)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("choose from"), "{e}");
    }

    #[test]
    fn error_messages_prefer_the_pool_message() {
        let v = json!({"error": {"code": "Forbidden", "message": "no role"}});
        assert_eq!(error_message(&v), "no role");
        let long = Value::String("x".repeat(1000));
        assert!(error_message(&long).len() <= 300);
    }
}
