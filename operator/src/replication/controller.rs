//! The I/O half of the replication controller, run by the ManagedHsm reconcile when
//! `spec.replication` is set: read the CAs of the other regions (ConfigMaps), write the
//! partitions' region configuration (a ConfigMap they mount), make the calls `plan` decides
//! on the pool's admin API (name a region, demote, promote), and raise the Events of a
//! status change. The status itself is derived by `plan` from the partitions' region view.

use super::plan::{self, PRIMARY_CA_FILE, REGION_FILE, Step};
use crate::conditions::Cond;
use crate::context::{At, Context, Error, publish_on};
use crate::crd::{ManagedHsm, ReplicationSpec, ReplicationStatus};
use crate::pool::names::{FIELD_MANAGER, Names, labels};
use crate::pool::reach::connect;
use k8s_openapi::api::core::v1::ConfigMap;
use keystead_core::region::{DemoteRequest, FollowRequest, PromoteRequest, RegionStatus};
use kube::api::{Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::{Api, Resource};
use serde_json::json;
use std::collections::BTreeMap;

/// The CAs of the other regions.
#[derive(Clone, Debug, Default)]
pub struct Cas {
    /// Those that could be read: region name → PEM.
    pub known: BTreeMap<String, String>,
    /// Regions whose ConfigMap or key is missing (or not a certificate).
    pub missing: Vec<String>,
}

/// The CAs of `spec.replication.regions`.
pub async fn read_cas(ctx: &Context, ns: &str, spec: &ReplicationSpec) -> Result<Cas, Error> {
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), ns);
    let mut cas = BTreeMap::new();
    let mut missing = Vec::new();
    for r in &spec.regions {
        let cm = api
            .get_opt(&r.ca_config_map.name)
            .await
            .at(format!("reading the ConfigMap {}", r.ca_config_map.name))?;
        match cm
            .and_then(|c| c.data)
            .and_then(|d| d.get(r.ca_config_map.key()).cloned())
            .filter(|pem| plan::ca_sha256(pem).is_some())
        {
            Some(pem) => {
                cas.insert(r.name.clone(), pem);
            }
            None => missing.push(r.name.clone()),
        }
    }
    Ok(Cas {
        known: cas,
        missing,
    })
}

/// Server-side apply of the partitions' region configuration ConfigMap (owned by the
/// pool). Skipped while the primary's CA is unknown: the partitions cannot follow without
/// it (their pods wait for the ConfigMap).
pub async fn apply_region_config(
    ctx: &Context,
    hsm: &ManagedHsm,
    names: &Names,
    spec: &ReplicationSpec,
    cas: &Cas,
) -> Result<(), Error> {
    let cfg = plan::region_config(spec);
    let mut data = BTreeMap::new();
    if let Some(p) = &cfg.primary {
        let Some(pem) = cas.known.get(&p.name) else {
            return Ok(());
        };
        data.insert(PRIMARY_CA_FILE.to_string(), pem.clone());
    }
    let text = serde_json::to_string_pretty(&cfg)
        .map_err(|e| Error::internal("writing the region configuration", e))?;
    data.insert(REGION_FILE.to_string(), text);
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &names.namespace);
    let live = api
        .get_opt(&names.region_config)
        .await
        .at(format!("reading the ConfigMap {}", names.region_config))?;
    if live.and_then(|c| c.data).as_ref() == Some(&data) {
        return Ok(());
    }
    let owner = hsm.controller_owner_ref(&());
    let cm = json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": names.region_config,
            "namespace": names.namespace,
            "labels": labels(&names.pool),
            "ownerReferences": owner.into_iter().collect::<Vec<_>>(),
        },
        "data": data,
    });
    api.patch(
        &names.region_config,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&cm),
    )
    .await
    .at(format!("applying the ConfigMap {}", names.region_config))?;
    Ok(())
}

/// What one reconcile of the replication part found.
pub struct Outcome {
    /// `None`: no partition answered; keep the previous status.
    pub status: Option<ReplicationStatus>,
    pub condition: Cond,
    /// The Events to raise once the status is written.
    pub events: Vec<plan::Note>,
    /// The calls succeeded: their effect shows in the partitions' view shortly, look again
    /// soon (a refused call waits for the usual requeue).
    pub acted: bool,
}

/// Merge the partitions' views, make the calls the spec asks for, derive the status.
pub async fn reconcile(
    ctx: &Context,
    hsm: &ManagedHsm,
    names: &Names,
    ca_pem: &str,
    spec: &ReplicationSpec,
    views: Vec<RegionStatus>,
    cas: &Cas,
) -> Result<Outcome, Error> {
    let view = (!views.is_empty()).then(|| keystead_core::region::merge_views(views));
    let steps = plan::next_steps(spec, &view, &cas.known);
    let mut step_error = None;
    let mut acted = false;
    if !steps.is_empty() && ctx.read_partitions {
        match run_steps(ctx, hsm, names, ca_pem, &steps).await {
            Ok(()) => acted = true,
            Err(e) => {
                tracing::warn!(pool = %names.pool, error = %e, "a region call failed");
                step_error = Some(e);
            }
        }
    }
    let status = view.as_ref().map(|v| plan::status(spec, v));
    let condition = plan::condition(spec, &view, &cas.missing, step_error.as_deref());
    let previous = hsm.status.as_ref().and_then(|s| s.replication.as_ref());
    let events = status
        .as_ref()
        .map(|s| plan::events(previous, s, spec))
        .unwrap_or_default();
    Ok(Outcome {
        status,
        condition,
        events,
        acted,
    })
}

/// Raise the Events of a status change.
pub async fn publish_events(ctx: &Context, hsm: &ManagedHsm, events: Vec<plan::Note>) {
    for (warning, reason, note) in events {
        let t = if warning {
            EventType::Warning
        } else {
            EventType::Normal
        };
        publish_on(ctx, &hsm.object_ref(&()), t, reason, "Replicate", note).await;
    }
}

/// A call refused with error `code`, which means "not yet" (the pool goes on by itself and
/// the next reconcile looks again): done for now.
fn not_yet(
    r: Result<(), crate::pool::client::PoolError>,
    code: &str,
) -> Result<(), crate::pool::client::PoolError> {
    match r {
        Err(crate::pool::client::PoolError::Refused { message, .. }) if message.contains(code) => {
            Ok(())
        }
        r => r,
    }
}

/// Each step on the first Ready partition that takes it; why not, in words.
async fn run_steps(
    ctx: &Context,
    hsm: &ManagedHsm,
    names: &Names,
    ca_pem: &str,
    steps: &[Step],
) -> Result<(), String> {
    let mut live = Vec::new();
    for p in names.pods(hsm.spec.partitions) {
        live.push(
            ctx.pod(&names.namespace, &p)
                .await
                .map_err(|e| e.to_string())?,
        );
    }
    let client = connect(&ctx.tokens, hsm, names, ca_pem, &live).await?;
    let ready: Vec<String> = live
        .iter()
        .flatten()
        .filter(|p| crate::pool::reach::pod_ready(p))
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    for step in steps {
        let mut last = format!("no partition of {} is Ready", names.pool);
        let mut done = false;
        for pod in &ready {
            let base = names.partition_url(pod);
            let r = match step {
                Step::Accept { name, ca_pem } => client.accept_region(&base, name, ca_pem).await,
                Step::Remove { name } => client.remove_region(&base, name).await,
                // The demotion is committed at once; its token appears in the status once
                // every region has applied its last index (the reconcile does not wait).
                Step::Demote { to, endpoints } => not_yet(
                    client
                        .demote(
                            &base,
                            &DemoteRequest {
                                to: to.clone(),
                                endpoints: endpoints.clone(),
                                wait_seconds: Some(0),
                            },
                        )
                        .await
                        .map(drop),
                    keystead_core::region::REGIONS_NOT_CAUGHT_UP,
                ),
                Step::Promote { token } => {
                    client
                        .promote(
                            &base,
                            &PromoteRequest {
                                token: Some(token.clone()),
                                force: false,
                            },
                        )
                        .await
                }
                Step::ForcePromote => {
                    client
                        .promote(
                            &base,
                            &PromoteRequest {
                                token: None,
                                force: true,
                            },
                        )
                        .await
                }
                // Not promoted yet: a planned switchover re-points this region by itself.
                Step::Follow {
                    to,
                    endpoints,
                    ca_pem,
                } => not_yet(
                    client
                        .follow(
                            &base,
                            &FollowRequest {
                                to: to.clone(),
                                endpoints: endpoints.clone(),
                                ca_certificate: ca_pem.clone(),
                            },
                        )
                        .await,
                    keystead_core::region::REGION_NOT_PROMOTED,
                ),
            };
            match r {
                Ok(()) => {
                    tracing::info!(pool = %names.pool, step = step.label(), "region call made");
                    done = true;
                    break;
                }
                // A refusal is the pool's answer, the same on every partition.
                Err(e) if e.is_refusal() => return Err(format!("{}: {e}", step.label())),
                Err(e) => last = e.to_string(),
            }
        }
        if !done {
            return Err(format!("{}: {last}", step.label()));
        }
    }
    Ok(())
}
