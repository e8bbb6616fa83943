//! Helpers of the end-to-end suites (see `e2e/README.md`): the cluster (the dev cluster's
//! real control plane, or kind), a namespace per test (kept and dumped on failure), waits on
//! conditions with deadlines, `kubectl` / `kubectl hsm` runners, a port-forward to a pool, and
//! a local pool with the KMS plugin (`kms`).

pub mod cluster;
pub mod gate;
pub mod kms;
pub mod own_cluster;
pub mod pool;
pub mod steps;

pub use cluster::Cluster;

use anyhow::{Context, bail};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{DeleteParams, PostParams};
use kube::runtime::wait::await_condition;
use kube::{Api, Client, Resource};
use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Set `KEYSTEAD_E2E_KEEP=1` to keep every test namespace (they are always kept on failure).
pub const KEEP_ENV: &str = "KEYSTEAD_E2E_KEEP";

/// One test's namespace. Deleted when the test passes; kept, with a state dump, when it fails.
pub struct TestNamespace {
    pub name: String,
    pub client: Client,
    pub cluster: Cluster,
    passed: bool,
}

impl TestNamespace {
    /// A namespace in the cluster of the current kubeconfig (the kind suite).
    pub async fn create(prefix: &str) -> anyhow::Result<Self> {
        Self::create_in(&Cluster::current().await?, prefix).await
    }

    /// A namespace in `cluster`.
    pub async fn create_in(cluster: &Cluster, prefix: &str) -> anyhow::Result<Self> {
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        Self::create_named_in(cluster, &format!("e2e-{prefix}-{}", &suffix[..6])).await
    }

    /// The namespace `name` in `cluster` (the same name in two clusters: the regions test,
    /// whose service-account principals must be the same in both).
    pub async fn create_named_in(cluster: &Cluster, name: &str) -> anyhow::Result<Self> {
        let client = cluster.client.clone();
        let name = name.to_string();
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "labels": {"keystead.io/e2e": "true"}}
        }))?;
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await?;
        Ok(Self {
            name,
            client,
            cluster: cluster.clone(),
            passed: false,
        })
    }

    /// Delete the namespace and wait until it is gone (nothing in it holds it back), then
    /// mark the test as passed.
    pub async fn delete_and_wait(self, limit: Duration) -> anyhow::Result<()> {
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        namespaces
            .delete(&self.name, &DeleteParams::default())
            .await?;
        wait_deleted(&namespaces, &self.name, limit)
            .await
            .with_context(|| format!("namespace {} is not deleted", self.name))?;
        self.pass();
        Ok(())
    }

    /// Mark the test as passed: the namespace is deleted on drop.
    pub fn pass(mut self) {
        self.passed = true;
    }

    pub fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.client.clone(), &self.name)
    }

    /// Print what a human needs to debug a failure: objects, events, partition and operator logs.
    pub fn dump(&self) {
        eprintln!("=== state of namespace {} ===", self.name);
        let ns = self.name.as_str();
        for args in [
            vec![
                "get",
                "managedhsm,securitydomain,statefulset,pod,pvc,svc,secret,configmap",
                "-n",
                ns,
                "-o",
                "wide",
            ],
            vec!["get", "managedhsm,securitydomain", "-n", ns, "-o", "yaml"],
            vec!["get", "events", "-n", ns, "--sort-by=.lastTimestamp"],
            vec!["describe", "pods", "-n", ns],
        ] {
            match self.cluster.kubectl().args(&args).output() {
                Ok(o) => eprintln!(
                    "$ kubectl {}\n{}{}",
                    args.join(" "),
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                ),
                Err(e) => eprintln!("kubectl {}: {e}", args.join(" ")),
            }
        }
        for (namespace, selector) in [
            (ns, "app.kubernetes.io/name=keystead-partition"),
            ("keystead-system", "app.kubernetes.io/name=keystead"),
        ] {
            let pods = self
                .cluster
                .kubectl_ok(&[
                    "get",
                    "pods",
                    "-n",
                    namespace,
                    "-l",
                    selector,
                    "-o",
                    "jsonpath={range .items[*]}{.metadata.name} {.metadata.uid}{\"\\n\"}{end}",
                ])
                .unwrap_or_default();
            for line in pods.lines() {
                if let Some((pod, uid)) = line.split_once(' ') {
                    eprintln!(
                        "--- log of {namespace}/{pod}\n{}",
                        self.cluster.container_log(namespace, pod, uid, 80)
                    );
                }
            }
        }
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        let keep = std::env::var(KEEP_ENV).is_ok_and(|v| v == "1");
        if !self.passed {
            self.dump();
            eprintln!("namespace {} kept for inspection", self.name);
            return;
        }
        if keep {
            return;
        }
        let _ = self
            .cluster
            .kubectl()
            .args(["delete", "namespace", &self.name, "--wait=false"])
            .status();
    }
}

/// Wait until `cond` holds for the named object, or fail after `deadline` with the last
/// state seen.
pub async fn wait_for<K>(
    api: &Api<K>,
    name: &str,
    what: &str,
    deadline: Duration,
    cond: impl Fn(&K) -> bool,
) -> anyhow::Result<K>
where
    K: Resource + Clone + Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
{
    let fut = await_condition(api.clone(), name, move |o: Option<&K>| o.is_some_and(&cond));
    match tokio::time::timeout(deadline, fut).await {
        Ok(Ok(Some(obj))) => Ok(obj),
        Ok(Ok(None)) => bail!("{name} disappeared while waiting for {what}"),
        Ok(Err(e)) => bail!("watching {name} for {what}: {e}"),
        Err(_) => {
            let last = api.get_opt(name).await.ok().flatten();
            bail!("{name}: {what} not reached within {deadline:?}; last seen: {last:#?}")
        }
    }
}

/// Wait until an object is gone.
pub async fn wait_deleted<K>(api: &Api<K>, name: &str, deadline: Duration) -> anyhow::Result<()>
where
    K: Resource + Clone + Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
{
    let fut = await_condition(api.clone(), name, |o: Option<&K>| o.is_none());
    tokio::time::timeout(deadline, fut)
        .await
        .map_err(|_| anyhow::anyhow!("{name} still exists after {deadline:?}"))??;
    Ok(())
}

/// True when a condition of `type_` has status True in a `status.conditions` list.
pub fn condition_true(
    conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    type_: &str,
) -> bool {
    conditions
        .iter()
        .any(|c| c.type_ == type_ && c.status == "True")
}

/// Run a command, failing with its output when it fails.
pub fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let mut cmd = Command::new(program);
    cmd.args(args);
    output_of(cmd, &format!("{program} {}", args.join(" ")))
}

/// The stdout of a finished command, or an error with everything it printed.
pub fn output_of(mut cmd: Command, what: &str) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("cannot run {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The `kubectl-hsm` binary (built by e2e/run.sh; override with `KUBECTL_HSM`).
pub fn kubectl_hsm_path() -> PathBuf {
    std::env::var_os("KUBECTL_HSM")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/kubectl-hsm")
        })
}

/// `kubectl port-forward` to a Service; killed on drop.
pub struct PortForward {
    child: Child,
    pub port: u16,
}

impl PortForward {
    pub fn start(
        namespace: &str,
        service: &str,
        remote_port: u16,
        deadline: Duration,
    ) -> anyhow::Result<Self> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        drop(listener);
        let child = Command::new("kubectl")
            .args([
                "port-forward",
                "-n",
                namespace,
                &format!("svc/{service}"),
                &format!("{port}:{remote_port}"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start kubectl port-forward")?;
        let pf = Self { child, port };
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if start.elapsed() > deadline {
                bail!("port-forward to {namespace}/{service} not up within {deadline:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(pf)
    }

    pub fn endpoint(&self) -> String {
        format!("https://localhost:{}", self.port)
    }
}

impl Drop for PortForward {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Delete an object, ignoring "not found".
pub async fn delete_ignore_missing<K>(api: &Api<K>, name: &str) -> anyhow::Result<()>
where
    K: Resource + Clone + Debug + serde::de::DeserializeOwned,
{
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}
