//! Steps the end-to-end tests share: waits with deadlines, a pool's pods and partitions, an
//! activated pool with a first key, and Backup/Restore jobs followed to their phase.

use crate::Cluster;
use crate::TestNamespace;
use crate::pool::{ADMIN_SA, APP_SA, CRYPTO_USER, POOL, Pool, PoolHttp};
use anyhow::{Context, bail, ensure};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::ListParams;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// The partitions of a pool (its StatefulSet's pods).
pub const PODS: [&str; 3] = ["pool-0", "pool-1", "pool-2"];
/// The storage emulator's published development key (not a secret).
pub const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// Poll `probe` every 250 ms until it returns `Some`; fail with `what` at the deadline.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut probe: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = Instant::now() + limit;
    let mut last_err = String::new();
    loop {
        match probe().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_err = format!("{e:#}"),
        }
        if Instant::now() > deadline {
            bail!("{what}: not reached within {limit:?} {last_err}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

pub async fn pod(pool: &Pool, name: &str) -> anyhow::Result<Option<Pod>> {
    Ok(pool.ns.api::<Pod>().get_opt(name).await?)
}

pub fn ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

pub fn restarts(p: &Pod) -> i32 {
    p.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.first())
        .map(|c| c.restart_count)
        .unwrap_or(0)
}

/// A client of one partition (its pod address), for checks that must reach a given one.
pub async fn partition_http(pool: &Pool, name: &str) -> anyhow::Result<reqwest::Client> {
    let p = pod(pool, name).await?.context("pod exists")?;
    let ip: std::net::IpAddr = p
        .status
        .and_then(|s| s.pod_ip)
        .context("pod has an address")?
        .parse()?;
    let ca = reqwest::Certificate::from_pem(pool.ca_pem().await?.as_bytes())?;
    Ok(reqwest::Client::builder()
        .tls_certs_only([ca])
        .resolve(
            &format!("{POOL}.{}.svc", pool.ns.name),
            std::net::SocketAddr::new(ip, 8443),
        )
        .timeout(Duration::from_secs(10))
        .build()?)
}

/// Until partition `name` serves key `key` to `token` (it may still be catching up).
pub async fn key_served_by(pool: &Pool, name: &str, token: &str, key: &str) -> anyhow::Result<()> {
    key_answer_on(pool, name, token, key, StatusCode::OK).await
}

/// Until `GET /keys/{key}` as `token` answers `want` on partition `name`.
pub async fn key_answer_on(
    pool: &Pool,
    name: &str,
    token: &str,
    key: &str,
    want: StatusCode,
) -> anyhow::Result<()> {
    let url = format!(
        "https://{POOL}.{}.svc:8443/keys/{key}?api-version=7.4",
        pool.ns.name
    );
    eventually(
        &format!("{name} answers {want} for key {key}"),
        Duration::from_secs(120),
        || async {
            let http = partition_http(pool, name).await?;
            let r = http.get(&url).bearer_auth(token).send().await?;
            Ok((r.status() == want).then_some(()))
        },
    )
    .await
}

/// SIGKILL the container of pod `ns/name` (a crash) and wait until the node agent has
/// restarted it and it is Ready again.
pub async fn crash_and_restart(cluster: &Cluster, ns: &str, name: &str) -> anyhow::Result<()> {
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), ns);
    let p = pods.get(name).await?;
    let (uid, before) = (p.metadata.uid.clone().context("pod uid")?, restarts(&p));
    cluster.kill_container(ns, name, &uid)?;
    eventually(
        &format!("{ns}/{name} restarted and Ready"),
        Duration::from_secs(120),
        || async {
            let p = pods.get(name).await?;
            Ok((restarts(&p) > before && ready(&p)).then_some(()))
        },
    )
    .await
}

/// An activated pool with key `k1` (created by the application through the Service).
pub async fn activated_pool(
    cluster: &Cluster,
    prefix: &str,
    extra: Value,
) -> anyhow::Result<(Pool, String, Vec<(String, Vec<u8>)>)> {
    let ns = TestNamespace::create_in(cluster, prefix).await?;
    let pool = Pool::create(ns, extra).await?;
    pool.provisioned().await?;
    let custodians = pool.activate().await?;
    let (app, _) = first_key(&pool).await?;
    Ok((pool, app, custodians))
}

/// The administrator grants the application Crypto User; the application creates EC key
/// `k1` through the Service. Returns the application's token and the client.
pub async fn first_key(pool: &Pool) -> anyhow::Result<(String, PoolHttp)> {
    let admin = pool.token(ADMIN_SA).await?;
    let app = pool.token(APP_SA).await?;
    let http = pool.http().await?;
    http.assign_role(&admin, CRYPTO_USER, &pool.principal(APP_SA))
        .await?;
    let (s, v) = http
        .call_until_served(
            &app,
            Method::POST,
            "/keys/k1/create",
            Some(json!({"kty": "EC", "crv": "P-256"})),
            Duration::from_secs(30),
        )
        .await;
    ensure!(s == StatusCode::OK, "create k1: {s} {v}");
    Ok((app, http))
}

/// `(namespace, (name, uid))` of every pod in `ns`.
pub async fn pods_of(
    cluster: &Cluster,
    ns: &str,
) -> anyhow::Result<Vec<(String, (String, String))>> {
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), ns);
    Ok(pods
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter_map(|p| Some((ns.to_string(), (p.metadata.name?, p.metadata.uid?))))
        .collect())
}

/// Create the object `obj` (its JSON) through `api`.
pub async fn create<K>(api: &Api<K>, obj: Value) -> anyhow::Result<()>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + serde::Serialize,
{
    let o: K = serde_json::from_value(obj)?;
    api.create(&Default::default(), &o).await?;
    Ok(())
}

/// Delete key `key` as `token` (soft delete), retrying while a partition restarts.
pub async fn delete_key(http: &PoolHttp, token: &str, key: &str) -> anyhow::Result<()> {
    let path = format!("/keys/{key}");
    let (s, v) = http
        .call_until_served(token, Method::DELETE, &path, None, Duration::from_secs(30))
        .await;
    ensure!(s == StatusCode::OK, "delete {key}: {s} {v}");
    Ok(())
}

/// Wait until the job `name` (`Backup` or `Restore`) has phase `phase`; its status. A final
/// phase other than the one awaited fails at once.
pub async fn job_phase<K>(
    api: &Api<K>,
    name: &str,
    phase: &str,
    limit: Duration,
) -> anyhow::Result<Value>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + serde::Serialize,
{
    let mut last = Value::Null;
    let deadline = Instant::now() + limit;
    loop {
        if let Some(o) = api.get_opt(name).await? {
            last = serde_json::to_value(&o)?["status"].clone();
            if last["phase"] == phase {
                return Ok(last);
            }
            ensure!(
                !matches!(last["phase"].as_str(), Some("Succeeded" | "Failed")),
                "{name} is {} instead of {phase}: {last:#}",
                last["phase"]
            );
        }
        ensure!(
            Instant::now() < deadline,
            "{name} not {phase} within {limit:?}: {last:#}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The reason and message of the condition `type_` in a `status` (empty when absent).
pub fn condition(st: &Value, type_: &str) -> (String, String) {
    st["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|x| x["type"] == type_))
        .map(|x| {
            (
                x["reason"].as_str().unwrap_or_default().to_string(),
                x["message"].as_str().unwrap_or_default().to_string(),
            )
        })
        .unwrap_or_default()
}

/// The operator's namespace and its pods' label (the chart's).
pub const OPERATOR_NS: &str = "keystead-system";
pub const OPERATOR_SELECTOR: &str = "app.kubernetes.io/name=keystead";

/// The operator's Ready pod (the Deployment runs one).
pub async fn operator_pod(cluster: &Cluster) -> anyhow::Result<Pod> {
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), OPERATOR_NS);
    eventually(
        "the operator's pod Ready",
        Duration::from_secs(120),
        || async {
            let list = pods
                .list(&ListParams::default().labels(OPERATOR_SELECTOR))
                .await?;
            Ok(list
                .items
                .into_iter()
                .find(|p| ready(p) && p.metadata.deletion_timestamp.is_none()))
        },
    )
    .await
}
