//! Soft delete of a ManagedHsm, carried out on the cluster: retaining the pool's data when it
//! is deleted (the finalizer's cleanup), adopting it again on recovery, and the sweeper that
//! purges it when its retention is over. The decisions are in `plan::lifecycle`.

use super::observe::PoolSecrets;
use super::plan::lifecycle::{
    self, PURGE_AFTER_ANNOTATION, PURGE_PROTECTED_ANNOTATION, PURGE_REQUEST_ANNOTATION,
    PurgeDecision, SOFT_DELETED_LABEL,
};
use super::write::publish;
use crate::context::{At, Context, Error, Namespaced};
use crate::crd::ManagedHsm;
use crate::pool::names::Names;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Secret};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action as Requeue;
use kube::runtime::events::EventType;
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use std::sync::Arc;

/// Remove the soft-delete marks from retained objects (recovery). `secrets` are the pool's
/// Secrets as this reconcile read them.
pub async fn unmark_retained(
    ctx: &Context,
    names: &Names,
    secrets: &PoolSecrets,
    partitions: i32,
) -> Result<(), Error> {
    let patch = json!({"metadata": {
        "annotations": {PURGE_AFTER_ANNOTATION: null, PURGE_PROTECTED_ANNOTATION: null, PURGE_REQUEST_ANNOTATION: null},
        "labels": {SOFT_DELETED_LABEL: null},
    }});
    let pp = PatchParams::default();
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &names.namespace);
    let (ca, tls) = secrets.both();
    for (name, live) in [(&names.ca_secret, ca), (&names.tls_secret, tls)] {
        if live.is_some() {
            api.patch(name, &pp, &Patch::Merge(&patch))
                .await
                .at(format!("recovering the retained Secret {name}"))?;
        }
    }
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &names.namespace);
    for pod in names.pods(partitions) {
        let pvc = names.pvc(&pod);
        let step = || format!("recovering the retained volume {pvc}");
        if pvcs.get_opt(&pvc).await.at(step())?.is_some() {
            pvcs.patch(&pvc, &pp, &Patch::Merge(&patch))
                .await
                .at(step())?;
        }
    }
    Ok(())
}

/// Soft delete: keep the encrypted data (PVCs) and the pool's CA and TLS Secrets with a
/// purge date, detached from the ManagedHsm so garbage collection keeps them; everything
/// else is garbage-collected through its ownerReference.
pub async fn cleanup(hsm: Arc<ManagedHsm>, ctx: Arc<Context>) -> Result<Requeue, Error> {
    let names = Names::of(&hsm).at("naming the pool's objects")?;
    let deleted_at = hsm
        .metadata
        .deletion_timestamp
        .as_ref()
        .map(|t| t.0)
        .unwrap_or_else(Timestamp::now);
    let ann = lifecycle::soft_delete_annotations(
        deleted_at,
        hsm.spec.soft_delete_retention_days,
        hsm.spec.purge_protection,
    );
    let patch = json!({"metadata": {
        "annotations": ann,
        "labels": {SOFT_DELETED_LABEL: names.pool},
        "ownerReferences": null,
    }});
    let pp = PatchParams::default();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &names.namespace);
    for s in [&names.ca_secret, &names.tls_secret] {
        let step = || format!("retaining the Secret {s}");
        // Data already retained from an earlier incarnation keeps its own purge date.
        if secrets
            .get_opt(s)
            .await
            .at(step())?
            .is_some_and(|o| !o.annotations().contains_key(PURGE_AFTER_ANNOTATION))
        {
            secrets
                .patch(s, &pp, &Patch::Merge(&patch))
                .await
                .at(step())?;
        }
    }
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &names.namespace);
    for pod in names.pods(hsm.spec.partitions) {
        let pvc = names.pvc(&pod);
        let step = || format!("retaining the volume {pvc}");
        if pvcs
            .get_opt(&pvc)
            .await
            .at(step())?
            .is_some_and(|o| !o.annotations().contains_key(PURGE_AFTER_ANNOTATION))
        {
            pvcs.patch(&pvc, &pp, &Patch::Merge(&patch))
                .await
                .at(step())?;
        }
    }
    let until = ann.get(PURGE_AFTER_ANNOTATION).cloned().unwrap_or_default();
    publish(
        &ctx,
        &hsm,
        EventType::Normal,
        "SoftDeleted",
        "SoftDelete",
        format!("pool data retained until {until} (volumes {}-*, Secrets {}, {}); re-create the ManagedHsm with spec.recover: true to recover it", names.pvc(&names.statefulset), names.ca_secret, names.tls_secret),
    )
    .await;
    ctx.metrics.forget_pool(&names.namespace, &names.pool);
    Ok(Requeue::await_change())
}

/// One pass of the purge sweeper: delete retained objects of soft-deleted pools whose
/// retention is over (or whose early purge was asked without purge protection). Returns the
/// number of objects deleted.
pub async fn purge_sweep(client: &Client) -> Result<usize, Error> {
    let lp = ListParams::default().labels(SOFT_DELETED_LABEL);
    let now = Timestamp::now();
    let mut deleted = 0;
    let secrets: Api<Secret> = Api::all(client.clone());
    let step = "listing the retained Secrets of soft-deleted pools";
    for s in secrets.list(&lp).await.at(step)?.items {
        deleted += usize::from(purge_one::<Secret>(client, &s, now).await?);
    }
    let pvcs: Api<PersistentVolumeClaim> = Api::all(client.clone());
    let step = "listing the retained volumes of soft-deleted pools";
    for p in pvcs.list(&lp).await.at(step)?.items {
        deleted += usize::from(purge_one::<PersistentVolumeClaim>(client, &p, now).await?);
    }
    Ok(deleted)
}

async fn purge_one<K: Namespaced>(client: &Client, obj: &K, now: Timestamp) -> Result<bool, Error> {
    let (Some(ns), name) = (obj.namespace(), obj.name_any()) else {
        return Ok(false);
    };
    match lifecycle::purge_decision(obj.annotations(), now) {
        PurgeDecision::Purge => {
            tracing::info!(namespace = %ns, name = %name, kind = %K::kind(&()), "purging retained data of a soft-deleted pool");
            Api::<K>::namespaced(client.clone(), &ns)
                .delete(&name, &DeleteParams::default())
                .await
                .at(format!("purging the {} {name}", K::kind(&())))?;
            Ok(true)
        }
        PurgeDecision::EarlyPurgeRefused { until } => {
            tracing::warn!(namespace = %ns, name = %name, %until, "early purge refused: the pool had purge protection");
            Ok(false)
        }
        PurgeDecision::Unreadable(why) => {
            tracing::warn!(namespace = %ns, name = %name, %why, "retained object with an unreadable purge date kept");
            Ok(false)
        }
        PurgeDecision::Keep { .. } | PurgeDecision::NotSoftDeleted => Ok(false),
    }
}
