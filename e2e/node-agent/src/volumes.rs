//! A pod's volumes as directories: PersistentVolumeClaims (their `local` volume's directory),
//! ConfigMaps, Secrets, projected sources (service-account tokens from the TokenRequest API,
//! renewed at 80 % of their lifetime; ConfigMaps; Secrets; the downward API), emptyDirs and
//! hostPaths. Without a mount namespace, container paths are mapped to those directories in
//! the container's arguments and in the JSON files of its ConfigMap volumes.

use crate::Agent;
use anyhow::{Context, anyhow};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, ServiceAccount};
use kube::Api;
use kube::api::PostParams;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub const SA_MOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// The volumes of one running pod.
#[derive(Default)]
pub struct Volumes {
    /// Container path → host directory, longest first.
    pub mounts: Vec<(String, PathBuf)>,
    /// Token file → when to renew it.
    pub renew_at: HashMap<PathBuf, Instant>,
}

impl Volumes {
    /// The host path of a container path, if it lies under a mount.
    pub fn map_path(&self, p: &str) -> Option<String> {
        self.mounts.iter().find_map(|(m, d)| {
            let rest = p.strip_prefix(m.as_str())?;
            (rest.is_empty() || rest.starts_with('/')).then(|| format!("{}{rest}", d.display()))
        })
    }

    /// An argument with container paths mapped (`/x/y` and `--flag=/x/y`) and
    /// `0.0.0.0:port` bound to the pod's address.
    pub fn map_arg(&self, a: &str, ip: IpAddr) -> String {
        let a = a.replace("0.0.0.0:", &format!("{ip}:"));
        if let Some(p) = self.map_path(&a) {
            return p;
        }
        if let Some((flag, value)) = a.split_once('=')
            && let Some(p) = self.map_path(value)
        {
            return format!("{flag}={p}");
        }
        a
    }
}

fn s(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}

/// Write the pod's volumes under `dir` (again: a later call rewrites what changed and renews
/// tokens that are due) and return the mounts of its first container.
pub async fn project(
    agent: &Agent,
    pod: &Pod,
    dir: &Path,
    ip: IpAddr,
    previous: &Volumes,
) -> anyhow::Result<Volumes> {
    let pod_v = serde_json::to_value(pod)?;
    let ns = s(&pod_v["metadata"]["namespace"]);
    let spec = &pod_v["spec"];
    let container = &spec["containers"][0];
    let volumes = spec["volumes"].as_array().cloned().unwrap_or_default();
    // Directories first: the mounts map container paths inside the content written below.
    let mut dirs: HashMap<String, PathBuf> = HashMap::new();
    for v in &volumes {
        let vname = s(&v["name"]);
        let vdir = if let Some(claim) = v["persistentVolumeClaim"]["claimName"].as_str() {
            claim_dir(agent, &ns, claim)?
        } else if let Some(p) = v["hostPath"]["path"].as_str() {
            PathBuf::from(p)
        } else {
            dir.join("volumes").join(&vname)
        };
        std::fs::create_dir_all(&vdir)?;
        dirs.insert(vname, vdir);
    }
    let mut out = Volumes::default();
    for m in container["volumeMounts"]
        .as_array()
        .cloned()
        .unwrap_or_default()
    {
        if let Some(d) = dirs.get(&s(&m["name"])) {
            let sub = s(&m["subPath"]);
            let d = if sub.is_empty() {
                d.clone()
            } else {
                d.join(sub)
            };
            out.mounts.push((s(&m["mountPath"]), d));
        }
    }
    out.mounts.sort_by_key(|m| std::cmp::Reverse(m.0.len()));
    // The pod's network namespace and DNS, for the JSON configuration in ConfigMap volumes.
    let net = Net {
        ip,
        dns: dns_records(agent),
    };
    for v in &volumes {
        let vdir = &dirs[&s(&v["name"])];
        let mode = |src: &Value| src["defaultMode"].as_u64().map(|m| m as u32);
        if v.get("configMap").is_some() {
            let m = mode(&v["configMap"]);
            config_map(agent, &ns, &v["configMap"], vdir, m, Some((&out, &net))).await?;
        } else if v.get("secret").is_some() {
            let src = json!({"name": v["secret"]["secretName"], "items": v["secret"]["items"],
                             "optional": v["secret"]["optional"]});
            secret(agent, &ns, &src, vdir, mode(&v["secret"])).await?;
        } else if v.get("downwardAPI").is_some() {
            downward(&pod_v, &v["downwardAPI"]["items"], vdir)?;
        } else if let Some(sources) = v["projected"]["sources"].as_array() {
            let m = mode(&v["projected"]);
            for src in sources {
                if src.get("secret").is_some() {
                    secret(agent, &ns, &src["secret"], vdir, m).await?;
                } else if src.get("configMap").is_some() {
                    config_map(agent, &ns, &src["configMap"], vdir, m, None).await?;
                } else if src.get("downwardAPI").is_some() {
                    downward(&pod_v, &src["downwardAPI"]["items"], vdir)?;
                } else if let Some(t) = src.get("serviceAccountToken") {
                    let path = vdir.join(s(&t["path"]));
                    match previous.renew_at.get(&path) {
                        Some(at) if *at > Instant::now() && path.exists() => {
                            out.renew_at.insert(path, *at);
                        }
                        _ => {
                            let renew = token(agent, &pod_v, t, &path).await?;
                            out.renew_at.insert(path, renew);
                        }
                    }
                }
            }
        }
    }
    Ok(out)
}

/// What a pod's JSON configuration is rewritten with: its address and the cluster's DNS.
struct Net {
    ip: IpAddr,
    dns: BTreeMap<String, IpAddr>,
}

/// The directory of a bound claim's volume.
fn claim_dir(agent: &Agent, ns: &str, claim: &str) -> anyhow::Result<PathBuf> {
    let pvc = agent
        .caches
        .claims
        .state()
        .into_iter()
        .find(|c| {
            c.metadata.namespace.as_deref() == Some(ns) && c.metadata.name.as_deref() == Some(claim)
        })
        .ok_or_else(|| anyhow!("PersistentVolumeClaim {ns}/{claim} does not exist"))?;
    let volume = pvc
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.clone())
        .filter(|v| !v.is_empty())
        .ok_or_else(|| anyhow!("PersistentVolumeClaim {ns}/{claim} is not bound yet"))?;
    let pv = agent
        .caches
        .volumes
        .state()
        .into_iter()
        .find(|v| v.metadata.name.as_deref() == Some(&volume))
        .ok_or_else(|| anyhow!("PersistentVolume {volume} is not known yet"))?;
    let spec = pv.spec.clone().unwrap_or_default();
    if let Some(l) = spec.local {
        return Ok(PathBuf::from(l.path));
    }
    if let Some(h) = spec.host_path {
        return Ok(PathBuf::from(h.path));
    }
    Err(anyhow!(
        "PersistentVolume {volume} is neither `local` nor `hostPath`: this node agent mounts only host directories"
    ))
}

/// `(key, relative path, mode)` of a volume source: its `items`, or every key.
fn items(spec: &Value, keys: Vec<String>) -> Vec<(String, String, Option<u32>)> {
    match spec["items"].as_array() {
        Some(list) => list
            .iter()
            .map(|i| {
                (
                    s(&i["key"]),
                    s(&i["path"]),
                    i["mode"].as_u64().map(|m| m as u32),
                )
            })
            .collect(),
        None => keys.into_iter().map(|k| (k.clone(), k, None)).collect(),
    }
}

async fn config_map(
    agent: &Agent,
    ns: &str,
    src: &Value,
    dir: &Path,
    mode: Option<u32>,
    json_rewrite: Option<(&Volumes, &Net)>,
) -> anyhow::Result<()> {
    let name = s(&src["name"]);
    let api: Api<ConfigMap> = Api::namespaced(agent.client.clone(), ns);
    let Some(cm) = api.get_opt(&name).await? else {
        if src["optional"] == json!(true) {
            return Ok(());
        }
        return Err(anyhow!("ConfigMap {ns}/{name} does not exist"));
    };
    let data = cm.data.unwrap_or_default();
    for (k, path, m) in items(src, data.keys().cloned().collect()) {
        let text = data
            .get(&k)
            .ok_or_else(|| anyhow!("ConfigMap {ns}/{name} has no key {k}"))?;
        let mut bytes = text.as_bytes().to_vec();
        if let Some((vols, net)) = json_rewrite
            && path.ends_with(".json")
            && let Ok(mut doc) = serde_json::from_slice::<Value>(&bytes)
        {
            rewrite(&mut doc, vols, net.ip);
            if doc.get("peers").is_some() {
                doc["hostAddresses"] = json!(net.dns);
            }
            bytes = serde_json::to_vec_pretty(&doc)?;
        }
        write_if_changed(&dir.join(path), &bytes, m.or(mode))?;
    }
    Ok(())
}

async fn secret(
    agent: &Agent,
    ns: &str,
    src: &Value,
    dir: &Path,
    mode: Option<u32>,
) -> anyhow::Result<()> {
    let name = s(&src["name"]);
    let api: Api<Secret> = Api::namespaced(agent.client.clone(), ns);
    let Some(sec) = api.get_opt(&name).await? else {
        if src["optional"] == json!(true) {
            return Ok(());
        }
        return Err(anyhow!("Secret {ns}/{name} does not exist"));
    };
    let data: BTreeMap<String, Vec<u8>> = sec
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    for (k, path, m) in items(src, data.keys().cloned().collect()) {
        let bytes = data
            .get(&k)
            .ok_or_else(|| anyhow!("Secret {ns}/{name} has no key {k}"))?;
        write_if_changed(&dir.join(path), bytes, Some(m.or(mode).unwrap_or(0o600)))?;
    }
    Ok(())
}

fn downward(pod: &Value, list: &Value, dir: &Path) -> anyhow::Result<()> {
    for i in list.as_array().cloned().unwrap_or_default() {
        let field = s(&i["fieldRef"]["fieldPath"]);
        let text = field_value(pod, &field)
            .ok_or_else(|| anyhow!("downward API field {field} is not supported"))?;
        write_if_changed(&dir.join(s(&i["path"])), text.as_bytes(), None)?;
    }
    Ok(())
}

/// A pod field as the downward API gives it (`status.podIP` is filled in by the caller).
pub fn field_value(pod: &Value, field: &str) -> Option<String> {
    let m = &pod["metadata"];
    Some(match field {
        "metadata.name" => s(&m["name"]),
        "metadata.namespace" => s(&m["namespace"]),
        "metadata.uid" => s(&m["uid"]),
        "spec.nodeName" => s(&pod["spec"]["nodeName"]),
        "spec.serviceAccountName" => s(&pod["spec"]["serviceAccountName"]),
        "metadata.labels" | "metadata.annotations" => {
            let key = field.trim_start_matches("metadata.");
            m[key]
                .as_object()
                .map(|o| {
                    o.iter()
                        .map(|(k, v)| format!("{k}=\"{}\"\n", s(v)))
                        .collect::<String>()
                })
                .unwrap_or_default()
        }
        _ => {
            let (map, key) = field
                .strip_prefix("metadata.labels['")
                .map(|k| ("labels", k))
                .or_else(|| {
                    field
                        .strip_prefix("metadata.annotations['")
                        .map(|k| ("annotations", k))
                })?;
            s(&m[map][key.trim_end_matches("']")])
        }
    })
}

/// A pod-bound token from the TokenRequest API; returns when to renew it (80 % of its life).
async fn token(agent: &Agent, pod: &Value, src: &Value, path: &Path) -> anyhow::Result<Instant> {
    let ns = s(&pod["metadata"]["namespace"]);
    let sa = pod["spec"]["serviceAccountName"]
        .as_str()
        .unwrap_or("default")
        .to_string();
    let ttl = src["expirationSeconds"].as_u64().unwrap_or(3600).max(600);
    let mut spec = json!({
        "expirationSeconds": ttl,
        "boundObjectRef": {"kind": "Pod", "apiVersion": "v1",
            "name": pod["metadata"]["name"], "uid": pod["metadata"]["uid"]},
    });
    if let Some(aud) = src["audience"].as_str().filter(|a| !a.is_empty()) {
        spec["audiences"] = json!([aud]);
    }
    let body =
        json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec});
    let api: Api<ServiceAccount> = Api::namespaced(agent.client.clone(), &ns);
    let answer: Value = api
        .create_subresource("token", &sa, &PostParams::default(), &body)
        .await
        .with_context(|| format!("TokenRequest for {ns}/{sa}"))?;
    let token = answer["status"]["token"]
        .as_str()
        .ok_or_else(|| anyhow!("TokenRequest for {ns}/{sa} returned no token"))?;
    write_if_changed(path, token.as_bytes(), Some(0o600))?;
    Ok(Instant::now() + Duration::from_secs(ttl * 8 / 10))
}

/// Cluster DNS records of the StatefulSets' pods (`<pod>.<service>.<ns>.svc[.<domain>]`).
pub fn dns_records(agent: &Agent) -> BTreeMap<String, IpAddr> {
    let mut out = BTreeMap::new();
    for sts in agent.caches.statefulsets.state() {
        let ns = sts.metadata.namespace.clone().unwrap_or_default();
        let name = sts.metadata.name.clone().unwrap_or_default();
        let spec = sts.spec.clone().unwrap_or_default();
        let svc = spec.service_name.clone().unwrap_or_default();
        for i in 0..spec.replicas.unwrap_or(1).max(0) {
            let pod = format!("{name}-{i}");
            let ip = IpAddr::V4(agent.addresses.of(&ns, &pod));
            out.insert(format!("{pod}.{svc}.{ns}.svc"), ip);
            out.insert(format!("{pod}.{svc}.{ns}.svc.{}", agent.cluster_domain), ip);
        }
    }
    out
}

/// Container paths → host paths; `0.0.0.0:<port>` → `<podIP>:<port>`.
fn rewrite(v: &mut Value, vols: &Volumes, ip: IpAddr) {
    match v {
        Value::String(text) => {
            if let Some(port) = text.strip_prefix("0.0.0.0:") {
                *text = format!("{ip}:{port}");
            } else if let Some(p) = vols.map_path(text) {
                *text = p;
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|x| rewrite(x, vols, ip)),
        Value::Object(o) => o.values_mut().for_each(|x| rewrite(x, vols, ip)),
        _ => {}
    }
}

/// Replace a file atomically (write a temporary file, rename) when its content differs.
pub fn write_if_changed(path: &Path, bytes: &[u8], mode: Option<u32>) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if std::fs::read(path).is_ok_and(|old| old == bytes) {
        return Ok(());
    }
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p)?;
    }
    let tmp = path.with_extension("agent-tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode.unwrap_or(0o644))
        .open(&tmp)?;
    f.write_all(bytes)?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    Ok(())
}
