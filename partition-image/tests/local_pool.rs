//! The README's first command on real processes: `keystead-partition local` starts a pool,
//! `kubectl hsm` runs the ceremony and key operations against it, SIGTERM stops it, and
//! running it again resumes the same pool; a partition killed under the runner is restarted
//! while the others keep serving.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

fn partition_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_keystead-partition"))
}

/// `kubectl-hsm` is a sibling binary of the workspace (built by `cargo build --workspace`
/// or `cargo nextest run --workspace`).
fn hsm_bin() -> PathBuf {
    let p = partition_bin().with_file_name("kubectl-hsm");
    assert!(
        p.exists(),
        "{} is missing: build the workspace first (cargo build --workspace)",
        p.display()
    );
    p
}

struct Pool {
    child: Child,
    dir: PathBuf,
}

impl Pool {
    /// Start the runner on `dir` (its stdout and stderr in `dir.runner.log`).
    fn spawn(dir: &Path) -> Pool {
        let _ = std::fs::remove_file(dir.join("pool.json"));
        let log = std::fs::File::create(dir.with_extension("runner.log")).unwrap();
        let child = Command::new(partition_bin())
            .args(["local", "--dir"])
            .arg(dir)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        Pool {
            child,
            dir: dir.to_path_buf(),
        }
    }

    fn runner_log(&self) -> String {
        std::fs::read_to_string(self.dir.with_extension("runner.log")).unwrap_or_default()
    }

    /// The pids of the runner's partition processes, by partition name (`p0`, ...).
    fn partition_pids(&self) -> std::collections::BTreeMap<String, u32> {
        keystead_core::pool_file::partition_pids(self.child.id())
    }

    fn start(dir: &Path) -> Pool {
        let pool = Pool::spawn(dir);
        // Ready when pool.json exists and the pool answers.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if pool.dir.join("pool.json").exists() && pool.hsm(&["sd", "status"]).0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the local pool did not become ready"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        pool
    }

    fn hsm(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(hsm_bin())
            .arg("--pool")
            .arg(self.dir.join("pool.json"))
            .args(args)
            .current_dir(&self.dir)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Retry `kubectl hsm ARGS` until it succeeds, within a deadline.
    fn wait_ok(&self, args: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (ok, out, err) = self.hsm(args);
            if ok {
                return out;
            }
            assert!(
                Instant::now() < deadline,
                "kubectl hsm {args:?} kept failing: {err}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The ceremony: three custodian keys (c1..c3 in DIR/custodians), a download with
    /// quorum 2 through `endpoint` (default: pool.json's), the file in DIR/sd.json.
    fn ceremony(&self, endpoint: Option<&str>) {
        for n in ["c1", "c2", "c3"] {
            self.ok(&[
                "sd",
                "keygen",
                "--name",
                n,
                "--out-dir",
                "custodians",
                "--bits",
                "2048",
            ]);
        }
        let mut args = Vec::new();
        if let Some(e) = endpoint {
            args.extend(["--endpoint", e]);
        }
        args.extend([
            "sd",
            "download",
            "--cert",
            "custodians/c1.cer",
            "--cert",
            "custodians/c2.cer",
            "--cert",
            "custodians/c3.cer",
            "--quorum",
            "2",
            "--out",
            "sd.json",
        ]);
        let out = self.ok(&args);
        assert!(out.contains("Success"), "{out}");
    }

    fn ok(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.hsm(args);
        assert!(ok, "kubectl hsm {args:?} failed: {err}");
        out
    }

    fn stop(mut self) {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "the runner exited with {status}");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the runner did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            // The partitions would outlive a SIGKILLed runner: kill them first.
            for pid in self.partition_pids().values() {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client of the pool in `dir` (fresh connections) and its administrator token.
fn client(dir: &Path) -> (reqwest::Client, String, Vec<String>) {
    let pool: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("pool.json")).unwrap()).unwrap();
    let ca = std::fs::read(pool["caFile"].as_str().unwrap()).unwrap();
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let token = std::fs::read_to_string(pool["adminTokenFile"].as_str().unwrap()).unwrap();
    let endpoints = pool["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap().to_string())
        .collect();
    (http, token, endpoints)
}

/// Wait until `cond` holds (polling), failing with `what` after 60 s.
async fn until<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The runner supervises its partitions like a StatefulSet: a partition killed with SIGKILL
/// is restarted (new pid) and rejoins the group while the other two keep serving reads and
/// writes; the runner says so; only SIGTERM stops the pool.
#[tokio::test]
async fn a_killed_partition_is_restarted_while_the_others_keep_serving() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pool");
    let pool = Pool::spawn(&dir);
    let pool_json = &dir.join("pool.json");
    until("pool.json", || async move { pool_json.exists() }).await;
    let (http, token, endpoints) = client(&dir);
    let ready = |i: usize| {
        let (http, ep) = (http.clone(), endpoints[i].clone());
        async move {
            matches!(http.get(format!("{ep}/readyz")).send().await,
                Ok(r) if r.status() == reqwest::StatusCode::OK)
        }
    };
    // A role assignment written through partition `i` (a replicated write), or its status.
    let assign = |i: usize, name: String| {
        let (http, ep, token) = (http.clone(), endpoints[i].clone(), token.clone());
        async move {
            let body = serde_json::json!({"properties": {
                "roleDefinitionId": format!("Microsoft.KeyVault/providers/Microsoft.Authorization/roleDefinitions/{}", keystead_core::rbac::CRYPTO_USER_ROLE_ID),
                "principalId": format!("user-{name}"),
            }});
            http.put(format!(
                "{ep}/providers/Microsoft.Authorization/roleAssignments/{name}?api-version=7.5"
            ))
            .bearer_auth(&token)
            .json(&body)
            .send()
            .await
            .map(|r| r.status())
        }
    };
    let read = |i: usize, name: String| {
        let (http, ep, token) = (http.clone(), endpoints[i].clone(), token.clone());
        async move {
            http.get(format!(
                "{ep}/providers/Microsoft.Authorization/roleAssignments/{name}?api-version=7.5"
            ))
            .bearer_auth(&token)
            .send()
            .await
            .map(|r| r.status())
        }
    };
    let (ready, assign, read, p) = (&ready, &assign, &read, &pool);
    for i in 0..3 {
        until(&format!("partition {i} ready"), || ready(i)).await;
    }

    for victim in [0usize, 2] {
        let name = format!("p{victim}");
        let before = p.partition_pids();
        assert_eq!(before.len(), 3, "{before:?}");
        let old = before[&name];
        Command::new("kill")
            .args(["-KILL", &old.to_string()])
            .status()
            .unwrap();
        // The others keep serving: a write through each survivor commits (after an election
        // if the victim led) and is read back through the other.
        let (a, b) = match victim {
            0 => (1, 2),
            1 => (0, 2),
            _ => (0, 1),
        };
        let written = &uuid::Uuid::new_v4().to_string();
        let name = &name;
        until("a write through a surviving partition", || async move {
            assert!(
                pool_running(p),
                "the runner stopped when {name} was killed:\n{}",
                p.runner_log()
            );
            matches!(assign(a, written.clone()).await, Ok(s) if s == reqwest::StatusCode::CREATED)
        })
        .await;
        until(
            "the write read back through the other survivor",
            || async move {
                matches!(read(b, written.clone()).await, Ok(s) if s == reqwest::StatusCode::OK)
            },
        )
        .await;
        // The victim comes back as a new process and rejoins: it serves what was written
        // while it was down.
        until(&format!("{name} restarted with a new pid"), || async move {
            assert!(pool_running(p), "{}", p.runner_log());
            matches!(p.partition_pids().get(name), Some(&pid) if pid != old)
        })
        .await;
        until(&format!("{name} ready again"), || ready(victim)).await;
        until(
            &format!("{name} serves the write made while it was down"),
            || async move {
                matches!(read(victim, written.clone()).await, Ok(s) if s == reqwest::StatusCode::OK)
            },
        )
        .await;
        let log = p.runner_log();
        assert!(
            log.lines().any(|l| l.contains(name.as_str())
                && l.contains(&old.to_string())
                && l.contains("restart")),
            "the runner did not say it restarts {name}:\n{log}"
        );
    }
    pool.stop();
}

fn pool_running(pool: &Pool) -> bool {
    // `try_wait` needs `&mut`; /proc tells whether the runner still runs (a zombie counts
    // as stopped).
    std::fs::read_to_string(format!("/proc/{}/stat", pool.child.id()))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}

#[test]
fn local_pool_ceremony_keys_and_resume() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pool");
    let pool = Pool::start(&dir);
    let pool_json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("pool.json")).unwrap()).unwrap();
    assert!(
        pool_json["endpoints"][0]
            .as_str()
            .unwrap()
            .starts_with("https://127.0.0.1:")
    );
    for field in ["caFile", "adminTokenFile"] {
        assert!(Path::new(pool_json[field].as_str().unwrap()).is_absolute());
    }
    assert!(pool.ok(&["sd", "status"]).contains("Provisioned"));

    // The ceremony: three custodians, download with quorum 2.
    pool.ceremony(None);
    let rehearse = pool.ok(&[
        "sd",
        "rehearse",
        "--domain",
        "sd.json",
        "--key",
        "custodians/c1.key",
        "--key",
        "custodians/c3.key",
    ]);
    assert!(pool.ok(&["sd", "status"]).contains("Activated"));
    let fingerprint = pool.ok(&["-o", "json", "status"]);
    let fingerprint: serde_json::Value = serde_json::from_str(&fingerprint).unwrap();
    let fingerprint = fingerprint["securityDomainFingerprint"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(rehearse.contains(&fingerprint), "{rehearse}");

    // Keys: the administrator gives itself the Crypto User role, creates and uses a key.
    pool.ok(&[
        "role",
        "assignment",
        "create",
        "--role",
        "Managed HSM Crypto User",
        "--principal",
        "local-admin",
    ]);
    pool.ok(&["key", "create", "k1", "--kty", "EC", "--curve", "P-256"]);
    std::fs::write(dir.join("doc.txt"), b"sign me").unwrap();
    let sig = pool.ok(&[
        "key",
        "sign",
        "k1",
        "--alg",
        "ES256",
        "--data-file",
        "doc.txt",
    ]);
    let verify = pool.ok(&[
        "key",
        "verify",
        "k1",
        "--alg",
        "ES256",
        "--data-file",
        "doc.txt",
        "--signature",
        sig.trim(),
    ]);
    assert!(verify.contains("valid"));
    let (ok, _, err) = pool.hsm(&[
        "key",
        "verify",
        "k1",
        "--alg",
        "ES256",
        "--digest",
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "--signature",
        sig.trim(),
    ]);
    assert!(!ok, "a wrong digest must not verify");
    assert!(err.contains("does not verify"), "{err}");
    let list = pool.ok(&["key", "list"]);
    assert!(list.contains("k1"));
    // Another principal has no role: a clear refusal naming the action.
    let token = pool.ok(&["token", "--subject", "bob"]);
    std::fs::write(dir.join("bob.token"), token.trim()).unwrap();
    let (ok, _, err) = pool.hsm(&["--token-file", "bob.token", "key", "show", "k1"]);
    assert!(!ok);
    assert!(err.contains("keys/read/action"), "{err}");

    // Stop cleanly, start again: same pool, same domain, same key.
    pool.stop();
    let pool = Pool::start(&dir);
    // `status` answers without a read barrier (even without a majority); wait until the
    // restarted group serves a linearizable read, after which status reflects the log.
    pool.wait_ok(&["key", "show", "k1"]);
    let status: serde_json::Value =
        serde_json::from_str(&pool.ok(&["-o", "json", "status"])).unwrap();
    assert_eq!(status["activation"], "Activated");
    assert_eq!(status["securityDomainFingerprint"], fingerprint.as_str());
    let verify = pool.ok(&[
        "key",
        "verify",
        "k1",
        "--alg",
        "ES256",
        "--data-file",
        "doc.txt",
        "--signature",
        sig.trim(),
    ]);
    assert!(verify.contains("valid"));
    // The audit log of the partition verifies.
    let audit = dir.join("p0/data/audit.log");
    let out = pool.ok(&["audit", "verify", audit.to_str().unwrap()]);
    assert!(!out.is_empty());
    pool.stop();
}

/// A client behind a load-balanced Service reaches any partition: a backup job started on
/// one partition is reported by the others, and a recovery whose exchange key was made on
/// one partition is served and completed through the others.
#[test]
fn any_partition_answers_for_jobs_and_the_pending_exchange_key() {
    let tmp = tempfile::tempdir().unwrap();
    let a = Pool::start(&tmp.path().join("a"));
    let endpoints = |dir: &Path| -> Vec<String> {
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("pool.json")).unwrap()).unwrap();
        v["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e.as_str().unwrap().to_string())
            .collect()
    };
    let ea = endpoints(&a.dir);
    assert_eq!(ea.len(), 3);
    a.ceremony(Some(&ea[0]));
    let status: serde_json::Value = serde_json::from_str(&a.ok(&["-o", "json", "status"])).unwrap();
    let fingerprint = status["securityDomainFingerprint"]
        .as_str()
        .unwrap()
        .to_string();

    // A backup started on partition 0, polled on partitions 1 and 2.
    let store = tmp.path().join("store");
    let to = format!("file://{}", store.display());
    let job: serde_json::Value = serde_json::from_str(&a.ok(&[
        "--endpoint",
        &ea[0],
        "-o",
        "json",
        "backup",
        "start",
        "--to",
        &to,
    ]))
    .unwrap();
    let job_id = job["jobId"]
        .as_str()
        .expect("the job has an id")
        .to_string();
    for ep in &ea[1..] {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (ok, out, err) =
                a.hsm(&["--endpoint", ep, "-o", "json", "backup", "status", &job_id]);
            assert!(ok, "partition {ep} does not report job {job_id}: {err}");
            let v: serde_json::Value = serde_json::from_str(&out).unwrap();
            assert_eq!(v["jobId"], job_id.as_str());
            if v["status"] == "Succeeded" {
                break;
            }
            assert_eq!(v["status"], "InProgress", "{out}");
            assert!(
                Instant::now() < deadline,
                "the backup did not finish: {out}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let (ok, _, err) = a.hsm(&["--endpoint", &ea[2], "backup", "status", "0123456789abcdef"]);
    assert!(!ok, "an unknown job must not be found");
    assert!(err.contains("no job"), "{err}");

    // Recovery into a new pool B: the exchange key made on partition 0 is what partition 1
    // hands out too, and partition 2 completes the upload.
    let b = Pool::start(&tmp.path().join("b"));
    let eb = endpoints(&b.dir);
    b.ok(&[
        "--endpoint",
        &eb[0],
        "sd",
        "exchange-key",
        "--out",
        "ek0.pem",
    ]);
    b.ok(&[
        "--endpoint",
        &eb[1],
        "sd",
        "exchange-key",
        "--out",
        "ek1.pem",
    ]);
    let ek0 = std::fs::read_to_string(b.dir.join("ek0.pem")).unwrap();
    let ek1 = std::fs::read_to_string(b.dir.join("ek1.pem")).unwrap();
    assert_eq!(
        ek0, ek1,
        "partition 1 must hand out the pending exchange key, not a new one"
    );
    let domain = a.dir.join("sd.json");
    let c1 = a.dir.join("custodians/c1.key");
    let c3 = a.dir.join("custodians/c3.key");
    b.ok(&[
        "sd",
        "transfer",
        "--domain",
        domain.to_str().unwrap(),
        "--key",
        c1.to_str().unwrap(),
        "--key",
        c3.to_str().unwrap(),
        "--exchange-key",
        "ek0.pem",
        "--out",
        "blob.json",
    ]);
    let out = b.ok(&["--endpoint", &eb[2], "sd", "upload", "--blob", "blob.json"]);
    assert!(
        out.contains("Success") || out.contains("Activated"),
        "{out}"
    );
    for ep in &eb {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let v: serde_json::Value =
                serde_json::from_str(&b.ok(&["--endpoint", ep, "-o", "json", "status"])).unwrap();
            if v["activation"] == "Activated" && v["domainLoaded"] == true {
                assert_eq!(v["securityDomainFingerprint"], fingerprint.as_str());
                break;
            }
            assert!(Instant::now() < deadline, "{ep} did not activate: {v}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    // The exchange key was single use: a second upload finds none anywhere.
    let (ok, _, err) = b.hsm(&["--endpoint", &eb[1], "sd", "upload", "--blob", "blob.json"]);
    assert!(!ok);
    assert!(err.contains("already activated"), "{err}");
    b.stop();
    a.stop();
}
