//! The ManagedHsm controller: dereference → validate → build → apply → status → the next
//! disruptive action, file by file: `observe` reads, `plan/` decides (validate, tls,
//! children, observed, status, lifecycle), `write` applies, `soft_delete` retains and purges.
//!
//! Writes happen only when something changed: each child carries the hash of its desired
//! state in an annotation and is applied (server-side, one field manager) only when the hash
//! differs; the status is patched only when it differs. An idle reconcile issues GETs only.

use super::observe::{self, PoolSecrets};
use super::plan::children;
use super::plan::lifecycle::{self, Action, HSM_FINALIZER, RecoveryDecision};
use super::plan::{observed, status, tls, validate};
use super::soft_delete::{cleanup, unmark_retained};
use super::write::{apply_children, phase_event, publish, write_status};
use crate::backup::plan as backup_plan;
use crate::conditions as c;
use crate::context::{At, Cause, Context, Error, namespace_of, now_time, reconciling};
use crate::crd::{ManagedHsm, ManagedHsmStatus};
use crate::pool::names::{Names, pool_audience};
use crate::replication::controller as replication;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{DeleteParams, Preconditions};
use kube::runtime::controller::Action as Requeue;
use kube::runtime::events::EventType;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::{Api, ResourceExt};
use std::sync::Arc;
use std::time::Duration;

pub const CONTROLLER: &str = "managedhsm";

pub async fn reconcile(hsm: Arc<ManagedHsm>, ctx: Arc<Context>) -> Result<Requeue, Error> {
    let obj = hsm.clone();
    reconciling(&ctx, CONTROLLER, &*obj, async {
        let ns = namespace_of(&*hsm)?;
        let api: Api<ManagedHsm> = Api::namespaced(ctx.client.clone(), &ns);
        // Boxed: the pipeline's future is large, and a reconcile may run on a small stack.
        finalizer(&api, HSM_FINALIZER, hsm, |event| async {
            match event {
                Finalizer::Apply(h) => Box::pin(apply(h, ctx.clone())).await,
                Finalizer::Cleanup(h) => Box::pin(cleanup(h, ctx.clone())).await,
            }
        })
        .await
        .map_err(|e| match e {
            kube::runtime::finalizer::Error::ApplyFailed(e)
            | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
            other => Error::new(
                "adding or removing the finalizer",
                Cause::Finalizer(other.to_string()),
            ),
        })
    })
    .await
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

/// A pool that cannot go on until its spec (or the retained data of its name) changes: the
/// `fresh` conditions in its status, a Warning Event when that changed it, and no requeue.
async fn refuse(
    ctx: &Context,
    hsm: &ManagedHsm,
    fresh: &[c::Cond],
    reason: &str,
    msg: String,
    now: &Time,
) -> Result<Requeue, Error> {
    let previous = hsm.status.clone().unwrap_or_default();
    let generation = hsm.metadata.generation;
    let conds = c::merge(&previous.conditions, fresh, generation, now);
    let status = ManagedHsmStatus {
        phase: Some(c::phase(&conds)),
        conditions: conds,
        observed_generation: generation,
        ..previous
    };
    if write_status(ctx, hsm, status).await? {
        publish(ctx, hsm, EventType::Warning, reason, "Validate", msg).await;
    }
    Ok(Requeue::await_change())
}

async fn apply(hsm: Arc<ManagedHsm>, ctx: Arc<Context>) -> Result<Requeue, Error> {
    let names = Names::of(&hsm).at("naming the pool's objects")?;
    let ns = names.namespace.clone();
    let now = now_time();
    let generation = hsm.metadata.generation;
    let previous = hsm.status.clone().unwrap_or_default();

    // Validate.
    let problems = validate::validate(&hsm, &ctx.settings);
    if !problems.is_empty() {
        let msg = validate::message(&problems);
        let fresh = status::invalid_conditions(&msg);
        return refuse(&ctx, &hsm, &fresh, "InvalidSpec", msg, &now).await;
    }

    // Dereference: the pool's CA and TLS Secrets, read once for the whole reconcile. Does
    // the CA Secret hold soft-deleted data of a pool of the same name?
    let secrets = PoolSecrets::read(&ctx, &names).await?;
    match lifecycle::recovery_decision(hsm.spec.recover, secrets.retained_until()) {
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
            return refuse(&ctx, &hsm, &fresh, "SoftDeletedPoolExists", msg, &now).await;
        }
        RecoveryDecision::Recover => {
            unmark_retained(&ctx, &names, &secrets, hsm.spec.partitions).await?;
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
    let (tls, tls_changes) = tls::material(
        &names,
        &names.pods(hsm.spec.partitions),
        &hsm.spec.tls,
        &ctx.settings.cluster_domain,
        secrets.both(),
        time::OffsetDateTime::now_utc(),
    )
    .at("issuing the pool's certificates")?;
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
    // Region replication: the other regions' CAs, and the partitions' region configuration
    // before the StatefulSet that mounts it.
    let region_cas = match &hsm.spec.replication {
        Some(r) => {
            let cas = replication::read_cas(&ctx, &ns, r).await?;
            replication::apply_region_config(&ctx, &hsm, &names, r, &cas).await?;
            Some(cas)
        }
        None => None,
    };
    let children = children::build(&hsm, &tls, &ctx.settings).at("building the pool's objects")?;
    let desired = children::desired_template_hash(&children.statefulset).unwrap_or_default();
    let written = apply_children(&ctx.client, &ns, children, secrets.both()).await?;
    if written > 0 {
        tracing::info!(pool = %names.pool, namespace = %ns, written, "applied children");
    }

    // Observe and derive the status.
    let observed = observe::partitions(&ctx, &hsm, &names, &ca_pem).await?;
    let mut derived = status::derive_status(&hsm.spec, &observed, &desired, Some(&previous), &now);
    // LastBackupSucceeded and lastBackup from the pool's Backups; nextBackupTime from its
    // schedules.
    let backups = observe::pool_backups(&ctx, &ns, &names.pool).await?;
    let (backup_cond, last_backup) = backup_plan::last_backup(&backups);
    derived
        .conditions
        .retain(|c| c.type_ != c::LAST_BACKUP_SUCCEEDED);
    derived.conditions.push(backup_cond);
    derived
        .conditions
        .retain(|c| c.type_ != c::BACKUP_VOLUMES_READY);
    let claims = observe::backup_claims(&ctx, &ns, &hsm).await?;
    let volumes_cond = backup_plan::backup_volumes_condition(&claims);
    let mut previous_conditions = previous.conditions.clone();
    if volumes_cond.is_none() {
        previous_conditions.retain(|c| c.type_ != c::BACKUP_VOLUMES_READY);
    }
    derived.conditions.extend(volumes_cond);
    // ReplicationHealthy and status.replication from the partitions' region view.
    let replicated = match (&hsm.spec.replication, &region_cas) {
        (Some(r), Some(cas)) => {
            let views = observed
                .iter()
                .filter_map(|p| p.admin.as_ref()?.region.clone())
                .collect();
            let out = replication::reconcile(&ctx, &hsm, &names, &ca_pem, r, views, cas).await?;
            derived.conditions.push(out.condition.clone());
            Some(out)
        }
        _ => {
            previous_conditions.retain(|c| c.type_ != c::REPLICATION_HEALTHY);
            None
        }
    };
    let next_backup_time = observe::next_backup_time(&ctx, &ns, &names.pool).await?;
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
        audience: Some(pool_audience(&hsm, &names)),
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
    if let Some((count, note)) = observed::redownload_note(&observed, reported) {
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
    status.replication = match &replicated {
        Some(out) => out.status.clone().or(previous.replication.clone()),
        None => None,
    };
    phase_event(&ctx, &hsm, &status).await;
    write_status(&ctx, &hsm, status).await?;
    let replication_acted = replicated.as_ref().is_some_and(|o| o.acted);
    if let Some(out) = replicated {
        replication::publish_events(&ctx, &hsm, out.events).await;
    }

    // The next disruptive action.
    let action = lifecycle::next_action(
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
            delete_observed_pod(&pods, &observed, pod).await?;
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
            pvcs.delete(pvc, &DeleteParams::default())
                .await
                .at(format!("deleting the PersistentVolumeClaim {pvc}"))?;
            delete_observed_pod(&pods, &observed, pod).await?;
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
            delete_observed_pod(&pods, &observed, pod).await?;
        }
    }
    let requeue = if action != Action::None {
        Duration::from_secs(5)
    } else if replication_acted {
        // A region call was made (named, demoted, promoted): report its effect soon.
        Duration::from_secs(2)
    } else if hsm.spec.replication.is_some() {
        // Lag and role changes come from the partitions, not from a watch.
        derived
            .requeue_after
            .unwrap_or(crate::replication::plan::REQUEUE)
            .min(crate::replication::plan::REQUEUE)
    } else {
        derived.requeue_after.unwrap_or(Duration::from_secs(300))
    };
    Ok(Requeue::requeue(requeue))
}

/// Delete the pod that was observed — by uid, so a pod the StatefulSet re-created since the
/// observation (which came from the watch cache) stays. Already gone or replaced: done.
async fn delete_observed_pod(
    pods: &Api<Pod>,
    observed: &[observed::ObservedPartition],
    pod: &str,
) -> Result<(), Error> {
    let uid = observed
        .iter()
        .find(|p| p.name == pod)
        .and_then(|p| p.pod_uid.clone());
    let params = DeleteParams {
        preconditions: uid.map(|uid| Preconditions {
            uid: Some(uid),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match pods.delete(pod, &params).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {
            tracing::info!(pod, "the observed pod is already gone or replaced");
            Ok(())
        }
        Err(e) => Err(e).at(format!("deleting the Pod {pod}")),
    }
}
