//! The KMS v2 plugin on a real control plane: its own local pool, plugin and dev cluster
//! (`scripts/dev-cluster.sh up` with an EncryptionConfiguration naming the plugin). Secrets
//! are stored in etcd under the `k8s:enc:kms:v2:` prefix without plaintext and read back after
//! an API server restart; rotating the pool key changes `key_id` and rewritten Secrets use the
//! new version while old ones still read; the API server keeps working with one partition
//! down; with the pool unreachable its KMS health check fails and writes of Secrets fail once
//! its write DEK expires (Kubernetes allows writes for at most 3 minutes after the last
//! successful Status), an API server restarted then cannot even read them, and all recovers
//! when the pool returns.

use anyhow::{Context, bail};
use k8s_openapi::api::core::v1::Secret;
use keystead_core::b64;
use keystead_e2e::Cluster;
use keystead_e2e::kms::{LocalPool, Plugin};
use keystead_e2e::own_cluster::OwnCluster;
use keystead_e2e::steps::eventually;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use std::time::Duration;

const PROVIDER: &str = "keystead";

/// The raw value etcd holds for a Secret (etcd's v3 JSON gateway on its client URL).
async fn etcd_value(cluster: &Cluster, ns: &str, name: &str) -> anyhow::Result<Vec<u8>> {
    let endpoint = cluster
        .settings
        .get("ETCD_ENDPOINT")
        .context("cluster.env has no ETCD_ENDPOINT")?;
    let key = format!("/registry/secrets/{ns}/{name}");
    let resp: serde_json::Value = reqwest::Client::new()
        .post(format!("{endpoint}/v3/kv/range"))
        .json(&serde_json::json!({ "key": b64::encode_std(&key) }))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let value = resp["kvs"][0]["value"]
        .as_str()
        .with_context(|| format!("etcd has no {key}: {resp}"))?;
    Ok(b64::decode_std(value)?)
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// Stored with the KMS v2 prefix of our provider, under `key_id`, without `marker`.
async fn assert_sealed(
    cluster: &Cluster,
    name: &str,
    key_id: &str,
    marker: &str,
) -> anyhow::Result<()> {
    let raw = etcd_value(cluster, "default", name).await?;
    let prefix = format!("k8s:enc:kms:v2:{PROVIDER}:");
    anyhow::ensure!(
        raw.starts_with(prefix.as_bytes()),
        "{name} is not stored with {prefix}: {:?}",
        String::from_utf8_lossy(&raw[..raw.len().min(60)])
    );
    anyhow::ensure!(!contains(&raw, marker), "{name}: plaintext in etcd");
    anyhow::ensure!(
        contains(&raw, key_id),
        "{name} is not stored under key id {key_id}"
    );
    Ok(())
}

fn secret(name: &str, marker: &str) -> Secret {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "stringData": {"value": marker},
    }))
    .unwrap()
}

async fn read_marker(api: &Api<Secret>, name: &str) -> anyhow::Result<String> {
    let s = api.get(name).await?;
    let v = s
        .data
        .and_then(|d| d.get("value").cloned())
        .context("no value")?;
    Ok(String::from_utf8(v.0)?)
}

/// `kubectl get --raw PATH`: (success, output).
fn raw(cluster: &Cluster, path: &str) -> (bool, String) {
    match cluster.kubectl().args(["get", "--raw", path]).output() {
        Ok(o) => (
            o.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
        ),
        Err(e) => (false, e.to_string()),
    }
}

#[tokio::test]
async fn kms_v2_plugin_encrypts_secrets_on_a_real_api_server() {
    let tmp = tempfile::Builder::new().prefix("kms").tempdir().unwrap();
    let pool = LocalPool::start(&tmp.path().join("pool"), "kek", "oct")
        .await
        .unwrap();
    let v1 = pool.current_version().unwrap();
    let args = Plugin::pool_args(&pool).unwrap();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let plugin = Plugin::start(tmp.path(), "kms", "kek", &args)
        .await
        .unwrap();
    let config = tmp.path().join("encryption.yaml");
    std::fs::write(
        &config,
        format!(
            "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n  - resources: [secrets]\n    providers:\n      - kms:\n          apiVersion: v2\n          name: {PROVIDER}\n          endpoint: unix://{}\n          timeout: 3s\n      - identity: {{}}\n",
            plugin.socket.display()
        ),
    )
    .unwrap();
    let own = OwnCluster::up(
        &tmp.path().join("cluster"),
        &[("KEYSTEAD_DEV_ENCRYPTION_CONFIG", config.as_os_str())],
    )
    .unwrap();
    let result = scenario(&own, &pool, &plugin, &v1).await;
    if let Err(e) = &result {
        eprintln!("--- plugin log\n{}", plugin.log_text());
        panic!("{e:#}");
    }
}

async fn scenario(
    own: &OwnCluster,
    pool: &LocalPool,
    plugin: &Plugin,
    v1: &str,
) -> anyhow::Result<()> {
    let cluster = Cluster::dev_at(own.dir.clone()).await?;
    let api: Api<Secret> = Api::namespaced(cluster.client.clone(), "default");
    let marker = |n: &str| format!("keystead-plaintext-{n}-{}", uuid::Uuid::new_v4().simple());
    let kid1 = format!("kek/{v1}");

    // Stored sealed, under the first version.
    let (m_old, m0) = (marker("old"), marker("s0"));
    api.create(&PostParams::default(), &secret("old", &m_old))
        .await?;
    api.create(&PostParams::default(), &secret("s0", &m0))
        .await?;
    assert_sealed(&cluster, "old", &kid1, &m_old).await?;
    assert_sealed(&cluster, "s0", &kid1, &m0).await?;

    // Read back after an API server restart (its DEK cache is gone: Decrypt via the plugin).
    own.restart_apiserver()?;
    wait_ready(&cluster, "after the restart").await?;
    anyhow::ensure!(read_marker(&api, "old").await? == m_old);

    // Rotation: the API server sees the new key id through Status (its health check calls it
    // at most every 20 s) and new writes use it; the old Secret keeps the old version.
    let v2 = pool.rotate()?;
    anyhow::ensure!(v2 != v1, "rotation kept the version");
    let kid2 = format!("kek/{v2}");
    let m0b = marker("s0b");
    eventually(
        "a rewritten Secret under the new version",
        Duration::from_secs(120),
        || {
            let (api, cluster, m0b, kid2) = (&api, &cluster, &m0b, &kid2);
            async move {
                let _ = raw(cluster, "/readyz/kms-providers");
                let patch = serde_json::json!({"stringData": {"value": m0b}});
                api.patch("s0", &PatchParams::default(), &Patch::Merge(&patch))
                    .await?;
                Ok(assert_sealed(cluster, "s0", kid2, m0b).await.ok())
            }
        },
    )
    .await?;
    assert_sealed(&cluster, "old", &kid1, &m_old).await?;
    anyhow::ensure!(read_marker(&api, "old").await? == m_old);
    anyhow::ensure!(read_marker(&api, "s0").await? == m0b);

    // One partition down (stopped, so connections to it hang): a restarted API server primes
    // its KMS state, reads Secrets of both versions and writes new ones.
    pool.signal(&["p0"], "-STOP")?;
    let one_down = async {
        own.restart_apiserver()?;
        wait_ready(&cluster, "with p0 stopped").await?;
        anyhow::ensure!(read_marker(&api, "old").await? == m_old);
        anyhow::ensure!(read_marker(&api, "s0").await? == m0b);
        let m1 = marker("s1");
        api.create(&PostParams::default(), &secret("s1", &m1))
            .await?;
        assert_sealed(&cluster, "s1", &kid2, &m1).await
    }
    .await;
    pool.signal(&["p0"], "-CONT")?;
    one_down?;

    // The pool unreachable: the KMS health check fails; reads keep working from the API
    // server's DEK cache; writes fail once the write DEK expires.
    pool.signal(&["p0", "p1", "p2"], "-STOP")?;
    let unreachable = async {
        let verbose = eventually(
            "readyz reports the KMS provider failing",
            Duration::from_secs(60),
            || {
                let (ok, out) = raw(&cluster, "/readyz?verbose");
                async move { Ok((!ok && out.contains("[-]kms-providers failed")).then_some(out)) }
            },
        )
        .await?;
        eprintln!("readyz with the pool unreachable:\n{verbose}");
        anyhow::ensure!(read_marker(&api, "old").await? == m_old);
        // One Secret rewritten again and again (each write encrypts), polled with a deadline.
        let mut i = 0;
        let err = eventually("Secret writes fail", Duration::from_secs(240), || {
            i += 1;
            let patch = serde_json::json!({"stringData": {"value": format!("x{i}")}});
            let api = &api;
            async move {
                match api
                    .patch("s1", &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                {
                    Ok(_) => Ok(None),
                    Err(e) => Ok(Some(e.to_string())),
                }
            }
        })
        .await?;
        eprintln!("a Secret write with the pool unreachable: {err}");
        anyhow::ensure!(
            err.contains("500") || err.to_lowercase().contains("internal"),
            "the write failed with an unexpected error: {err}"
        );
        // An API server restarted now has no cached seed: even reads fail, cleanly, and it is
        // not ready (restart-apiserver waits only until it is live).
        own.restart_apiserver()?;
        let read = api.get("old").await;
        let err = read.err().context("a Secret read back without the pool")?;
        eprintln!("a Secret read after a restart with the pool unreachable: {err}");
        Ok(())
    }
    .await;
    pool.signal(&["p0", "p1", "p2"], "-CONT")?;
    unreachable?;

    // Back: healthy again and writes succeed (the API server retries Status every 10 s).
    wait_ready(&cluster, "after the pool returned").await?;
    let m2 = marker("s2");
    eventually(
        "Secret writes succeed again",
        Duration::from_secs(60),
        || {
            let (api, m2) = (&api, &m2);
            async move {
                Ok(api
                    .create(&PostParams::default(), &secret("s2", m2))
                    .await
                    .ok()
                    .map(|_| ()))
            }
        },
    )
    .await?;
    assert_sealed(&cluster, "s2", &kid2, &m2).await?;

    // Nothing secret in the plugin's log.
    let log = plugin.log_text();
    for m in [&m_old, &m0, &m0b, &m2] {
        anyhow::ensure!(!log.contains(m.as_str()), "plaintext in the plugin log");
    }
    Ok(())
}

/// `/readyz` passes (KMS included), within 120 s.
async fn wait_ready(cluster: &Cluster, when: &str) -> anyhow::Result<()> {
    eventually(
        &format!("kube-apiserver ready {when}"),
        Duration::from_secs(120),
        || {
            let (ok, out) = raw(cluster, "/readyz");
            async move { if ok { Ok(Some(())) } else { bail!("{out}") } }
        },
    )
    .await
}
