//! The local provisioner: a claim of the agent's StorageClass (WaitForFirstConsumer) gets a
//! `local` PersistentVolume on the Node the scheduler selected, backed by a host directory;
//! a released volume of the Delete policy is removed with its directory.

use crate::Agent;
use k8s_openapi::api::core::v1::PersistentVolume;
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use serde_json::json;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub const PROVISIONER: &str = "keystead.dev/local-directory";
const SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";
const PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";

pub async fn run(agent: Arc<Agent>) -> anyhow::Result<()> {
    loop {
        let changed = agent.caches.changed.notified();
        if let Err(e) = sync(&agent).await {
            tracing::warn!(error = %e, "provisioner pass failed");
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), changed).await;
    }
}

/// The host directory of a provisioned volume.
pub fn volume_dir(agent: &Agent, pv: &str) -> PathBuf {
    agent.dir.join("volumes").join(pv)
}

async fn sync(agent: &Agent) -> anyhow::Result<()> {
    let volumes: Api<PersistentVolume> = Api::all(agent.client.clone());
    for pvc in agent.caches.claims.state() {
        let spec = pvc.spec.clone().unwrap_or_default();
        if spec.storage_class_name.as_deref() != Some(&agent.storage_class)
            || spec.volume_name.as_deref().is_some_and(|v| !v.is_empty())
            || pvc.metadata.deletion_timestamp.is_some()
        {
            continue;
        }
        let annotations = pvc.metadata.annotations.clone().unwrap_or_default();
        let Some(node) = annotations.get(SELECTED_NODE) else {
            continue;
        };
        if !agent.serves(node) {
            continue;
        }
        let uid = pvc.metadata.uid.clone().unwrap_or_default();
        let name = format!("pvc-{uid}");
        let dir = volume_dir(agent, &name);
        std::fs::create_dir_all(&dir)?;
        let size = spec
            .resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get("storage"))
            .map(|q| q.0.clone())
            .unwrap_or_else(|| "1Gi".into());
        let modes = spec
            .access_modes
            .clone()
            .unwrap_or_else(|| vec!["ReadWriteOnce".into()]);
        let mut pv = json!({
            "apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": name, "annotations": {PROVISIONED_BY: PROVISIONER}},
            "spec": {
                "capacity": {"storage": size},
                "accessModes": modes,
                "persistentVolumeReclaimPolicy": "Delete",
                "storageClassName": agent.storage_class,
                "volumeMode": "Filesystem",
                "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                    "namespace": pvc.metadata.namespace, "name": pvc.metadata.name, "uid": uid},
            },
        });
        if modes
            .iter()
            .any(|m| m == "ReadWriteMany" || m == "ReadOnlyMany")
        {
            // Every Node of this agent shares the host's file system: a shared claim is a
            // host directory any of them can mount (like an NFS export).
            pv["spec"]["hostPath"] =
                json!({"path": dir.display().to_string(), "type": "Directory"});
        } else {
            // A single-node claim stays on the Node the scheduler picked, as a local disk.
            pv["spec"]["local"] = json!({"path": dir.display().to_string()});
            pv["spec"]["nodeAffinity"] = json!({"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}]}]}});
        }
        let pv: PersistentVolume = serde_json::from_value(pv)?;
        match volumes.create(&PostParams::default(), &pv).await {
            Ok(_) => tracing::info!(pv = %name, node = %node, "provisioned"),
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    for pv in agent.caches.volumes.state() {
        let ours = pv
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(PROVISIONED_BY))
            .is_some_and(|p| p == PROVISIONER);
        let released = pv
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .is_some_and(|p| p == "Released" || p == "Failed");
        let path = pv.spec.as_ref().and_then(|s| {
            s.local
                .as_ref()
                .map(|l| PathBuf::from(&l.path))
                .or_else(|| s.host_path.as_ref().map(|h| PathBuf::from(&h.path)))
        });
        let mine = path
            .as_ref()
            .is_some_and(|p| p.starts_with(agent.dir.join("volumes")));
        if ours && released && mine {
            let name = pv.metadata.name.clone().unwrap_or_default();
            if let Some(p) = path {
                let _ = std::fs::remove_dir_all(p);
            }
            match volumes.delete(&name, &DeleteParams::default()).await {
                Ok(_) => tracing::info!(pv = %name, "released volume deleted"),
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(())
}
