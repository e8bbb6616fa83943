//! Operator-in-the-loop with REAL partitions: the `keystead-operator` binary against the
//! API emulator, while the harness (`tests/kubelet`) plays the StatefulSet controller, the
//! kubelet (one real `keystead-partition serve` process per pod) and the service-account
//! issuer. Every wait has a deadline; each test has its own cluster, addresses and temp dir.

mod emulator;
mod kubelet;

use k8s_openapi::api::core::v1::Secret;
use keystead_core::sd::CustodianPrivateKey;
use keystead_operator::crd::{ManagedHsm, SecurityDomain};
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kubelet::Cluster;
use kubelet::pool::*;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn activation_keys_healing_and_rolling_upgrade_with_real_partitions() {
    let c = Cluster::start().await;
    let mut operator = c.start_operator();
    let (app, _custodians) = activated_pool_with_a_key(&c, pool_spec(json!({}))).await;

    // 4. A partition's node is lost: Degraded, then (past the threshold) Healing, then the
    // re-created pod rejoins, gets the domain from its peers, and the pool is whole again.
    let before = pod_uid(&c, "pool-1").unwrap();
    c.fail(NS, "pool-1");
    wait(&c, "phase Degraded", Duration::from_secs(30), || {
        phase(&c) == "Degraded"
    })
    .await;
    assert_eq!(
        condition_reason(&c, "Ready"),
        "PoolReady",
        "2 of 3 still serve"
    );
    usable_on(&c, "pool-0", &app, "k1").await;
    wait(&c, "pool-1 replaced", Duration::from_secs(90), || {
        pod_uid(&c, "pool-1").is_some_and(|u| u != before)
    })
    .await;
    assert!(
        c.history().iter().any(|h| h == "stopped hsm/pool-1"),
        "{:?}",
        c.history()
    );
    wait(
        &c,
        "phase Activated after healing",
        Duration::from_secs(90),
        || phase(&c) == "Activated",
    )
    .await;
    usable_on(&c, "pool-1", &app, "k1").await;
    let events: Vec<Value> = c
        .emu
        .store
        .lock()
        .unwrap()
        .objects
        .iter()
        .filter(|(k, _)| k.starts_with("events.k8s.io/v1/events|hsm|"))
        .map(|(_, v)| v.clone())
        .collect();
    assert!(
        events.iter().any(|e| e["reason"] == "ReplacingPartition"),
        "an Event for the replacement: {events:?}"
    );

    // 5. A new image rolls one partition at a time, never below quorum.
    c.reset_min_ready(NS, "pool");
    let hsms: Api<ManagedHsm> = Api::namespaced(c.client.clone(), NS);
    let image = "ghcr.io/keystead/keystead-partition:0.2.0";
    hsms.patch(
        "pool",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"image": image}})),
    )
    .await
    .unwrap();
    let first_stop = c.history().len();
    wait(
        &c,
        "every partition on the new image, Activated",
        Duration::from_secs(180),
        || {
            ["pool-0", "pool-1", "pool-2"]
                .iter()
                .all(|p| c.image(NS, p).as_deref() == Some(image) && c.ready(NS, p))
                && phase(&c) == "Activated"
                && hsm_status(&c)["observedGeneration"] == 2
        },
    )
    .await;
    let min = c.min_ready_since_all_ready(NS, "pool");
    assert!(
        min.is_some_and(|m| m >= 2),
        "quorum kept during the rollout (lowest Ready count {min:?}): {:?}",
        c.history()
    );
    // One at a time: each stop is followed by that pod's readiness before the next stop.
    let rollout: Vec<String> = c.history()[first_stop..]
        .iter()
        .filter(|h| h.starts_with("stopped ") || h.starts_with("ready "))
        .cloned()
        .collect();
    let stops: Vec<&String> = rollout
        .iter()
        .filter(|h| h.starts_with("stopped"))
        .collect();
    assert_eq!(stops.len(), 3, "{rollout:?}");
    for w in rollout.windows(2) {
        if w[0].starts_with("stopped") {
            assert_eq!(
                w[1],
                w[0].replace("stopped", "ready"),
                "the next pod went before the previous one was back: {rollout:?}"
            );
        }
    }
    usable_everywhere(&c, &app, "k1").await;

    let _ = operator.start_kill();
    let _ = operator.wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn soft_deleted_pool_is_recovered_with_its_keys() {
    let c = Cluster::start().await;
    let mut operator = c.start_operator();
    // The sealing key lets the whole pool restart unattended (seal mode SealingKeySecret).
    let mut key = [0u8; 32];
    aws_lc_rs::rand::fill(&mut key).unwrap();
    let secrets: Api<Secret> = Api::namespaced(c.client.clone(), NS);
    let seal: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "pool-seal", "namespace": NS},
        "data": {"sealing-key": base64_std(&key)},
    }))
    .unwrap();
    secrets.create(&PostParams::default(), &seal).await.unwrap();
    let sealed = json!({"seal": {"mode": "SealingKeySecret", "secret": {"name": "pool-seal"}}});
    let (app, _custodians) = activated_pool_with_a_key(&c, pool_spec(sealed.clone())).await;
    let fingerprint = hsm_status(&c)["securityDomainFingerprint"].clone();

    // 6. Soft delete: the pods stop, the volumes and TLS Secrets stay with a purge date.
    let hsms: Api<ManagedHsm> = Api::namespaced(c.client.clone(), NS);
    hsms.delete("pool", &DeleteParams::default()).await.unwrap();
    wait(
        &c,
        "ManagedHsm gone and partitions stopped",
        Duration::from_secs(60),
        || {
            c.emu.get(HSM, Some(NS), "pool").is_none()
                && ["pool-0", "pool-1", "pool-2"].iter().all(|p| {
                    c.emu.get("v1/pods", Some(NS), p).is_none() && c.image(NS, p).is_none()
                })
        },
    )
    .await;
    for p in ["pool-0", "pool-1", "pool-2"] {
        let pvc = c
            .emu
            .get("v1/persistentvolumeclaims", Some(NS), &format!("data-{p}"))
            .expect("the volume is retained");
        assert!(pvc["metadata"]["annotations"]["keystead.io/purge-after"].is_string());
    }

    // Re-created with recover: the same volumes, the same domain, the same keys.
    let mut again = json!({"recover": true});
    again
        .as_object_mut()
        .unwrap()
        .extend(sealed.as_object().unwrap().clone());
    hsms.create(&PostParams::default(), &pool_spec(again))
        .await
        .unwrap();
    wait(
        &c,
        "recovered pool Activated",
        Duration::from_secs(120),
        || phase(&c) == "Activated" && hsm_status(&c)["readyPartitions"] == "3/3",
    )
    .await;
    assert_eq!(hsm_status(&c)["securityDomainFingerprint"], fingerprint);
    let pvc = c
        .emu
        .get("v1/persistentvolumeclaims", Some(NS), "data-pool-0")
        .unwrap();
    assert!(
        pvc["metadata"]["annotations"]
            .get("keystead.io/purge-after")
            .is_none()
    );
    usable_everywhere(&c, &app, "k1").await;

    let _ = operator.start_kill();
    let _ = operator.wait().await;
}

fn base64_std(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The Upload ceremony against real partitions: a memory-only pool (the default seal) is
/// soft-deleted and recovered; its partitions come back without the domain key, the pool
/// reports RecoveryPending (no healing), a SecurityDomain in Upload mode publishes the
/// exchange certificate, the custodians' transfer blob (two of three keys, built offline
/// here) goes into a Secret, and the pool is activated again with the same domain and keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_only_pool_gets_its_domain_back_through_the_upload_ceremony() {
    let c = Cluster::start().await;
    let mut operator = c.start_operator();
    let (app, custodians) = activated_pool_with_a_key(&c, pool_spec(json!({}))).await;
    let fingerprint = hsm_status(&c)["securityDomainFingerprint"].clone();
    let secret: Secret = serde_json::from_value(
        c.emu
            .get("v1/secrets", Some(NS), "pool-sd-domain")
            .expect("the domain Secret"),
    )
    .unwrap();
    let file = String::from_utf8(secret.data.unwrap()["security-domain.json"].0.clone()).unwrap();

    // Soft delete and recovery: the partitions restart with memory-only sealing.
    let hsms: Api<ManagedHsm> = Api::namespaced(c.client.clone(), NS);
    hsms.delete("pool", &DeleteParams::default()).await.unwrap();
    wait(&c, "ManagedHsm gone", Duration::from_secs(60), || {
        c.emu.get(HSM, Some(NS), "pool").is_none()
            && ["pool-0", "pool-1", "pool-2"]
                .iter()
                .all(|p| c.emu.get("v1/pods", Some(NS), p).is_none())
    })
    .await;
    hsms.create(&PostParams::default(), &pool_spec(json!({"recover": true})))
        .await
        .unwrap();
    wait(
        &c,
        "recovered pool RecoveryPending with 3/3 partitions serving",
        Duration::from_secs(120),
        || phase(&c) == "RecoveryPending" && hsm_status(&c)["readyPartitions"] == "3/3",
    )
    .await;
    assert_eq!(condition_reason(&c, "Ready"), "RecoveryPending");

    // The Upload ceremony.
    let sds: Api<SecurityDomain> = Api::namespaced(c.client.clone(), NS);
    let sd: SecurityDomain = serde_json::from_value(json!({
        "apiVersion": "keystead.io/v1alpha1", "kind": "SecurityDomain",
        "metadata": {"name": "pool-upload", "namespace": NS},
        "spec": {"hsmRef": {"name": "pool"}, "mode": "Upload",
                 "upload": {"transferBlobSecret": {"name": "pool-blob"}}},
    }))
    .unwrap();
    sds.create(&PostParams::default(), &sd).await.unwrap();
    wait(
        &c,
        "the exchange certificate is published",
        Duration::from_secs(60),
        || {
            c.emu
                .get("v1/configmaps", Some(NS), "pool-upload-exchange")
                .is_some()
        },
    )
    .await;
    let cm = c
        .emu
        .get("v1/configmaps", Some(NS), "pool-upload-exchange")
        .unwrap();
    let exchange = keystead_core::sd::ExchangeCertificate::from_pem(
        cm["data"]["exchange.pem"].as_str().expect("exchange.pem"),
    )
    .unwrap();
    let keys: Vec<CustodianPrivateKey> = [0usize, 2]
        .iter()
        .map(|&i| CustodianPrivateKey::from_pkcs8_der(&custodians[i].1).unwrap())
        .collect();
    let blob = keystead_core::sd::build_transfer_blob(&file, &keys, &exchange).unwrap();
    let secrets: Api<Secret> = Api::namespaced(c.client.clone(), NS);
    let blob_secret: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "pool-blob", "namespace": NS},
        "data": {"transfer.json": base64_std(blob.as_bytes())},
    }))
    .unwrap();
    secrets
        .create(&PostParams::default(), &blob_secret)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !(c
        .emu
        .get(SDS, Some(NS), "pool-upload")
        .is_some_and(|s| s["status"]["phase"] == "Activated")
        && phase(&c) == "Activated"
        && hsm_status(&c)["readyPartitions"] == "3/3")
    {
        assert!(
            Instant::now() < deadline,
            "the upload did not activate the pool again within 120 s\nSecurityDomain status: {}\nManagedHsm status: {}",
            c.emu
                .get(SDS, Some(NS), "pool-upload")
                .map(|s| s["status"].clone())
                .unwrap_or_default(),
            hsm_status(&c)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(hsm_status(&c)["securityDomainFingerprint"], fingerprint);
    usable_everywhere(&c, &app, "k1").await;

    let _ = operator.start_kill();
    let _ = operator.wait().await;
}
