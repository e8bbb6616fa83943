//! The pod lifecycle on the agent's Nodes: start the first container of each pod bound to
//! them as a local process (the image names the binary), probe it, restart it by the pod's
//! policy with back-off, report the pod's status, and on deletion stop it (SIGTERM, SIGKILL
//! after the grace period) before removing the pod — a kubelet without a container engine.
//!
//! One file on purpose (~640 lines): the pod lifecycle is one state machine (start, probe,
//! restart, report, stop), read as a whole.

use crate::Agent;
use crate::probes::{Probe, Verdict};
use crate::volumes::{self, SA_MOUNT, Volumes};
use anyhow::anyhow;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::process::Child;

/// Longest back-off between restarts of a crashing container (a kubelet's is 5 min; tests
/// need the pool back sooner).
const MAX_BACKOFF: Duration = Duration::from_secs(20);
/// A container that ran this long has its back-off reset.
const BACKOFF_RESET: Duration = Duration::from_secs(60);
/// How often mounted ConfigMaps and Secrets are re-read and due tokens renewed.
const RESYNC: Duration = Duration::from_secs(10);

pub struct Run {
    uid: String,
    dir: PathBuf,
    ip: IpAddr,
    image: String,
    container: Value,
    volumes: Volumes,
    child: Option<Child>,
    started_at: Option<(Instant, String)>,
    restarts: u32,
    backoff: Duration,
    restart_at: Option<Instant>,
    stopping_since: Option<Instant>,
    startup: Option<Probe>,
    liveness: Option<Probe>,
    readiness: Option<Probe>,
    last_exit: Option<Value>,
    next_resync: Instant,
    /// Why the container is not running (waiting reason and message).
    waiting: Option<(String, String)>,
    /// Whether a container that exited is restarted.
    restart_policy: String,
    /// Condition type → (status, lastTransitionTime).
    transitions: BTreeMap<String, (String, String)>,
    start_time: String,
    reported: Option<Value>,
}

fn now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn key(ns: &str, name: &str) -> String {
    format!("{ns}/{name}")
}

/// The directory of a pod on this agent (tests find the container's `pid` and `container.log`
/// there).
pub fn pod_dir(agent: &Agent, ns: &str, name: &str, uid: &str) -> PathBuf {
    agent.dir.join("pods").join(format!("{ns}_{name}_{uid}"))
}

/// The containers this agent runs, by `namespace/name` of their pod.
pub type Runs = Arc<tokio::sync::Mutex<HashMap<String, Run>>>;

pub async fn run(agent: Arc<Agent>, runs: Runs) -> anyhow::Result<()> {
    let http = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .timeout(Duration::from_secs(10))
        .build()?;
    loop {
        let changed = agent.caches.changed.notified();
        let mut guard = runs.lock().await;
        if let Err(e) = pass(&agent, &http, &mut guard).await {
            tracing::warn!(error = %e, "pod pass failed");
        }
        drop(guard);
        let _ = tokio::time::timeout(Duration::from_millis(250), changed).await;
    }
}

async fn pass(
    agent: &Agent,
    http: &reqwest::Client,
    runs: &mut HashMap<String, Run>,
) -> anyhow::Result<()> {
    let pods: Vec<Arc<Pod>> = agent
        .caches
        .pods
        .state()
        .into_iter()
        .filter(|p| {
            p.spec
                .as_ref()
                .and_then(|s| s.node_name.as_deref())
                .is_some_and(|n| agent.serves(n))
        })
        .collect();
    let mut present = std::collections::HashSet::new();
    for pod in &pods {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let k = key(&ns, &name);
        present.insert(k.clone());
        if pod.metadata.deletion_timestamp.is_some() {
            let grace = pod.metadata.deletion_grace_period_seconds.unwrap_or(30);
            let stopped = match runs.get_mut(&k) {
                Some(r) if r.uid == uid => stop(r, Duration::from_secs(grace.max(0) as u64)),
                _ => true,
            };
            if stopped {
                if let Some(r) = runs.remove(&k) {
                    let _ = std::fs::remove_dir_all(&r.dir);
                }
                finish_delete(agent, &ns, &name, &uid).await;
            }
            continue;
        }
        let phase = pod.status.as_ref().and_then(|s| s.phase.clone());
        if matches!(phase.as_deref(), Some("Succeeded") | Some("Failed")) && !runs.contains_key(&k)
        {
            continue;
        }
        if runs.get(&k).is_some_and(|r| r.uid != uid) {
            // The old pod of this name is gone: its process with it.
            if let Some(mut r) = runs.remove(&k) {
                kill(&mut r);
            }
        }
        if !runs.contains_key(&k) {
            runs.insert(k.clone(), new_run(agent, pod, &uid)?);
        }
        let r = runs.get_mut(&k).expect("inserted above");
        if let Err(e) = supervise(agent, pod, r).await {
            tracing::warn!(pod = %k, error = %e, "volumes or container not ready");
            if r.child.is_none() {
                r.waiting = Some(("ContainerCreating".into(), format!("{e:#}")));
                r.restart_at = Some(Instant::now() + Duration::from_secs(2));
            }
        }
        probe(http, r).await;
        report(agent, pod, r).await;
    }
    // Pods removed without a graceful deletion (force delete): their processes go too.
    let gone: Vec<String> = runs
        .keys()
        .filter(|k| !present.contains(*k))
        .cloned()
        .collect();
    for k in gone {
        if let Some(mut r) = runs.remove(&k) {
            kill(&mut r);
            let _ = std::fs::remove_dir_all(&r.dir);
        }
    }
    Ok(())
}

fn new_run(agent: &Agent, pod: &Pod, uid: &str) -> anyhow::Result<Run> {
    let pod_v = serde_json::to_value(pod)?;
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let dir = pod_dir(agent, &ns, &name, uid);
    std::fs::create_dir_all(&dir)?;
    let container = pod_v["spec"]["containers"][0].clone();
    Ok(Run {
        uid: uid.to_string(),
        dir,
        ip: IpAddr::V4(agent.addresses.of(&ns, &name)),
        image: container["image"].as_str().unwrap_or_default().to_string(),
        container,
        volumes: Volumes::default(),
        child: None,
        started_at: None,
        restarts: 0,
        backoff: Duration::from_secs(1),
        restart_at: Some(Instant::now()),
        stopping_since: None,
        startup: None,
        liveness: None,
        readiness: None,
        last_exit: None,
        next_resync: Instant::now(),
        waiting: Some(("ContainerCreating".into(), String::new())),
        restart_policy: pod_v["spec"]["restartPolicy"]
            .as_str()
            .unwrap_or("Always")
            .to_string(),
        transitions: BTreeMap::new(),
        start_time: now(),
        reported: None,
    })
}

/// The binary that runs `image`: the agent's `--image` entry for the repository's last path
/// segment (`ghcr.io/keystead/keystead-partition:0.1.0` → `keystead-partition`).
fn binary_of(agent: &Agent, image: &str) -> anyhow::Result<PathBuf> {
    let no_digest = image.split('@').next().unwrap_or(image);
    let last = no_digest.rsplit('/').next().unwrap_or(no_digest);
    let repo = last.split(':').next().unwrap_or(last);
    agent.images.get(repo).cloned().ok_or_else(|| {
        anyhow!(
            "image {image}: this node agent runs only {:?} (its --image list)",
            agent.images.keys().collect::<Vec<_>>()
        )
    })
}

/// Process state: exits, restarts, (re)starts, volume resyncs.
async fn supervise(agent: &Agent, pod: &Pod, r: &mut Run) -> anyhow::Result<()> {
    if let Some(c) = r.child.as_mut()
        && let Ok(Some(status)) = c.try_wait()
    {
        let code = status.code().unwrap_or(137);
        let (since, started) = r.started_at.take().unwrap_or((Instant::now(), now()));
        r.last_exit = Some(json!({"terminated": {
            "exitCode": code, "reason": if code == 0 { "Completed" } else { "Error" },
            "startedAt": started, "finishedAt": now(),
        }}));
        r.child = None;
        let _ = std::fs::remove_file(r.dir.join("pid"));
        if let Some(p) = r.readiness.as_mut() {
            p.ok = false;
        }
        if since.elapsed() > BACKOFF_RESET {
            r.backoff = Duration::from_secs(1);
        }
        let restart = match r.restart_policy.as_str() {
            "Never" => false,
            "OnFailure" => code != 0,
            _ => true,
        };
        if restart {
            r.restart_at = Some(Instant::now() + r.backoff);
            r.waiting = Some((
                "CrashLoopBackOff".into(),
                format!("back-off {:?} restarting the container", r.backoff),
            ));
            r.backoff = (r.backoff * 2).min(MAX_BACKOFF);
        }
        tracing::info!(pod = %pod.metadata.name.clone().unwrap_or_default(), code, restart, "container exited");
    }
    if r.next_resync <= Instant::now() && (r.child.is_some() || r.restart_at.is_some()) {
        r.next_resync = Instant::now() + RESYNC;
        let dir = r.dir.clone();
        r.volumes = volumes::project(agent, pod, &dir, r.ip, &r.volumes).await?;
    }
    if r.child.is_none() && r.restart_at.is_some_and(|t| t <= Instant::now()) {
        r.restart_at = None;
        start(agent, pod, r).await?;
    }
    Ok(())
}

async fn start(agent: &Agent, pod: &Pod, r: &mut Run) -> anyhow::Result<()> {
    let pod_v = serde_json::to_value(pod)?;
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let binary = match binary_of(agent, &r.image) {
        Ok(b) => b,
        Err(e) => {
            r.waiting = Some(("ErrImagePull".into(), e.to_string()));
            r.restart_at = Some(Instant::now() + Duration::from_secs(10));
            return Ok(());
        }
    };
    let dir = r.dir.clone();
    r.volumes = volumes::project(agent, pod, &dir, r.ip, &r.volumes).await?;
    let env = environment(agent, &pod_v, r, &ns).await?;
    let container = &r.container;
    let mut args: Vec<String> = container["command"]
        .as_array()
        .map(|c| c.iter().skip(1).cloned().collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain(container["args"].as_array().cloned().unwrap_or_default())
        .map(|a| a.as_str().unwrap_or_default().to_string())
        .collect();
    for a in &mut args {
        for (k, v) in &env {
            *a = a.replace(&format!("$({k})"), v);
        }
        *a = r.volumes.map_arg(a, r.ip);
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(r.dir.join("container.log"))?;
    let child = tokio::process::Command::new(&binary)
        .args(&args)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("HOME", &r.dir)
        .envs(&env)
        .current_dir(&r.dir)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()?;
    if let Some(pid) = child.id() {
        std::fs::write(r.dir.join("pid"), pid.to_string())?;
    }
    let t = Instant::now();
    if r.started_at.is_none() && r.last_exit.is_some() {
        r.restarts += 1;
    }
    r.started_at = Some((t, now()));
    r.child = Some(child);
    r.waiting = None;
    r.startup = Probe::of(container, "startupProbe", t);
    r.liveness = Probe::of(container, "livenessProbe", t);
    r.readiness = Probe::of(container, "readinessProbe", t);
    tracing::info!(pod = %pod.metadata.name.clone().unwrap_or_default(), binary = %binary.display(), "container started");
    Ok(())
}

/// The container's environment: its `env` and `envFrom`, the service links of the API
/// server, and a kubeconfig for the mounted service-account token (client libraries look
/// for the token at a fixed path, which a process without a mount namespace cannot have).
async fn environment(
    agent: &Agent,
    pod: &Value,
    r: &Run,
    ns: &str,
) -> anyhow::Result<BTreeMap<String, String>> {
    let mut env = BTreeMap::new();
    let c = &r.container;
    env.insert(
        "HOSTNAME".to_string(),
        pod["spec"]["hostname"]
            .as_str()
            .or(pod["metadata"]["name"].as_str())
            .unwrap_or_default()
            .to_string(),
    );
    for from in c["envFrom"].as_array().cloned().unwrap_or_default() {
        let prefix = from["prefix"].as_str().unwrap_or_default();
        if let Some(n) = from["configMapRef"]["name"].as_str() {
            let cm: Api<ConfigMap> = Api::namespaced(agent.client.clone(), ns);
            for (k, v) in cm.get(n).await?.data.unwrap_or_default() {
                env.insert(format!("{prefix}{k}"), v);
            }
        }
        if let Some(n) = from["secretRef"]["name"].as_str() {
            let sec: Api<Secret> = Api::namespaced(agent.client.clone(), ns);
            for (k, v) in sec.get(n).await?.data.unwrap_or_default() {
                env.insert(
                    format!("{prefix}{k}"),
                    String::from_utf8_lossy(&v.0).into_owned(),
                );
            }
        }
    }
    for e in c["env"].as_array().cloned().unwrap_or_default() {
        let name = e["name"].as_str().unwrap_or_default().to_string();
        let from = &e["valueFrom"];
        let value = if let Some(f) = from["fieldRef"]["fieldPath"].as_str() {
            match f {
                "status.podIP" => r.ip.to_string(),
                "status.hostIP" => "127.0.0.1".to_string(),
                _ => volumes::field_value(pod, f)
                    .ok_or_else(|| anyhow!("env {name}: field {f} is not supported"))?,
            }
        } else if let Some(k) = from.get("secretKeyRef") {
            let sec: Api<Secret> = Api::namespaced(agent.client.clone(), ns);
            let n = k["name"].as_str().unwrap_or_default();
            let key = k["key"].as_str().unwrap_or_default();
            let data = sec.get(n).await?.data.unwrap_or_default();
            let v = data
                .get(key)
                .ok_or_else(|| anyhow!("env {name}: Secret {ns}/{n} has no key {key}"))?;
            String::from_utf8_lossy(&v.0).into_owned()
        } else if let Some(k) = from.get("configMapKeyRef") {
            let cm: Api<ConfigMap> = Api::namespaced(agent.client.clone(), ns);
            let n = k["name"].as_str().unwrap_or_default();
            let key = k["key"].as_str().unwrap_or_default();
            let data = cm.get(n).await?.data.unwrap_or_default();
            data.get(key)
                .cloned()
                .ok_or_else(|| anyhow!("env {name}: ConfigMap {ns}/{n} has no key {key}"))?
        } else {
            let mut v = e["value"].as_str().unwrap_or_default().to_string();
            for (k, val) in &env {
                v = v.replace(&format!("$({k})"), val);
            }
            v
        };
        env.insert(name, value);
    }
    if let Some(sa_dir) = r.volumes.map_path(SA_MOUNT) {
        let sa_dir = PathBuf::from(sa_dir);
        let kubeconfig = r.dir.join("kubeconfig");
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: cluster\n  cluster:\n    server: {}\n    certificate-authority: {}\n\
             users:\n- name: sa\n  user:\n    tokenFile: {}\ncontexts:\n- name: in-cluster\n  context:\n    cluster: cluster\n    user: sa\n    namespace: {ns}\n\
             current-context: in-cluster\n",
            agent.api_url,
            sa_dir.join("ca.crt").display(),
            sa_dir.join("token").display(),
        );
        volumes::write_if_changed(&kubeconfig, text.as_bytes(), Some(0o600))?;
        env.entry("KUBECONFIG".into())
            .or_insert_with(|| kubeconfig.display().to_string());
    }
    if let Some(u) = agent.api_url.strip_prefix("https://")
        && let Some((host, port)) = u.rsplit_once(':')
    {
        env.insert("KUBERNETES_SERVICE_HOST".into(), host.to_string());
        env.insert("KUBERNETES_SERVICE_PORT".into(), port.to_string());
    }
    Ok(env)
}

/// Run the due probes; a failed startup or liveness probe restarts the container.
async fn probe(http: &reqwest::Client, r: &mut Run) {
    if r.child.is_none() {
        return;
    }
    let ip = r.ip;
    if let Some(p) = r.startup.as_mut()
        && !p.ok
    {
        if p.due() {
            let passed = p.run(http, ip).await;
            match p.record(passed) {
                Verdict::Succeeded => {
                    if let Some(q) = r.readiness.as_mut() {
                        q.now();
                    }
                    if let Some(q) = r.liveness.as_mut() {
                        q.now();
                    }
                }
                Verdict::Failed => restart_unhealthy(r, "startup"),
                Verdict::Unchanged => {}
            }
        }
        return;
    }
    let (live, ready) = {
        let l = r.liveness.as_ref().filter(|p| p.due()).cloned();
        let q = r.readiness.as_ref().filter(|p| p.due()).cloned();
        let (a, b) = tokio::join!(
            async {
                match &l {
                    Some(p) => Some(p.run(http, ip).await),
                    None => None,
                }
            },
            async {
                match &q {
                    Some(p) => Some(p.run(http, ip).await),
                    None => None,
                }
            }
        );
        (a, b)
    };
    if let (Some(passed), Some(p)) = (ready, r.readiness.as_mut()) {
        p.record(passed);
    }
    if let (Some(passed), Some(p)) = (live, r.liveness.as_mut())
        && p.record(passed) == Verdict::Failed
    {
        restart_unhealthy(r, "liveness");
    }
}

fn restart_unhealthy(r: &mut Run, which: &str) {
    tracing::info!(
        probe = which,
        "probe failed: the container is killed and restarted"
    );
    if let Some(c) = r.child.as_mut() {
        let _ = c.start_kill();
    }
}

fn signal(child: &Child, sig: &str) {
    if let Some(pid) = child.id() {
        let _ = std::process::Command::new("kill")
            .args([sig, &pid.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// SIGTERM, then SIGKILL once `grace` has passed; true when the process is gone.
fn stop(r: &mut Run, grace: Duration) -> bool {
    r.restart_at = None;
    let Some(c) = r.child.as_mut() else {
        return true;
    };
    if matches!(c.try_wait(), Ok(Some(_)) | Err(_)) {
        r.child = None;
        return true;
    }
    let since = *r.stopping_since.get_or_insert_with(Instant::now);
    if since.elapsed() >= grace {
        let _ = c.start_kill();
    } else if since.elapsed() < Duration::from_millis(300) {
        signal(c, "-TERM");
    }
    false
}

fn kill(r: &mut Run) {
    if let Some(c) = r.child.as_mut() {
        let _ = c.start_kill();
    }
    r.child = None;
}

/// The last step of a graceful deletion: the kubelet removes the pod once its containers
/// have stopped.
async fn finish_delete(agent: &Agent, ns: &str, name: &str, uid: &str) {
    let api: Api<Pod> = Api::namespaced(agent.client.clone(), ns);
    let dp = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: Some(uid.to_string()),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match api.delete(name, &dp).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
        Err(e) => tracing::warn!(pod = %name, error = %e, "final delete failed"),
    }
}

/// Report the pod's status when it changed.
async fn report(agent: &Agent, pod: &Pod, r: &mut Run) {
    let running = r.child.is_some();
    let started = running && r.startup.as_ref().is_none_or(|p| p.ok);
    let ready = started && r.readiness.as_ref().is_none_or(|p| p.ok);
    let finished =
        !running && r.restart_at.is_none() && r.last_exit.is_some() && r.waiting.is_none();
    let phase = if running {
        "Running"
    } else if finished {
        let ok = r
            .last_exit
            .as_ref()
            .is_some_and(|e| e["terminated"]["exitCode"] == 0);
        if ok { "Succeeded" } else { "Failed" }
    } else if r.restarts > 0 || r.last_exit.is_some() {
        "Running"
    } else {
        "Pending"
    };
    let state = if let Some((_, at)) = &r.started_at {
        json!({"running": {"startedAt": at}})
    } else if let Some((reason, message)) = &r.waiting {
        json!({"waiting": {"reason": reason, "message": message}})
    } else {
        r.last_exit.clone().unwrap_or(json!({"waiting": {}}))
    };
    let flag = |b: bool| if b { "True" } else { "False" };
    let wanted = [
        ("PodScheduled", "True"),
        ("Initialized", "True"),
        ("ContainersReady", flag(ready)),
        ("Ready", flag(ready)),
    ];
    let mut conditions = Vec::new();
    for (t, status) in wanted {
        let entry = r
            .transitions
            .entry(t.to_string())
            .or_insert_with(|| (status.to_string(), now()));
        if entry.0 != status {
            *entry = (status.to_string(), now());
        }
        conditions.push(json!({"type": t, "status": status, "lastTransitionTime": entry.1}));
    }
    let mut cs = json!({
        "name": r.container["name"], "image": r.image, "imageID": "", "ready": ready,
        "started": started, "restartCount": r.restarts, "state": state,
    });
    if let Some(e) = &r.last_exit
        && running
    {
        cs["lastState"] = e.clone();
    }
    let status = json!({
        "phase": phase, "hostIP": "127.0.0.1", "hostIPs": [{"ip": "127.0.0.1"}],
        "podIP": r.ip.to_string(), "podIPs": [{"ip": r.ip.to_string()}],
        "startTime": r.start_time, "conditions": conditions, "containerStatuses": [cs],
    });
    if r.reported.as_ref() == Some(&status) {
        return;
    }
    let api: Api<Pod> = Api::namespaced(
        agent.client.clone(),
        &pod.metadata.namespace.clone().unwrap_or_default(),
    );
    let name = pod.metadata.name.clone().unwrap_or_default();
    match api
        .patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": status})),
        )
        .await
    {
        Ok(_) => r.reported = Some(status),
        Err(kube::Error::Api(e)) if e.code == 404 => {}
        Err(e) => tracing::warn!(pod = %name, error = %e, "status update failed"),
    }
}

/// Stop every container (the agent is shutting down): SIGTERM, then SIGKILL after 10 s.
pub async fn stop_all(runs: &Runs) {
    let mut runs = runs.lock().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut left = 0;
        for r in runs.values_mut() {
            let grace = deadline.saturating_duration_since(Instant::now());
            if !stop(r, grace) {
                left += 1;
            }
        }
        if left == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
