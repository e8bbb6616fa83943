//! The reads of the ManagedHsm controller: the pool's CA and TLS Secrets (once per
//! reconcile), its pods and volumes, each Ready partition's admin API, the claims of
//! `spec.backupVolumes`, and the pool's Backups and BackupSchedules.

use super::plan::children::TEMPLATE_HASH_ANNOTATION;
use super::plan::lifecycle::PURGE_AFTER_ANNOTATION;
use super::plan::observed::{ObservedPartition, fill_replication};
use crate::backup::plan::{ClaimFound, ClaimState, PoolBackup};
use crate::context::{At, Context, Error};
use crate::crd::ManagedHsm;
use crate::pool::names::Names;
use crate::pool::reach::{connect, pod_ready, pod_running};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::{Api, ResourceExt};

/// The pool's CA and TLS Secrets as this reconcile read them (each read once).
#[derive(Debug, Default)]
pub struct PoolSecrets {
    pub ca: Option<Secret>,
    pub tls: Option<Secret>,
}

impl PoolSecrets {
    pub async fn read(ctx: &Context, names: &Names) -> Result<Self, Error> {
        let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &names.namespace);
        Ok(Self {
            ca: secrets
                .get_opt(&names.ca_secret)
                .await
                .at("reading the pool's CA Secret")?,
            tls: secrets
                .get_opt(&names.tls_secret)
                .await
                .at("reading the pool's TLS Secret")?,
        })
    }

    /// Both, as references.
    pub fn both(&self) -> (Option<&Secret>, Option<&Secret>) {
        (self.ca.as_ref(), self.tls.as_ref())
    }

    /// The purge date of data retained from a soft-deleted pool of the same name: `None`
    /// when nothing is retained, `Some(None)` when its date is unreadable.
    pub fn retained_until(&self) -> Option<Option<Timestamp>> {
        let retained = self
            .ca
            .as_ref()?
            .annotations()
            .get(PURGE_AFTER_ANNOTATION)?;
        Some(retained.parse::<Timestamp>().ok())
    }
}

/// The scheduler's message for a pod it cannot place (`PodScheduled` False, `Unschedulable`).
fn unschedulable(pod: &Pod) -> Option<String> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| {
            c.type_ == "PodScheduled"
                && c.status == "False"
                && c.reason.as_deref() == Some("Unschedulable")
        })
        .map(|c| c.message.clone().unwrap_or_else(|| "no node fits".into()))
}

fn data_lost(pvc: Option<&PersistentVolumeClaim>, pod: Option<&Pod>) -> bool {
    let lost = pvc
        .and_then(|p| p.status.as_ref())
        .and_then(|s| s.phase.as_deref())
        == Some("Lost");
    let unschedulable = pod
        .and_then(|p| p.status.as_ref())
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| {
            cs.iter().any(|c| {
                c.type_ == "PodScheduled"
                    && c.status == "False"
                    && c.message
                        .as_deref()
                        .is_some_and(|m| m.contains("volume node affinity conflict"))
            })
        });
    lost || unschedulable
}

/// Each partition: its pod, its volume and (when Ready) its admin API, trusting `ca_pem`.
pub async fn partitions(
    ctx: &Context,
    hsm: &ManagedHsm,
    names: &Names,
    ca_pem: &str,
) -> Result<Vec<ObservedPartition>, Error> {
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &names.namespace);
    let mut found = Vec::new();
    for name in names.pods(hsm.spec.partitions) {
        let pod = ctx.pod(&names.namespace, &name).await?;
        let pvc_name = names.pvc(&name);
        let pvc = pvcs
            .get_opt(&pvc_name)
            .await
            .at(format!("reading the PersistentVolumeClaim {pvc_name}"))?;
        found.push((name, pod, pvc));
    }
    let live: Vec<Option<Pod>> = found.iter().map(|(_, p, _)| p.clone()).collect();
    let pool_client = if ctx.read_partitions {
        connect(&ctx.tokens, hsm, names, ca_pem, &live).await
    } else {
        Err("partition admin API reads are disabled".into())
    };
    let mut out = Vec::new();
    for (name, pod, pvc) in found {
        let ready = pod.as_ref().is_some_and(pod_ready);
        // Read from every running partition, Ready or not: one that is not Ready (waiting
        // for the domain, catching up) still says why.
        let running = pod.as_ref().is_some_and(|p| pod_ready(p) || pod_running(p));
        let (admin, admin_error) = match (&pool_client, running) {
            (Ok(pc), true) => match pc.admin_status(&names.partition_url(&name)).await {
                Ok(a) => (Some(a), None),
                Err(e) => (None, Some(e.to_string())),
            },
            (Err(e), true) => (None, Some(e.clone())),
            (_, false) => (None, None),
        };
        out.push(ObservedPartition {
            name: name.clone(),
            pod_exists: pod.is_some(),
            pod_terminating: pod
                .as_ref()
                .is_some_and(|p| p.metadata.deletion_timestamp.is_some()),
            pod_ready: ready,
            template_hash: pod
                .as_ref()
                .and_then(|p| p.annotations().get(TEMPLATE_HASH_ANNOTATION).cloned()),
            pod_uid: pod.as_ref().and_then(|p| p.metadata.uid.clone()),
            pod_created: pod
                .as_ref()
                .and_then(|p| p.metadata.creation_timestamp.clone()),
            data_lost: data_lost(pvc.as_ref(), pod.as_ref()),
            admin,
            lag: None,
            admin_error,
            unschedulable: pod.as_ref().and_then(unschedulable),
        });
    }
    fill_replication(&mut out);
    Ok(out)
}

/// What the claims of `spec.backupVolumes` look like.
pub async fn backup_claims(
    ctx: &Context,
    ns: &str,
    hsm: &ManagedHsm,
) -> Result<Vec<ClaimState>, Error> {
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), ns);
    let mut out = Vec::new();
    for v in &hsm.spec.backup_volumes {
        let found = pvcs
            .get_opt(&v.claim_name)
            .await
            .at(format!("reading the backup claim {}", v.claim_name))?
            .map(|p| ClaimFound {
                phase: p.status.and_then(|s| s.phase),
                access_modes: p.spec.and_then(|s| s.access_modes).unwrap_or_default(),
            });
        out.push(ClaimState {
            name: v.claim_name.clone(),
            found,
        });
    }
    Ok(out)
}

/// The Backups of `pool` in `ns` (any creator) as the pool's condition needs them.
pub async fn pool_backups(ctx: &Context, ns: &str, pool: &str) -> Result<Vec<PoolBackup>, Error> {
    Ok(ctx
        .backups(ns)
        .await?
        .iter()
        .filter(|b| b.spec.hsm_ref.name == pool && b.metadata.deletion_timestamp.is_none())
        .map(PoolBackup::of)
        .collect())
}

/// The earliest next run of the pool's BackupSchedules.
pub async fn next_backup_time(ctx: &Context, ns: &str, pool: &str) -> Result<Option<Time>, Error> {
    Ok(ctx
        .schedules(ns)
        .await?
        .into_iter()
        .filter(|s| s.spec.hsm_ref.name == pool)
        .filter_map(|s| s.status.and_then(|st| st.next_schedule_time))
        .min_by_key(|t| t.0))
}
