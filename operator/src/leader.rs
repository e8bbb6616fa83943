//! Leader election with a `coordination.k8s.io/v1` Lease: get, then create or patch with the
//! observed `resourceVersion` as precondition (a concurrent writer gets 409 and loses), and a
//! renew loop. The decision is a pure function.

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Api;
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use serde_json::json;
use std::time::Duration;
use tokio::sync::watch;

pub const LEASE_SECONDS: i32 = 15;
pub const RENEW_EVERY: Duration = Duration::from_secs(5);

/// What to do with the Lease as observed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseDecision {
    /// No Lease exists: create it holding it.
    Create,
    /// We hold it: renew.
    Renew,
    /// It expired (or has no holder): take it over.
    TakeOver,
    /// Someone else holds a live Lease.
    Follow { holder: String },
}

pub fn decide(lease: Option<&Lease>, me: &str, now: Timestamp) -> LeaseDecision {
    let Some(lease) = lease else {
        return LeaseDecision::Create;
    };
    let spec = lease.spec.clone().unwrap_or_default();
    let holder = spec.holder_identity.unwrap_or_default();
    if holder == me {
        return LeaseDecision::Renew;
    }
    if holder.is_empty() {
        return LeaseDecision::TakeOver;
    }
    let duration = SignedDuration::from_secs(i64::from(
        spec.lease_duration_seconds.unwrap_or(LEASE_SECONDS),
    ));
    let last = spec.renew_time.or(spec.acquire_time).map(|t| t.0);
    match last {
        Some(t) if t.checked_add(duration).is_ok_and(|end| end > now) => {
            LeaseDecision::Follow { holder }
        }
        _ => LeaseDecision::TakeOver,
    }
}

/// One round: returns whether we are the leader after it.
pub async fn try_acquire(api: &Api<Lease>, name: &str, me: &str) -> Result<bool, kube::Error> {
    let current = api.get_opt(name).await?;
    let now = Timestamp::now();
    let pp = PatchParams::default();
    match decide(current.as_ref(), me, now) {
        LeaseDecision::Follow { .. } => Ok(false),
        LeaseDecision::Create => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(name.into()),
                    ..ObjectMeta::default()
                },
                spec: Some(k8s_openapi::api::coordination::v1::LeaseSpec {
                    holder_identity: Some(me.into()),
                    lease_duration_seconds: Some(LEASE_SECONDS),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            }
        }
        d @ (LeaseDecision::Renew | LeaseDecision::TakeOver) => {
            let Some(cur) = current else { return Ok(false) };
            let rv = cur.metadata.resource_version.clone();
            let transitions = cur
                .spec
                .as_ref()
                .and_then(|s| s.lease_transitions)
                .unwrap_or(0);
            let mut spec = json!({
                "holderIdentity": me,
                "leaseDurationSeconds": LEASE_SECONDS,
                "renewTime": MicroTime(now),
            });
            if d == LeaseDecision::TakeOver {
                spec["acquireTime"] = json!(MicroTime(now));
                spec["leaseTransitions"] = json!(transitions + 1);
            }
            let patch = json!({"metadata": {"resourceVersion": rv}, "spec": spec});
            match api.patch(name, &pp, &Patch::Merge(&patch)).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            }
        }
    }
}

/// Keep trying to lead; publishes leadership on `tx`. Stops when `shutdown` fires, releasing
/// the Lease if held so a successor does not wait for expiry.
pub async fn run(
    api: Api<Lease>,
    name: String,
    me: String,
    tx: watch::Sender<bool>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let leading = match try_acquire(&api, &name, &me).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, lease = %name, "leader election: cannot read or write the Lease");
                false
            }
        };
        if *tx.borrow() != leading {
            tracing::info!(leading, identity = %me, "leadership changed");
        }
        let _ = tx.send(leading);
        tokio::select! {
            _ = tokio::time::sleep(RENEW_EVERY) => {}
            _ = shutdown.changed() => break,
        }
    }
    if *tx.borrow() {
        let patch = json!({"spec": {"holderIdentity": null, "renewTime": null}});
        if let Err(e) = api
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            tracing::warn!(error = %e, "could not release the Lease; it expires on its own");
        }
        let _ = tx.send(false);
    }
}
