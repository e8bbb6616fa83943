//! `keystead-partition local --extend` on real processes (docs/regions.md, Local mode): pools
//! B and C started by the runner as replica regions of the running local pool A (three
//! regions); A's key served by B and C; a write through C lands in A and is served by B;
//! either pool's admin token accepted by both; `kubectl hsm region status|list|remove|add`:
//! a region removed on the primary is refused (its writes fail, nothing new reaches it), named
//! again it catches up.

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

/// `kubectl hsm --pool POOL ARGS… -o json` (the workspace's build); its JSON answer.
fn kubectl_hsm(pool: &Path, args: &[&str]) -> Value {
    let hsm = partition_bin().with_file_name("kubectl-hsm");
    assert!(hsm.exists(), "build the workspace first (kubectl-hsm)");
    let out = Command::new(&hsm)
        .arg("--pool")
        .arg(pool)
        .args(args)
        .args(["-o", "json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kubectl hsm {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Until `GET /keys/{key}` on `pool` answers 200 (fails after 60 s).
async fn until_served(pool: &PoolFile, token_of: &PoolFile, key: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while call(
        pool,
        token_of,
        reqwest::Method::GET,
        &format!("/keys/{key}"),
        None,
    )
    .await
    .0 != StatusCode::OK
    {
        assert!(Instant::now() < deadline, "{what}: never served {key}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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
async fn the_runner_extends_a_running_local_pool_into_two_replica_regions_and_one_is_removed() {
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

    let r = kubectl_hsm(&dir_b.join("pool.json"), &["region", "status"]);
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

    // A third region, C (north), extends A too: it serves A's key; a write sent to C lands
    // in A and reaches B.
    let dir_c = tmp.path().join("C");
    let _c = Runner::start(
        &dir_c,
        &[
            "--name",
            "north",
            "--extend",
            dir_a.join("pool.json").to_str().unwrap(),
        ],
    );
    let c = ready_pool(&dir_c).await;
    until_served(&c, &a, "k1", "C (north)").await;
    let (s, v) = call(
        &c,
        &c,
        reqwest::Method::POST,
        "/keys/from-north/create",
        Some(json!({"kty": "EC", "crv": "P-256"})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "a write sent to C: {v}");
    let (s, _) = call(&a, &a, reqwest::Method::GET, "/keys/from-north", None).await;
    assert_eq!(s, StatusCode::OK, "C's write landed in A");
    until_served(&b, &a, "from-north", "B (west), a write taken by C").await;
    let pool_a = dir_a.join("pool.json");
    let names = |list: &Value| -> Vec<String> {
        let mut n: Vec<String> = list
            .as_array()
            .unwrap_or_else(|| panic!("a list: {list}"))
            .iter()
            .filter_map(|r| r["name"].as_str().map(String::from))
            .collect();
        n.sort();
        n
    };
    let listed = kubectl_hsm(&pool_a, &["region", "list"]);
    assert!(
        ["east", "north", "west"]
            .iter()
            .all(|r| names(&listed).contains(&r.to_string())),
        "A's topology lists the three regions: {listed}"
    );

    let sealed_domains = || {
        (0..3)
            .filter(|i| {
                dir_c
                    .join(format!("p{i}"))
                    .join("data")
                    .join("domain.sealed")
                    .exists()
            })
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while sealed_domains() < 3 {
        assert!(
            Instant::now() < deadline,
            "only {} of C's partitions hold the sealed domain",
            sealed_domains()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Remove north on A: C's writes are refused, and what A takes no longer reaches C
    // (B still gets it).
    let left = kubectl_hsm(&pool_a, &["region", "remove", "north"]);
    assert_eq!(names(&left), vec!["west".to_string()], "{left}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (s, v) = call(
            &c,
            &c,
            reqwest::Method::POST,
            "/keys/after-removal/create",
            Some(json!({"kty": "EC", "crv": "P-256"})),
        )
        .await;
        if !s.is_success() {
            assert!(
                s.is_server_error() || s == StatusCode::FORBIDDEN,
                "a removed region's write fails cleanly: {s} {v}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "C's writes still land 30 s after its removal: {v}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (s, v) = call(
        &a,
        &a,
        reqwest::Method::POST,
        "/keys/k2/create",
        Some(json!({"kty": "EC", "crv": "P-256"})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    until_served(&b, &a, "k2", "B (west), still accepted").await;
    let (s, _) = call(&c, &a, reqwest::Method::GET, "/keys/k2", None).await;
    assert_ne!(
        s,
        StatusCode::OK,
        "B already serves k2; C, removed, does not"
    );
    let c_view = kubectl_hsm(&dir_c.join("pool.json"), &["region", "status"]);
    assert_eq!(c_view["primaryRefuses"], true, "{c_view}");
    // And, as in Azure, C's pool is purged: A's removal notice verified under C's domain,
    // so C dropped its keys, and every partition of C its domain (memory and disk).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let c_view = kubectl_hsm(&dir_c.join("pool.json"), &["region", "status"]);
        let (s, _) = call(&c, &a, reqwest::Method::GET, "/keys/k1", None).await;
        let sealed = sealed_domains();
        if c_view["removedBy"] == "east" && s != StatusCode::OK && sealed == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "C is not purged 60 s after its removal: {c_view}, GET k1 {s}, {sealed} sealed domains"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Named again with its CA, C follows again and catches up.
    let back = kubectl_hsm(
        &pool_a,
        &[
            "region",
            "add",
            "north",
            "--ca",
            c.ca_file.to_str().unwrap(),
        ],
    );
    assert_eq!(
        names(&back),
        vec!["north".to_string(), "west".to_string()],
        "{back}"
    );
    until_served(&c, &a, "k2", "C (north) named again").await;
    until_served(&c, &a, "k1", "C (north) named again, from nothing").await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while sealed_domains() < 3 {
        assert!(
            Instant::now() < deadline,
            "C joined anew, but {} of its partitions hold the domain",
            sealed_domains()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
