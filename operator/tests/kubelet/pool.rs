//! Pool-level helpers of the in-the-loop tests: a ManagedHsm spec, the Download ceremony
//! with three custodians, a client of the pool's endpoint over HTTPS with service-account
//! tokens, and deadline-bound waits on the pool's status.

use super::Cluster;
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use keystead_core::b64;
use keystead_core::sd::CustodianPrivateKey;
use keystead_operator::crd::{ManagedHsm, SecurityDomain};
use kube::Api;
use kube::api::PostParams;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

pub const NS: &str = "hsm";
/// The pool's audience: not set in the spec, so the operator's default for the endpoint
/// `https://pool.hsm.svc` (the host without its first label).
pub const AUD: &str = "https://hsm.svc";
pub const HSM: &str = "keystead.io/v1alpha1/managedhsms";
pub const SDS: &str = "keystead.io/v1alpha1/securitydomains";
pub const BACKUPS: &str = "keystead.io/v1alpha1/backups";
pub const ADMIN_SA: &str = "hsm-admin";
pub const APP_SA: &str = "hsm-app";
pub const CRYPTO_USER: &str = "Microsoft.KeyVault/providers/Microsoft.Authorization/roleDefinitions/21dbd100-6940-42c2-9190-5d6cb909625b";

/// Poll `pred` every 250 ms until it holds; panic with the cluster's state at the deadline.
pub async fn wait(c: &Cluster, what: &str, limit: Duration, mut pred: impl FnMut() -> bool) {
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

/// The names of the Backups schedule `schedule` made (label `keystead.io/backup-schedule`),
/// sorted (their names end with the scheduled time).
pub fn scheduled_backups(c: &Cluster, schedule: &str) -> Vec<String> {
    let mut names: Vec<String> = super::objects(&c.emu, BACKUPS)
        .iter()
        .filter(|b| b["metadata"]["labels"]["keystead.io/backup-schedule"] == schedule)
        .filter_map(|b| b["metadata"]["name"].as_str().map(String::from))
        .collect();
    names.sort();
    names
}

pub fn hsm_status(c: &Cluster) -> Value {
    c.emu
        .get(HSM, Some(NS), "pool")
        .map(|h| h["status"].clone())
        .unwrap_or(Value::Null)
}

pub fn phase(c: &Cluster) -> String {
    hsm_status(c)["phase"].as_str().unwrap_or("").to_string()
}

pub fn condition_reason(c: &Cluster, type_: &str) -> String {
    hsm_status(c)["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|x| x["type"] == type_))
        .and_then(|x| x["reason"].as_str())
        .unwrap_or("")
        .to_string()
}

pub fn pod_uid(c: &Cluster, pod: &str) -> Option<String> {
    c.emu
        .get("v1/pods", Some(NS), pod)
        .and_then(|p| p["metadata"]["uid"].as_str().map(String::from))
}

pub fn pool_spec(extra: Value) -> ManagedHsm {
    let mut spec = json!({
        "initialAdministrators": [format!("system:serviceaccount:apps:{ADMIN_SA}")],
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
pub fn custodians() -> Vec<(String, Vec<u8>)> {
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
pub struct PoolHttp {
    http: reqwest::Client,
    base: String,
}

impl PoolHttp {
    pub fn new(c: &Cluster, pod: &str) -> PoolHttp {
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

    pub async fn call(
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
pub async fn token(c: &Cluster, sa: &str) -> String {
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

pub async fn sign_and_verify(pool: &PoolHttp, app: &str, key: &str) {
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

/// Until `GET /keys/{key}` through `pod` answers `want` (the partition may be catching up).
pub async fn key_status_on(c: &Cluster, pod: &str, app: &str, key: &str, want: StatusCode) {
    let pool = PoolHttp::new(c, pod);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (s, v) = pool
            .call(app, Method::GET, &format!("/keys/{key}"), None)
            .await;
        if s == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "GET /keys/{key} on {pod}: {s} {v}, want {want}\n{}",
            c.dump()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Sign with `key` through `pod` once it serves it.
pub async fn usable_on(c: &Cluster, pod: &str, app: &str, key: &str) {
    key_status_on(c, pod, app, key, StatusCode::OK).await;
    sign_and_verify(&PoolHttp::new(c, pod), app, key).await;
}

/// Sign with `key` through every partition of the pool.
pub async fn usable_everywhere(c: &Cluster, app: &str, key: &str) {
    for pod in ["pool-0", "pool-1", "pool-2"] {
        usable_on(c, pod, app, key).await;
    }
}

/// Assign the role `role` (a full role definition id) at `/` to service account `sa` of
/// namespace `apps`, as `admin`.
pub async fn assign_role(pool: &PoolHttp, admin: &str, role: &str, sa: &str) {
    let (s, v) = pool
        .call(
            admin,
            Method::PUT,
            &format!(
                "/providers/Microsoft.Authorization/roleAssignments/{}",
                uuid::Uuid::new_v4()
            ),
            Some(json!({"properties": {"roleDefinitionId": role,
                "principalId": format!("system:serviceaccount:apps:{sa}")}})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "role assignment: {v}");
}

/// Provision, activate with three custodians, and create key `k1` as the application.
/// Returns the application's token and the custodians.
pub async fn activated_pool_with_a_key(
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
    // The operator reports the audience it derived (and requests its own tokens for).
    if hsm.spec.authentication.audience.is_none() {
        assert_eq!(st["audience"], AUD, "{st}");
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
    assign_role(&pool, &admin, CRYPTO_USER, APP_SA).await;
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
    usable_everywhere(c, &app, "k1").await;
    (app, custodians)
}
