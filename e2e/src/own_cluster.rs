//! A dev cluster of a test's own (`scripts/dev-cluster.sh up DIR` on a free pod network,
//! `down` on drop, the API server's log printed when the test fails): the KMS test runs its
//! API server with an EncryptionConfiguration, the regions test runs two clusters.

use crate::Cluster;
use crate::kms::bin_dir;
use anyhow::bail;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A dev cluster of this test's own (`down` on drop; logs printed when the test fails).
pub struct OwnCluster {
    pub dir: PathBuf,
}

impl OwnCluster {
    fn script() -> PathBuf {
        Cluster::repo_root().join("scripts/dev-cluster.sh")
    }

    /// `dev-cluster.sh up DIR` with `env` added (on a network no other cluster here uses).
    pub fn up(dir: &Path, env: &[(&str, &OsStr)]) -> anyhow::Result<OwnCluster> {
        Self::up_on(dir, env, free_dev_nets(1)[0])
    }

    /// Two clusters started side by side, on two different free networks.
    pub fn up_two(dirs: [&Path; 2]) -> anyhow::Result<[OwnCluster; 2]> {
        let nets = free_dev_nets(2);
        let (a, b) = std::thread::scope(|s| {
            let a = s.spawn(|| Self::up_on(dirs[0], &[], nets[0]));
            let b = s.spawn(|| Self::up_on(dirs[1], &[], nets[1]));
            (a.join(), b.join())
        });
        let a = a.map_err(|_| anyhow::anyhow!("starting the first cluster panicked"))?;
        let b = b.map_err(|_| anyhow::anyhow!("starting the second cluster panicked"))?;
        Ok([a?, b?])
    }

    fn up_on(dir: &Path, env: &[(&str, &OsStr)], net: u8) -> anyhow::Result<OwnCluster> {
        let out = Command::new("bash")
            .arg(Self::script())
            .arg("up")
            .arg(dir)
            .env("KEYSTEAD_BIN_DIR", bin_dir())
            .envs(env.iter().copied())
            .env("KEYSTEAD_DEV_NET", net.to_string())
            .output()?;
        let cluster = OwnCluster {
            dir: dir.to_path_buf(),
        };
        if !out.status.success() {
            bail!(
                "dev-cluster.sh up failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(cluster)
    }

    pub fn restart_apiserver(&self) -> anyhow::Result<()> {
        let mut cmd = Command::new("bash");
        cmd.arg(Self::script())
            .arg("restart-apiserver")
            .arg(&self.dir);
        crate::output_of(cmd, "dev-cluster.sh restart-apiserver").map(|_| ())
    }

    pub fn apiserver_log_tail(&self) -> String {
        let text =
            std::fs::read_to_string(self.dir.join("logs/kube-apiserver.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for OwnCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- kube-apiserver log (tail)\n{}",
                self.apiserver_log_tail()
            );
        }
        self.down();
    }
}

impl OwnCluster {
    /// `dev-cluster.sh down DIR` (the drop does it, again harmlessly when done before).
    pub fn down(&self) {
        let _ = Command::new("bash")
            .arg(Self::script())
            .arg("down")
            .arg(&self.dir)
            .output();
        // A pod process the node agent could not stop (it lost its API server, say) still
        // runs in a pod directory of this cluster: stop it too.
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let in_cluster = std::fs::read_link(entry.path().join("cwd"))
                .is_ok_and(|cwd| cwd.starts_with(&self.dir));
            let pid = entry.file_name().to_string_lossy().into_owned();
            if in_cluster && pid.bytes().all(|b| b.is_ascii_digit()) {
                let _ = Command::new("kill").args(["-KILL", &pid]).status();
            }
        }
    }
}

/// `n` different `KEYSTEAD_DEV_NET`s no other cluster on this machine uses: random, avoiding
/// the pod networks already on the loopback interface.
fn free_dev_nets(n: usize) -> Vec<u8> {
    let addrs = Command::new("ip")
        .args(["-4", "-o", "addr", "show", "dev", "lo"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let seed = uuid::Uuid::new_v4().as_u128();
    let mut free: Vec<u8> = (0..64u128)
        .map(|i| ((seed + i) % 64) as u8)
        .filter(|n| !addrs.contains(&format!(" 100.{}.", 64 + n)))
        .take(n)
        .collect();
    while free.len() < n {
        free.push(((seed + free.len() as u128) % 64) as u8);
    }
    free
}
