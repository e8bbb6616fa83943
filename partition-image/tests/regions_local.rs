//! `keystead-partition local --extend` on real processes (docs/regions.md, Local mode): pool
//! B started by the runner as a replica region of the running local pool A; A's key served by
//! B; either pool's admin token accepted by both; `kubectl hsm region status` on B's pool file.

mod cluster;
mod common;

use keystead_partition::local::{PoolFile, wait_ready};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

fn partition_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_keystead-partition"))
}

/// A runner (`keystead-partition local ...`), stopped with SIGTERM (it stops its partitions).
struct Runner(Child);

impl Runner {
    fn start(dir: &Path, args: &[&str]) -> Runner {
        let log = std::fs::File::create(dir.with_extension("runner.log")).unwrap();
        let child = Command::new(partition_bin())
            .args(["local", "--dir"])
            .arg(dir)
            .args(args)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        Runner(child)
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while matches!(self.0.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The pool file of `dir`, once the runner wrote it and its partitions are ready.
async fn ready_pool(dir: &Path) -> PoolFile {
    let file = dir.join("pool.json");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !file.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            file.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let pool = PoolFile::load(&file).unwrap();
    wait_ready(&pool, Duration::from_secs(60)).await.unwrap();
    pool
}

fn client(pool: &PoolFile) -> reqwest::Client {
    let ca = std::fs::read(&pool.ca_file).unwrap();
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

async fn call(
    pool: &PoolFile,
    token_of: &PoolFile,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let token = std::fs::read_to_string(&token_of.admin_token_file).unwrap();
    let mut req = client(pool)
        .request(
            method,
            format!("{}{path}?api-version=7.5", pool.endpoints[0]),
        )
        .bearer_auth(token.trim());
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    let s = r.status();
    (s, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runner_extends_a_running_local_pool_into_a_replica_region() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir_a, dir_b) = (tmp.path().join("A"), tmp.path().join("B"));
    let _a = Runner::start(&dir_a, &["--name", "east"]);
    let a = ready_pool(&dir_a).await;
    let post = reqwest::Method::POST;
    let (s, v) = call(
        &a,
        &a,
        post.clone(),
        "/securitydomain/download",
        Some(json!({"certificates": cluster::custodian_jwks(), "required": 2})),
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let (s, v) = call(
        &a,
        &a,
        reqwest::Method::PUT,
        &format!(
            "/providers/Microsoft.Authorization/roleAssignments/{}",
            uuid::Uuid::new_v4()
        ),
        Some(json!({"properties": {
            "roleDefinitionId": format!("Microsoft.KeyVault/providers/Microsoft.Authorization/roleDefinitions/{}", keystead_core::rbac::CRYPTO_USER_ROLE_ID),
            "principalId": keystead_partition::local::ADMIN_SUBJECT,
        }})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, v) = call(
        &a,
        &a,
        post,
        "/keys/k1/create",
        Some(json!({"kty": "EC", "crv": "P-256"})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");

    let _b = Runner::start(
        &dir_b,
        &[
            "--name",
            "west",
            "--extend",
            dir_a.join("pool.json").to_str().unwrap(),
        ],
    );
    let b = ready_pool(&dir_b).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    // Either pool's administrator token works against B (one issuer, one audience).
    while call(&b, &a, reqwest::Method::GET, "/keys/k1", None).await.0 != StatusCode::OK {
        assert!(Instant::now() < deadline, "B never served A's key");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (s, _) = call(&b, &b, reqwest::Method::GET, "/keys/k1", None).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = call(&a, &b, reqwest::Method::GET, "/keys/k1", None).await;
    assert_eq!(s, StatusCode::OK, "B's token works against A");

    let hsm = partition_bin().with_file_name("kubectl-hsm");
    assert!(hsm.exists(), "build the workspace first (kubectl-hsm)");
    let out = Command::new(&hsm)
        .arg("--pool")
        .arg(dir_b.join("pool.json"))
        .args(["region", "status", "-o", "json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (
            r["name"].as_str(),
            r["role"].as_str(),
            r["primary"].as_str()
        ),
        (Some("west"), Some("Replica"), Some("east")),
        "{r}"
    );
    assert_eq!(r["joined"], true, "{r}");
    let log = std::fs::read_to_string(dir_b.with_extension("runner.log")).unwrap();
    assert!(log.contains("replica region of the pool of"), "{log}");
}
