//! What the KMS plugin tests share: a local pool of three partitions (`keystead-partition
//! local`) activated with `kubectl hsm`, a key-encryption key with a least-privileged
//! principal for the plugin, and the plugin itself (`keystead-kms-plugin`) on a unix socket —
//! real processes, stopped on drop. Binaries come from `KEYSTEAD_BIN_DIR`, or the directory
//! of the test executable's target profile (`cargo build --workspace --bins` builds them).

use crate::steps::eventually;
use anyhow::{Context, bail};
use keystead_kms_plugin::proto::KeyManagementServiceClient;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The principal the plugin authenticates as (Managed HSM Crypto User on its key only).
pub const PLUGIN_PRINCIPAL: &str = "kms-plugin";

/// Where the workspace binaries are: `KEYSTEAD_BIN_DIR`, else `<target>/<profile>` (the
/// test executable is in `<target>/<profile>/deps/`).
pub fn bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("KEYSTEAD_BIN_DIR") {
        return PathBuf::from(d);
    }
    let exe = std::env::current_exe().expect("the test executable's path");
    exe.parent()
        .and_then(Path::parent)
        .expect("<target>/<profile>/deps/<test>")
        .to_path_buf()
}

/// A workspace binary, or an error naming the command that builds it.
pub fn bin(name: &str) -> anyhow::Result<PathBuf> {
    let p = bin_dir().join(name);
    if !p.is_file() {
        bail!(
            "{} is missing: build the binaries first (cargo build --workspace --bins; scripts/test.sh does)",
            p.display()
        );
    }
    Ok(p)
}

/// A local pool (three partitions under the runner), activated, with one key for the plugin.
pub struct LocalPool {
    runner: Child,
    pub dir: PathBuf,
    /// The key-encryption key and its versions so far (oldest first).
    pub key: String,
    /// The plugin's token file (principal [`PLUGIN_PRINCIPAL`]).
    pub token_file: PathBuf,
}

impl LocalPool {
    /// Start a pool in `dir`, run the Download ceremony, create key `key` (`kty` oct or RSA;
    /// wrapKey/unwrapKey only) and give [`PLUGIN_PRINCIPAL`] the Crypto User role on it.
    pub async fn start(dir: &Path, key: &str, kty: &str) -> anyhow::Result<LocalPool> {
        std::fs::create_dir_all(dir)?;
        let log = std::fs::File::create(dir.join("runner.log"))?;
        let runner = Command::new(bin("keystead-partition")?)
            .args(["local", "--dir"])
            .arg(dir.join("pool"))
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot start keystead-partition local")?;
        let mut pool = LocalPool {
            runner,
            dir: dir.to_path_buf(),
            key: key.to_string(),
            token_file: dir.join("kms-plugin.token"),
        };
        eventually("the local pool answers", Duration::from_secs(60), || {
            let ok = pool.pool_file().exists() && pool.hsm(&["sd", "status"]).is_ok();
            async move { Ok(ok.then_some(())) }
        })
        .await
        .with_context(|| pool.runner_log())?;
        for c in ["c1", "c2", "c3"] {
            pool.hsm(&[
                "sd",
                "keygen",
                "--name",
                c,
                "--out-dir",
                "custodians",
                "--bits",
                "2048",
            ])?;
        }
        pool.hsm(&[
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
        ])?;
        // The administrator manages the key (as the README's first steps do); the plugin's
        // principal only wraps and unwraps with it.
        pool.grant_crypto_user("local-admin", "/")?;
        let mut create = vec!["key", "create", key, "--kty", kty, "--op", "wrapKey"];
        create.extend(["--op", "unwrapKey"]);
        if kty == "oct" {
            create.extend(["--size", "256"]);
        }
        pool.hsm(&create)?;
        pool.grant_crypto_user(PLUGIN_PRINCIPAL, &format!("/keys/{key}"))?;
        let token = pool.hsm(&[
            "token",
            "--subject",
            PLUGIN_PRINCIPAL,
            "--ttl-minutes",
            "600",
        ])?;
        std::fs::write(&pool.token_file, token.trim())?;
        pool.runner_log_ok()?;
        Ok(pool)
    }

    pub fn pool_file(&self) -> PathBuf {
        self.dir.join("pool/pool.json")
    }

    pub fn pool(&self) -> anyhow::Result<keystead_core::pool_file::PoolFile> {
        Ok(keystead_core::pool_file::PoolFile::load(&self.pool_file())?)
    }

    /// `kubectl hsm --pool DIR/pool/pool.json ARGS` in `DIR`; its stdout.
    pub fn hsm(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut cmd = Command::new(bin("kubectl-hsm")?);
        cmd.arg("--pool")
            .arg(self.pool_file())
            .args(args)
            .current_dir(&self.dir);
        crate::output_of(cmd, &format!("kubectl hsm {}", args.join(" ")))
    }

    /// Give `principal` the Managed HSM Crypto User role at `scope`.
    pub fn grant_crypto_user(&self, principal: &str, scope: &str) -> anyhow::Result<()> {
        let role = "Managed HSM Crypto User";
        let args = [
            "role",
            "assignment",
            "create",
            "--role",
            role,
            "--principal",
            principal,
        ];
        self.hsm(&[&args[..], &["--scope", scope]].concat())?;
        Ok(())
    }

    /// Rotate the key; the new version.
    pub fn rotate(&self) -> anyhow::Result<String> {
        self.hsm(&["key", "rotate", &self.key])?;
        self.current_version()
    }

    /// The key's current version (the last segment of its `kid`).
    pub fn current_version(&self) -> anyhow::Result<String> {
        let out = self.hsm(&["-o", "json", "key", "show", &self.key])?;
        let v: serde_json::Value = serde_json::from_str(&out)?;
        let kid = v["key"]["kid"].as_str().context("key show: no kid")?;
        Ok(kid.rsplit('/').next().unwrap_or_default().to_string())
    }

    fn runner_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("runner.log")).unwrap_or_default()
    }

    fn runner_log_ok(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.runner.try_wait()? {
            bail!("the pool runner exited ({status}): {}", self.runner_log());
        }
        Ok(())
    }

    /// The partitions' pids by name (`p0`..`p2`).
    pub fn partition_pids(&self) -> BTreeMap<String, u32> {
        keystead_core::pool_file::partition_pids(self.runner.id())
    }

    /// Send `signal` (`-STOP`, `-CONT`, `-KILL`) to the named partitions.
    pub fn signal(&self, names: &[&str], signal: &str) -> anyhow::Result<()> {
        let pids = self.partition_pids();
        for n in names {
            let pid = pids
                .get(*n)
                .with_context(|| format!("no partition {n}: {pids:?}"))?;
            let st = Command::new("kill")
                .args([signal, &pid.to_string()])
                .status()?;
            anyhow::ensure!(st.success(), "kill {signal} {pid} ({n}) failed");
        }
        Ok(())
    }
}

impl Drop for LocalPool {
    fn drop(&mut self) {
        // Stopped (SIGSTOP) partitions would not act on SIGTERM: kill them, then the runner.
        for pid in self.partition_pids().values() {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        let _ = self.runner.kill();
        let _ = self.runner.wait();
    }
}

/// The plugin process on a unix socket; killed on drop.
pub struct Plugin {
    child: Child,
    pub socket: PathBuf,
    pub log: PathBuf,
}

impl Plugin {
    /// `keystead-kms-plugin --socket DIR/<name>.sock --key KEY` and `extra` flags; waits until
    /// the socket accepts connections.
    pub async fn start(
        dir: &Path,
        name: &str,
        key: &str,
        extra: &[&str],
    ) -> anyhow::Result<Plugin> {
        let socket = dir.join(format!("{name}.sock"));
        let log = dir.join(format!("{name}.log"));
        let child = Command::new(bin("keystead-kms-plugin")?)
            .arg("--socket")
            .arg(&socket)
            .args(["--key", key])
            .args(extra)
            .env("KEYSTEAD_LOG", "info,keystead_kms_plugin=debug")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("cannot start keystead-kms-plugin")?;
        let mut plugin = Plugin { child, socket, log };
        let s = plugin.socket.clone();
        eventually("the plugin's socket", Duration::from_secs(20), || {
            let s = s.clone();
            async move { Ok(tokio::net::UnixStream::connect(&s).await.ok().map(|_| ())) }
        })
        .await
        .with_context(|| plugin.log_text())?;
        if let Some(st) = plugin.child.try_wait()? {
            bail!("the plugin exited ({st}): {}", plugin.log_text());
        }
        Ok(plugin)
    }

    /// The plugin's flags for the pool of `pool` (every endpoint, its CA, the plugin's token).
    pub fn pool_args(pool: &LocalPool) -> anyhow::Result<Vec<String>> {
        let p = pool.pool()?;
        let mut args = Vec::new();
        for e in &p.endpoints {
            args.extend(["--endpoint".to_string(), e.clone()]);
        }
        args.extend(["--ca-file".into(), p.ca_file.display().to_string()]);
        args.extend(["--token-file".into(), pool.token_file.display().to_string()]);
        Ok(args)
    }

    pub async fn client(&self) -> anyhow::Result<KeyManagementServiceClient> {
        Ok(KeyManagementServiceClient::connect_unix(&self.socket).await?)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// True while the process runs (it never exits on bad input).
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Plugin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
