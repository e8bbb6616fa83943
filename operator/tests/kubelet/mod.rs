//! The cluster around the in-repo API emulator, for operator-in-the-loop tests with REAL
//! partitions. The harness plays what a cluster runs besides the API objects:
//!
//! - the **API server's service-account issuer**: an ES256 issuer with OIDC discovery over
//!   HTTPS (its own CA, the `ca.crt` pods get); TokenRequests and projected tokens are JWTs
//!   it signs (`sub = system:serviceaccount:<ns>:<sa>`, bound to the pod for pod tokens,
//!   claim `kubernetes.io`), so the partitions validate real tokens through discovery;
//! - the **StatefulSet controller**: creates each ordinal's PVCs (`Bound`) and Pod from the
//!   current template (`OnDelete`: a deleted pod comes back with the template of that moment);
//! - the **kubelet**: materialises a pod's volumes (ConfigMaps, Secrets, projected
//!   sources incl. pod-bound service-account tokens, emptyDirs, PVC directories, the
//!   automounted service-account volume) in a temp dir, starts the container's command as a
//!   real `keystead-partition` process, probes its readiness endpoint and reports the pod
//!   `Running`/`Ready` with its `podIP`, restarts a crashed container, and on deletion stops
//!   the process (SIGTERM, then SIGKILL after the grace period) before the pod goes;
//! - **cluster DNS** for the partitions: each pod gets its own loopback address
//!   (127.A.B.n, A/B random per cluster, so parallel tests never share an address) and keeps
//!   it across re-creation; the StatefulSet records `<pod>.<service>.<ns>.svc[.cluster.local]`
//!   are handed to the partitions as `hostAddresses` (the partition's static name → address
//!   overrides), and the operator reaches pods by `status.podIP` itself.
//!
//! What a process cannot get without namespaces is emulated by rewriting: container paths
//! in the args and in JSON files of ConfigMap volumes are mapped to the pod's directories,
//! and `0.0.0.0:<port>` becomes `<podIP>:<port>` (the pod's network namespace). Every image
//! runs the `keystead-partition` binary built next to this test.
//!
//! Not played: scheduling, nodes, resource limits, liveness-probe kills, token renewal
//! (tests are far shorter than the projected tokens' lifetime), the PVC protection finalizer.

#![allow(dead_code)]

pub mod pool;

use crate::emulator::Emulator;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use keystead_partition::auth::{AuthConfig, LocalIssuer, TokenValidator};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Audience of the tokens the kubelet mounts for the API server (`automountServiceAccountToken`).
pub const API_AUDIENCE: &str = "https://kubernetes.default.svc.cluster.local";
/// Finalizer the kubelet puts on pods it runs, so a deleted pod stays (terminating) until its
/// process has stopped — the graceful termination of a real kubelet.
const KUBELET_FINALIZER: &str = "test.keystead.io/kubelet";
const SA_MOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
const STS: &str = "apps/v1/statefulsets";
const PODS: &str = "v1/pods";
const PVCS: &str = "v1/persistentvolumeclaims";
/// Back-off before a crashed container is restarted.
const RESTART_BACKOFF: Duration = Duration::from_secs(1);
/// How long a stopped container gets between SIGTERM and SIGKILL.
const GRACE: Duration = Duration::from_secs(10);

/// The `keystead-partition` binary next to this test's operator binary (both in
/// `target/<profile>/`). `cargo nextest run --workspace` (scripts/test.sh) builds every
/// workspace binary first; with `-p keystead-operator` alone it may be missing or stale.
pub fn partition_binary() -> PathBuf {
    let dir = Path::new(env!("CARGO_BIN_EXE_keystead-operator"))
        .parent()
        .expect("the operator binary has a directory")
        .to_path_buf();
    let bin = dir.join("keystead-partition");
    let hint = "build it with `cargo build -p keystead-partition` (scripts/test.sh and `cargo nextest run --workspace` build it)";
    let Ok(meta) = std::fs::metadata(&bin) else {
        panic!("{} does not exist: {hint}", bin.display());
    };
    // A source file of the partition (or of keystead-core) changed after the binary was built.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let newest_source = ["partition-image/src", "core/src"]
        .iter()
        .filter_map(|d| newest_mtime(&root.join(d)))
        .max();
    if let (Some(src), Ok(built)) = (newest_source, meta.modified())
        && src > built
    {
        panic!(
            "{} is older than the partition's sources: {hint}",
            bin.display()
        );
    }
    bin
}

fn newest_mtime(dir: &Path) -> Option<std::time::SystemTime> {
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter_map(|e| {
            let m = e.metadata().ok()?;
            if m.is_dir() {
                newest_mtime(&e.path())
            } else {
                m.modified().ok()
            }
        })
        .max()
}

/// Aborts a task when dropped.
pub struct Task(tokio::task::JoinHandle<()>);

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

// ---------------------------------------------------------------------------------------
// The API server's service-account issuer
// ---------------------------------------------------------------------------------------

/// Service-account tokens: an ES256 issuer with OIDC discovery over HTTPS.
pub struct SaIssuer {
    issuer: LocalIssuer,
    /// The issuer URL (`https://127.0.0.1:<port>`): `--service-account-issuer`.
    pub url: String,
    /// CA of the discovery endpoint (what pods get as `ca.crt`).
    pub ca_pem: String,
    validator: TokenValidator,
    _server: Task,
}

impl SaIssuer {
    pub async fn start(dir: &Path) -> anyhow::Result<Arc<SaIssuer>> {
        let ca = keystead_partition::pki::generate_ca("emulated API server CA", 2)?;
        let leaf = keystead_partition::pki::issue_leaf(
            &ca,
            "apiserver",
            &["localhost".to_string()],
            &[IpAddr::V4(Ipv4Addr::LOCALHOST)],
            2,
        )?;
        let tls = keystead_partition::tls::server_config(&leaf.cert_pem, &leaf.key_pem, None)?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("https://127.0.0.1:{}", listener.local_addr()?.port());
        let issuer = LocalIssuer::load_or_create(&dir.join("sa-issuer"), &url)?;
        // Discovery needs a valid token of this issuer (like the API server's
        // `system:service-account-issuer-discovery` binding for service accounts).
        let validator = TokenValidator::new(AuthConfig {
            audience: API_AUDIENCE.to_string(),
            issuers: vec![issuer.issuer_config()],
            leeway_secs: 5,
        });
        let discovery = issuer.openid_configuration(&format!("{url}/openid/v1/jwks"));
        let jwks = serde_json::to_value(issuer.jwks())?;
        let v = validator.clone();
        let router = axum::Router::new()
            .route(
                "/.well-known/openid-configuration",
                axum::routing::get(move |h: axum::http::HeaderMap| {
                    let (v, body) = (v.clone(), discovery.clone());
                    async move { authorized(&v, &h, body).await }
                }),
            )
            .route(
                "/openid/v1/jwks",
                axum::routing::get({
                    let v = validator.clone();
                    move |h: axum::http::HeaderMap| {
                        let (v, body) = (v.clone(), jwks.clone());
                        async move { authorized(&v, &h, body).await }
                    }
                }),
            );
        let server = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (acceptor, router) = (acceptor.clone(), router.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(
                        hyper_util::rt::TokioIo::new(tls),
                        hyper_util::service::TowerToHyperService::new(router),
                    )
                    .await;
                });
            }
        });
        Ok(Arc::new(SaIssuer {
            issuer,
            url,
            ca_pem: ca.cert_pem,
            validator,
            _server: Task(server),
        }))
    }

    /// A service-account token (`sub = system:serviceaccount:<ns>:<sa>`), bound to a pod
    /// (`(name, uid)`) when given.
    pub fn mint(
        &self,
        ns: &str,
        sa: &str,
        audiences: &[String],
        ttl: Duration,
        pod: Option<(&str, &str)>,
    ) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let mut k8s = json!({"namespace": ns, "serviceaccount": {"name": sa, "uid": uuid::Uuid::new_v4().to_string()}});
        if let Some((name, uid)) = pod {
            k8s["pod"] = json!({"name": name, "uid": uid});
        }
        self.issuer
            .sign_claims(&json!({
                "iss": self.issuer.issuer(),
                "sub": format!("system:serviceaccount:{ns}:{sa}"),
                "aud": audiences,
                "iat": now, "nbf": now, "exp": now + ttl.as_secs().max(1),
                "jti": uuid::Uuid::new_v4().to_string(),
                "kubernetes.io": k8s,
            }))
            .expect("the issuer signs")
    }
}

async fn authorized(
    v: &TokenValidator,
    headers: &axum::http::HeaderMap,
    body: Value,
) -> (axum::http::StatusCode, axum::Json<Value>) {
    let ok = match keystead_partition::auth::bearer_token(headers) {
        Some(t) => v.validate(t).await.is_ok(),
        None => false,
    };
    if ok {
        (axum::http::StatusCode::OK, axum::Json(body))
    } else {
        (
            axum::http::StatusCode::UNAUTHORIZED,
            axum::Json(json!({"message": "a service-account token is required"})),
        )
    }
}

// ---------------------------------------------------------------------------------------
// The cluster: emulator + issuer + StatefulSet controller + kubelet
// ---------------------------------------------------------------------------------------

/// One running container (a pod's process).
struct Run {
    uid: String,
    dir: PathBuf,
    image: String,
    child: Option<tokio::process::Child>,
    ready: bool,
    restarts: u32,
    /// Killed by the test and kept down (a lost node, a crash loop) until the pod goes.
    held_down: bool,
    restart_at: Option<Instant>,
    stopping_since: Option<Instant>,
    next_probe: Instant,
    probe_failures: u32,
    /// What was last written to the pod's status (ready, restarts).
    reported: Option<(bool, u32)>,
}

#[derive(Default)]
struct State {
    runs: HashMap<String, Run>,
    ips: HashMap<String, IpAddr>,
    next_host: u8,
    /// What happened, in order: `start ns/pod image`, `stop ns/pod`, `ready ns/pod`, ...
    history: Vec<String>,
    /// Lowest number of Ready pods per StatefulSet seen once it had all its replicas Ready.
    min_ready: HashMap<String, usize>,
}

pub struct Cluster {
    // Dropped first: the API server and the kubelet stop before their directory goes.
    _tasks: Vec<Task>,
    pub emu: Emulator,
    /// The API server (emulator) URL.
    pub api_url: String,
    pub client: kube::Client,
    pub issuer: Arc<SaIssuer>,
    pub kubeconfig: PathBuf,
    state: Arc<Mutex<State>>,
    net: [u8; 2],
    binary: PathBuf,
    dir: tempfile::TempDir,
}

fn key(ns: &str, name: &str) -> String {
    format!("{ns}/{name}")
}

impl Cluster {
    pub async fn start() -> Cluster {
        let binary = partition_binary();
        let dir = tempfile::tempdir().unwrap();
        let emu = Emulator::new();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = emu.router();
        let api = Task(tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        }));
        let issuer = SaIssuer::start(dir.path()).await.unwrap();
        let minter = issuer.clone();
        emu.set_token_minter(Arc::new(move |ns: &str, sa: &str, spec: &Value| {
            let audiences: Vec<String> = spec["audiences"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            let audiences = if audiences.is_empty() {
                vec![API_AUDIENCE.to_string()]
            } else {
                audiences
            };
            let ttl = spec["expirationSeconds"].as_u64().unwrap_or(3600);
            Ok(minter.mint(ns, sa, &audiences, Duration::from_secs(ttl), None))
        }));
        let api_url = format!("http://{addr}");
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: emu\n  cluster:\n    server: {api_url}\n\
                 users:\n- name: emu\n  user:\n    token: emulated\ncontexts:\n- name: emu\n  context:\n    cluster: emu\n    user: emu\n\
                 current-context: emu\n"
            ),
        )
        .unwrap();
        let client = kube::Client::try_from(kube::Config::new(api_url.parse().unwrap())).unwrap();
        let r = uuid::Uuid::new_v4();
        let b = r.as_bytes();
        let net = [1 + b[0] % 250, b[1]];
        let mut c = Cluster {
            emu,
            api_url,
            client,
            issuer,
            kubeconfig,
            state: Arc::new(Mutex::new(State {
                next_host: 1,
                ..State::default()
            })),
            net,
            binary,
            dir,
            _tasks: vec![api],
        };
        let kubelet = Kubelet {
            emu: c.emu.clone(),
            client: c.client.clone(),
            issuer: c.issuer.clone(),
            state: c.state.clone(),
            net,
            binary: c.binary.clone(),
            root: c.dir.path().to_path_buf(),
            probe: reqwest::Client::builder()
                // The kubelet does not verify a probe's certificate either.
                .danger_accept_invalid_certs(true)
                .timeout(Duration::from_secs(2))
                .build()
                .unwrap(),
        };
        c._tasks.push(Task(tokio::spawn(kubelet.run())));
        c
    }

    /// The address a pod has (or will have).
    pub fn pod_ip(&self, ns: &str, pod: &str) -> IpAddr {
        ip_of(&self.state, self.net, ns, pod)
    }

    /// The directory that holds the data of PersistentVolumeClaim `claim` (every pod that
    /// mounts it sees the same directory, like a ReadWriteMany volume); `None` until the
    /// claim exists.
    pub fn claim_dir(&self, ns: &str, claim: &str) -> Option<PathBuf> {
        let pvc = self.emu.get(PVCS, Some(ns), claim)?;
        let uid = pvc["metadata"]["uid"].as_str()?.to_string();
        Some(self.dir.path().join("volumes").join(uid))
    }

    /// The `keystead-operator run` process against this cluster.
    pub fn start_operator(&self) -> tokio::process::Child {
        self.operator_command()
            .spawn()
            .expect("the operator binary starts")
    }

    /// The command of [`Cluster::start_operator`], for a test to change (pod name, log
    /// level, where its output goes) before spawning it.
    pub fn operator_command(&self) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_keystead-operator"));
        cmd.args(["run", "--metrics-addr", "127.0.0.1:0"])
            .env("KUBECONFIG", &self.kubeconfig)
            .env("POD_NAMESPACE", "keystead-system")
            .env("POD_NAME", "operator-0")
            .env("KEYSTEAD_SERVICE_ACCOUNT", "keystead-operator")
            .env("KEYSTEAD_ALLOW_LOOPBACK_STORAGE_ENDPOINTS", "true")
            .env("KEYSTEAD_SERVICE_ACCOUNT_ISSUER", &self.issuer.url)
            .env("RUST_LOG", "warn")
            .kill_on_drop(true);
        cmd
    }

    /// SIGKILL a pod's container; it is restarted after a back-off (restartPolicy Always).
    pub fn crash(&self, ns: &str, pod: &str) {
        self.kill(ns, pod, false);
    }

    /// SIGKILL a pod's container and keep it down (a lost node, a crash loop) until the pod
    /// is deleted; the re-created pod runs again.
    pub fn fail(&self, ns: &str, pod: &str) {
        self.kill(ns, pod, true);
    }

    fn kill(&self, ns: &str, pod: &str, hold: bool) {
        let mut st = self.state.lock().unwrap();
        let run = st.runs.get_mut(&key(ns, pod)).expect("the pod runs");
        if let Some(c) = run.child.as_mut() {
            let _ = c.start_kill();
        }
        run.held_down |= hold;
        st.history.push(format!("kill {ns}/{pod}"));
    }

    /// Whether the kubelet reports the pod Ready.
    pub fn ready(&self, ns: &str, pod: &str) -> bool {
        self.state
            .lock()
            .unwrap()
            .runs
            .get(&key(ns, pod))
            .is_some_and(|r| r.ready)
    }

    /// The image a pod's container runs, when it runs.
    pub fn image(&self, ns: &str, pod: &str) -> Option<String> {
        self.state
            .lock()
            .unwrap()
            .runs
            .get(&key(ns, pod))
            .filter(|r| r.child.is_some())
            .map(|r| r.image.clone())
    }

    pub fn history(&self) -> Vec<String> {
        self.state.lock().unwrap().history.clone()
    }

    /// The lowest number of Ready pods of a StatefulSet since all its replicas were first
    /// Ready (None: never all Ready).
    pub fn min_ready_since_all_ready(&self, ns: &str, sts: &str) -> Option<usize> {
        self.state
            .lock()
            .unwrap()
            .min_ready
            .get(&key(ns, sts))
            .copied()
    }

    pub fn reset_min_ready(&self, ns: &str, sts: &str) {
        self.state.lock().unwrap().min_ready.remove(&key(ns, sts));
    }

    /// The last lines of a pod's container log (for failure messages).
    pub fn log_tail(&self, ns: &str, pod: &str) -> String {
        let Some(text) = self.container_log(ns, pod) else {
            return format!("{ns}/{pod}: not running");
        };
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// A pod's whole container log (stderr of every run of its container), when it ran.
    pub fn container_log(&self, ns: &str, pod: &str) -> Option<String> {
        let st = self.state.lock().unwrap();
        let run = st.runs.get(&key(ns, pod))?;
        Some(std::fs::read_to_string(run.dir.join("container.log")).unwrap_or_default())
    }

    /// Everything useful when a test fails: history, pod states, log tails.
    pub fn dump(&self) -> String {
        let mut out = format!("history: {:?}\n", self.history());
        let pods: Vec<String> = self.state.lock().unwrap().runs.keys().cloned().collect();
        for p in pods {
            let (ns, name) = p.split_once('/').unwrap();
            out.push_str(&format!("--- {p}\n{}\n", self.log_tail(ns, name)));
        }
        out
    }
}

fn ip_of(state: &Mutex<State>, net: [u8; 2], ns: &str, pod: &str) -> IpAddr {
    let mut st = state.lock().unwrap();
    let k = key(ns, pod);
    if let Some(ip) = st.ips.get(&k) {
        return *ip;
    }
    let host = st.next_host;
    assert!(host < 255, "the harness ran out of pod addresses");
    st.next_host += 1;
    let ip = IpAddr::V4(Ipv4Addr::new(127, net[0], net[1], host));
    st.ips.insert(k, ip);
    ip
}

#[derive(Clone)]
struct Kubelet {
    emu: Emulator,
    client: kube::Client,
    issuer: Arc<SaIssuer>,
    state: Arc<Mutex<State>>,
    net: [u8; 2],
    binary: PathBuf,
    root: PathBuf,
    probe: reqwest::Client,
}

/// Every object of `collection` (all namespaces).
pub fn objects(emu: &Emulator, collection: &str) -> Vec<Value> {
    let prefix = format!("{collection}|");
    emu.store
        .lock()
        .unwrap()
        .objects
        .iter()
        .filter(|(k, _)| k.starts_with(&prefix))
        .map(|(_, v)| v.clone())
        .collect()
}

fn s(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}

impl Kubelet {
    async fn run(self) {
        let mut changes = self.emu.changes();
        loop {
            if let Err(e) = self.sync().await {
                eprintln!("kubelet harness: {e:#}");
            }
            // React to API changes at once; poll processes and probes in between.
            let _ = tokio::time::timeout(Duration::from_millis(200), changes.recv()).await;
        }
    }

    async fn sync(&self) -> anyhow::Result<()> {
        self.statefulsets().await?;
        self.pods().await?;
        Ok(())
    }

    /// The StatefulSet controller: each ordinal's PVCs and Pod.
    async fn statefulsets(&self) -> anyhow::Result<()> {
        for sts in objects(&self.emu, STS) {
            let ns = s(&sts["metadata"]["namespace"]);
            let name = s(&sts["metadata"]["name"]);
            if sts["metadata"].get("deletionTimestamp").is_some() {
                continue;
            }
            let replicas = sts["spec"]["replicas"].as_u64().unwrap_or(1);
            for i in 0..replicas {
                let pod = format!("{name}-{i}");
                if self.emu.get(PODS, Some(&ns), &pod).is_some() {
                    continue;
                }
                ip_of(&self.state, self.net, &ns, &pod);
                let mut volumes = sts["spec"]["template"]["spec"]["volumes"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                for t in sts["spec"]["volumeClaimTemplates"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                {
                    let tname = s(&t["metadata"]["name"]);
                    let claim = format!("{tname}-{pod}");
                    self.ensure_pvc(&ns, &claim, &t).await?;
                    volumes.push(
                        json!({"name": tname, "persistentVolumeClaim": {"claimName": claim}}),
                    );
                }
                let tmpl = &sts["spec"]["template"];
                let mut labels = tmpl["metadata"]["labels"].clone();
                labels["statefulset.kubernetes.io/pod-name"] = json!(pod);
                labels["apps.kubernetes.io/pod-index"] = json!(i.to_string());
                let mut spec = tmpl["spec"].clone();
                spec["volumes"] = Value::Array(volumes);
                spec["hostname"] = json!(pod);
                spec["subdomain"] = sts["spec"]["serviceName"].clone();
                let obj: Pod = serde_json::from_value(json!({
                    "apiVersion": "v1", "kind": "Pod",
                    "metadata": {
                        "name": pod, "namespace": ns, "labels": labels,
                        "annotations": tmpl["metadata"]["annotations"],
                        "finalizers": [KUBELET_FINALIZER],
                        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": name,
                            "uid": sts["metadata"]["uid"], "controller": true, "blockOwnerDeletion": true}],
                    },
                    "spec": spec,
                }))?;
                let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
                match api.create(&PostParams::default(), &obj).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(e)) if e.code == 409 => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(())
    }

    async fn ensure_pvc(&self, ns: &str, claim: &str, template: &Value) -> anyhow::Result<()> {
        if self.emu.get(PVCS, Some(ns), claim).is_some() {
            return Ok(());
        }
        let api: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), ns);
        let obj: PersistentVolumeClaim = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": claim, "namespace": ns, "labels": template["metadata"]["labels"]},
            "spec": template["spec"],
        }))?;
        match api.create(&PostParams::default(), &obj).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        api.patch_status(
            claim,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Bound"}})),
        )
        .await?;
        Ok(())
    }

    /// The kubelet: start, probe, restart and stop containers; report pod status.
    async fn pods(&self) -> anyhow::Result<()> {
        let pods: Vec<Value> = objects(&self.emu, PODS)
            .into_iter()
            .filter(|p| {
                p["metadata"]["finalizers"]
                    .as_array()
                    .is_some_and(|f| f.iter().any(|x| x == KUBELET_FINALIZER))
            })
            .collect();
        for pod in &pods {
            let ns = s(&pod["metadata"]["namespace"]);
            let name = s(&pod["metadata"]["name"]);
            let uid = s(&pod["metadata"]["uid"]);
            let k = key(&ns, &name);
            let deleting = pod["metadata"].get("deletionTimestamp").is_some();
            let known = self
                .state
                .lock()
                .unwrap()
                .runs
                .get(&k)
                .map(|r| r.uid.clone());
            if deleting {
                if self.stop(&k).await {
                    let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
                    let _ = api
                        .patch(
                            &name,
                            &PatchParams::default(),
                            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
                        )
                        .await;
                }
                continue;
            }
            if known.as_deref() != Some(uid.as_str()) {
                // A new pod (or a re-created one: the old process is gone with the old pod).
                self.state.lock().unwrap().runs.remove(&k);
                self.start(pod, &ns, &name, &uid).await?;
            }
            self.supervise(pod, &ns, &name).await?;
        }
        self.track_quorum();
        Ok(())
    }

    /// Stop a pod's process; true once it has exited (or never ran).
    async fn stop(&self, k: &str) -> bool {
        let mut st = self.state.lock().unwrap();
        let Some(run) = st.runs.get_mut(k) else {
            return true;
        };
        let exited = match run.child.as_mut() {
            None => true,
            Some(c) => matches!(c.try_wait(), Ok(Some(_)) | Err(_)),
        };
        if exited {
            st.runs.remove(k);
            st.history.push(format!("stopped {k}"));
            return true;
        }
        let since = *run.stopping_since.get_or_insert_with(Instant::now);
        if let Some(c) = run.child.as_mut() {
            if since.elapsed() > GRACE {
                let _ = c.start_kill();
            } else if let Some(pid) = c.id() {
                let _ = std::process::Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status();
            }
        }
        false
    }

    /// Materialise the pod's volumes and start its container.
    async fn start(&self, pod: &Value, ns: &str, name: &str, uid: &str) -> anyhow::Result<()> {
        let dir = self.root.join("pods").join(format!("{ns}_{name}_{uid}"));
        std::fs::create_dir_all(&dir)?;
        let ip = ip_of(&self.state, self.net, ns, name);
        let spec = &pod["spec"];
        let container = &spec["containers"][0];
        let sa = spec["serviceAccountName"]
            .as_str()
            .unwrap_or("default")
            .to_string();

        // Volumes → directories.
        let mut volume_dirs: HashMap<String, PathBuf> = HashMap::new();
        for v in spec["volumes"].as_array().cloned().unwrap_or_default() {
            let vname = s(&v["name"]);
            let vdir = if let Some(claim) = v["persistentVolumeClaim"]["claimName"].as_str() {
                let pvc = self
                    .emu
                    .get(PVCS, Some(ns), claim)
                    .ok_or_else(|| anyhow::anyhow!("PVC {claim} of {ns}/{name} is missing"))?;
                // A volume is its PVC's: a new PVC (new uid) is a new, empty disk.
                self.root.join("volumes").join(s(&pvc["metadata"]["uid"]))
            } else {
                dir.join("volumes").join(&vname)
            };
            std::fs::create_dir_all(&vdir)?;
            if v.get("configMap").is_some() {
                self.project_config_map(ns, &v["configMap"], &vdir)?;
            } else if let Some(secret) = v["secret"]["secretName"].as_str() {
                self.project_secret(ns, secret, &v["secret"]["items"], &vdir)?;
            } else if let Some(sources) = v["projected"]["sources"].as_array() {
                for src in sources {
                    if let Some(n) = src["secret"]["name"].as_str() {
                        self.project_secret(ns, n, &src["secret"]["items"], &vdir)?;
                    } else if src.get("configMap").is_some() {
                        self.project_config_map(ns, &src["configMap"], &vdir)?;
                    } else if let Some(t) = src.get("serviceAccountToken") {
                        let aud = t["audience"].as_str().unwrap_or(API_AUDIENCE).to_string();
                        let ttl = t["expirationSeconds"].as_u64().unwrap_or(3600);
                        let token = self.issuer.mint(
                            ns,
                            &sa,
                            &[aud],
                            Duration::from_secs(ttl),
                            Some((name, uid)),
                        );
                        write_private(&vdir.join(s(&t["path"])), token.as_bytes())?;
                    }
                }
            }
            volume_dirs.insert(vname, vdir);
        }
        // Mounts: container path → host directory (longest prefix wins).
        let mut mounts: Vec<(String, PathBuf)> = Vec::new();
        for m in container["volumeMounts"]
            .as_array()
            .cloned()
            .unwrap_or_default()
        {
            if let Some(d) = volume_dirs.get(&s(&m["name"])) {
                mounts.push((s(&m["mountPath"]), d.clone()));
            }
        }
        if spec["automountServiceAccountToken"] != json!(false) {
            let d = dir.join("volumes").join("kube-api-access");
            std::fs::create_dir_all(&d)?;
            let token = self.issuer.mint(
                ns,
                &sa,
                &[API_AUDIENCE.to_string()],
                Duration::from_secs(3600),
                Some((name, uid)),
            );
            write_private(&d.join("token"), token.as_bytes())?;
            std::fs::write(d.join("ca.crt"), &self.issuer.ca_pem)?;
            std::fs::write(d.join("namespace"), ns)?;
            mounts.push((SA_MOUNT.to_string(), d));
        }
        mounts.sort_by_key(|m| std::cmp::Reverse(m.0.len()));
        let map_path = |p: &str| -> Option<String> {
            mounts.iter().find_map(|(m, d)| {
                let rest = p.strip_prefix(m.as_str())?;
                (rest.is_empty() || rest.starts_with('/')).then(|| format!("{}{rest}", d.display()))
            })
        };
        // The pod's network namespace and DNS: rewrite JSON files of ConfigMap volumes.
        let dns = self.dns_records();
        for v in spec["volumes"].as_array().cloned().unwrap_or_default() {
            if v.get("configMap").is_none() {
                continue;
            }
            let vdir = &volume_dirs[&s(&v["name"])];
            for f in std::fs::read_dir(vdir)?.flatten() {
                let path = f.path();
                if path.extension().is_some_and(|e| e == "json") {
                    let mut doc: Value = serde_json::from_slice(&std::fs::read(&path)?)?;
                    rewrite(&mut doc, &map_path, ip);
                    if doc.get("peers").is_some() {
                        doc["hostAddresses"] = json!(dns);
                    }
                    std::fs::write(&path, serde_json::to_vec_pretty(&doc)?)?;
                }
            }
        }
        // Environment and args ($(VAR) expansion, then container paths).
        let mut env: BTreeMap<String, String> = BTreeMap::new();
        for e in container["env"].as_array().cloned().unwrap_or_default() {
            let value = match e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                Some("metadata.name") => name.to_string(),
                Some("metadata.namespace") => ns.to_string(),
                Some("status.podIP") => ip.to_string(),
                _ => s(&e["value"]),
            };
            env.insert(s(&e["name"]), value);
        }
        let args: Vec<String> = container["args"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|a| {
                let mut a = s(a);
                for (k, v) in &env {
                    a = a.replace(&format!("$({k})"), v);
                }
                map_path(&a).unwrap_or(a)
            })
            .collect();
        let image = s(&container["image"]);
        let mut run = Run {
            uid: uid.to_string(),
            dir: dir.clone(),
            image: image.clone(),
            child: None,
            ready: false,
            restarts: 0,
            held_down: false,
            restart_at: None,
            stopping_since: None,
            next_probe: Instant::now(),
            probe_failures: 0,
            reported: None,
        };
        std::fs::write(dir.join("args.json"), serde_json::to_vec(&args)?)?;
        std::fs::write(dir.join("env.json"), serde_json::to_vec(&env)?)?;
        run.child = Some(self.spawn(&dir)?);
        let mut st = self.state.lock().unwrap();
        st.history.push(format!("start {ns}/{name} {image}"));
        st.runs.insert(key(ns, name), run);
        Ok(())
    }

    fn spawn(&self, dir: &Path) -> anyhow::Result<tokio::process::Child> {
        let args: Vec<String> = serde_json::from_slice(&std::fs::read(dir.join("args.json"))?)?;
        let env: BTreeMap<String, String> =
            serde_json::from_slice(&std::fs::read(dir.join("env.json"))?)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("container.log"))?;
        Ok(tokio::process::Command::new(&self.binary)
            .args(&args)
            .envs(&env)
            .env("KEYSTEAD_LOG", "warn")
            .current_dir(dir)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()?)
    }

    fn project_config_map(&self, ns: &str, src: &Value, dir: &Path) -> anyhow::Result<()> {
        let n = s(&src["name"]);
        let cm = self
            .emu
            .get("v1/configmaps", Some(ns), &n)
            .ok_or_else(|| anyhow::anyhow!("ConfigMap {ns}/{n} is missing"))?;
        let data = cm["data"].as_object().cloned().unwrap_or_default();
        for (k, path) in items(&src["items"], data.keys()) {
            std::fs::write(dir.join(path), s(&data[&k]))?;
        }
        Ok(())
    }

    fn project_secret(
        &self,
        ns: &str,
        name: &str,
        items_spec: &Value,
        dir: &Path,
    ) -> anyhow::Result<()> {
        use base64::Engine;
        let sec = self
            .emu
            .get("v1/secrets", Some(ns), name)
            .ok_or_else(|| anyhow::anyhow!("Secret {ns}/{name} is missing"))?;
        let data = sec["data"].as_object().cloned().unwrap_or_default();
        for (k, path) in items(items_spec, data.keys()) {
            let bytes = base64::engine::general_purpose::STANDARD.decode(s(&data[&k]))?;
            write_private(&dir.join(path), &bytes)?;
        }
        Ok(())
    }

    /// Cluster DNS records of the StatefulSets' pods.
    fn dns_records(&self) -> BTreeMap<String, IpAddr> {
        let mut out = BTreeMap::new();
        for sts in objects(&self.emu, STS) {
            let ns = s(&sts["metadata"]["namespace"]);
            let name = s(&sts["metadata"]["name"]);
            let svc = s(&sts["spec"]["serviceName"]);
            for i in 0..sts["spec"]["replicas"].as_u64().unwrap_or(1) {
                let pod = format!("{name}-{i}");
                let ip = ip_of(&self.state, self.net, &ns, &pod);
                out.insert(format!("{pod}.{svc}.{ns}.svc"), ip);
                out.insert(format!("{pod}.{svc}.{ns}.svc.cluster.local"), ip);
            }
        }
        out
    }

    /// Restart crashed containers, probe readiness, report status.
    async fn supervise(&self, pod: &Value, ns: &str, name: &str) -> anyhow::Result<()> {
        let k = key(ns, name);
        let ip = ip_of(&self.state, self.net, ns, name);
        let container = &pod["spec"]["containers"][0];
        let probe = &container["readinessProbe"]["httpGet"];
        let port = match &probe["port"] {
            Value::Number(n) => n.as_u64().unwrap_or(0),
            Value::String(p) => container["ports"]
                .as_array()
                .and_then(|ps| ps.iter().find(|x| x["name"] == *p))
                .and_then(|x| x["containerPort"].as_u64())
                .unwrap_or(0),
            _ => 0,
        };
        let url = format!(
            "{}://{}{}",
            s(&probe["scheme"]).to_lowercase(),
            SocketAddr::new(ip, port as u16),
            s(&probe["path"])
        );
        // Process state and restarts (no await while the state is locked).
        let due_probe = {
            let mut st = self.state.lock().unwrap();
            let Some(run) = st.runs.get_mut(&k) else {
                return Ok(());
            };
            let exited = run
                .child
                .as_mut()
                .is_some_and(|c| !matches!(c.try_wait(), Ok(None)));
            let mut event = None;
            if exited {
                run.child = None;
                run.ready = false;
                event = Some(format!("exited {k}"));
                if !run.held_down {
                    run.restart_at = Some(Instant::now() + RESTART_BACKOFF);
                }
            }
            if run.child.is_none()
                && !run.held_down
                && run.restart_at.is_some_and(|t| t <= Instant::now())
            {
                run.restart_at = None;
                run.restarts += 1;
                run.child = Some(self.spawn(&run.dir)?);
                run.next_probe = Instant::now();
                event = Some(format!("restart {k}"));
            }
            if let Some(e) = event {
                st.history.push(e);
            }
            let run = st.runs.get_mut(&k).unwrap();
            (run.child.is_some() && run.next_probe <= Instant::now()).then_some(run.ready)
        };
        if let Some(was_ready) = due_probe {
            let ok = self
                .probe
                .get(&url)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            let mut st = self.state.lock().unwrap();
            if let Some(run) = st.runs.get_mut(&k) {
                if ok {
                    run.probe_failures = 0;
                    run.ready = run.child.is_some();
                } else {
                    run.probe_failures += 1;
                    // readinessProbe failureThreshold (2 in the operator's template).
                    if run.probe_failures >= 2 || !was_ready {
                        run.ready = false;
                    }
                }
                run.next_probe = Instant::now()
                    + if run.ready {
                        Duration::from_secs(1)
                    } else {
                        Duration::from_millis(200)
                    };
                if run.ready != was_ready {
                    let e = format!("{} {k}", if run.ready { "ready" } else { "unready" });
                    st.history.push(e);
                }
            }
        }
        // Report the status when it changed.
        let report = {
            let st = self.state.lock().unwrap();
            st.runs.get(&k).and_then(|r| {
                let now = (r.ready, r.restarts);
                (r.reported != Some(now)).then(|| (now, r.image.clone(), r.child.is_some()))
            })
        };
        if let Some(((ready, restarts), image, running)) = report {
            let r = if ready { "True" } else { "False" };
            let now = k8s_openapi::jiff::Timestamp::now()
                .strftime("%Y-%m-%dT%H:%M:%SZ")
                .to_string();
            let status = json!({"status": {
                "phase": "Running",
                "hostIP": "127.0.0.1",
                "podIP": ip.to_string(),
                "podIPs": [{"ip": ip.to_string()}],
                "conditions": [
                    {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
                    {"type": "Initialized", "status": "True", "lastTransitionTime": now},
                    {"type": "ContainersReady", "status": r, "lastTransitionTime": now},
                    {"type": "Ready", "status": r, "lastTransitionTime": now},
                ],
                "containerStatuses": [{
                    "name": container["name"], "image": image, "imageID": "", "ready": ready,
                    "restartCount": restarts, "started": running,
                    "state": if running { json!({"running": {"startedAt": now}}) } else { json!({"waiting": {"reason": "CrashLoopBackOff"}}) },
                }],
            }});
            let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
            api.patch_status(name, &PatchParams::default(), &Patch::Merge(status))
                .await?;
            if let Some(run) = self.state.lock().unwrap().runs.get_mut(&k) {
                run.reported = Some((ready, restarts));
            }
        }
        Ok(())
    }

    /// Record the lowest number of Ready pods per StatefulSet once all were Ready.
    fn track_quorum(&self) {
        let sets: Vec<(String, String, u64)> = objects(&self.emu, STS)
            .iter()
            .map(|x| {
                (
                    s(&x["metadata"]["namespace"]),
                    s(&x["metadata"]["name"]),
                    x["spec"]["replicas"].as_u64().unwrap_or(1),
                )
            })
            .collect();
        let mut st = self.state.lock().unwrap();
        for (ns, name, replicas) in sets {
            let ready = (0..replicas)
                .filter(|i| {
                    st.runs
                        .get(&key(&ns, &format!("{name}-{i}")))
                        .is_some_and(|r| r.ready)
                })
                .count();
            let k = key(&ns, &name);
            match st.min_ready.get_mut(&k) {
                Some(m) => *m = (*m).min(ready),
                None if ready as u64 == replicas => {
                    st.min_ready.insert(k, ready);
                }
                None => {}
            }
        }
    }
}

/// `(key, relative path)` of a volume source: its `items`, or every key.
fn items<'a>(spec: &Value, keys: impl Iterator<Item = &'a String>) -> Vec<(String, String)> {
    match spec.as_array() {
        Some(list) => list.iter().map(|i| (s(&i["key"]), s(&i["path"]))).collect(),
        None => keys.map(|k| (k.clone(), k.clone())).collect(),
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    Ok(())
}

/// Container paths → host paths; `0.0.0.0:<port>` → `<podIP>:<port>`.
fn rewrite(v: &mut Value, map_path: &dyn Fn(&str) -> Option<String>, ip: IpAddr) {
    match v {
        Value::String(text) => {
            if let Some(port) = text.strip_prefix("0.0.0.0:") {
                *text = format!("{ip}:{port}");
            } else if let Some(p) = map_path(text) {
                *text = p;
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|x| rewrite(x, map_path, ip)),
        Value::Object(o) => o.values_mut().for_each(|x| rewrite(x, map_path, ip)),
        _ => {}
    }
}
