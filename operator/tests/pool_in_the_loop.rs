//! Operator-in-the-loop with REAL partitions: the `keystead-operator` binary against the
//! API emulator, while the harness (`tests/kubelet`) plays the StatefulSet controller, the
//! kubelet (one real `keystead-partition serve` process per pod) and the service-account
//! issuer. Every wait has a deadline; each test has its own cluster, addresses and temp dir.

mod emulator;
mod kubelet;

use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use keystead_core::b64;
use keystead_core::sd::CustodianPrivateKey;
use keystead_operator::crd::{ManagedHsm, SecurityDomain};
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kubelet::Cluster;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const NS: &str = "hsm";
const AUD: &str = "https://hsm.keystead.test";
const HSM: &str = "keystead.io/v1alpha1/managedhsms";
const SDS: &str = "keystead.io/v1alpha1/securitydomains";
const ADMIN_SA: &str = "hsm-admin";
const APP_SA: &str = "hsm-app";
const CRYPTO_USER: &str = "Microsoft.KeyVault/providers/Microsoft.Authorization/roleDefinitions/21dbd100-6940-42c2-9190-5d6cb909625b";

/// Poll `pred` every 250 ms until it holds; panic with the cluster's state at the deadline.
async fn wait(c: &Cluster, what: &str, limit: Duration, mut pred: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !pred() {
        if Instant::now() > deadline {
            panic!(
                "{what}: not reached within {limit:?}\nManagedHsm status: {}\n{}",
                hsm_status(c),
                c.dump()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn hsm_status(c: &Cluster) -> Value {
    c.emu
        .get(HSM, Some(NS), "pool")
        .map(|h| h["status"].clone())
        .unwrap_or(Value::Null)
}

fn phase(c: &Cluster) -> String {
    hsm_status(c)["phase"].as_str().unwrap_or("").to_string()
}

fn condition_reason(c: &Cluster, type_: &str) -> String {
    hsm_status(c)["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|x| x["type"] == type_))
        .and_then(|x| x["reason"].as_str())
        .unwrap_or("")
        .to_string()
}

fn pod_uid(c: &Cluster, pod: &str) -> Option<String> {
    c.emu
        .get("v1/pods", Some(NS), pod)
        .and_then(|p| p["metadata"]["uid"].as_str().map(String::from))
}

fn pool_spec(extra: Value) -> ManagedHsm {
    let mut spec = json!({
        "initialAdministrators": [format!("system:serviceaccount:apps:{ADMIN_SA}")],
        "authentication": {"audience": AUD},
        "healing": {"unhealthyThresholdSeconds": 30},
    });
    if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
        s.extend(e.clone());
    }
    serde_json::from_value(json!({
        "apiVersion": "keystead.io/v1alpha1", "kind": "ManagedHsm",
        "metadata": {"name": "pool", "namespace": NS},
        "spec": spec,
    }))
    .unwrap()
}

/// Three custodians: (certificate PEM, PKCS#8 private key).
fn custodians() -> Vec<(String, Vec<u8>)> {
    (0..3)
        .map(|i| {
            let key =
                rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
                    .unwrap();
            let params = rcgen::CertificateParams::new(vec![format!("custodian-{i}")]).unwrap();
            let pem = params.self_signed(&key).unwrap().pem();
            (pem, key.serialize_der())
        })
        .collect()
}

/// A client of the pool's endpoint (`status.endpoint`), reaching one pod (the Service's
/// choice) by its IP, trusting the pool's published CA bundle.
struct PoolHttp {
    http: reqwest::Client,
    base: String,
}

impl PoolHttp {
    fn new(c: &Cluster, pod: &str) -> PoolHttp {
        let cm = c
            .emu
            .get("v1/configmaps", Some(NS), "pool-ca-bundle")
            .expect("the CA bundle is published");
        let ca = reqwest::Certificate::from_pem(cm["data"]["ca.crt"].as_str().unwrap().as_bytes())
            .unwrap();
        let endpoint = hsm_status(c)["endpoint"].as_str().unwrap().to_string();
        let host = endpoint
            .trim_start_matches("https://")
            .split(':')
            .next()
            .unwrap()
            .to_string();
        let http = reqwest::Client::builder()
            .tls_certs_only([ca])
            .resolve(&host, std::net::SocketAddr::new(c.pod_ip(NS, pod), 0))
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap();
        // The Service's port maps to the partitions' 8443 (kube-proxy's job, not played).
        PoolHttp {
            http,
            base: format!("https://{host}:8443"),
        }
    }

    async fn call(
        &self,
        token: &str,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let sep = if path.contains('?') { '&' } else { '?' };
        let mut req = self
            .http
            .request(method, format!("{}{path}{sep}api-version=7.4", self.base))
            .bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        match req.send().await {
            Ok(r) => {
                let s = r.status();
                (s, r.json().await.unwrap_or(Value::Null))
            }
            Err(e) => (
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"error": e.to_string()}),
            ),
        }
    }
}

/// A service-account token for the pool's audience (`kubectl create token`).
async fn token(c: &Cluster, sa: &str) -> String {
    let api: Api<ServiceAccount> = Api::namespaced(c.client.clone(), "apps");
    let req: k8s_openapi::api::authentication::v1::TokenRequest =
        serde_json::from_value(json!({"spec": {"audiences": [AUD]}})).unwrap();
    api.create_token_request(sa, &PostParams::default(), &req)
        .await
        .unwrap()
        .status
        .unwrap()
        .token
}

async fn sign_and_verify(pool: &PoolHttp, app: &str, key: &str) {
    let digest = b64::encode_url([42u8; 32]);
    let (s, v) = pool
        .call(
            app,
            Method::POST,
            &format!("/keys/{key}/sign"),
            Some(json!({"alg": "ES256", "value": digest})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "sign: {v}");
    let (s, v) = pool
        .call(
            app,
            Method::POST,
            &format!("/keys/{key}/verify"),
            Some(json!({"alg": "ES256", "digest": digest, "value": v["value"]})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "verify: {v}");
    assert_eq!(v["value"], true);
}

/// Sign with `key` through `pod` until it works (the partition may still be catching up).
async fn usable_on(c: &Cluster, pod: &str, app: &str, key: &str) {
    let pool = PoolHttp::new(c, pod);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (s, v) = pool
            .call(app, Method::GET, &format!("/keys/{key}"), None)
            .await;
        if s == StatusCode::OK {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "key {key} not served by {pod}: {s} {v}\n{}",
            c.dump()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    sign_and_verify(&pool, app, key).await;
}

/// Provision, activate with three custodians, and create key `k1` as the application.
/// Returns the application's token and the custodians.
async fn activated_pool_with_a_key(
    c: &Cluster,
    hsm: ManagedHsm,
) -> (String, Vec<(String, Vec<u8>)>) {
    let hsms: Api<ManagedHsm> = Api::namespaced(c.client.clone(), NS);
    hsms.create(&PostParams::default(), &hsm).await.unwrap();

    // 1. Provisioned with three healthy partitions.
    wait(
        c,
        "phase Provisioned, 3/3 partitions",
        Duration::from_secs(120),
        || {
            let st = hsm_status(c);
            st["phase"] == "Provisioned" && st["readyPartitions"] == "3/3"
        },
    )
    .await;
    let st = hsm_status(c);
    for p in st["partitions"].as_array().unwrap() {
        assert_eq!(p["ready"], true, "{p}");
    }
    assert_eq!(
        condition_reason(c, "Ready"),
        "WaitingForSecurityDomain",
        "{st}"
    );

    // 2. The ceremony: Download with three custodian certificates.
    let custodians = custodians();
    let sds: Api<SecurityDomain> = Api::namespaced(c.client.clone(), NS);
    let sd: SecurityDomain = serde_json::from_value(json!({
        "apiVersion": "keystead.io/v1alpha1", "kind": "SecurityDomain",
        "metadata": {"name": "pool-sd", "namespace": NS},
        "spec": {"hsmRef": {"name": "pool"}, "mode": "Download",
                 "download": {"certificates": custodians.iter().map(|(p, _)| p.clone()).collect::<Vec<_>>(), "quorum": 2}},
    }))
    .unwrap();
    sds.create(&PostParams::default(), &sd).await.unwrap();
    wait(
        c,
        "SecurityDomain Activated",
        Duration::from_secs(90),
        || {
            c.emu
                .get(SDS, Some(NS), "pool-sd")
                .is_some_and(|s| s["status"]["phase"] == "Activated")
        },
    )
    .await;
    wait(c, "pool phase Activated", Duration::from_secs(60), || {
        phase(c) == "Activated"
    })
    .await;
    let sd = c.emu.get(SDS, Some(NS), "pool-sd").unwrap();
    assert_eq!(sd["status"]["domainSecret"], "pool-sd-domain");
    assert_eq!(
        sd["status"]["fingerprint"],
        hsm_status(c)["securityDomainFingerprint"]
    );
    // The Secret holds the encrypted domain file only: it opens with a quorum of the
    // custodians' private keys, and not without them.
    let secret: Secret = serde_json::from_value(
        c.emu
            .get("v1/secrets", Some(NS), "pool-sd-domain")
            .expect("the domain Secret"),
    )
    .unwrap();
    let data = secret.data.unwrap();
    assert_eq!(
        data.keys().collect::<Vec<_>>(),
        vec!["security-domain.json"]
    );
    let file = String::from_utf8(data["security-domain.json"].0.clone()).unwrap();
    let info = keystead_core::sd::inspect_domain_file(&file).unwrap();
    assert_eq!(
        Some(&json!(info.fingerprint)),
        sd["status"].get("fingerprint")
    );
    let keys: Vec<CustodianPrivateKey> = custodians
        .iter()
        .map(|(_, der)| CustodianPrivateKey::from_pkcs8_der(der).unwrap())
        .collect();
    keystead_core::sd::rehearse(&file, &keys[..2]).expect("two custodians open the domain");
    assert!(keystead_core::sd::recover_domain(&file, &[]).is_err());

    // 3. Keys through the pool, over HTTPS, with service-account tokens.
    let admin = token(c, ADMIN_SA).await;
    let app = token(c, APP_SA).await;
    let pool = PoolHttp::new(c, "pool-0");
    let (s, v) = pool
        .call(
            &admin,
            Method::PUT,
            &format!(
                "/providers/Microsoft.Authorization/roleAssignments/{}",
                uuid::Uuid::new_v4()
            ),
            Some(json!({"properties": {"roleDefinitionId": CRYPTO_USER,
                "principalId": format!("system:serviceaccount:apps:{APP_SA}")}})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "role assignment: {v}");
    let (s, v) = pool
        .call(
            &app,
            Method::POST,
            "/keys/k1/create",
            Some(json!({"kty": "EC", "crv": "P-256"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "create: {v}");
    // The admin holds no key permissions: RBAC is enforced.
    let (s, _) = pool
        .call(
            &admin,
            Method::POST,
            "/keys/k2/create",
            Some(json!({"kty": "EC", "crv": "P-256"})),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    // Every partition serves it (replicated through Raft).
    for pod in ["pool-0", "pool-1", "pool-2"] {
        usable_on(c, pod, &app, "k1").await;
    }
    (app, custodians)
}

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
    for pod in ["pool-0", "pool-1", "pool-2"] {
        usable_on(&c, pod, &app, "k1").await;
    }

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
    for pod in ["pool-0", "pool-1", "pool-2"] {
        usable_on(&c, pod, &app, "k1").await;
    }

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
    for pod in ["pool-0", "pool-1", "pool-2"] {
        usable_on(&c, pod, &app, "k1").await;
    }

    let _ = operator.start_kill();
    let _ = operator.wait().await;
}
