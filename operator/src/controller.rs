//! The ManagedHsm controller: dereference → validate → build → apply → status, with the pure
//! steps in `validate`, `children`, `tls`, `decide` and `conditions`.
//!
//! Writes happen only when something changed: each child carries the hash of its desired
//! state in an annotation and is applied (server-side, one field manager) only when the hash
//! differs; the status is patched only when it differs. An idle reconcile issues GETs only.

use crate::children::{
    self, Children, FIELD_MANAGER, HSM_FINALIZER, Names, PURGE_AFTER_ANNOTATION,
    PURGE_PROTECTED_ANNOTATION, SOFT_DELETED_LABEL, Settings, TEMPLATE_HASH_ANNOTATION,
};
use crate::conditions::{self as c};
use crate::crd::{ManagedHsm, ManagedHsmStatus};
use crate::decide::{self, Action, ObservedPartition, RecoveryDecision};
use crate::metrics::Metrics;
use crate::pool_client::{PoolClient, TokenSource};
use crate::tls::{self, CertAction, CertAndKey, TlsState};
use crate::validate;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{
    ConfigMap, PersistentVolumeClaim, Pod, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::runtime::controller::Action as Requeue;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::Arc;
use std::time::{Duration, Instant};
use zeroize::Zeroizing;

/// Annotation on every child with the hash of its desired state.
pub const APPLIED_HASH_ANNOTATION: &str = "keystead.io/applied-hash";

/// Errors of a reconcile; each has a stable metric label.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Build(#[from] children::BuildError),
    #[error("{0}")]
    Tls(#[from] tls::TlsError),
    #[error("soft delete: {0}")]
    Finalizer(String),
    #[error("internal: {0}")]
    Internal(String),
}

impl Error {
    /// The API server refused a create because the namespace is being deleted.
    pub fn namespace_terminating(&self) -> bool {
        matches!(self, Self::Kube(kube::Error::Api(e))
            if e.code == 403 && e.message.contains("because it is being terminated"))
    }

    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Kube(kube::Error::Api(e)) if e.code == 409 => "conflict",
            Self::Kube(_) => "kube_api",
            Self::Build(_) => "build",
            Self::Tls(_) => "tls",
            Self::Finalizer(_) => "finalizer",
            Self::Internal(_) => "internal",
        }
    }
}

/// Shared state of the controllers.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Metrics,
    pub settings: Settings,
    pub tokens: TokenSource,
    /// When false, the admin API of the partitions is not called (tests without partitions).
    pub read_partitions: bool,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

pub const CONTROLLER: &str = "managedhsm";

pub async fn reconcile(hsm: Arc<ManagedHsm>, ctx: Arc<Context>) -> Result<Requeue, Error> {
    let started = Instant::now();
    ctx.metrics.reconcile_started(CONTROLLER);
    let ns = hsm
        .namespace()
        .ok_or_else(|| Error::Internal("ManagedHsm without namespace".into()))?;
    let api: Api<ManagedHsm> = Api::namespaced(ctx.client.clone(), &ns);
    let result = finalizer(&api, HSM_FINALIZER, hsm, |event| async {
        match event {
            Finalizer::Apply(h) => apply(h, ctx.clone()).await,
            Finalizer::Cleanup(h) => cleanup(h, ctx.clone()).await,
        }
    })
    .await
    .map_err(|e| match e {
        kube::runtime::finalizer::Error::ApplyFailed(e)
        | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
        other => Error::Finalizer(other.to_string()),
    });
    ctx.metrics
        .observe_duration(CONTROLLER, started.elapsed().as_secs_f64());
    result
}

pub fn error_policy(hsm: Arc<ManagedHsm>, error: &Error, ctx: Arc<Context>) -> Requeue {
    ctx.metrics.failure(CONTROLLER, error.metric_label());
    if error.namespace_terminating() {
        // The namespace is being deleted: its objects go with it, the ManagedHsm's finalizer
        // runs when its turn comes. Nothing to repair, nothing to warn about.
        tracing::debug!(pool = %hsm.name_any(), namespace = ?hsm.namespace(), "namespace terminating; children not re-created");
        return Requeue::requeue(Duration::from_secs(60));
    }
    tracing::warn!(pool = %hsm.name_any(), namespace = ?hsm.namespace(), reason = error.metric_label(), error = %error, "reconcile failed");
    Requeue::requeue(Duration::from_secs(15))
}

async fn publish(
    ctx: &Context,
    hsm: &ManagedHsm,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    publish_on(ctx, &hsm.object_ref(&()), type_, reason, action, note).await;
}

/// Publish an Event about any object (a failure to publish is logged, not returned).
pub async fn publish_on(
    ctx: &Context,
    object: &k8s_openapi::api::core::v1::ObjectReference,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    let ev = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: action.into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&ev, object).await {
        tracing::warn!(error = %e, "cannot publish an Event");
    }
}

/// Hash of a desired object (what the annotation records).
fn desired_hash<T: Serialize>(obj: &T) -> String {
    children::template_hash(&serde_json::to_value(obj).unwrap_or_default())
}

/// Server-side apply `obj` unless the live object already carries its hash. Returns whether
/// it wrote.
async fn apply_child<K>(client: &Client, ns: &str, mut obj: K) -> Result<bool, Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Debug
        + Serialize
        + DeserializeOwned,
{
    let name = obj.meta().name.clone().unwrap_or_default();
    let hash = desired_hash(&obj);
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    if let Some(live) = api.get_opt(&name).await?
        && live.annotations().get(APPLIED_HASH_ANNOTATION) == Some(&hash)
    {
        return Ok(false);
    }
    obj.annotations_mut()
        .insert(APPLIED_HASH_ANNOTATION.into(), hash);
    let mut value = serde_json::to_value(&obj).map_err(|e| Error::Internal(e.to_string()))?;
    value["apiVersion"] = json!(K::api_version(&()));
    value["kind"] = json!(K::kind(&()));
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&value),
    )
    .await?;
    Ok(true)
}

fn secret_str(s: &Secret, key: &str) -> Option<String> {
    s.data
        .as_ref()?
        .get(key)
        .and_then(|b| String::from_utf8(b.0.clone()).ok())
}

/// Read the pool's TLS material, keep what is valid, issue or renew the rest.
async fn tls_state(
    ctx: &Context,
    hsm: &ManagedHsm,
    names: &Names,
) -> Result<(TlsState, Vec<String>), Error> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &names.namespace);
    let ca_secret = secrets.get_opt(&names.ca_secret).await?;
    let tls_secret = secrets.get_opt(&names.tls_secret).await?;
    let pods = names.pods(hsm.spec.partitions);
    let ca_pem = ca_secret.as_ref().and_then(|s| secret_str(s, "tls.crt"));
    let ca_key = ca_secret
        .as_ref()
        .and_then(|s| secret_str(s, "tls.key"))
        .map(Zeroizing::new);
    let existing: BTreeMap<String, String> = pods
        .iter()
        .filter_map(|p| {
            Some((
                p.clone(),
                secret_str(tls_secret.as_ref()?, &format!("{p}.crt"))?,
            ))
        })
        .collect();
    let now_odt = time::OffsetDateTime::now_utc();
    let spec = &hsm.spec.tls;
    let plan = tls::plan_tls(
        ca_pem.as_deref(),
        &existing,
        &pods,
        spec.renew_before_days,
        now_odt,
    );
    let mut changes = Vec::new();
    let ca = match (plan.ca.clone(), ca_pem, ca_key) {
        (CertAction::Keep, Some(cert_pem), Some(key_pem)) => CertAndKey { cert_pem, key_pem },
        (action, _, _) => {
            changes.push(format!("pool CA {action:?}"));
            tls::generate_ca(
                &names.pool,
                &names.namespace,
                spec.ca_validity_days,
                now_odt,
            )?
        }
    };
    let mut partitions = BTreeMap::new();
    for pod in &pods {
        let keep = plan.partitions.get(pod) == Some(&CertAction::Keep) && changes.is_empty();
        let existing_pair = tls_secret.as_ref().and_then(|s| {
            Some(CertAndKey {
                cert_pem: secret_str(s, &format!("{pod}.crt"))?,
                key_pem: Zeroizing::new(secret_str(s, &format!("{pod}.key"))?),
            })
        });
        let pair = match (keep, existing_pair) {
            (true, Some(pair)) => pair,
            _ => {
                changes.push(format!("certificate of {pod}"));
                let dns = names.partition_dns_names(
                    pod,
                    &ctx.settings.cluster_domain,
                    &spec.extra_dns_names,
                );
                tls::issue_partition_cert(&ca, pod, &dns, spec.certificate_validity_days, now_odt)?
            }
        };
        partitions.insert(pod.clone(), pair);
    }
    Ok((TlsState { ca, partitions }, changes))
}

/// Apply every child. Destructured without `..` so that a new child cannot be forgotten.
async fn apply_children(client: &Client, ns: &str, ch: Children) -> Result<usize, Error> {
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
    let mut n = 0;
    n += usize::from(apply_child::<ServiceAccount>(client, ns, service_account).await?);
    n += usize::from(apply_child::<Service>(client, ns, headless_service).await?);
    n += usize::from(apply_child::<Service>(client, ns, client_service).await?);
    n += usize::from(apply_child::<Secret>(client, ns, ca_secret).await?);
    n += usize::from(apply_child::<Secret>(client, ns, tls_secret).await?);
    n += usize::from(apply_child::<ConfigMap>(client, ns, ca_bundle).await?);
    n += usize::from(apply_child::<ConfigMap>(client, ns, config_map).await?);
    n += usize::from(apply_child::<StatefulSet>(client, ns, statefulset).await?);
    n += usize::from(apply_child::<PodDisruptionBudget>(client, ns, pdb).await?);
    n += usize::from(apply_child::<NetworkPolicy>(client, ns, network_policy).await?);
    Ok(n)
}

pub fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
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

/// A pod's IP (`status.podIP`).
pub fn pod_ip(pod: &Pod) -> Option<std::net::IpAddr> {
    pod.status.as_ref()?.pod_ip.as_deref()?.parse().ok()
}

/// Host name → IP of the pool's pods that have an address: how the operator reaches a
/// partition without depending on cluster DNS (TLS still verifies the host name).
pub fn partition_addresses(names: &Names, pods: &[Option<Pod>]) -> Vec<(String, std::net::IpAddr)> {
    pods.iter()
        .flatten()
        .filter_map(|p| Some((names.partition_host(&p.name_any()), pod_ip(p)?)))
        .collect()
}

async fn observe(
    ctx: &Context,
    hsm: &ManagedHsm,
    names: &Names,
    ca_pem: &str,
) -> Result<Vec<ObservedPartition>, Error> {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &names.namespace);
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &names.namespace);
    let mut found = Vec::new();
    for name in names.pods(hsm.spec.partitions) {
        let pod = pods.get_opt(&name).await?;
        let pvc = pvcs.get_opt(&names.pvc(&name)).await?;
        found.push((name, pod, pvc));
    }
    let live: Vec<Option<Pod>> = found.iter().map(|(_, p, _)| p.clone()).collect();
    let pool_client = if ctx.read_partitions {
        match ctx
            .tokens
            .token(&crate::children::pool_audience(hsm, names))
            .await
        {
            Ok(t) => PoolClient::new(ca_pem, t, &partition_addresses(names, &live))
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        }
    } else {
        Err("partition admin API reads are disabled".into())
    };
    let mut out = Vec::new();
    for (name, pod, pvc) in found {
        let ready = pod.as_ref().is_some_and(pod_ready);
        let (admin, admin_error) = match (&pool_client, ready) {
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
            pod_created: pod
                .as_ref()
                .and_then(|p| p.metadata.creation_timestamp.clone()),
            data_lost: data_lost(pvc.as_ref(), pod.as_ref()),
            admin,
            admin_error,
            unschedulable: pod.as_ref().and_then(unschedulable),
        });
    }
    decide::fill_replication(&mut out);
    Ok(out)
}

/// Patch the status only when it differs from the live one. Returns whether it wrote.
async fn write_status(
    ctx: &Context,
    hsm: &ManagedHsm,
    status: ManagedHsmStatus,
) -> Result<bool, Error> {
    if hsm.status.as_ref() == Some(&status) {
        return Ok(false);
    }
    let ns = hsm.namespace().unwrap_or_default();
    let api: Api<ManagedHsm> = Api::namespaced(ctx.client.clone(), &ns);
    let patch =
        json!({"apiVersion": "keystead.io/v1alpha1", "kind": "ManagedHsm", "status": status});
    api.patch_status(
        &hsm.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(true)
}

pub fn now_time() -> Time {
    // Second precision: conditions serialise without fractions, so compare like for like.
    Time(Timestamp::from_second(Timestamp::now().as_second()).unwrap_or_else(|_| Timestamp::now()))
}

/// Emit an Event when the phase changes.
async fn phase_event(ctx: &Context, hsm: &ManagedHsm, new: &ManagedHsmStatus) {
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

async fn apply(hsm: Arc<ManagedHsm>, ctx: Arc<Context>) -> Result<Requeue, Error> {
    let names = Names::of(&hsm)?;
    let ns = names.namespace.clone();
    let now = now_time();
    let generation = hsm.metadata.generation;
    let previous = hsm.status.clone().unwrap_or_default();

    // Validate.
    let problems = validate::validate(&hsm, &ctx.settings);
    if !problems.is_empty() {
        let msg = validate::message(&problems);
        let conds = c::merge(
            &previous.conditions,
            &decide::invalid_conditions(&msg),
            generation,
            &now,
        );
        let status = ManagedHsmStatus {
            phase: Some(c::phase(&conds)),
            conditions: conds,
            observed_generation: generation,
            ..previous.clone()
        };
        if write_status(&ctx, &hsm, status.clone()).await? {
            publish(
                &ctx,
                &hsm,
                EventType::Warning,
                "InvalidSpec",
                "Validate",
                msg,
            )
            .await;
        }
        return Ok(Requeue::await_change());
    }

    // Soft-deleted data of a pool of the same name?
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let retained = secrets
        .get_opt(&names.ca_secret)
        .await?
        .filter(|s| s.annotations().contains_key(PURGE_AFTER_ANNOTATION));
    let retained_until = retained.as_ref().map(|s| {
        s.annotations()
            .get(PURGE_AFTER_ANNOTATION)
            .and_then(|t| t.parse::<Timestamp>().ok())
    });
    match decide::recovery_decision(hsm.spec.recover, retained_until) {
        RecoveryDecision::Conflict { until } => {
            let msg = format!(
                "a soft-deleted pool named {} keeps its data until {}; set spec.recover: true to recover it, or wait for the purge",
                names.pool,
                until
                    .map(|t| t.to_string())
                    .unwrap_or_else(|| "its purge date".into())
            );
            let fresh = vec![c::Cond::new(
                c::READY,
                c::Status::False,
                c::Reason::SoftDeletedPoolExists,
                msg.clone(),
            )];
            let conds = c::merge(&previous.conditions, &fresh, generation, &now);
            let status = ManagedHsmStatus {
                phase: Some(c::phase(&conds)),
                conditions: conds,
                observed_generation: generation,
                ..previous.clone()
            };
            if write_status(&ctx, &hsm, status).await? {
                publish(
                    &ctx,
                    &hsm,
                    EventType::Warning,
                    "SoftDeletedPoolExists",
                    "Validate",
                    msg,
                )
                .await;
            }
            return Ok(Requeue::await_change());
        }
        RecoveryDecision::Recover => {
            unmark_retained(&ctx, &names, hsm.spec.partitions).await?;
            publish(
                &ctx,
                &hsm,
                EventType::Normal,
                "Recovering",
                "Recover",
                format!(
                    "adopting the retained data of the soft-deleted pool {}",
                    names.pool
                ),
            )
            .await;
        }
        RecoveryDecision::Fresh | RecoveryDecision::NothingToRecover => {}
    }

    // Build and apply.
    let (tls, tls_changes) = tls_state(&ctx, &hsm, &names).await?;
    if !tls_changes.is_empty() && previous.phase.is_some() {
        publish(
            &ctx,
            &hsm,
            EventType::Normal,
            "CertificatesIssued",
            "RotateCertificates",
            tls_changes.join(", "),
        )
        .await;
    }
    let ca_pem = tls.ca.cert_pem.clone();
    let children = children::build(&hsm, &tls, &ctx.settings)?;
    let desired = children::desired_template_hash(&children.statefulset).unwrap_or_default();
    let written = apply_children(&ctx.client, &ns, children).await?;
    if written > 0 {
        tracing::info!(pool = %names.pool, namespace = %ns, written, "applied children");
    }

    // Observe and derive the status.
    let observed = observe(&ctx, &hsm, &names, &ca_pem).await?;
    let mut derived = decide::derive_status(&hsm.spec, &observed, &desired, Some(&previous), &now);
    // LastBackupSucceeded and lastBackup from the pool's Backups; nextBackupTime from its
    // schedules.
    let backups = crate::backup_controller::pool_backups(&ctx, &ns, &names.pool).await?;
    let (backup_cond, last_backup) = crate::backup_plan::last_backup(&backups);
    derived
        .conditions
        .retain(|c| c.type_ != c::LAST_BACKUP_SUCCEEDED);
    derived.conditions.push(backup_cond);
    derived
        .conditions
        .retain(|c| c.type_ != c::BACKUP_VOLUMES_READY);
    let claims = backup_claims(&ctx, &ns, &hsm).await?;
    let volumes_cond = crate::backup_plan::backup_volumes_condition(&claims);
    let mut previous_conditions = previous.conditions.clone();
    if volumes_cond.is_none() {
        previous_conditions.retain(|c| c.type_ != c::BACKUP_VOLUMES_READY);
    }
    derived.conditions.extend(volumes_cond);
    let next_backup_time = Api::<crate::crd::BackupSchedule>::namespaced(ctx.client.clone(), &ns)
        .list(&kube::api::ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|s| s.spec.hsm_ref.name == names.pool)
        .filter_map(|s| s.status.and_then(|st| st.next_schedule_time))
        .min_by_key(|t| t.0);
    let conds = c::merge(&previous_conditions, &derived.conditions, generation, &now);
    let ready = c::find(&conds, c::READY).is_some_and(|r| r.status == "True");
    ctx.metrics.pool_health(
        &ns,
        &names.pool,
        observed.iter().filter(|p| p.healthy()).count() as i64,
        ready,
    );
    let mut status = ManagedHsmStatus {
        phase: Some(c::phase(&conds)),
        conditions: conds,
        observed_generation: generation,
        ready_partitions: Some(derived.ready_partitions.clone()),
        partitions: derived.partitions.clone(),
        endpoint: Some(names.endpoint(hsm.spec.service.port)),
        audience: Some(crate::children::pool_audience(&hsm, &names)),
        ca_bundle_config_map: Some(names.ca_bundle.clone()),
        security_domain_fingerprint: derived
            .fingerprint
            .clone()
            .or(previous.security_domain_fingerprint.clone()),
        scheduled_purge_time: None,
        last_backup,
        next_backup_time,
        ..previous.clone()
    };
    // A re-download of the security domain is loud: a Warning Event naming who, once per
    // download, and the count in the status.
    let reported = previous.security_domain_redownloads.unwrap_or(0);
    if let Some((count, note)) = decide::redownload_note(&observed, reported) {
        publish(
            &ctx,
            &hsm,
            EventType::Warning,
            "SecurityDomainDownloaded",
            "SecurityDomain",
            note,
        )
        .await;
        status.security_domain_redownloads = Some(count);
    }
    phase_event(&ctx, &hsm, &status).await;
    write_status(&ctx, &hsm, status).await?;

    // The next disruptive action.
    let action = decide::next_action(
        &hsm.spec,
        &observed,
        &derived.partitions,
        &desired,
        &now,
        |p| names.pvc(p),
    );
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    match &action {
        Action::None => {}
        Action::ReplacePod { pod, reason } => {
            publish(
                &ctx,
                &hsm,
                EventType::Warning,
                "ReplacingPartition",
                "Heal",
                reason.clone(),
            )
            .await;
            pods.delete(pod, &DeleteParams::default()).await?;
        }
        Action::ReplacePodAndVolume { pod, pvc, reason } => {
            publish(
                &ctx,
                &hsm,
                EventType::Warning,
                "ReplacingPartitionAndVolume",
                "Heal",
                format!(
                    "{reason}; its volume is lost, the new partition catches up from its peers"
                ),
            )
            .await;
            let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
            pvcs.delete(pvc, &DeleteParams::default()).await?;
            pods.delete(pod, &DeleteParams::default()).await?;
        }
        Action::UpgradePod { pod } => {
            publish(
                &ctx,
                &hsm,
                EventType::Normal,
                "UpgradingPartition",
                "RollingUpgrade",
                format!(
                    "re-creating {pod} from the new template (one partition at a time, quorum kept)"
                ),
            )
            .await;
            pods.delete(pod, &DeleteParams::default()).await?;
        }
    }
    let requeue = if action != Action::None {
        Duration::from_secs(5)
    } else {
        derived.requeue_after.unwrap_or(Duration::from_secs(300))
    };
    Ok(Requeue::requeue(requeue))
}

/// Remove the soft-delete marks from retained objects (recovery).
async fn unmark_retained(ctx: &Context, names: &Names, partitions: i32) -> Result<(), Error> {
    let patch = json!({"metadata": {
        "annotations": {PURGE_AFTER_ANNOTATION: null, PURGE_PROTECTED_ANNOTATION: null, children::PURGE_REQUEST_ANNOTATION: null},
        "labels": {SOFT_DELETED_LABEL: null},
    }});
    let pp = PatchParams::default();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &names.namespace);
    for s in [&names.ca_secret, &names.tls_secret] {
        if secrets.get_opt(s).await?.is_some() {
            secrets.patch(s, &pp, &Patch::Merge(&patch)).await?;
        }
    }
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &names.namespace);
    for pod in names.pods(partitions) {
        let pvc = names.pvc(&pod);
        if pvcs.get_opt(&pvc).await?.is_some() {
            pvcs.patch(&pvc, &pp, &Patch::Merge(&patch)).await?;
        }
    }
    Ok(())
}

/// What the claims of `spec.backupVolumes` look like.
async fn backup_claims(
    ctx: &Context,
    ns: &str,
    hsm: &ManagedHsm,
) -> Result<Vec<crate::backup_plan::ClaimState>, Error> {
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), ns);
    let mut out = Vec::new();
    for v in &hsm.spec.backup_volumes {
        let found = pvcs
            .get_opt(&v.claim_name)
            .await?
            .map(|p| crate::backup_plan::ClaimFound {
                phase: p.status.and_then(|s| s.phase),
                access_modes: p.spec.and_then(|s| s.access_modes).unwrap_or_default(),
            });
        out.push(crate::backup_plan::ClaimState {
            name: v.claim_name.clone(),
            found,
        });
    }
    Ok(out)
}

/// Soft delete: keep the encrypted data (PVCs) and the pool's CA and TLS Secrets with a
/// purge date, detached from the ManagedHsm so garbage collection keeps them; everything
/// else is garbage-collected through its ownerReference.
async fn cleanup(hsm: Arc<ManagedHsm>, ctx: Arc<Context>) -> Result<Requeue, Error> {
    let names = Names::of(&hsm)?;
    let deleted_at = hsm
        .metadata
        .deletion_timestamp
        .as_ref()
        .map(|t| t.0)
        .unwrap_or_else(Timestamp::now);
    let ann = decide::soft_delete_annotations(
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
        // Data already retained from an earlier incarnation keeps its own purge date.
        if secrets
            .get_opt(s)
            .await?
            .is_some_and(|o| !o.annotations().contains_key(PURGE_AFTER_ANNOTATION))
        {
            secrets.patch(s, &pp, &Patch::Merge(&patch)).await?;
        }
    }
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &names.namespace);
    for pod in names.pods(hsm.spec.partitions) {
        let pvc = names.pvc(&pod);
        if pvcs
            .get_opt(&pvc)
            .await?
            .is_some_and(|o| !o.annotations().contains_key(PURGE_AFTER_ANNOTATION))
        {
            pvcs.patch(&pvc, &pp, &Patch::Merge(&patch)).await?;
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
    let lp = kube::api::ListParams::default().labels(SOFT_DELETED_LABEL);
    let now = Timestamp::now();
    let mut deleted = 0;
    let secrets: Api<Secret> = Api::all(client.clone());
    for s in secrets.list(&lp).await?.items {
        deleted += usize::from(purge_one::<Secret>(client, &s, now).await?);
    }
    let pvcs: Api<PersistentVolumeClaim> = Api::all(client.clone());
    for p in pvcs.list(&lp).await?.items {
        deleted += usize::from(purge_one::<PersistentVolumeClaim>(client, &p, now).await?);
    }
    Ok(deleted)
}

async fn purge_one<K>(client: &Client, obj: &K, now: Timestamp) -> Result<bool, Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Debug
        + DeserializeOwned,
{
    let (Some(ns), name) = (obj.namespace(), obj.name_any()) else {
        return Ok(false);
    };
    match decide::purge_decision(obj.annotations(), now) {
        decide::PurgeDecision::Purge => {
            tracing::info!(namespace = %ns, name = %name, kind = %K::kind(&()), "purging retained data of a soft-deleted pool");
            Api::<K>::namespaced(client.clone(), &ns)
                .delete(&name, &DeleteParams::default())
                .await?;
            Ok(true)
        }
        decide::PurgeDecision::EarlyPurgeRefused { until } => {
            tracing::warn!(namespace = %ns, name = %name, %until, "early purge refused: the pool had purge protection");
            Ok(false)
        }
        decide::PurgeDecision::Unreadable(why) => {
            tracing::warn!(namespace = %ns, name = %name, %why, "retained object with an unreadable purge date kept");
            Ok(false)
        }
        decide::PurgeDecision::Keep { .. } | decide::PurgeDecision::NotSoftDeleted => Ok(false),
    }
}
