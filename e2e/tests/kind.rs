//! The kind end-to-end suite. Every test is `#[ignore]`: it needs the cluster that
//! `e2e/run.sh` creates (Docker + kind) with the chart installed. Run with
//! `cargo test -p keystead-e2e -- --ignored --test-threads=1`.

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, ServiceAccount};
use keystead_e2e::{
    PortForward, TestNamespace, condition_true, kubectl_hsm_path, run, wait_deleted, wait_for,
};
use keystead_operator::crd::{HsmPhase, ManagedHsm, SecurityDomain, SecurityDomainPhase};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::Duration;

const POOL: &str = "pool";
const PROVISION: Duration = Duration::from_secs(300);
const HEAL: Duration = Duration::from_secs(600);

fn image() -> String {
    std::env::var("KEYSTEAD_E2E_PARTITION_IMAGE")
        .unwrap_or_else(|_| "ghcr.io/keystead/keystead-partition:e2e".into())
}

/// An activated pool in its own namespace with three custodian keys on disk.
struct Pool {
    ns: TestNamespace,
    dir: tempfile::TempDir,
    token_file: PathBuf,
}

impl Pool {
    fn hsm(&self) -> Api<ManagedHsm> {
        self.ns.api()
    }

    fn hsm_cli(&self, pf: &PortForward, args: &[&str]) -> anyhow::Result<String> {
        let ca = self.dir.path().join("ca.crt");
        let endpoint = pf.endpoint();
        let mut all = vec![
            "--endpoint",
            endpoint.as_str(),
            "--ca-file",
            ca.to_str().unwrap_or_default(),
            "--token-file",
            self.token_file.to_str().unwrap_or_default(),
        ];
        all.extend_from_slice(args);
        run(kubectl_hsm_path().to_str().unwrap_or("kubectl-hsm"), &all)
    }

    async fn refresh_ca(&self) -> anyhow::Result<()> {
        let cm = self
            .ns
            .api::<ConfigMap>()
            .get(&format!("{POOL}-ca-bundle"))
            .await?;
        let ca = cm
            .data
            .and_then(|d| d.get("ca.crt").cloned())
            .unwrap_or_default();
        std::fs::write(self.dir.path().join("ca.crt"), ca)?;
        Ok(())
    }
}

fn manifest(ns: &str, recover: bool) -> serde_json::Value {
    json!({
        "apiVersion": "keystead.io/v1alpha1",
        "kind": "ManagedHsm",
        "metadata": {"name": POOL, "namespace": ns},
        "spec": {
            "image": image(),
            "initialAdministrators": [format!("system:serviceaccount:{ns}:e2e-admin")],
            "softDeleteRetentionDays": 7,
            "healing": {"unhealthyThresholdSeconds": 30},
            "recover": recover,
        }
    })
}

async fn create_pool(ns: &TestNamespace, recover: bool) -> anyhow::Result<()> {
    let hsm: ManagedHsm = serde_json::from_value(manifest(&ns.name, recover))?;
    ns.api::<ManagedHsm>()
        .create(&PostParams::default(), &hsm)
        .await?;
    Ok(())
}

async fn admin_token(ns: &TestNamespace, dir: &Path) -> anyhow::Result<PathBuf> {
    let sas: Api<ServiceAccount> = ns.api();
    let sa: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": "e2e-admin"}}))?;
    sas.create(&PostParams::default(), &sa).await?;
    let req = TokenRequest {
        spec: TokenRequestSpec {
            // The pool's audience: the manifest sets none, so the operator's default for
            // the endpoint https://<pool>.<ns>.svc (also reported in status.audience).
            audiences: vec![
                keystead_operator::pool::names::Names::new(POOL, &ns.name).default_audience(443),
            ],
            expiration_seconds: Some(3600),
            ..Default::default()
        },
        ..Default::default()
    };
    let tok = sas
        .create_token_request("e2e-admin", &PostParams::default(), &req)
        .await?;
    let path = dir.join("token");
    std::fs::write(&path, tok.status.map(|s| s.token).unwrap_or_default())?;
    Ok(path)
}

fn keygen(dir: &Path) -> anyhow::Result<Vec<String>> {
    let mut certs = Vec::new();
    for i in 0..3 {
        let name = format!("custodian{i}");
        run(
            kubectl_hsm_path().to_str().unwrap_or("kubectl-hsm"),
            &[
                "sd",
                "keygen",
                "--name",
                &name,
                "--out-dir",
                dir.to_str().unwrap_or("."),
                "--bits",
                "2048",
            ],
        )?;
        certs.push(std::fs::read_to_string(dir.join(format!("{name}.cer")))?);
    }
    Ok(certs)
}

/// Create, provision and activate a pool through the operator (SecurityDomain Download).
async fn activated_pool(prefix: &str) -> anyhow::Result<Pool> {
    let ns = TestNamespace::create(prefix).await?;
    let dir = tempfile::tempdir()?;
    let token_file = admin_token(&ns, dir.path()).await?;
    create_pool(&ns, false).await?;
    let hsm: Api<ManagedHsm> = ns.api();
    wait_for(&hsm, POOL, "phase Provisioned", PROVISION, |h| {
        h.status.as_ref().and_then(|s| s.phase.clone()) == Some(HsmPhase::Provisioned)
    })
    .await?;
    let certs = keygen(dir.path())?;
    let sd: SecurityDomain = serde_json::from_value(json!({
        "apiVersion": "keystead.io/v1alpha1", "kind": "SecurityDomain",
        "metadata": {"name": "activate", "namespace": ns.name},
        "spec": {"hsmRef": {"name": POOL}, "mode": "Download", "download": {"certificates": certs, "quorum": 2}},
    }))?;
    let sds: Api<SecurityDomain> = ns.api();
    sds.create(&PostParams::default(), &sd).await?;
    let sd = wait_for(
        &sds,
        "activate",
        "SecurityDomain Activated",
        PROVISION,
        |s| s.status.as_ref().and_then(|s| s.phase.clone()) == Some(SecurityDomainPhase::Activated),
    )
    .await?;
    let secret = sd
        .status
        .and_then(|s| s.domain_secret)
        .ok_or_else(|| anyhow::anyhow!("no domain Secret in status"))?;
    let domain = run(
        "kubectl",
        &[
            "get",
            "secret",
            "-n",
            &ns.name,
            &secret,
            "-o",
            "jsonpath={.data.security-domain\\.json}",
        ],
    )?;
    std::fs::write(dir.path().join("domain.b64"), domain)?;
    wait_for(&hsm, POOL, "Ready", PROVISION, |h| {
        h.status
            .as_ref()
            .is_some_and(|s| condition_true(&s.conditions, "Ready"))
    })
    .await?;
    let pool = Pool {
        ns,
        dir,
        token_file,
    };
    pool.refresh_ca().await?;
    Ok(pool)
}

async fn all_partitions_ready(
    hsm: &Api<ManagedHsm>,
    what: &str,
    deadline: Duration,
) -> anyhow::Result<ManagedHsm> {
    wait_for(hsm, POOL, what, deadline, |h| {
        h.status.as_ref().is_some_and(|s| {
            s.phase == Some(HsmPhase::Activated) && s.ready_partitions.as_deref() == Some("3/3")
        })
    })
    .await
}

#[tokio::test]
#[ignore = "needs the kind cluster of e2e/run.sh"]
async fn activation_and_key_operations() -> anyhow::Result<()> {
    let pool = activated_pool("activate").await?;
    let pf = PortForward::start(&pool.ns.name, POOL, 443, Duration::from_secs(30))?;
    pool.hsm_cli(
        &pf,
        &["key", "create", "k1", "--kty", "EC", "--curve", "P-256"],
    )?;
    let listed = pool.hsm_cli(&pf, &["-o", "json", "key", "list"])?;
    assert!(listed.contains("k1"), "{listed}");
    let status = pool.hsm_cli(&pf, &["status"])?;
    assert!(status.contains("Activated"), "{status}");
    drop(pf);
    pool.ns.pass();
    Ok(())
}

#[tokio::test]
#[ignore = "needs the kind cluster of e2e/run.sh"]
async fn deleted_partition_pod_heals_without_data_loss() -> anyhow::Result<()> {
    let pool = activated_pool("podkill").await?;
    {
        let pf = PortForward::start(&pool.ns.name, POOL, 443, Duration::from_secs(30))?;
        pool.hsm_cli(
            &pf,
            &[
                "key", "create", "survivor", "--kty", "RSA", "--size", "2048",
            ],
        )?;
    }
    let pods: Api<Pod> = pool.ns.api();
    let before = pods.get(&format!("{POOL}-1")).await?.metadata.uid;
    pods.delete(&format!("{POOL}-1"), &Default::default())
        .await?;
    wait_for(&pods, &format!("{POOL}-1"), "re-created", HEAL, |p| {
        p.metadata.uid != before
    })
    .await?;
    all_partitions_ready(&pool.hsm(), "3/3 partitions again", HEAL).await?;
    let pf = PortForward::start(&pool.ns.name, POOL, 443, Duration::from_secs(30))?;
    let shown = pool.hsm_cli(&pf, &["key", "show", "survivor"])?;
    assert!(shown.contains("survivor"), "{shown}");
    drop(pf);
    pool.ns.pass();
    Ok(())
}

#[tokio::test]
#[ignore = "needs the kind cluster of e2e/run.sh"]
async fn node_drain_replaces_the_partition_and_its_volume() -> anyhow::Result<()> {
    let pool = activated_pool("drain").await?;
    let pods: Api<Pod> = pool.ns.api();
    // Drain the zone-a node that runs a partition (the spare zone-a node takes it over).
    let mut node = None;
    for i in 0..3 {
        let p = pods.get(&format!("{POOL}-{i}")).await?;
        let n = p.spec.and_then(|s| s.node_name).unwrap_or_default();
        let zone = run(
            "kubectl",
            &[
                "get",
                "node",
                &n,
                "-o",
                "jsonpath={.metadata.labels.topology\\.kubernetes\\.io/zone}",
            ],
        )?;
        if zone.trim() == "zone-a" {
            node = Some(n);
        }
    }
    let node = node.ok_or_else(|| anyhow::anyhow!("no partition runs in zone-a"))?;
    run(
        "kubectl",
        &[
            "drain",
            &node,
            "--ignore-daemonsets",
            "--delete-emptydir-data",
            "--timeout=300s",
        ],
    )?;
    let result = all_partitions_ready(&pool.hsm(), "healed after the drain", HEAL).await;
    run("kubectl", &["uncordon", &node])?;
    result?;
    pool.ns.pass();
    Ok(())
}

#[tokio::test]
#[ignore = "needs the kind cluster of e2e/run.sh"]
async fn image_upgrade_rolls_one_partition_at_a_time() -> anyhow::Result<()> {
    let pool = activated_pool("upgrade").await?;
    let next = std::env::var("KEYSTEAD_E2E_PARTITION_IMAGE_NEXT")
        .unwrap_or_else(|_| "ghcr.io/keystead/keystead-partition:e2e-next".into());
    let hsm = pool.hsm();
    hsm.patch(
        POOL,
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"image": next}})),
    )
    .await?;
    // Quorum is kept throughout: Ready must never go False while pods roll.
    let pods: Api<Pod> = pool.ns.api();
    let watcher = {
        let hsm = hsm.clone();
        tokio::spawn(async move {
            wait_for(&hsm, POOL, "Ready False during the upgrade", HEAL, |h| {
                h.status.as_ref().is_some_and(|s| {
                    s.conditions
                        .iter()
                        .any(|c| c.type_ == "Ready" && c.status == "False")
                })
            })
            .await
        })
    };
    for i in 0..3 {
        wait_for(
            &pods,
            &format!("{POOL}-{i}"),
            "running the new image",
            HEAL,
            |p| {
                p.spec
                    .as_ref()
                    .is_some_and(|s| s.containers[0].image.as_deref() == Some(next.as_str()))
            },
        )
        .await?;
    }
    all_partitions_ready(&hsm, "upgraded and healthy", HEAL).await?;
    watcher.abort();
    assert!(
        watcher.await.is_err(),
        "the pool lost quorum (Ready False) during the rolling upgrade"
    );
    pool.ns.pass();
    Ok(())
}

#[tokio::test]
#[ignore = "needs the kind cluster of e2e/run.sh"]
async fn soft_deleted_pool_is_recovered_from_its_security_domain() -> anyhow::Result<()> {
    let pool = activated_pool("recover").await?;
    {
        let pf = PortForward::start(&pool.ns.name, POOL, 443, Duration::from_secs(30))?;
        pool.hsm_cli(
            &pf,
            &["key", "create", "kept", "--kty", "oct", "--size", "256"],
        )?;
    }
    let hsm = pool.hsm();
    hsm.delete(POOL, &Default::default()).await?;
    wait_deleted(&hsm, POOL, PROVISION).await?;
    let pvc = run(
        "kubectl",
        &[
            "get",
            "pvc",
            "-n",
            &pool.ns.name,
            "-l",
            "keystead.io/soft-deleted-pool=pool",
            "-o",
            "name",
        ],
    )?;
    assert_eq!(pvc.lines().count(), 3, "the volumes are retained: {pvc}");
    // Re-create without recover: refused with a clear condition.
    create_pool(&pool.ns, false).await?;
    wait_for(&hsm, POOL, "SoftDeletedPoolExists", PROVISION, |h| {
        h.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.reason == "SoftDeletedPoolExists")
        })
    })
    .await?;
    hsm.patch(
        POOL,
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"recover": true}})),
    )
    .await?;
    // Memory-only seal: the restarted partitions wait for the domain.
    wait_for(&hsm, POOL, "RecoveryPending", PROVISION, |h| {
        h.status.as_ref().and_then(|s| s.phase.clone()) == Some(HsmPhase::RecoveryPending)
    })
    .await?;
    let sds: Api<SecurityDomain> = pool.ns.api();
    let sd: SecurityDomain = serde_json::from_value(json!({
        "apiVersion": "keystead.io/v1alpha1", "kind": "SecurityDomain",
        "metadata": {"name": "recover", "namespace": pool.ns.name},
        "spec": {"hsmRef": {"name": POOL}, "mode": "Upload", "upload": {}},
    }))?;
    sds.create(&PostParams::default(), &sd).await?;
    let sd = wait_for(&sds, "recover", "WaitingForTransferBlob", PROVISION, |s| {
        s.status.as_ref().and_then(|s| s.phase.clone())
            == Some(SecurityDomainPhase::WaitingForTransferBlob)
    })
    .await?;
    let cm = sd
        .status
        .and_then(|s| s.exchange_key_config_map)
        .ok_or_else(|| anyhow::anyhow!("no exchange ConfigMap"))?;
    let d = pool.dir.path();
    let exchange = run(
        "kubectl",
        &[
            "get",
            "configmap",
            "-n",
            &pool.ns.name,
            &cm,
            "-o",
            "jsonpath={.data.exchange\\.pem}",
        ],
    )?;
    std::fs::write(d.join("exchange.pem"), exchange)?;
    let domain_b64 = std::fs::read_to_string(d.join("domain.b64"))?;
    let domain = run(
        "sh",
        &[
            "-c",
            &format!("printf %s '{}' | base64 -d", domain_b64.trim()),
        ],
    )?;
    std::fs::write(d.join("domain.json"), domain)?;
    let p = |n: &str| d.join(n).to_string_lossy().into_owned();
    run(
        kubectl_hsm_path().to_str().unwrap_or("kubectl-hsm"),
        &[
            "sd",
            "transfer",
            "--domain",
            &p("domain.json"),
            "--key",
            &p("custodian0.key"),
            "--key",
            &p("custodian1.key"),
            "--exchange-key",
            &p("exchange.pem"),
            "--out",
            &p("transfer.json"),
        ],
    )?;
    run(
        "kubectl",
        &[
            "create",
            "secret",
            "generic",
            "transfer",
            "-n",
            &pool.ns.name,
            &format!("--from-file=transfer.json={}", p("transfer.json")),
        ],
    )?;
    sds.patch(
        "recover",
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"upload": {"transferBlobSecret": {"name": "transfer"}}}})),
    )
    .await?;
    wait_for(&sds, "recover", "Activated", PROVISION, |s| {
        s.status.as_ref().and_then(|s| s.phase.clone()) == Some(SecurityDomainPhase::Activated)
    })
    .await?;
    all_partitions_ready(&hsm, "recovered", HEAL).await?;
    pool.refresh_ca().await?;
    let pf = PortForward::start(&pool.ns.name, POOL, 443, Duration::from_secs(30))?;
    let shown = pool.hsm_cli(&pf, &["key", "show", "kept"])?;
    assert!(shown.contains("kept"), "{shown}");
    drop(pf);
    pool.ns.pass();
    Ok(())
}

#[tokio::test]
#[ignore = "needs the kind cluster of e2e/run.sh"]
async fn invalid_spec_gets_a_condition_not_a_crash_loop() -> anyhow::Result<()> {
    let ns = TestNamespace::create("invalid").await?;
    let mut m = manifest(&ns.name, false);
    m["spec"]["seal"] = json!({"mode": "SealingKeySecret"});
    let hsm: ManagedHsm = serde_json::from_value(m)?;
    let api: Api<ManagedHsm> = ns.api();
    api.create(&PostParams::default(), &hsm).await?;
    let h = wait_for(&api, POOL, "InvalidSpec", PROVISION, |h| {
        h.status
            .as_ref()
            .is_some_and(|s| s.conditions.iter().any(|c| c.reason == "InvalidSpec"))
    })
    .await?;
    assert_eq!(h.status.and_then(|s| s.phase), Some(HsmPhase::Failed));
    let events = run(
        "kubectl",
        &[
            "get",
            "events",
            "-n",
            &ns.name,
            "--field-selector",
            "reason=InvalidSpec",
            "-o",
            "name",
        ],
    )?;
    assert!(
        !events.trim().is_empty(),
        "an InvalidSpec Event is published"
    );
    let sts = run(
        "kubectl",
        &["get", "statefulset", "-n", &ns.name, "-o", "name"],
    )?;
    assert!(
        sts.trim().is_empty(),
        "nothing is created for an invalid pool: {sts}"
    );
    ns.pass();
    Ok(())
}
