//! The operator, the chart and the partitions on a real control plane (the dev cluster of
//! `scripts/dev-cluster.sh`: kube-apiserver, kube-controller-manager, kube-scheduler, etcd,
//! the chart installed with helm, pods run by the node agent). `scripts/test.sh` starts the
//! cluster and sets `KEYSTEAD_DEV_CLUSTER`; each test works in a namespace of its own.

use anyhow::{Context, bail, ensure};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{
    ConfigMap, Event, PersistentVolume, PersistentVolumeClaim, Pod, Secret, Service,
};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use keystead_core::sd::CustodianPrivateKey;
use keystead_e2e::pool::{ADMIN_SA, APP_SA, CRYPTO_USER, POOL, Pool};
use keystead_e2e::steps::*;
use keystead_e2e::{Cluster, TestNamespace};
use keystead_operator::crd::SecurityDomain;
use kube::Api;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// The eviction API (what `kubectl drain` calls): the HTTP status of the answer.
async fn evict(pool: &Pool, name: &str) -> anyhow::Result<u16> {
    let body = json!({"apiVersion": "policy/v1", "kind": "Eviction",
        "metadata": {"name": name, "namespace": pool.ns.name}});
    let pods: Api<Pod> = Api::namespaced(pool.ns.cluster.no_retry.clone(), &pool.ns.name);
    let answer: Result<Value, _> = pods
        .create_subresource("eviction", name, &Default::default(), &body)
        .await;
    match answer {
        Ok(v) => Ok(v["code"].as_u64().unwrap_or(201) as u16),
        Err(kube::Error::Api(e)) => Ok(e.code),
        Err(e) => Err(e.into()),
    }
}

/// Until pod `name` exists with a uid other than `old` and is Ready.
async fn replaced_and_ready(pool: &Pool, name: &str, old: &str) -> anyhow::Result<String> {
    eventually(
        &format!("{name} re-created and Ready"),
        Duration::from_secs(180),
        || async {
            Ok(pod(pool, name)
                .await?
                .filter(|p| p.metadata.uid.as_deref() != Some(old) && ready(p))
                .and_then(|p| p.metadata.uid))
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn provisioning_ceremony_and_keys_through_the_service_with_the_azure_sdk()
-> anyhow::Result<()> {
    let cluster = Cluster::dev().await?;
    let operators_before = operator_pods(&cluster).await?;
    let ns = TestNamespace::create_in(&cluster, "provision").await?;
    let pool = Pool::create(ns, json!({})).await?;

    // The StatefulSet controller creates the pods and their claims; the scheduler places
    // the three partitions in three zones (required anti-affinity); the local provisioner
    // binds each claim to a volume on its pod's node.
    let st = pool.provisioned().await?;
    ensure!(
        Pool::reason(&st, "Ready") == "WaitingForSecurityDomain",
        "{st:#}"
    );
    let pods = pool.ns.api::<Pod>().list(&ListParams::default()).await?;
    let mut zones = BTreeSet::new();
    for p in &pods.items {
        let node = p
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .context("scheduled")?;
        let owner = &p.metadata.owner_references.as_ref().context("owned")?[0];
        ensure!(owner.kind == "StatefulSet", "{owner:?}");
        let n = cluster.client.clone();
        let node_obj = Api::<k8s_openapi::api::core::v1::Node>::all(n)
            .get(&node)
            .await?;
        zones.insert(
            node_obj.metadata.labels.unwrap_or_default()["topology.kubernetes.io/zone"].clone(),
        );
    }
    ensure!(
        zones.len() == 3,
        "three partitions in three zones: {zones:?}"
    );
    for name in PODS {
        let claim = pool
            .ns
            .api::<PersistentVolumeClaim>()
            .get(&format!("data-{name}"))
            .await?;
        let volume = claim
            .spec
            .and_then(|s| s.volume_name)
            .context("claim bound")?;
        let pv = Api::<PersistentVolume>::all(cluster.client.clone())
            .get(&volume)
            .await?;
        let affinity = serde_json::to_value(pv.spec.and_then(|s| s.node_affinity))?;
        let node = pod(&pool, name)
            .await?
            .and_then(|p| p.spec)
            .and_then(|s| s.node_name)
            .context("node")?;
        ensure!(
            affinity.to_string().contains(&format!("\"{node}\"")),
            "the volume of {name} is on its node {node}: {affinity}"
        );
    }

    // `kubectl wait --for=condition=Ready` returns once the ceremony has activated the pool.
    let kubectl = cluster.kubectl();
    let mut wait = tokio::process::Command::from(kubectl);
    wait.args([
        "wait",
        "-n",
        &pool.ns.name,
        "--for=condition=Ready",
        &format!("managedhsm/{POOL}"),
        "--timeout=240s",
    ])
    .kill_on_drop(true);
    let waiter = wait.output();
    let (waited, custodians) = tokio::join!(waiter, pool.activate());
    let custodians = custodians?;
    let waited = waited?;
    // One ceremony, one download: a second one would re-split the domain (a re-download).
    // (Unless the operator was restarted meanwhile by the restart test running beside this
    // one: a download whose Secret was not written yet is then made again, and reported.)
    let st = pool.status().await;
    if operator_pods(&cluster).await? == operators_before {
        ensure!(
            st["securityDomainRedownloads"].as_u64().unwrap_or(0) == 0,
            "the ceremony downloaded the domain more than once: {st:#}"
        );
    }
    ensure!(
        waited.status.success(),
        "kubectl wait: {}{}",
        String::from_utf8_lossy(&waited.stdout),
        String::from_utf8_lossy(&waited.stderr)
    );

    // The domain Secret holds the encrypted domain file only: a quorum of custodian keys
    // opens it, none does not.
    let sd = pool.ns.api::<SecurityDomain>().get("pool-sd").await?;
    let sd_status = serde_json::to_value(&sd.status)?;
    let secret_name = sd_status["domainSecret"].as_str().context("domainSecret")?;
    let secret = pool.ns.api::<Secret>().get(secret_name).await?;
    let data = secret.data.context("data")?;
    let file = String::from_utf8(data["security-domain.json"].0.clone())?;
    let keys: Vec<CustodianPrivateKey> = custodians
        .iter()
        .map(|(_, der)| CustodianPrivateKey::from_pkcs8_der(der))
        .collect::<Result<_, _>>()?;
    keystead_core::sd::rehearse(&file, &keys[..2])?;
    ensure!(keystead_core::sd::recover_domain(&file, &[]).is_err());

    // Keys through the Service address with the official Azure Python SDK.
    let admin = pool.token(ADMIN_SA).await?;
    let app = pool.token(APP_SA).await?;
    let http = pool.http().await?;
    http.assign_role(&admin, CRYPTO_USER, &pool.principal(APP_SA))
        .await?;
    let (host, addr) = pool.service_address().await?;
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("ca.pem"), pool.ca_pem().await?)?;
    std::fs::write(dir.path().join("token"), &app)?;
    let out = std::process::Command::new(Cluster::python())
        .arg(Cluster::repo_root().join("e2e/sdk/keys_via_service.py"))
        .arg("--vault-url")
        .arg(format!("https://{host}"))
        .arg("--ca")
        .arg(dir.path().join("ca.pem"))
        .arg("--token-file")
        .arg(dir.path().join("token"))
        .arg("--address")
        .arg(format!("{host}={}", addr.ip()))
        .output()?;
    ensure!(
        out.status.success(),
        "Azure SDK through the Service: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let result: Value = serde_json::from_slice(&out.stdout)?;
    ensure!(result["verified"] == true, "{result}");
    ensure!(
        result["kid"]
            .as_str()
            .is_some_and(|k| k.starts_with(&format!("https://{host}/keys/sdk-key/"))),
        "{result}"
    );
    ensure!(result["keys"] == json!(["sdk-key"]), "{result}");
    // The administrator holds no key permission: RBAC is enforced.
    let (s, _) = http
        .call(
            &admin,
            Method::POST,
            "/keys/k2/create",
            Some(json!({"kty": "EC", "crv": "P-256"})),
        )
        .await;
    ensure!(s == StatusCode::FORBIDDEN, "admin creates a key: {s}");

    // Events: the domain download is announced on the SecurityDomain.
    let events = pool.ns.api::<Event>().list(&ListParams::default()).await?;
    ensure!(
        events
            .items
            .iter()
            .any(|e| e.involved_object.kind.as_deref() == Some("SecurityDomain")),
        "an Event on the SecurityDomain: {:?}",
        events.items.iter().map(|e| &e.reason).collect::<Vec<_>>()
    );
    pool.ns.pass();
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn three_partitions_in_two_topology_domains_leave_one_pending_with_the_reason()
-> anyhow::Result<()> {
    let cluster = Cluster::dev().await?;
    let ns = TestNamespace::create_in(&cluster, "two-domains").await?;
    // keystead.test/two-racks: node-a and node-c in r1, node-b in r2.
    let pool = Pool::create(ns, json!({"topologyKey": "keystead.test/two-racks"})).await?;
    // The two scheduled partitions run and answer but are not Ready (/readyz): a new pool
    // forms its Raft group with all three members, so it cannot serve yet — the status says
    // which partition is missing and why.
    let said = |st: &Value, what: &str| {
        st["partitions"].as_array().map_or(0, |ps| {
            ps.iter()
                .filter(|p| p["message"].as_str().is_some_and(|m| m.contains(what)))
                .count()
        })
    };
    let st = pool
        .wait(
            "two partitions running but not Ready, and a condition naming the unschedulable one",
            Duration::from_secs(180),
            |st| {
                st["readyPartitions"] == "0/3"
                    && said(st, "not caught up") == 2
                    && said(st, "cannot be scheduled") == 1
                    && st["conditions"].as_array().is_some_and(|cs| {
                        cs.iter().any(|c| {
                            c["message"].as_str().is_some_and(|m| {
                                m.contains("Unschedulable")
                                    || m.contains("cannot be scheduled")
                                    || m.contains("anti-affinity")
                                    || m.contains("didn't match")
                            })
                        })
                    })
            },
        )
        .await?;
    let pods = pool
        .ns
        .api::<Pod>()
        .list(&ListParams::default())
        .await?
        .items;
    let pending: Vec<String> = pods
        .iter()
        .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_none())
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    ensure!(
        pending.len() == 1,
        "one partition Pending: {pending:?} {st:#}"
    );
    let running = pods
        .iter()
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .count();
    ensure!(running == 2, "the two scheduled partitions run: {st:#}");
    pool.ns.pass();
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn healing_after_a_pod_delete_a_killed_process_and_a_lost_volume() -> anyhow::Result<()> {
    let cluster = Cluster::dev().await?;
    let (pool, app, _) = activated_pool(&cluster, "healing", json!({})).await?;
    let pods: Api<Pod> = pool.ns.api();

    // 1. A deleted pod comes back (StatefulSet controller) with its volume and the key.
    let old = pool.pod_uid("pool-1").await.context("pool-1")?;
    pods.delete("pool-1", &DeleteParams::default()).await?;
    replaced_and_ready(&pool, "pool-1", &old).await?;
    key_served_by(&pool, "pool-1", &app, "k1").await?;

    // 2. A killed process is restarted in place (restartPolicy Always).
    let uid = pool.pod_uid("pool-2").await.context("pool-2")?;
    let before = restarts(&pod(&pool, "pool-2").await?.context("pool-2")?);
    cluster.kill_container(&pool.ns.name, "pool-2", &uid)?;
    eventually(
        "pool-2 restarted and Ready",
        Duration::from_secs(120),
        || async {
            Ok(pod(&pool, "pool-2")
                .await?
                .filter(|p| restarts(p) > before && ready(p))
                .map(|_| ()))
        },
    )
    .await?;
    key_served_by(&pool, "pool-2", &app, "k1").await?;

    // 3. A lost volume: the claim and the pod deleted; the new pod gets a new, empty volume
    // and the partition is healed back into the pool with the key.
    let claims: Api<PersistentVolumeClaim> = pool.ns.api();
    let old_claim = claims.get("data-pool-2").await?.metadata.uid;
    let old2 = pool.pod_uid("pool-2").await.context("pool-2")?;
    claims
        .delete("data-pool-2", &DeleteParams::default())
        .await?;
    pods.delete("pool-2", &DeleteParams::default()).await?;
    replaced_and_ready(&pool, "pool-2", &old2).await?;
    let new_claim = claims.get("data-pool-2").await?.metadata.uid;
    ensure!(new_claim != old_claim, "a new claim for pool-2");
    key_served_by(&pool, "pool-2", &app, "k1").await?;
    pool.wait("3/3 partitions healthy", Duration::from_secs(180), |st| {
        st["readyPartitions"] == "3/3"
    })
    .await?;
    pool.ns.pass();
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_disruption_budget_refuses_a_second_eviction_while_one_partition_is_down()
-> anyhow::Result<()> {
    let cluster = Cluster::dev().await?;
    // Healing waits longer than this test keeps a partition down.
    let (pool, _app, _) = activated_pool(
        &cluster,
        "pdb",
        json!({"healing": {"unhealthyThresholdSeconds": 600}}),
    )
    .await?;
    // The PodDisruptionBudget: while one partition is down (its process frozen, so its
    // readiness probe fails), the eviction API refuses to take a second one (429).
    pool.wait("3/3 partitions", Duration::from_secs(120), |st| {
        st["readyPartitions"] == "3/3"
    })
    .await?;
    let st = pool.status().await;
    let followers: Vec<String> = st["partitions"]
        .as_array()
        .context("partitions")?
        .iter()
        .filter(|p| p["role"] == "follower")
        .filter_map(|p| p["name"].as_str().map(String::from))
        .collect();
    ensure!(followers.len() == 2, "two followers: {st:#}");
    let (frozen, other) = (&followers[0], &followers[1]);
    let frozen_uid = pool.pod_uid(frozen).await.context("follower")?;
    cluster.signal_container(&pool.ns.name, frozen, &frozen_uid, "-STOP")?;
    let pdbs: Api<PodDisruptionBudget> = pool.ns.api();
    let spent = eventually(
        "the PDB spent while one partition is down",
        Duration::from_secs(90),
        || async {
            let pdb = pdbs.get(POOL).await?;
            let down = !pod(&pool, frozen).await?.is_some_and(|p| ready(&p));
            let other_ready = pod(&pool, other).await?.is_some_and(|p| ready(&p));
            Ok(
                (down && other_ready && pdb.status.map(|s| s.disruptions_allowed) == Some(0))
                    .then_some(()),
            )
        },
    )
    .await;
    let refused = match spent {
        Ok(()) => evict(&pool, other).await,
        Err(e) => Err(e),
    };
    let resumed = cluster.signal_container(&pool.ns.name, frozen, &frozen_uid, "-CONT");
    let refused = refused?;
    resumed?;
    ensure!(
        refused == 429,
        "a second eviction while {frozen} is down: {refused}, want 429"
    );
    eventually(
        &format!("{frozen} Ready again"),
        Duration::from_secs(120),
        || async { Ok(pod(&pool, frozen).await?.filter(ready).map(|_| ())) },
    )
    .await?;
    // With every partition healthy again, one eviction is allowed.
    let old_other = pool.pod_uid(other).await.context("follower")?;
    eventually(
        "the PDB allows one disruption again",
        Duration::from_secs(60),
        || async {
            let pdb = pdbs.get(POOL).await?;
            Ok((pdb.status.map(|s| s.disruptions_allowed) == Some(1)).then_some(()))
        },
    )
    .await?;
    ensure!(
        evict(&pool, other).await? == 201,
        "an eviction with every partition healthy"
    );
    replaced_and_ready(&pool, other, &old_other).await?;

    pool.ns.pass();
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn rolling_upgrade_then_delete_collects_children_keeps_data_and_recovers_the_pool()
-> anyhow::Result<()> {
    let cluster = Cluster::dev().await?;
    let (pool, app, custodians) = activated_pool(&cluster, "lifecycle", json!({})).await?;
    let sts: Api<StatefulSet> = pool.ns.api();
    let fingerprint = pool.status().await["securityDomainFingerprint"].clone();
    let domain = pool.ns.api::<Secret>().get("pool-sd-domain").await?;
    let domain_file = String::from_utf8(
        domain.data.context("domain Secret data")?["security-domain.json"]
            .0
            .clone(),
    )?;

    // OnDelete rolling upgrade: a new image tag; the operator replaces one partition at a
    // time, and the pool never has fewer than two Ready partitions.
    let image = "ghcr.io/keystead/keystead-partition:upgrade-test";
    let hsms: Api<keystead_operator::crd::ManagedHsm> = pool.ns.api();
    hsms.patch(
        POOL,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"image": image}})),
    )
    .await?;
    let min_ready = std::sync::atomic::AtomicUsize::new(3);
    eventually(
        "every partition on the new image",
        Duration::from_secs(300),
        || {
            let pods = pool.ns.api::<Pod>();
            let min_ready = &min_ready;
            async move {
                let list = pods.list(&ListParams::default()).await?;
                let ready_count = list.items.iter().filter(|p| ready(p)).count();
                min_ready.fetch_min(ready_count, std::sync::atomic::Ordering::Relaxed);
                let upgraded = list
                    .items
                    .iter()
                    .filter(|p| {
                        ready(p)
                            && p.spec
                                .as_ref()
                                .is_some_and(|s| s.containers[0].image.as_deref() == Some(image))
                    })
                    .count();
                Ok((upgraded == 3).then_some(()))
            }
        },
    )
    .await?;
    let min_ready = min_ready.into_inner();
    ensure!(
        min_ready >= 2,
        "quorum kept during the upgrade: {min_ready} Ready at worst"
    );
    pool.http().await?.sign_and_verify(&app, "k1").await?;

    // Delete: the finalizer runs, children owned by the ManagedHsm are garbage-collected,
    // and the data volumes are retained with a purge date (soft delete).
    hsms.delete(POOL, &DeleteParams::default()).await?;
    eventually("the ManagedHsm gone", Duration::from_secs(120), || async {
        Ok(hsms.get_opt(POOL).await?.is_none().then_some(()))
    })
    .await?;
    eventually(
        "StatefulSet, Services and ConfigMaps collected",
        Duration::from_secs(120),
        || async {
            let s = sts.get_opt(POOL).await?;
            let svc = pool.ns.api::<Service>().get_opt(POOL).await?;
            let cm = pool
                .ns
                .api::<ConfigMap>()
                .get_opt(&format!("{POOL}-config"))
                .await?;
            Ok((s.is_none() && svc.is_none() && cm.is_none()).then_some(()))
        },
    )
    .await?;
    let claims = pool
        .ns
        .api::<PersistentVolumeClaim>()
        .list(&ListParams::default())
        .await?;
    ensure!(claims.items.len() == 3, "three data claims retained");
    for c in &claims.items {
        let ann = c.metadata.annotations.clone().unwrap_or_default();
        ensure!(
            ann.keys().any(|k| k.contains("purge")),
            "claim {:?} has a purge date: {ann:?}",
            c.metadata.name
        );
    }

    // Re-created with recover: true, the pool adopts the retained data and waits for its
    // domain (memory-only seal): the Upload ceremony with two of the three custodians' keys.
    pool.apply_spec(json!({"recover": true})).await?;
    pool.wait(
        "recovered pool RecoveryPending with 3/3 partitions",
        Duration::from_secs(180),
        |st| st["phase"] == "RecoveryPending" && st["readyPartitions"] == "3/3",
    )
    .await?;
    let sd: SecurityDomain = serde_json::from_value(json!({
        "apiVersion": "keystead.io/v1alpha1", "kind": "SecurityDomain",
        "metadata": {"name": "pool-upload", "namespace": pool.ns.name},
        "spec": {"hsmRef": {"name": POOL}, "mode": "Upload",
                 "upload": {"transferBlobSecret": {"name": "pool-blob"}}},
    }))?;
    pool.ns
        .api::<SecurityDomain>()
        .create(&Default::default(), &sd)
        .await?;
    let cms: Api<ConfigMap> = pool.ns.api();
    let exchange_pem = eventually(
        "the exchange certificate published",
        Duration::from_secs(120),
        || async {
            Ok(cms
                .get_opt("pool-upload-exchange")
                .await?
                .and_then(|c| c.data)
                .and_then(|d| d.get("exchange.pem").cloned()))
        },
    )
    .await?;
    let exchange = keystead_core::sd::ExchangeCertificate::from_pem(&exchange_pem)?;
    let keys: Vec<CustodianPrivateKey> = [0usize, 2]
        .iter()
        .map(|&i| CustodianPrivateKey::from_pkcs8_der(&custodians[i].1))
        .collect::<Result<_, _>>()?;
    let blob = keystead_core::sd::build_transfer_blob(&domain_file, &keys, &exchange)?;
    let blob_secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "pool-blob"},
        "stringData": {"transfer.json": blob},
    }))?;
    pool.ns
        .api::<Secret>()
        .create(&Default::default(), &blob_secret)
        .await?;
    let st = pool
        .wait("Activated again with 3/3", Duration::from_secs(180), |st| {
            st["phase"] == "Activated" && st["readyPartitions"] == "3/3"
        })
        .await?;
    ensure!(
        st["securityDomainFingerprint"] == fingerprint,
        "the same domain: {st:#}"
    );
    for name in PODS {
        key_served_by(&pool, name, &app, "k1").await?;
    }
    pool.ns.pass();
    Ok(())
}

/// The uids of the operator's pods.
async fn operator_pods(cluster: &Cluster) -> anyhow::Result<BTreeSet<String>> {
    let operators: Api<Pod> = Api::namespaced(cluster.client.clone(), OPERATOR_NS);
    let selector = ListParams::default().labels(OPERATOR_SELECTOR);
    Ok(operators
        .list(&selector)
        .await?
        .items
        .into_iter()
        .filter_map(|p| p.metadata.uid)
        .collect())
}

/// Writes (create, update, patch, delete) by the operator's service account to objects in
/// namespace `ns`, from the API server's audit log after byte `from`.
fn operator_writes(cluster: &Cluster, ns: &str, from: u64) -> anyhow::Result<Vec<String>> {
    use std::io::{Read, Seek, SeekFrom};
    let path = cluster.audit_log().context("the dev cluster's audit log")?;
    let mut f = std::fs::File::open(&path)?;
    let len = f.metadata()?.len();
    if len < from {
        bail!("the audit log was rotated during the measurement");
    }
    f.seek(SeekFrom::Start(from))?;
    let mut text = String::new();
    f.read_to_string(&mut text)?;
    let mut writes = Vec::new();
    for line in text.lines() {
        let Ok(e) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let verb = e["verb"].as_str().unwrap_or_default();
        if e["user"]["username"] == "system:serviceaccount:keystead-system:keystead"
            && e["objectRef"]["namespace"] == ns
            && matches!(
                verb,
                "create" | "update" | "patch" | "delete" | "deletecollection"
            )
        {
            writes.push(format!(
                "{verb} {}/{} {}",
                e["objectRef"]["resource"].as_str().unwrap_or_default(),
                e["objectRef"]["name"].as_str().unwrap_or_default(),
                e["objectRef"]["subresource"].as_str().unwrap_or_default()
            ));
        }
    }
    Ok(writes)
}

fn audit_len(cluster: &Cluster) -> anyhow::Result<u64> {
    let path = cluster.audit_log().context("the dev cluster's audit log")?;
    Ok(std::fs::metadata(path)?.len())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_operator_restarted_mid_ceremony_finishes_it_and_an_idle_pool_costs_no_writes()
-> anyhow::Result<()> {
    let cluster = Cluster::dev().await?;
    let ns = TestNamespace::create_in(&cluster, "restart").await?;
    let pool = Pool::create(ns, json!({})).await?;
    pool.provisioned().await?;

    // The ceremony starts, and the operator's pod is deleted at once: the Deployment
    // brings a new one, which takes the leader Lease and finishes the ceremony.
    let operators: Api<Pod> = Api::namespaced(cluster.client.clone(), OPERATOR_NS);
    let selector = ListParams::default().labels(OPERATOR_SELECTOR);
    let before = operator_pods(&cluster).await?;
    let ceremony = pool.activate();
    let restart = async {
        operators
            .delete_collection(&DeleteParams::default(), &selector)
            .await?;
        anyhow::Ok(())
    };
    let (custodians, restarted) = tokio::join!(ceremony, restart);
    restarted?;
    custodians?;
    // The Deployment replaced the operator, and the replacement runs.
    eventually(
        "a new operator pod Ready",
        Duration::from_secs(120),
        || async {
            let now: Vec<Pod> = operators.list(&selector).await?.items;
            Ok(now
                .iter()
                .any(|p| p.metadata.uid.as_ref().is_some_and(|u| !before.contains(u)) && ready(p))
                .then_some(()))
        },
    )
    .await?;
    let (app, http) = first_key(&pool).await?;

    // Idle: once the operator has settled (10 s without a write to this namespace), it
    // makes no write for 60 s (counted from the API server's audit log; its leader Lease
    // renewals live in its own namespace).
    let ns = pool.ns.name.clone();
    let settle_deadline = Instant::now() + Duration::from_secs(180);
    let start = loop {
        let mark = audit_len(&cluster)?;
        tokio::time::sleep(Duration::from_secs(10)).await;
        let writes = operator_writes(&cluster, &ns, mark)?;
        if writes.is_empty() {
            break audit_len(&cluster)?;
        }
        ensure!(
            Instant::now() < settle_deadline,
            "the operator keeps writing to an idle pool: {writes:?}"
        );
    };
    tokio::time::sleep(Duration::from_secs(60)).await;
    let writes = operator_writes(&cluster, &ns, start)?;
    ensure!(
        writes.is_empty(),
        "writes by the operator to an idle pool in 60 s: {writes:?}"
    );
    // The pool still serves: the measurement did not just catch a stopped operator.
    http.sign_and_verify(&app, "k1").await?;
    pool.ns.pass();
    Ok(())
}
