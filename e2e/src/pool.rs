//! A pool in a test's namespace on a real API server: its ManagedHsm, the Download ceremony
//! with three custodians, service-account tokens from the TokenRequest API, and a client of
//! the pool's endpoint through its Service address (the dev cluster's Service proxy).

use crate::TestNamespace;
use anyhow::{Context, bail};
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service, ServiceAccount};
use keystead_core::b64;
use keystead_operator::crd::{ManagedHsm, SecurityDomain};
use kube::Api;
use kube::api::PostParams;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

pub const POOL: &str = "pool";
pub const ADMIN_SA: &str = "hsm-admin";
pub const APP_SA: &str = "hsm-app";
pub const CRYPTO_USER: &str = "Microsoft.KeyVault/providers/Microsoft.Authorization/roleDefinitions/21dbd100-6940-42c2-9190-5d6cb909625b";

/// The full role definition id of a built-in role (`keystead_core::rbac::*_ROLE_ID`).
pub fn role_definition(id: &str) -> String {
    format!("Microsoft.KeyVault/providers/Microsoft.Authorization/roleDefinitions/{id}")
}

/// Three custodians: (certificate PEM, PKCS#8 private key).
pub fn custodians() -> Vec<(String, Vec<u8>)> {
    (0..3)
        .map(|i| {
            let key =
                rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
                    .expect("RSA key generation");
            let params = rcgen::CertificateParams::new(vec![format!("custodian-{i}")])
                .expect("certificate parameters");
            let pem = params.self_signed(&key).expect("self-signed").pem();
            (pem, key.serialize_der())
        })
        .collect()
}

/// One pool (`ManagedHsm` named [`POOL`]) in a test namespace.
pub struct Pool {
    pub ns: TestNamespace,
}

impl Pool {
    /// Service accounts `hsm-admin` (initial administrator) and `hsm-app`, and the ManagedHsm
    /// with `extra` merged into its spec.
    pub async fn create(ns: TestNamespace, extra: Value) -> anyhow::Result<Pool> {
        let sas: Api<ServiceAccount> = ns.api();
        for sa in [ADMIN_SA, APP_SA] {
            let obj: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": sa}}))?;
            sas.create(&PostParams::default(), &obj).await?;
        }
        let pool = Pool { ns };
        pool.apply_spec(extra).await?;
        Ok(pool)
    }

    pub async fn apply_spec(&self, extra: Value) -> anyhow::Result<()> {
        let mut spec = json!({
            "initialAdministrators": [self.principal(ADMIN_SA)],
            "healing": {"unhealthyThresholdSeconds": 30},
        });
        if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
            s.extend(e.clone());
        }
        let hsm: ManagedHsm = serde_json::from_value(json!({
            "apiVersion": "keystead.io/v1alpha1", "kind": "ManagedHsm",
            "metadata": {"name": POOL, "namespace": self.ns.name},
            "spec": spec,
        }))?;
        self.ns
            .api::<ManagedHsm>()
            .create(&PostParams::default(), &hsm)
            .await?;
        Ok(())
    }

    pub fn principal(&self, sa: &str) -> String {
        format!("system:serviceaccount:{}:{sa}", self.ns.name)
    }

    /// The ManagedHsm's status (Null before the first status write).
    pub async fn status(&self) -> Value {
        match self.ns.api::<ManagedHsm>().get_opt(POOL).await {
            Ok(Some(h)) => serde_json::to_value(&h.status).unwrap_or(Value::Null),
            _ => Value::Null,
        }
    }

    /// Poll the ManagedHsm's status every 250 ms until `pred` holds; fails at the deadline
    /// with the last status.
    pub async fn wait(
        &self,
        what: &str,
        limit: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        let deadline = Instant::now() + limit;
        loop {
            let st = self.status().await;
            if pred(&st) {
                return Ok(st);
            }
            if Instant::now() > deadline {
                bail!("{what}: not reached within {limit:?}; ManagedHsm status: {st:#}");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The reason of condition `type_`.
    pub fn reason(st: &Value, type_: &str) -> String {
        condition(st, type_)["reason"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Provisioned with three healthy partitions.
    pub async fn provisioned(&self) -> anyhow::Result<Value> {
        self.wait(
            "phase Provisioned with 3/3 partitions",
            Duration::from_secs(180),
            |st| st["readyPartitions"] == "3/3" && st["phase"] != "Pending",
        )
        .await
    }

    /// The Download ceremony: a SecurityDomain with three custodian certificates (quorum 2),
    /// until the pool is Activated. Returns the custodians.
    pub async fn activate(&self) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
        let custodians = custodians();
        let sd: SecurityDomain = serde_json::from_value(json!({
            "apiVersion": "keystead.io/v1alpha1", "kind": "SecurityDomain",
            "metadata": {"name": "pool-sd", "namespace": self.ns.name},
            "spec": {"hsmRef": {"name": POOL}, "mode": "Download",
                     "download": {"certificates": custodians.iter().map(|(p, _)| p.clone()).collect::<Vec<_>>(), "quorum": 2}},
        }))?;
        self.ns
            .api::<SecurityDomain>()
            .create(&PostParams::default(), &sd)
            .await?;
        self.wait("phase Activated", Duration::from_secs(180), |st| {
            st["phase"] == "Activated"
        })
        .await?;
        Ok(custodians)
    }

    /// A service-account token for the pool's audience (`status.audience`).
    pub async fn token(&self, sa: &str) -> anyhow::Result<String> {
        let audience = self.status().await["audience"]
            .as_str()
            .context("status.audience is not set")?
            .to_string();
        let req: TokenRequest = serde_json::from_value(json!({"spec": {"audiences": [audience]}}))?;
        let answer = self
            .ns
            .api::<ServiceAccount>()
            .create_token_request(sa, &PostParams::default(), &req)
            .await?;
        Ok(answer.status.context("TokenRequest without status")?.token)
    }

    /// The pool's endpoint host (`<pool>.<ns>.svc`) and its Service's cluster address.
    pub async fn service_address(&self) -> anyhow::Result<(String, SocketAddr)> {
        let endpoint = self.status().await["endpoint"]
            .as_str()
            .context("status.endpoint is not set")?
            .to_string();
        let url = url_host_port(&endpoint)?;
        let svc_name = url.0.split('.').next().unwrap_or_default().to_string();
        let svc = self.ns.api::<Service>().get(&svc_name).await?;
        let ip = svc
            .spec
            .and_then(|s| s.cluster_ip)
            .context("the client Service has no cluster IP")?;
        Ok((url.0, SocketAddr::new(ip.parse()?, url.1)))
    }

    /// The pool's CA bundle (PEM), as published in its ConfigMap.
    pub async fn ca_pem(&self) -> anyhow::Result<String> {
        let cms: Api<ConfigMap> = self.ns.api();
        let cm = cms.get(&format!("{POOL}-ca-bundle")).await?;
        cm.data
            .and_then(|d| d.get("ca.crt").cloned())
            .context("the CA bundle ConfigMap has no ca.crt")
    }

    /// An HTTPS client of the pool's endpoint through its Service address.
    pub async fn http(&self) -> anyhow::Result<PoolHttp> {
        let (host, addr) = self.service_address().await?;
        let ca = reqwest::Certificate::from_pem(self.ca_pem().await?.as_bytes())?;
        let http = reqwest::Client::builder()
            .tls_certs_only([ca])
            .resolve(&host, addr)
            .timeout(Duration::from_secs(20))
            .build()?;
        Ok(PoolHttp {
            http,
            base: if addr.port() == 443 {
                format!("https://{host}")
            } else {
                format!("https://{host}:{}", addr.port())
            },
        })
    }

    /// The pod's uid (None when it does not exist).
    pub async fn pod_uid(&self, pod: &str) -> Option<String> {
        self.ns
            .api::<Pod>()
            .get_opt(pod)
            .await
            .ok()
            .flatten()
            .and_then(|p| p.metadata.uid)
    }
}

fn condition(st: &Value, type_: &str) -> Value {
    st["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
        .cloned()
        .unwrap_or(Value::Null)
}

/// `https://host[:port]` → (host, port).
fn url_host_port(url: &str) -> anyhow::Result<(String, u16)> {
    let rest = url
        .strip_prefix("https://")
        .with_context(|| format!("{url} is not an https URL"))?;
    let authority = rest.split('/').next().unwrap_or(rest);
    Ok(match authority.rsplit_once(':') {
        Some((h, p)) => (h.to_string(), p.parse()?),
        None => (authority.to_string(), 443),
    })
}

/// A client of the pool's Key Vault API.
pub struct PoolHttp {
    http: reqwest::Client,
    pub base: String,
}

impl PoolHttp {
    /// One call; a transport error is answered as 503 with the error in the body.
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

    /// Retry a call answered 503 (a partition restarting behind the Service) until `limit`.
    pub async fn call_until_served(
        &self,
        token: &str,
        method: Method,
        path: &str,
        body: Option<Value>,
        limit: Duration,
    ) -> (StatusCode, Value) {
        let deadline = Instant::now() + limit;
        loop {
            let (s, v) = self.call(token, method.clone(), path, body.clone()).await;
            if s != StatusCode::SERVICE_UNAVAILABLE || Instant::now() > deadline {
                return (s, v);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Grant `role` at `/` to `principal`, as `admin`.
    pub async fn assign_role(
        &self,
        admin: &str,
        role: &str,
        principal: &str,
    ) -> anyhow::Result<()> {
        let (s, v) = self
            .call_until_served(
                admin,
                Method::PUT,
                &format!(
                    "/providers/Microsoft.Authorization/roleAssignments/{}",
                    uuid::Uuid::new_v4()
                ),
                Some(json!({"properties": {"roleDefinitionId": role, "principalId": principal}})),
                Duration::from_secs(30),
            )
            .await;
        if s != StatusCode::CREATED {
            bail!("role assignment: {s} {v}");
        }
        Ok(())
    }

    /// Sign a digest with EC key `key` and verify the signature.
    pub async fn sign_and_verify(&self, token: &str, key: &str) -> anyhow::Result<()> {
        let digest = b64::encode_url([42u8; 32]);
        let (s, v) = self
            .call_until_served(
                token,
                Method::POST,
                &format!("/keys/{key}/sign"),
                Some(json!({"alg": "ES256", "value": digest})),
                Duration::from_secs(30),
            )
            .await;
        if s != StatusCode::OK {
            bail!("sign with {key}: {s} {v}");
        }
        let (s, v) = self
            .call_until_served(
                token,
                Method::POST,
                &format!("/keys/{key}/verify"),
                Some(json!({"alg": "ES256", "digest": digest, "value": v["value"]})),
                Duration::from_secs(30),
            )
            .await;
        if s != StatusCode::OK || v["value"] != true {
            bail!("verify with {key}: {s} {v}");
        }
        Ok(())
    }
}
