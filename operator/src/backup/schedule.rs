//! The BackupSchedule controller: apply the schedule's plan — delete the Backups its
//! retention expired, create the Backup of a due run — and report the next run and the last
//! backup in its status.

use super::plan::{
    self, BACKUP_FINALIZER, POOL_LABEL, PoolBackup, SCHEDULE_LABEL, SCHEDULED_TIME_ANNOTATION,
    ScheduledBackup,
};
use crate::conditions::{self as c, Status};
use crate::context::{
    At, Context, Error, apply_status, namespace_of, now_time, publish_on, reconciling,
};
use crate::crd::{Backup, BackupSchedule, BackupScheduleStatus, BackupSpec};
use crate::pool::names::FIELD_MANAGER;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::runtime::controller::Action as Requeue;
use kube::runtime::events::EventType;
use kube::{Api, Resource, ResourceExt};
use std::collections::BTreeMap;
use std::sync::Arc;

pub const SCHEDULE_CONTROLLER: &str = "backupschedule";

pub async fn reconcile_schedule(
    s: Arc<BackupSchedule>,
    ctx: Arc<Context>,
) -> Result<Requeue, Error> {
    reconciling(&ctx, SCHEDULE_CONTROLLER, &*s, schedule_apply(&s, &ctx)).await
}

async fn schedule_apply(s: &BackupSchedule, ctx: &Context) -> Result<Requeue, Error> {
    let ns = namespace_of(s)?;
    let name = s.name_any();
    let uid = s.metadata.uid.clone().unwrap_or_default();
    let now_t = now_time();
    let now = now_t.0;
    let generation = s.metadata.generation;
    let prev = s.status.clone().unwrap_or_default();
    let api: Api<Backup> = Api::namespaced(ctx.client.clone(), &ns);

    let cron = match plan::parse_schedule(&s.spec.schedule) {
        Ok(c) => c,
        Err(msg) => {
            let mut st = prev.clone();
            st.conditions = c::merge_raw(
                &prev.conditions,
                &[(plan::READY, Status::False, "InvalidSchedule", &msg)],
                generation,
                &now_t,
            );
            st.observed_generation = generation;
            st.next_schedule_time = None;
            if s.status.as_ref() != Some(&st) {
                apply_status(ctx, s, &st).await?;
                publish_on(
                    ctx,
                    &s.object_ref(&()),
                    EventType::Warning,
                    "InvalidSchedule",
                    "Schedule",
                    msg,
                )
                .await;
            }
            return Ok(Requeue::await_change());
        }
    };

    let owned: Vec<Backup> = api
        .list(&ListParams::default().labels(&format!("{SCHEDULE_LABEL}={name}")))
        .await
        .at("listing the schedule's Backups")?
        .items
        .into_iter()
        .filter(|b| b.owner_references().iter().any(|o| o.uid == uid))
        .collect();
    let infos: Vec<ScheduledBackup> = owned.iter().map(ScheduledBackup::of).collect();
    let created = s
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0)
        .unwrap_or(now);
    let p = plan::plan_schedule(
        &s.spec,
        &cron,
        created,
        prev.last_schedule_time.as_ref().map(|t| t.0),
        &infos,
        now,
    );

    let mut remaining: Vec<&Backup> = owned.iter().collect();
    for victim in &p.delete {
        match api.delete(victim, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => {
                return Err(Error::new(
                    format!("deleting the expired Backup {victim}"),
                    e,
                ));
            }
        }
        remaining.retain(|b| &b.name_any() != victim);
        publish_on(
            ctx,
            &s.object_ref(&()),
            EventType::Normal,
            "BackupExpired",
            "Retention",
            format!("deleting Backup {victim} (retention: maxCount {}, maxAgeDays {:?}); its folder is deleted from the store", s.spec.retention.max_count, s.spec.retention.max_age_days),
        )
        .await;
    }
    let mut created_now = None;
    if let Some(at) = p.create {
        let bname = plan::scheduled_backup_name(&name, at);
        let backup = Backup {
            metadata: ObjectMeta {
                name: Some(bname.clone()),
                namespace: Some(ns.clone()),
                labels: Some(BTreeMap::from([
                    (SCHEDULE_LABEL.to_string(), name.clone()),
                    (POOL_LABEL.to_string(), s.spec.hsm_ref.name.clone()),
                    (
                        "app.kubernetes.io/managed-by".to_string(),
                        FIELD_MANAGER.to_string(),
                    ),
                ])),
                annotations: Some(BTreeMap::from([(
                    SCHEDULED_TIME_ANNOTATION.to_string(),
                    at.to_string(),
                )])),
                owner_references: s.controller_owner_ref(&()).map(|o| vec![o]),
                finalizers: Some(vec![BACKUP_FINALIZER.to_string()]),
                ..ObjectMeta::default()
            },
            spec: BackupSpec {
                hsm_ref: s.spec.hsm_ref.clone(),
                key_name: s.spec.key_name.clone(),
                destination: s.spec.destination.clone(),
            },
            status: None,
        };
        match api.create(&PostParams::default(), &backup).await {
            Ok(_) => {
                publish_on(
                    ctx,
                    &s.object_ref(&()),
                    EventType::Normal,
                    "BackupCreated",
                    "Schedule",
                    format!("created Backup {bname} for {at}"),
                )
                .await;
            }
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(Error::new(format!("creating the Backup {bname}"), e)),
        }
        created_now = Some(bname);
    }

    // Status.
    let pool_view: Vec<plan::PoolBackup> = remaining.iter().map(|b| PoolBackup::of(b)).collect();
    let (last_cond, last_ok) = plan::last_backup(&pool_view);
    let (ready_reason, ready_msg) = if s.spec.suspend {
        (
            "Suspended",
            "suspended: no new backups; retention still applies".to_string(),
        )
    } else if let Some(w) = &p.waiting_for {
        (
            "Scheduled",
            format!("a run is due and waits for Backup {w} to finish"),
        )
    } else {
        (
            "Scheduled",
            format!(
                "next backup at {}",
                p.next_schedule_time
                    .map(|t| t.to_string())
                    .unwrap_or_else(|| "never".into())
            ),
        )
    };
    let mut st: BackupScheduleStatus = prev.clone();
    st.conditions = c::merge_raw(
        &prev.conditions,
        &[
            (plan::READY, Status::True, ready_reason, &ready_msg),
            (
                last_cond.type_,
                last_cond.status,
                last_cond.reason.as_str(),
                &last_cond.message,
            ),
        ],
        generation,
        &now_t,
    );
    st.observed_generation = generation;
    st.last_schedule_time = p.last_schedule_time.map(Time);
    st.next_schedule_time = p.next_schedule_time.map(Time);
    st.last_successful_backup = last_ok.map(|r| r.name);
    st.backups = Some((remaining.len() + usize::from(created_now.is_some())) as i32);
    if s.status.as_ref() != Some(&st) {
        apply_status(ctx, s, &st).await?;
    }
    Ok(Requeue::requeue(p.requeue_after))
}
