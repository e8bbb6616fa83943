//! The README's first command on real processes: `keystead-partition local` starts a pool,
//! `kubectl hsm` runs the ceremony and key operations against it, SIGTERM stops it, and
//! running it again resumes the same pool.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
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
    fn start(dir: &Path) -> Pool {
        let _ = std::fs::remove_file(dir.join("pool.json"));
        let child = Command::new(partition_bin())
            .args(["local", "--dir"])
            .arg(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let pool = Pool {
            child,
            dir: dir.to_path_buf(),
        };
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
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
    for n in ["c1", "c2", "c3"] {
        pool.ok(&[
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
    let out = pool.ok(&[
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
    assert!(out.contains("Success"), "{out}");
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
