//! Node registration and heartbeats: the Node object with its zone labels and capacity, its
//! status (Ready) every 20 s and its Lease in `kube-node-lease` every 10 s, as a kubelet does.

use crate::Agent;
use anyhow::bail;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

const LEASE_SECONDS: i32 = 40;

#[derive(Debug, Clone)]
pub struct NodeSpec {
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

impl NodeSpec {
    /// `NAME=ZONE[,LABEL=VALUE...]`.
    pub fn parse(s: &str) -> anyhow::Result<Self> {
        let mut parts = s.split(',');
        let first = parts.next().unwrap_or_default();
        let Some((name, zone)) = first.split_once('=') else {
            bail!("--node {s}: expected NAME=ZONE[,LABEL=VALUE...]");
        };
        let mut labels = BTreeMap::from([
            ("kubernetes.io/hostname".to_string(), name.to_string()),
            ("kubernetes.io/os".to_string(), "linux".to_string()),
            ("kubernetes.io/arch".to_string(), "amd64".to_string()),
            ("topology.kubernetes.io/zone".to_string(), zone.to_string()),
        ]);
        for p in parts {
            let Some((k, v)) = p.split_once('=') else {
                bail!("--node {s}: label {p} is not LABEL=VALUE");
            };
            labels.insert(k.to_string(), v.to_string());
        }
        Ok(Self {
            name: name.to_string(),
            labels,
        })
    }
}

pub async fn run(agent: Arc<Agent>) -> anyhow::Result<()> {
    let nodes: Api<Node> = Api::all(agent.client.clone());
    for n in &agent.nodes {
        register(&nodes, n).await?;
    }
    let mut tick = 0u64;
    loop {
        for n in &agent.nodes {
            if let Err(e) = renew_lease(&agent, &n.name).await {
                tracing::warn!(node = %n.name, error = %e, "lease renewal failed");
            }
            if tick.is_multiple_of(2)
                && let Err(e) = report_status(&nodes, &n.name).await
            {
                tracing::warn!(node = %n.name, error = %e, "node status update failed");
            }
        }
        tick += 1;
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
}

async fn register(nodes: &Api<Node>, n: &NodeSpec) -> anyhow::Result<()> {
    let node: Node = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": n.name, "labels": n.labels},
    }))?;
    match nodes.create(&PostParams::default(), &node).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {
            nodes
                .patch(
                    &n.name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"metadata": {"labels": n.labels}})),
                )
                .await?;
        }
        Err(e) => return Err(e.into()),
    }
    report_status(nodes, &n.name).await
}

fn now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

async fn report_status(nodes: &Api<Node>, name: &str) -> anyhow::Result<()> {
    let now = now();
    let cond = |t: &str, status: &str, reason: &str| -> Value {
        json!({"type": t, "status": status, "reason": reason, "message": reason,
               "lastHeartbeatTime": now, "lastTransitionTime": now})
    };
    let capacity =
        json!({"cpu": "8", "memory": "16Gi", "pods": "110", "ephemeral-storage": "100Gi"});
    let status = json!({"status": {
        "capacity": capacity,
        "allocatable": capacity,
        "conditions": [
            cond("Ready", "True", "KubeletReady"),
            cond("MemoryPressure", "False", "KubeletHasSufficientMemory"),
            cond("DiskPressure", "False", "KubeletHasNoDiskPressure"),
            cond("PIDPressure", "False", "KubeletHasSufficientPID"),
        ],
        "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": name}],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
        "nodeInfo": {
            "machineID": name, "systemUUID": name, "bootID": name,
            "kernelVersion": "", "osImage": "keystead node agent (local processes)",
            "containerRuntimeVersion": "keystead-node-agent://0", "kubeletVersion": "v1.37.2",
            "kubeProxyVersion": "", "operatingSystem": "linux", "architecture": "amd64",
        },
    }});
    // Conditions keep their transition time: merge them as the API server's strategic merge
    // does (by type), so only the heartbeat moves.
    nodes
        .patch_status(name, &PatchParams::default(), &Patch::Strategic(status))
        .await?;
    Ok(())
}

async fn renew_lease(agent: &Agent, node: &str) -> anyhow::Result<()> {
    let leases: Api<Lease> = Api::namespaced(agent.client.clone(), "kube-node-lease");
    let now = k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string();
    let lease = json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": node, "namespace": "kube-node-lease"},
        "spec": {"holderIdentity": node, "leaseDurationSeconds": LEASE_SECONDS, "renewTime": now},
    });
    leases
        .patch(
            node,
            &PatchParams::apply("keystead-node-agent").force(),
            &Patch::Apply(lease),
        )
        .await?;
    Ok(())
}
