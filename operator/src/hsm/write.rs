//! The writes of the ManagedHsm controller: its children (server-side apply, only when their
//! hash changed), its status (only when it changed), and its Events.

use super::plan::children::{self, Children};
use crate::conditions as c;
use crate::context::{At, Context, Error, Namespaced, apply_status, publish_on};
use crate::crd::{ManagedHsm, ManagedHsmStatus};
use crate::pool::names::FIELD_MANAGER;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde_json::json;

/// Annotation on every child with the hash of its desired state.
pub const APPLIED_HASH_ANNOTATION: &str = "keystead.io/applied-hash";

/// Hash of a desired object (what the annotation records).
fn desired_hash<T: Serialize>(obj: &T) -> String {
    children::template_hash(&serde_json::to_value(obj).unwrap_or_default())
}

/// Server-side apply `obj` unless the live object already carries its hash. Returns whether
/// it wrote.
async fn apply_child<K: Namespaced + Serialize>(
    client: &Client,
    ns: &str,
    obj: K,
) -> Result<bool, Error> {
    let name = obj.meta().name.clone().unwrap_or_default();
    let live = Api::<K>::namespaced(client.clone(), ns)
        .get_opt(&name)
        .await
        .at(format!("reading the {} {name}", K::kind(&())))?;
    apply_over(client, ns, obj, live.as_ref()).await
}

/// [`apply_child`] over a live object this reconcile has already read.
async fn apply_over<K: Namespaced + Serialize>(
    client: &Client,
    ns: &str,
    mut obj: K,
    live: Option<&K>,
) -> Result<bool, Error> {
    let name = obj.meta().name.clone().unwrap_or_default();
    let hash = desired_hash(&obj);
    if live.is_some_and(|l| l.annotations().get(APPLIED_HASH_ANNOTATION) == Some(&hash)) {
        return Ok(false);
    }
    let step = || format!("applying the {} {name}", K::kind(&()));
    obj.annotations_mut()
        .insert(APPLIED_HASH_ANNOTATION.into(), hash);
    let mut value = serde_json::to_value(&obj).map_err(|e| Error::internal(step(), e))?;
    value["apiVersion"] = json!(K::api_version(&()));
    value["kind"] = json!(K::kind(&()));
    Api::<K>::namespaced(client.clone(), ns)
        .patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&value),
        )
        .await
        .at(step())?;
    Ok(true)
}

/// Apply every child; the pool's CA and TLS Secrets over their live objects read at the start
/// of the reconcile. Destructured without `..` so that a new child cannot be forgotten.
pub async fn apply_children(
    client: &Client,
    ns: &str,
    ch: Children,
    live_secrets: (Option<&Secret>, Option<&Secret>),
) -> Result<usize, Error> {
    let Children {
        service_account,
        headless_service,
        client_service,
        config_map,
        ca_bundle,
        ca_secret,
        tls_secret,
        statefulset,
        pdb,
        network_policy,
    } = ch;
    let (live_ca, live_tls) = live_secrets;
    let mut n = 0;
    n += usize::from(apply_child::<ServiceAccount>(client, ns, service_account).await?);
    n += usize::from(apply_child::<Service>(client, ns, headless_service).await?);
    n += usize::from(apply_child::<Service>(client, ns, client_service).await?);
    n += usize::from(apply_over::<Secret>(client, ns, ca_secret, live_ca).await?);
    n += usize::from(apply_over::<Secret>(client, ns, tls_secret, live_tls).await?);
    n += usize::from(apply_child::<ConfigMap>(client, ns, ca_bundle).await?);
    n += usize::from(apply_child::<ConfigMap>(client, ns, config_map).await?);
    n += usize::from(apply_child::<StatefulSet>(client, ns, statefulset).await?);
    n += usize::from(apply_child::<PodDisruptionBudget>(client, ns, pdb).await?);
    n += usize::from(apply_child::<NetworkPolicy>(client, ns, network_policy).await?);
    Ok(n)
}

/// Patch the status only when it differs from the live one. Returns whether it wrote.
pub async fn write_status(
    ctx: &Context,
    hsm: &ManagedHsm,
    status: ManagedHsmStatus,
) -> Result<bool, Error> {
    if hsm.status.as_ref() == Some(&status) {
        return Ok(false);
    }
    apply_status(ctx, hsm, &status).await?;
    Ok(true)
}

/// Publish an Event about the ManagedHsm.
pub async fn publish(
    ctx: &Context,
    hsm: &ManagedHsm,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    publish_on(ctx, &hsm.object_ref(&()), type_, reason, action, note).await;
}

/// Emit an Event when the phase changes.
pub async fn phase_event(ctx: &Context, hsm: &ManagedHsm, new: &ManagedHsmStatus) {
    let old = hsm.status.as_ref().and_then(|s| s.phase.clone());
    if old != new.phase {
        let ready = c::find(&new.conditions, c::READY);
        let type_ = if ready.is_some_and(|r| r.status == "True") {
            EventType::Normal
        } else {
            EventType::Warning
        };
        let reason = ready
            .map(|r| r.reason.clone())
            .unwrap_or_else(|| "PhaseChanged".into());
        let note = format!(
            "phase {:?} -> {:?}: {}",
            old,
            new.phase,
            ready.map(|r| r.message.clone()).unwrap_or_default()
        );
        publish(ctx, hsm, type_, &reason, "Reconcile", note).await;
    }
}
