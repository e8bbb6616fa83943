//! The operator's life on a real control plane (the dev cluster of `scripts/dev-cluster.sh`):
//! what it creates for a ManagedHsm and how (finalizer, owner references, generation
//! observed), a spec change followed from the watch, soft delete, an invalid spec reported,
//! and a graceful shutdown on SIGTERM that releases the leader Lease.

use anyhow::{Context, ensure};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Secret, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use keystead_e2e::pool::{ADMIN_SA, POOL, Pool};
use keystead_e2e::steps::*;
use keystead_e2e::{Cluster, TestNamespace};
use keystead_operator::crd::ManagedHsm;
use kube::Api;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The leader-election Lease of the chart's operator (values.yaml `leaderElection.leaseName`).
const LEASE: &str = "keystead-operator-leader";
/// The operator's principal (the chart's ServiceAccount).
const OPERATOR: &str = "system:serviceaccount:keystead-system:keystead";

fn image(sts: &StatefulSet) -> Option<String> {
    sts.spec.as_ref()?.template.spec.as_ref()?.containers[0]
        .image
        .clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_operator_creates_follows_soft_deletes_and_reports_an_invalid_spec()
-> anyhow::Result<()> {
    let cluster = Cluster::dev().await?;
    let ns = TestNamespace::create_in(&cluster, "operator").await?;
    let pool = Pool::create(ns, json!({})).await?;
    pool.provisioned().await?;
    let hsms: Api<ManagedHsm> = pool.ns.api();
    let h = hsms.get(POOL).await?;
    ensure!(
        h.metadata.finalizers.clone().unwrap_or_default() == ["keystead.io/soft-delete"],
        "the soft-delete finalizer: {:?}",
        h.metadata.finalizers
    );
    let st = serde_json::to_value(&h.status)?;
    ensure!(st["observedGeneration"] == 1, "{st:#}");
    // The partitions' configuration names the initial administrators and the operator.
    let cfg = pool
        .ns
        .api::<ConfigMap>()
        .get(&format!("{POOL}-config"))
        .await?;
    let p0: Value = serde_json::from_str(
        cfg.data
            .as_ref()
            .and_then(|d| d.get("pool-0.json"))
            .context("pool-0.json in the config")?,
    )?;
    ensure!(
        p0["initialAdministrators"] == json!([pool.principal(ADMIN_SA), OPERATOR]),
        "{:#}",
        p0["initialAdministrators"]
    );
    // Every child exists and is owned by the ManagedHsm (garbage collection follows it).
    let uid = h.metadata.uid.clone().context("uid")?;
    let owned = |meta: &kube::api::ObjectMeta| {
        meta.owner_references
            .as_ref()
            .is_some_and(|o| o.iter().any(|r| r.uid == uid && r.controller == Some(true)))
    };
    let sts: Api<StatefulSet> = pool.ns.api();
    let mut children = vec![("StatefulSet pool", owned(&sts.get(POOL).await?.metadata))];
    for name in [POOL.to_string(), format!("{POOL}-peers")] {
        children.push((
            "Service",
            owned(&pool.ns.api::<Service>().get(&name).await?.metadata),
        ));
    }
    children.push((
        "ServiceAccount",
        owned(
            &pool
                .ns
                .api::<ServiceAccount>()
                .get(&format!("{POOL}-partition"))
                .await?
                .metadata,
        ),
    ));
    children.push((
        "tls Secret",
        owned(
            &pool
                .ns
                .api::<Secret>()
                .get(&format!("{POOL}-tls"))
                .await?
                .metadata,
        ),
    ));
    children.push((
        "CA bundle",
        owned(
            &pool
                .ns
                .api::<ConfigMap>()
                .get(&format!("{POOL}-ca-bundle"))
                .await?
                .metadata,
        ),
    ));
    children.push((
        "PDB",
        owned(
            &pool
                .ns
                .api::<PodDisruptionBudget>()
                .get(POOL)
                .await?
                .metadata,
        ),
    ));
    children.push((
        "NetworkPolicy",
        owned(&pool.ns.api::<NetworkPolicy>().get(POOL).await?.metadata),
    ));
    for (what, ok) in &children {
        ensure!(*ok, "{what} is owned by the ManagedHsm");
    }
    pool.ns.api::<Secret>().get(&format!("{POOL}-ca")).await?;

    // A spec change is picked up from the watch: the StatefulSet follows, generation observed.
    let image = "ghcr.io/keystead/keystead-partition:follow-test";
    hsms.patch(
        POOL,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"image": image}})),
    )
    .await?;
    eventually(
        "the StatefulSet on the new image, generation 2 observed",
        Duration::from_secs(60),
        || async {
            let observed =
                serde_json::to_value(&hsms.get(POOL).await?.status)?["observedGeneration"] == 2;
            Ok((observed && image_of(&sts).await?.as_deref() == Some(image)).then_some(()))
        },
    )
    .await?;

    // Soft delete: the object goes, the StatefulSet is collected, the CA Secret is kept with
    // a purge date, without an owner (so garbage collection leaves it).
    hsms.delete(POOL, &DeleteParams::default()).await?;
    eventually(
        "the ManagedHsm gone and its StatefulSet collected",
        Duration::from_secs(120),
        || async {
            Ok(
                (hsms.get_opt(POOL).await?.is_none() && sts.get_opt(POOL).await?.is_none())
                    .then_some(()),
            )
        },
    )
    .await?;
    let ca = pool.ns.api::<Secret>().get(&format!("{POOL}-ca")).await?;
    let ann = ca.metadata.annotations.clone().unwrap_or_default();
    ensure!(ann.contains_key("keystead.io/purge-after"), "{ann:?}");
    let labels = ca.metadata.labels.clone().unwrap_or_default();
    ensure!(
        labels
            .get("keystead.io/soft-deleted-pool")
            .map(String::as_str)
            == Some(POOL),
        "{labels:?}"
    );
    ensure!(
        ca.metadata.owner_references.is_none_or(|o| o.is_empty()),
        "the CA Secret has no owner"
    );

    // An invalid spec (a principal listed twice: the schema cannot say it) gets a clear
    // condition and an Event, and no children.
    create(
        &hsms,
        json!({"apiVersion": "keystead.io/v1alpha1", "kind": "ManagedHsm",
               "metadata": {"name": "bad"}, "spec": {"initialAdministrators": ["bob", "bob"]}}),
    )
    .await?;
    let message = eventually(
        "the InvalidSpec condition",
        Duration::from_secs(60),
        || async {
            let st = serde_json::to_value(&hsms.get("bad").await?.status)?;
            Ok(st["conditions"].as_array().and_then(|cs| {
                cs.iter()
                    .find(|c| c["reason"] == "InvalidSpec")
                    .map(|c| c["message"].as_str().unwrap_or_default().to_string())
            }))
        },
    )
    .await?;
    ensure!(
        message.contains("bob"),
        "the condition says what is wrong: {message}"
    );
    eventually("an Event InvalidSpec", Duration::from_secs(60), || async {
        let events = pool.ns.api::<Event>().list(&ListParams::default()).await?;
        Ok(events
            .items
            .iter()
            .any(|e| {
                e.reason.as_deref() == Some("InvalidSpec")
                    && e.involved_object.name.as_deref() == Some("bad")
            })
            .then_some(()))
    })
    .await?;
    ensure!(
        sts.get_opt("bad").await?.is_none(),
        "no children for an invalid pool"
    );
    pool.ns.pass();
    Ok(())
}

async fn image_of(sts: &Api<StatefulSet>) -> anyhow::Result<Option<String>> {
    Ok(sts.get_opt(POOL).await?.as_ref().and_then(image))
}

#[tokio::test(flavor = "multi_thread")]
async fn on_sigterm_the_operator_releases_its_lease_and_exits_cleanly() -> anyhow::Result<()> {
    use futures::StreamExt;
    use kube::runtime::{WatchStreamExt, watcher};
    let cluster = Cluster::dev().await?;
    let leases: Api<Lease> = Api::namespaced(cluster.client.clone(), OPERATOR_NS);
    let operator = operator_pod(&cluster).await?;
    let name = operator.metadata.name.clone().context("pod name")?;
    let uid = operator.metadata.uid.clone().context("pod uid")?;
    let before = restarts(&operator);
    let holder = |l: &Lease| l.spec.as_ref().and_then(|s| s.holder_identity.clone());
    eventually(
        "the operator holds the Lease",
        Duration::from_secs(60),
        || async {
            Ok((holder(&leases.get(LEASE).await?).as_deref() == Some(name.as_str())).then_some(()))
        },
    )
    .await?;
    // Every holder the Lease has from now on, from a watch.
    let seen: Arc<Mutex<Vec<Option<String>>>> = Arc::default();
    let out = seen.clone();
    let cfg = watcher::Config::default().fields(&format!("metadata.name={LEASE}"));
    let watch = tokio::spawn({
        let leases = leases.clone();
        async move {
            let mut stream = std::pin::pin!(watcher(leases, cfg).applied_objects());
            while let Some(Ok(l)) = stream.next().await {
                out.lock().expect("not poisoned").push(holder(&l));
            }
        }
    });
    eventually("the watch started", Duration::from_secs(30), || async {
        Ok((!seen.lock().expect("not poisoned").is_empty()).then_some(()))
    })
    .await?;
    cluster.signal_container(OPERATOR_NS, &name, &uid, "-TERM")?;
    eventually("the Lease released", Duration::from_secs(60), || async {
        Ok(seen
            .lock()
            .expect("not poisoned")
            .iter()
            .any(Option::is_none)
            .then_some(()))
    })
    .await?;
    // It exited with status 0, and the node agent started it again (restartPolicy Always).
    let pods = Api::namespaced(cluster.client.clone(), OPERATOR_NS);
    let p: k8s_openapi::api::core::v1::Pod = eventually(
        "the operator restarted and Ready",
        Duration::from_secs(120),
        || async {
            let p: k8s_openapi::api::core::v1::Pod = pods.get(&name).await?;
            Ok((restarts(&p) > before && ready(&p)).then_some(p))
        },
    )
    .await?;
    let exit = p
        .status
        .and_then(|s| s.container_statuses)
        .and_then(|c| c.into_iter().next())
        .and_then(|c| c.last_state)
        .and_then(|s| s.terminated)
        .map(|t| t.exit_code);
    ensure!(exit == Some(0), "a graceful exit: {exit:?}");
    eventually(
        "the restarted operator holds the Lease",
        Duration::from_secs(60),
        || async {
            Ok((holder(&leases.get(LEASE).await?).as_deref() == Some(name.as_str())).then_some(()))
        },
    )
    .await?;
    watch.abort();
    Ok(())
}
