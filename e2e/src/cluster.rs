//! The cluster a test runs against: the dev cluster of `scripts/dev-cluster.sh` (a real
//! control plane whose pods are local processes of the node agent; `KEYSTEAD_DEV_CLUSTER`
//! names its directory) or, for the kind suite, the cluster of the current kubeconfig.

use anyhow::{Context, bail};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Directory of a running dev cluster (`scripts/dev-cluster.sh up DIR`).
pub const DEV_CLUSTER_ENV: &str = "KEYSTEAD_DEV_CLUSTER";

#[derive(Clone)]
pub struct Cluster {
    pub client: kube::Client,
    /// A client that does not retry 429 answers (kube's default does, which hides the
    /// eviction API's refusals).
    pub no_retry: kube::Client,
    pub kubeconfig: Option<PathBuf>,
    /// The dev cluster's directory; `None` on kind.
    pub dev: Option<PathBuf>,
    /// The dev cluster's settings (`DIR/cluster.env`).
    pub settings: BTreeMap<String, String>,
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("e2e/ has a parent")
        .to_path_buf()
}

impl Cluster {
    /// The dev cluster named by `KEYSTEAD_DEV_CLUSTER`; a test that needs it fails with the
    /// way to start one when it is not set.
    pub async fn dev() -> anyhow::Result<Cluster> {
        let Some(dir) = std::env::var_os(DEV_CLUSTER_ENV).map(PathBuf::from) else {
            bail!(
                "{DEV_CLUSTER_ENV} is not set: these tests run on a real control plane. Run \
                 ./scripts/test.sh (it starts one), or `scripts/dev-cluster.sh up DIR` and \
                 export {DEV_CLUSTER_ENV}=DIR"
            );
        };
        Self::dev_at(dir).await
    }

    /// The dev cluster in `dir` (a test that starts its own cluster).
    pub async fn dev_at(dir: PathBuf) -> anyhow::Result<Cluster> {
        let text = std::fs::read_to_string(dir.join("cluster.env"))
            .with_context(|| format!("{} is not a dev cluster directory", dir.display()))?;
        let settings: BTreeMap<String, String> = text
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let kubeconfig = dir.join("kubeconfig");
        let config = kube::Config::from_custom_kubeconfig(
            kube::config::Kubeconfig::read_from(&kubeconfig)?,
            &Default::default(),
        )
        .await?;
        let mut once = config.clone();
        once.default_retry = false;
        Ok(Cluster {
            client: kube::Client::try_from(config)?,
            no_retry: kube::Client::try_from(once)?,
            kubeconfig: Some(kubeconfig),
            dev: Some(dir),
            settings,
        })
    }

    /// The cluster of the current kubeconfig (the kind suite).
    pub async fn current() -> anyhow::Result<Cluster> {
        let mut config = kube::Config::infer()
            .await
            .context("no kubeconfig: run e2e/run.sh, which creates the kind cluster")?;
        let client = kube::Client::try_from(config.clone())?;
        config.default_retry = false;
        Ok(Cluster {
            client,
            no_retry: kube::Client::try_from(config)?,
            kubeconfig: None,
            dev: None,
            settings: BTreeMap::new(),
        })
    }

    /// `kubectl` against this cluster (the pinned one in `.tools/bin` when present).
    pub fn kubectl(&self) -> Command {
        let pinned = repo_root().join(".tools/bin/kubectl");
        let mut cmd = Command::new(if pinned.is_file() {
            pinned.into_os_string()
        } else {
            "kubectl".into()
        });
        if let Some(k) = &self.kubeconfig {
            cmd.arg("--kubeconfig").arg(k);
        }
        cmd
    }

    /// Run `kubectl ARGS`, failing with its output when it fails.
    pub fn kubectl_ok(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut cmd = self.kubectl();
        cmd.args(args);
        crate::output_of(cmd, &format!("kubectl {}", args.join(" ")))
    }

    /// The node agent's directory of a pod (dev cluster): `pid`, `container.log`, volumes.
    pub fn pod_dir(&self, ns: &str, pod: &str, uid: &str) -> Option<PathBuf> {
        let dir = self
            .dev
            .as_ref()?
            .join("agent/pods")
            .join(format!("{ns}_{pod}_{uid}"));
        dir.is_dir().then_some(dir)
    }

    /// The last `lines` lines of a container's log (dev cluster: the node agent's file; kind:
    /// `kubectl logs`).
    pub fn container_log(&self, ns: &str, pod: &str, uid: &str, lines: usize) -> String {
        if self.dev.is_some() {
            let Some(dir) = self.pod_dir(ns, pod, uid) else {
                return String::new();
            };
            let text = std::fs::read_to_string(dir.join("container.log")).unwrap_or_default();
            let all: Vec<&str> = text.lines().collect();
            return all[all.len().saturating_sub(lines)..].join("\n");
        }
        self.kubectl_ok(&["logs", "-n", ns, pod, &format!("--tail={lines}")])
            .unwrap_or_default()
    }

    /// SIGKILL the container of a pod (a crash): dev cluster only.
    pub fn kill_container(&self, ns: &str, pod: &str, uid: &str) -> anyhow::Result<()> {
        self.signal_container(ns, pod, uid, "-KILL")
    }

    /// Send `signal` (`-KILL`, `-STOP`, `-CONT`) to the container of a pod: dev cluster only.
    pub fn signal_container(
        &self,
        ns: &str,
        pod: &str,
        uid: &str,
        signal: &str,
    ) -> anyhow::Result<()> {
        let dir = self
            .pod_dir(ns, pod, uid)
            .with_context(|| format!("no node agent directory for {ns}/{pod}"))?;
        let pid = std::fs::read_to_string(dir.join("pid"))?;
        let status = Command::new("kill").args([signal, pid.trim()]).status()?;
        if !status.success() {
            bail!("kill {signal} {pid} failed");
        }
        Ok(())
    }

    /// The API server's audit log (dev cluster).
    pub fn audit_log(&self) -> Option<PathBuf> {
        self.settings.get("AUDIT_LOG").map(PathBuf::from)
    }

    /// The Python interpreter of the repository's venv (Azure SDK packages).
    pub fn python() -> PathBuf {
        repo_root().join(".venv/bin/python")
    }

    pub fn repo_root() -> PathBuf {
        repo_root()
    }
}
