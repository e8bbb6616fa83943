//! Region replication declared with ManagedHsm resources on two real control planes (two dev
//! clusters, two operators; docs/regions.md "The operator"): pool A (region `east`, primary)
//! in cluster 1 and pool B (region `west`, replica) in cluster 2 → B joins without
//! custodians, serves the key created in A, reports its lag, `ReplicationHealthy=True` on
//! both (awaited with `kubectl wait`); a planned switchover by editing the two resources
//! (A names `west` primary → A's demotion token in its status → B names itself primary with
//! it), a write to B lands and A follows; then a failover: B (now the primary) takes a write
//! A never gets, B's partitions are stopped (SIGSTOP), A is promoted by force and takes
//! writes, B resumes, is fenced and lists the write it lost (status and a Warning Event);
//! last, A's resource drops west and A's operator removes it (B's polls are refused).

use anyhow::{Context, ensure};
use k8s_openapi::api::core::v1::ConfigMap;
use keystead_e2e::own_cluster::OwnCluster;
use keystead_e2e::pool::{ADMIN_SA, APP_SA, POOL, Pool, PoolHttp};
use keystead_e2e::steps::{PODS, eventually, first_key, partition_http};
use keystead_e2e::{Cluster, TestNamespace};
use keystead_operator::crd::ManagedHsm;
use kube::api::{Patch, PatchParams, PostParams};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(180);

/// Merge `spec` into the pool's spec.
async fn patch_spec(pool: &Pool, spec: Value) -> anyhow::Result<()> {
    pool.ns
        .api::<ManagedHsm>()
        .patch(
            POOL,
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": spec })),
        )
        .await?;
    Ok(())
}

/// ConfigMap `name` with `ca.crt` = `pem` in namespace `ns`.
async fn put_ca(ns: &TestNamespace, name: &str, pem: &str) -> anyhow::Result<()> {
    let cm: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": name}, "data": {"ca.crt": pem}
    }))?;
    ns.api::<ConfigMap>()
        .create(&PostParams::default(), &cm)
        .await?;
    Ok(())
}

/// `kubectl wait --for=FOR managedhsm/pool` in the pool's cluster.
fn kubectl_wait(pool: &Pool, for_: &str) -> anyhow::Result<()> {
    let timeout = format!("--timeout={}s", WAIT.as_secs());
    pool.ns
        .cluster
        .kubectl_ok(&[
            "wait",
            &format!("--for={for_}"),
            &format!("managedhsm/{POOL}"),
            "-n",
            &pool.ns.name,
            &timeout,
        ])
        .map(drop)
}

/// The reasons of the Events about the pool.
fn event_reasons(pool: &Pool) -> anyhow::Result<Vec<String>> {
    let out = pool
        .ns
        .cluster
        .kubectl_ok(&["get", "events", "-n", &pool.ns.name, "-o", "json"])?;
    let v: Value = serde_json::from_str(&out)?;
    Ok(v["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["reason"].as_str().map(str::to_string))
        .collect())
}

async fn event_seen(pool: &Pool, reason: &str) -> anyhow::Result<()> {
    eventually(
        &format!("an Event {reason} in {}", pool.ns.name),
        Duration::from_secs(60),
        || async {
            Ok(event_reasons(pool)?
                .iter()
                .any(|r| r == reason)
                .then_some(()))
        },
    )
    .await
}

/// Create EC key `key` as `token` (retried while the pool answers 503).
async fn create_key(http: &PoolHttp, token: &str, key: &str, what: &str) -> anyhow::Result<()> {
    let (s, v) = http
        .call_until_served(
            token,
            Method::POST,
            &format!("/keys/{key}/create"),
            Some(json!({"kty": "EC", "crv": "P-256"})),
            Duration::from_secs(60),
        )
        .await;
    ensure!(s == StatusCode::OK, "create {key} {what}: {s} {v}");
    Ok(())
}

/// Until `GET /keys/{key}` answers 200 to `token`.
async fn served(http: &PoolHttp, token: &str, key: &str, what: &str) -> anyhow::Result<Value> {
    eventually(what, Duration::from_secs(60), || async {
        let (s, v) = http
            .call(token, Method::GET, &format!("/keys/{key}"), None)
            .await;
        Ok((s == StatusCode::OK).then_some(v))
    })
    .await
}

/// Send `signal` to every partition of the pool (`-STOP`, `-CONT`).
async fn signal_partitions(pool: &Pool, signal: &str) -> anyhow::Result<()> {
    for pod in PODS {
        let uid = pool.pod_uid(pod).await.context("pod uid")?;
        pool.ns
            .cluster
            .signal_container(&pool.ns.name, pod, &uid, signal)?;
    }
    Ok(())
}

/// Until no partition of `b` has seen a request of region east for 6 s (a long poll of the
/// feed lasts at most 5 s): nothing B commits now reaches the paused A.
async fn polls_of_east_expired(b: &Pool, admin: &str) -> anyhow::Result<()> {
    eventually(
        "B's last poll from east expired",
        Duration::from_secs(30),
        || async {
            for pod in PODS {
                let http = partition_http(b, pod).await?;
                let url = format!("https://{POOL}.{}.svc:8443/admin/status", b.ns.name);
                let v: Value = http
                    .get(&url)
                    .bearer_auth(admin)
                    .send()
                    .await?
                    .json()
                    .await?;
                let recent = v["region"]["regions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|r| {
                        r["name"] == "east"
                            && r["lastSeenSecondsAgo"].as_u64().is_none_or(|s| s < 6)
                    });
                if recent {
                    return Ok(None);
                }
            }
            Ok(Some(()))
        },
    )
    .await
}

/// `https://<cluster IP of the pool's Service>:<port>`: an address the other cluster's
/// processes reach (the dev clusters share the host's loopback), named in the certificates
/// through `spec.tls.extraDnsNames`.
async fn service_endpoint(pool: &Pool) -> anyhow::Result<(String, String)> {
    let (_, addr) = pool.service_address().await?;
    Ok((addr.ip().to_string(), format!("https://{addr}")))
}

fn replication(st: &Value) -> &Value {
    &st["replication"]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_extended_to_a_second_cluster_switches_over_and_fails_over_declaratively() {
    let tmp = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let [own1, own2] =
        OwnCluster::up_two([&tmp.path().join("c1"), &tmp.path().join("c2")]).unwrap();
    eprintln!("two dev clusters up in {:?}", started.elapsed());
    let c1 = Cluster::dev_at(own1.dir.clone()).await.unwrap();
    let c2 = Cluster::dev_at(own2.dir.clone()).await.unwrap();
    // The same namespace name in both clusters: the service-account principals (and the
    // pools' default audience) are then the same strings in both regions.
    let ns1 = TestNamespace::create_in(&c1, "regions").await.unwrap();
    let ns2 = TestNamespace::create_named_in(&c2, &ns1.name)
        .await
        .unwrap();
    let r = scenario(ns1, ns2).await;
    eprintln!("scenario finished in {:?}", started.elapsed());
    r.unwrap();
}

async fn scenario(ns1: TestNamespace, ns2: TestNamespace) -> anyhow::Result<()> {
    let t0 = Instant::now();
    // Pool A, region east, primary; it accepts west once west's CA is copied here.
    let a = Pool::create(
        ns1,
        json!({"replication": {"region": "east", "primary": "east",
            "regions": [{"name": "west", "caConfigMap": {"name": "west-ca"}}]}}),
    )
    .await?;
    a.provisioned().await?;
    let (a_ip, a_endpoint) = service_endpoint(&a).await?;
    patch_spec(&a, json!({"tls": {"extraDnsNames": [a_ip]}})).await?;
    a.activate().await?;
    let (a_app, a_http) = first_key(&a).await?;
    let st = a.status().await;
    ensure!(
        Pool::reason(&st, "ReplicationHealthy") == "RegionCaMissing",
        "A before west's CA: {st:#}"
    );
    eprintln!("A activated with k1 at {:?}", t0.elapsed());

    // Pool B, region west, replica of east: A's CA and endpoint, no ceremony.
    put_ca(&ns2, "east-ca", &a.ca_pem().await?).await?;
    let b = Pool::create(
        ns2,
        json!({"replication": {"region": "west", "primary": "east",
            "regions": [{"name": "east", "endpoints": [a_endpoint], "caConfigMap": {"name": "east-ca"}}]}}),
    )
    .await?;
    b.provisioned().await?;
    let (b_ip, b_endpoint) = service_endpoint(&b).await?;
    patch_spec(&b, json!({"tls": {"extraDnsNames": [b_ip]}})).await?;
    put_ca(&a.ns, "west-ca", &b.ca_pem().await?).await?;
    patch_spec(
        &a,
        json!({"replication": {"region": "east", "primary": "east",
            "regions": [{"name": "west", "endpoints": [b_endpoint], "caConfigMap": {"name": "west-ca"}}]}}),
    )
    .await?;

    // B joins; both healthy; B serves k1 and signs with it; its lag is reported.
    kubectl_wait(&b, "condition=ReplicationHealthy")?;
    kubectl_wait(&a, "condition=ReplicationHealthy")?;
    eprintln!("B joined, both ReplicationHealthy at {:?}", t0.elapsed());
    // Activated by the join (its other partitions take the domain from their peer).
    b.wait("B Activated by the join", WAIT, |st| {
        st["phase"] == "Activated"
    })
    .await?;
    let b_app = b.token(APP_SA).await?;
    let b_http = b.http().await?;
    served(&b_http, &b_app, "k1", "k1 served by B").await?;
    b_http.sign_and_verify(&b_app, "k1").await?;
    let st = b.status().await;
    let rep = replication(&st);
    ensure!(
        rep["role"] == "Replica" && rep["joined"] == true && rep["primary"] == "east",
        "B: {rep:#}"
    );
    ensure!(
        rep["appliedPrimaryIndex"].as_i64().unwrap_or(0) > 0
            && rep["lagEntries"].is_i64()
            && rep["lagSeconds"].is_string(),
        "B's position and lag: {rep:#}"
    );
    let st = a.status().await;
    ensure!(
        replication(&st)["regions"][0]["name"] == "west"
            && replication(&st)["regions"][0]["accepted"] == true
            && replication(&st)["regions"][0]["lagEntries"].is_i64(),
        "A's view of west: {st:#}"
    );
    event_seen(&b, "RegionJoined").await?;
    event_seen(&a, "RegionJoined").await?;

    // Planned switchover: A names west primary → demoted, token in its status.
    patch_spec(
        &a,
        json!({"replication": {"region": "east", "primary": "west",
            "regions": [{"name": "west", "endpoints": [b_endpoint], "caConfigMap": {"name": "west-ca"}}]}}),
    )
    .await?;
    kubectl_wait(&a, "jsonpath={.status.replication.role}=Demoted")?;
    // The token is published once every region has applied A's last index.
    let deadline = std::time::Instant::now() + WAIT;
    let token = loop {
        if let Some(t) = a.status().await["replication"]["demotionToken"].as_str() {
            break t.to_string();
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "A published no demotion token within {WAIT:?}: {}",
            a.status().await["replication"]
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    };
    event_seen(&a, "Demoted").await?;
    // B names itself primary with the token.
    patch_spec(
        &b,
        json!({"replication": {"region": "west", "primary": "west", "promotionToken": token,
            "regions": [{"name": "east", "endpoints": [a_endpoint], "caConfigMap": {"name": "east-ca"}}]}}),
    )
    .await?;
    kubectl_wait(&b, "jsonpath={.status.replication.role}=Primary")?;
    event_seen(&b, "Switchover").await?;
    eprintln!("switchover done at {:?}", t0.elapsed());
    kubectl_wait(&a, "jsonpath={.status.replication.role}=Replica")?;
    kubectl_wait(&a, "condition=ReplicationHealthy")?;
    kubectl_wait(&b, "condition=ReplicationHealthy")?;

    // A write to B lands; A follows and serves it.
    create_key(&b_http, &b_app, "k2", "on B (the new primary)").await?;
    served(&a_http, &a_app, "k2", "k2 served by A (following B)").await?;
    eprintln!("write to B served by A at {:?}", t0.elapsed());

    // Failover with a write the new primary never gets: A (now the replica) pauses; once
    // B no longer holds a poll of A's, B takes k4; B pauses; A is promoted by force without
    // k4 and takes k3; B resumes, is fenced by A, lists k4 as discarded (status and a Warning
    // Event) and follows A once its resource names A primary.
    let admin_b = b.token(ADMIN_SA).await?;
    signal_partitions(&a, "-STOP").await?;
    polls_of_east_expired(&b, &admin_b).await?;
    let (s, v) = b_http
        .call(
            &b_app,
            Method::POST,
            "/keys/k4/create",
            Some(json!({"kty": "EC", "crv": "P-256"})),
        )
        .await;
    ensure!(s == StatusCode::OK, "create k4 on B: {s} {v}");
    signal_partitions(&b, "-STOP").await?;
    signal_partitions(&a, "-CONT").await?;
    let paused = Instant::now();
    patch_spec(
        &a,
        json!({"replication": {"region": "east", "primary": "east", "force": true,
            "regions": [{"name": "west", "endpoints": [b_endpoint], "caConfigMap": {"name": "west-ca"}}]}}),
    )
    .await?;
    kubectl_wait(&a, "jsonpath={.status.replication.role}=Primary")?;
    signal_partitions(&b, "-CONT").await?;
    eprintln!(
        "A promoted by force at {:?}; B was paused {:?}",
        t0.elapsed(),
        paused.elapsed()
    );
    event_seen(&a, "Failover").await?;
    create_key(&a_http, &a_app, "k3", "on A after the failover").await?;
    let st = a.status().await;
    ensure!(
        replication(&st)["epoch"] == 3,
        "two promotions, epoch 3: {st:#}"
    );
    let st = b
        .wait("B fenced, k4 listed as discarded", WAIT, |st| {
            replication(st)["discardedWrites"]
                .as_array()
                .is_some_and(|d| {
                    d.iter()
                        .any(|w| w.as_str().is_some_and(|w| w.contains("k4")))
                })
        })
        .await?;
    eprintln!(
        "B fenced at {:?}: discarded {}",
        t0.elapsed(),
        replication(&st)["discardedWrites"]
    );
    event_seen(&b, "DiscardedWrites").await?;
    patch_spec(
        &b,
        json!({"replication": {"region": "west", "primary": "east", "promotionToken": null,
            "regions": [{"name": "east", "endpoints": [a_endpoint], "caConfigMap": {"name": "east-ca"}}]}}),
    )
    .await?;
    kubectl_wait(&b, "condition=ReplicationHealthy")?;
    served(
        &b_http,
        &b_app,
        "k3",
        "k3 (written to A after the failover) served by B",
    )
    .await?;
    let (s, _) = b_http.call(&b_app, Method::GET, "/keys/k4", None).await;
    ensure!(s == StatusCode::NOT_FOUND, "k4 discarded from B: {s}");
    eprintln!("failover done at {:?}", t0.elapsed());

    // Removal: A's resource no longer lists west → A's operator removes it from the pool
    // (DELETE /admin/regions/west): no partition of A accepts west any more, and B, whose
    // polls are now refused, is no longer ReplicationHealthy.
    let admin_a = a.token(ADMIN_SA).await?;
    patch_spec(
        &a,
        json!({"replication": {"region": "east", "primary": "east", "force": null, "regions": []}}),
    )
    .await?;
    eventually("west no longer accepted by A", WAIT, || async {
        for pod in PODS {
            let http = partition_http(&a, pod).await?;
            let url = format!("https://{POOL}.{}.svc:8443/admin/status", a.ns.name);
            let v: Value = http
                .get(&url)
                .bearer_auth(&admin_a)
                .send()
                .await?
                .json()
                .await?;
            let accepted = v["region"]["accepted"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|r| r["name"] == "west");
            if accepted {
                return Ok(None);
            }
        }
        Ok(Some(()))
    })
    .await?;
    kubectl_wait(&b, "condition=ReplicationHealthy=False")?;
    kubectl_wait(&b, "jsonpath={.status.replication.primaryRefuses}=true")?;
    // As in Azure, the removed region's pool is purged (A's notice, checked under B's domain).
    kubectl_wait(&b, "jsonpath={.status.replication.removedBy}=east")?;
    event_seen(&b, "RegionPurged").await?;
    eprintln!("west removed at {:?}", t0.elapsed());
    a.ns.pass();
    b.ns.pass();
    Ok(())
}
