//! Backup, Restore and BackupSchedule on a real control plane (the dev cluster of
//! `scripts/dev-cluster.sh`): the operator as the chart installs it, the partitions run by the
//! node agent, and real object stores (moto for S3, Azurite for Azure Blob; started on demand
//! by `scripts/start-object-stores.sh`) and a ReadWriteMany claim of the local provisioner.
//!
//! A job is kept running for as long as a test needs by a [`Gate`] between the partitions
//! and the S3 server. Every wait has a deadline; each test works in a namespace of its own.

use anyhow::{Context, ensure};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Event, PersistentVolume, PersistentVolumeClaim, Secret};
use keystead_core::backup_read::{Listed, list_backups};
use keystead_core::store;
use keystead_e2e::gate::Gate;
use keystead_e2e::pool::{POOL, Pool, PoolHttp};
use keystead_e2e::steps::*;
use keystead_e2e::{Cluster, TestNamespace};
use keystead_operator::backup::plan as backup_plan;
use keystead_operator::crd::{Backup, BackupDestination, BackupSchedule, Restore};
use kube::Api;
use kube::api::ListParams;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[path = "../../tests/support/object_stores.rs"]
mod object_stores;

const MINUTES: fn(u64) -> Duration = |m| Duration::from_secs(60 * m);

/// The object stores as the tests use them.
struct Stores {
    /// `http://127.0.0.1:<port>/devstoreaccount1/<container>`
    azurite: String,
    /// `http://127.0.0.1:<port>`
    s3_endpoint: String,
    s3_bucket: String,
}

fn stores() -> anyhow::Result<Stores> {
    let vars = object_stores::object_stores();
    let var = |k: &str| {
        vars.get(k)
            .cloned()
            .with_context(|| format!("{k} in {vars:?}"))
    };
    Ok(Stores {
        azurite: var("KEYSTEAD_TEST_AZURITE_URL")?,
        s3_endpoint: var("KEYSTEAD_TEST_S3_ENDPOINT")?,
        s3_bucket: var("KEYSTEAD_TEST_S3_BUCKET")?,
    })
}

/// A prefix no other test (or earlier run) writes under.
fn unique() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

impl Stores {
    fn s3(&self, endpoint: &str, prefix: &str, secret: &str) -> Value {
        json!({"s3": {"bucket": self.s3_bucket, "prefix": prefix, "endpoint": endpoint,
                      "region": "us-east-1", "credentials": {"name": secret}}})
    }

    fn azure(&self, prefix: &str, secret: &str) -> Value {
        json!({"azureBlob": {"containerUri": self.azurite, "prefix": prefix,
                             "credentials": {"name": secret}}})
    }

    /// A service SAS for the whole Azurite container with `permissions` (string-to-sign of
    /// version 2020-12-06, signed with the emulator's account key): (token, its signature).
    fn container_sas(&self, permissions: &str) -> anyhow::Result<(String, String)> {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut parts = self.azurite.rsplit('/');
        let (container, account) = (
            parts.next().context("container")?,
            parts.next().context("account")?,
        );
        let expiry = (k8s_openapi::jiff::Timestamp::now()
            + k8s_openapi::jiff::SignedDuration::from_hours(2))
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
        let version = "2020-12-06";
        let resource = format!("/blob/{account}/{container}");
        let mut fields = vec![
            permissions,
            "",
            &expiry,
            &resource,
            "",
            "",
            "",
            version,
            "c",
        ];
        fields.extend([""; 7]);
        let key =
            aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &b64.decode(AZURITE_KEY)?);
        let sig = b64.encode(aws_lc_rs::hmac::sign(&key, fields.join("\n").as_bytes()).as_ref());
        let token = format!(
            "sv={version}&sp={permissions}&se={}&sr=c&sig={}",
            percent_encode(&expiry),
            percent_encode(&sig)
        );
        Ok((token, sig))
    }
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The backup folders under a destination, read from the store directly with the parameters
/// the operator hands the partitions (`backup::plan::storage_parameters`).
async fn listed(
    destination: &Value,
    secret: &BTreeMap<String, String>,
) -> anyhow::Result<Vec<Listed>> {
    let d: BackupDestination = serde_json::from_value(destination.clone())?;
    let data: BTreeMap<String, ByteString> = secret
        .iter()
        .map(|(k, v)| (k.clone(), ByteString(v.as_bytes().to_vec())))
        .collect();
    let params = backup_plan::storage_parameters(&d, Some(&data)).map_err(anyhow::Error::msg)?;
    let dest = store::open(&params, &store::LocalPaths::anywhere()).map_err(anyhow::Error::msg)?;
    Ok(list_backups(&dest).await?)
}

/// Folders with a readable manifest (complete backups).
fn complete(folders: &[Listed]) -> Vec<&Listed> {
    folders.iter().filter(|l| l.manifest.is_ok()).collect()
}

async fn create_secret(
    pool: &Pool,
    name: &str,
    data: &BTreeMap<String, String>,
) -> anyhow::Result<()> {
    create(
        &pool.ns.api::<Secret>(),
        json!({"metadata": {"name": name}, "stringData": data}),
    )
    .await
}

/// Create the job `kind` (`Backup` or `Restore`) `name` of the pool with `spec`.
async fn create_job<K>(pool: &Pool, kind: &str, name: &str, mut spec: Value) -> anyhow::Result<()>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + serde::Serialize,
{
    spec["hsmRef"] = json!({"name": POOL});
    create(
        &pool.ns.api::<K>(),
        json!({"apiVersion": "keystead.io/v1alpha1", "kind": kind,
               "metadata": {"name": name}, "spec": spec}),
    )
    .await
}

async fn create_backup(pool: &Pool, name: &str, spec: Value) -> anyhow::Result<()> {
    create_job::<Backup>(pool, "Backup", name, spec).await
}

async fn create_restore(pool: &Pool, name: &str, spec: Value) -> anyhow::Result<()> {
    create_job::<Restore>(pool, "Restore", name, spec).await
}

async fn backup_status(pool: &Pool, name: &str) -> anyhow::Result<Value> {
    let b = pool.ns.api::<Backup>().get_opt(name).await?;
    Ok(
        b.map(|b| serde_json::to_value(&b.status).unwrap_or_default())
            .unwrap_or_default(),
    )
}

/// Wait until Backup `name` runs a job (its id and partition recorded in the status).
async fn job_recorded(pool: &Pool, name: &str) -> anyhow::Result<Value> {
    eventually(
        &format!("Backup {name} Running with a job id"),
        MINUTES(2),
        || async {
            let st = backup_status(pool, name).await?;
            Ok((st["phase"] == "Running"
                && st["jobId"].is_string()
                && st["jobPartition"].is_string())
            .then_some(st))
        },
    )
    .await
}

/// The Backups a schedule made, by name.
async fn scheduled(pool: &Pool, schedule: &str) -> anyhow::Result<Vec<String>> {
    let list = pool
        .ns
        .api::<Backup>()
        .list(&ListParams::default().labels(&format!("keystead.io/backup-schedule={schedule}")))
        .await?;
    let mut names: Vec<String> = list
        .items
        .into_iter()
        .filter_map(|b| b.metadata.name)
        .collect();
    names.sort();
    Ok(names)
}

/// A BackupSchedule `minutely` (`* * * * *`, its first run at once) to `destination`,
/// keeping `max_count` Backups; the name of its first Backup.
async fn minutely(pool: &Pool, destination: Value, max_count: u32) -> anyhow::Result<String> {
    create(
        &pool.ns.api::<BackupSchedule>(),
        json!({
            "apiVersion": "keystead.io/v1alpha1", "kind": "BackupSchedule",
            "metadata": {"name": "minutely"},
            "spec": {"hsmRef": {"name": POOL}, "schedule": "* * * * *", "immediate": true,
                     "destination": destination, "retention": {"maxCount": max_count}},
        }),
    )
    .await?;
    eventually("the schedule's first Backup", MINUTES(1), || async {
        Ok(scheduled(pool, "minutely").await?.into_iter().next())
    })
    .await
}

async fn events(pool: &Pool) -> anyhow::Result<Vec<Event>> {
    Ok(pool
        .ns
        .api::<Event>()
        .list(&ListParams::default())
        .await?
        .items)
}

fn has_event(events: &[Event], reason: &str, type_: &str) -> bool {
    events
        .iter()
        .any(|e| e.reason.as_deref() == Some(reason) && e.type_.as_deref() == Some(type_))
}

/// The public part of EC key `key` (its JWK's `x` and `y`).
async fn public_key(http: &PoolHttp, token: &str, key: &str) -> anyhow::Result<Value> {
    let (s, v) = http
        .call_until_served(
            token,
            Method::GET,
            &format!("/keys/{key}"),
            None,
            MINUTES(1),
        )
        .await;
    ensure!(
        s == StatusCode::OK && v["key"]["x"].is_string(),
        "GET /keys/{key}: {s} {v}"
    );
    Ok(json!([v["key"]["x"], v["key"]["y"]]))
}

/// Key `k1` is served by every partition again, with the public key `public` it had.
async fn same_key_back(
    pool: &Pool,
    http: &PoolHttp,
    app: &str,
    public: &Value,
) -> anyhow::Result<()> {
    for name in PODS {
        key_served_by(pool, name, app, "k1").await?;
    }
    ensure!(
        public_key(http, app, "k1").await? == *public,
        "the same key is back"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn backups_to_s3_and_azurite_with_credentials_secrets_a_schedule_and_a_restore()
-> anyhow::Result<()> {
    let cluster = Cluster::dev().await?;
    let stores = stores()?;
    let (pool, app, _) = activated_pool(&cluster, "backup", json!({})).await?;
    let prefix = unique();
    let s3 = stores.s3(
        &stores.s3_endpoint,
        &format!("{prefix}/s3"),
        "s3-credentials",
    );
    let azure = stores.azure(&format!("{prefix}/azure"), "azure-credentials");
    for (name, destination) in [("to-s3", &s3), ("to-azure", &azure)] {
        create_backup(&pool, name, json!({"destination": destination})).await?;
    }
    // Created before their Secrets: the Backups wait, saying which Secret is missing.
    let waiting = eventually("to-s3 waits for its Secret", MINUTES(1), || async {
        let st = backup_status(&pool, "to-s3").await?;
        Ok((condition(&st, "Succeeded").0 == "CredentialsNotFound").then_some(st))
    })
    .await?;
    ensure!(waiting["phase"] == "Pending", "{waiting:#}");
    ensure!(
        condition(&waiting, "Succeeded")
            .1
            .contains("s3-credentials"),
        "{waiting:#}"
    );
    // Every credential of this test: none may appear outside its Secret.
    let mut credentials: Vec<String> = vec![AZURITE_KEY.into()];
    let s3_keys = BTreeMap::from([
        (
            "AWS_ACCESS_KEY_ID".to_string(),
            format!("AKIA{}", &unique()[..16].to_uppercase()),
        ),
        (
            "AWS_SECRET_ACCESS_KEY".to_string(),
            format!("{}{}", unique(), unique()),
        ),
    ]);
    credentials.extend(s3_keys.values().cloned());
    create_secret(&pool, "s3-credentials", &s3_keys).await?;
    let account_key = BTreeMap::from([("accountKey".to_string(), AZURITE_KEY.to_string())]);
    create_secret(&pool, "azure-credentials", &account_key).await?;
    let backups: Api<Backup> = pool.ns.api();
    let st = job_phase(&backups, "to-s3", "Succeeded", MINUTES(3)).await?;
    let fingerprint = pool.status().await["securityDomainFingerprint"].clone();
    ensure!(st["securityDomainFingerprint"] == fingerprint, "{st:#}");
    // The backup is in the bucket: one complete folder, the one the status names.
    let location = st["location"].as_str().unwrap_or_default();
    ensure!(
        location.starts_with(&format!("s3://{}/{prefix}/s3/pool-", stores.s3_bucket)),
        "{st:#}"
    );
    let folders = listed(&s3, &s3_keys).await?;
    ensure!(folders.len() == 1, "{folders:?}");
    let m = folders[0]
        .manifest
        .as_ref()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    ensure!(
        location.ends_with(&format!("/{}", folders[0].folder)),
        "{location}"
    );
    ensure!(
        Some(m.body.key_count as i64) == st["keyCount"].as_i64(),
        "{st:#}"
    );
    ensure!(json!(m.body.domain_fingerprint) == fingerprint, "{st:#}");
    job_phase(&backups, "to-azure", "Succeeded", MINUTES(3)).await?;

    // Azure Blob with a wrong account key fails the job (the key from the Secret is what the
    // partition uses, not the emulator's default).
    let wrong_key = {
        use base64::Engine;
        let bytes: Vec<u8> = (0..4)
            .flat_map(|_| *uuid::Uuid::new_v4().as_bytes())
            .collect();
        base64::engine::general_purpose::STANDARD.encode(bytes)
    };
    credentials.push(wrong_key.clone());
    // A SAS token: read-only fails the job; read-write (with its leading '?', as the portal
    // copies it) succeeds.
    let (read_only, ro_sig) = stores.container_sas("rl")?;
    let (read_write, rw_sig) = stores.container_sas("racwdl")?;
    for (token, sig) in [(&read_only, &ro_sig), (&read_write, &rw_sig)] {
        credentials.extend([token.clone(), sig.clone(), percent_encode(sig)]);
    }
    let sas = |secret: &str| stores.azure(&format!("{prefix}/sas"), secret);
    for (name, key, value, destination, phase) in [
        (
            "azure-wrong-key",
            "accountKey",
            wrong_key.clone(),
            stores.azure(&format!("{prefix}/key"), "azure-wrong-key"),
            "Failed",
        ),
        (
            "azure-ro-sas",
            "sasToken",
            read_only.clone(),
            sas("azure-ro-sas"),
            "Failed",
        ),
        (
            "azure-sas",
            "sasToken",
            format!("?{read_write}"),
            sas("azure-sas"),
            "Succeeded",
        ),
    ] {
        create_secret(&pool, name, &BTreeMap::from([(key.to_string(), value)])).await?;
        create_backup(&pool, name, json!({"destination": destination})).await?;
        let st = job_phase(&backups, name, phase, MINUTES(3)).await?;
        if phase == "Failed" {
            ensure!(
                condition(&st, "Succeeded").0 == "JobFailed",
                "{name}: {st:#}"
            );
            ensure!(
                st["error"]
                    .as_str()
                    .is_some_and(|e| e.starts_with("StorageError")),
                "{name}: {st:#}"
            );
        }
    }
    let sas_data = BTreeMap::from([("sasToken".to_string(), read_write.clone())]);
    let folders = listed(&sas("azure-sas"), &sas_data).await?;
    ensure!(
        folders.len() == 1 && folders[0].manifest.is_ok(),
        "only the read-write SAS wrote: {folders:?}"
    );
    let st = backup_status(&pool, "azure-sas").await?;
    ensure!(
        st["location"].as_str()
            == Some(format!("{}/{prefix}/sas/{}", stores.azurite, folders[0].folder).as_str()),
        "{st:#}"
    );

    // A Backup naming a link-local endpoint (a cloud metadata service) is refused by the
    // partition before it connects anywhere, and the operator says why.
    create_secret(&pool, "meta-creds", &s3_keys).await?;
    let meta = stores.s3(
        "http://169.254.169.254",
        &format!("{prefix}/meta"),
        "meta-creds",
    );
    create_backup(&pool, "to-metadata", json!({"destination": meta})).await?;
    let st = job_phase(&backups, "to-metadata", "Failed", MINUTES(2)).await?;
    let (reason, message) = condition(&st, "Succeeded");
    ensure!(
        reason == "JobRejected" && message.contains("link-local"),
        "{st:#}"
    );

    // A schedule with an immediate first run makes a Backup of its own, which succeeds.
    let schedules: Api<BackupSchedule> = pool.ns.api();
    create(
        &schedules,
        json!({
            "apiVersion": "keystead.io/v1alpha1", "kind": "BackupSchedule",
            "metadata": {"name": "nightly"},
            "spec": {"hsmRef": {"name": POOL}, "schedule": "0 2 * * *", "immediate": true,
                     "destination": s3, "retention": {"maxCount": 3}},
        }),
    )
    .await?;
    let first = eventually("a Backup made by the schedule", MINUTES(2), || async {
        Ok(scheduled(&pool, "nightly").await?.into_iter().next())
    })
    .await?;
    job_phase(&backups, &first, "Succeeded", MINUTES(3)).await?;

    // The key is deleted; a full Restore of the Azure backup brings it back, after taking a
    // restore point of the state it replaces.
    let http = pool.http().await?;
    let public = public_key(&http, &app, "k1").await?;
    delete_key(&http, &app, "k1").await?;
    create_restore(&pool, "back", json!({"backupName": "to-azure"})).await?;
    let restores: Api<Restore> = pool.ns.api();
    let st = job_phase(&restores, "back", "Succeeded", MINUTES(3)).await?;
    ensure!(
        st["restorePoint"].is_string(),
        "a full restore takes a restore point: {st:#}"
    );
    same_key_back(&pool, &http, &app, &public).await?;
    http.sign_and_verify(&app, "k1").await?;

    // A single-key Backup to S3; the key deleted and purged; a selective Restore of it,
    // which takes no restore point of the whole pool.
    create_backup(
        &pool,
        "k1-only",
        json!({"keyName": "k1", "destination": s3}),
    )
    .await?;
    let st = job_phase(&backups, "k1-only", "Succeeded", MINUTES(3)).await?;
    ensure!(st["keyCount"] == 1, "{st:#}");
    let admin = pool.token(keystead_e2e::pool::ADMIN_SA).await?;
    let officer = keystead_e2e::pool::role_definition(keystead_core::rbac::CRYPTO_OFFICER_ROLE_ID);
    http.assign_role(
        &admin,
        &officer,
        &pool.principal(keystead_e2e::pool::ADMIN_SA),
    )
    .await?;
    delete_key(&http, &app, "k1").await?;
    eventually("k1 purged", MINUTES(1), || async {
        let (s, _) = http
            .call(&admin, Method::DELETE, "/deletedkeys/k1", None)
            .await;
        Ok(matches!(s, StatusCode::NO_CONTENT | StatusCode::OK).then_some(()))
    })
    .await?;
    for name in PODS {
        key_answer_on(&pool, name, &app, "k1", StatusCode::NOT_FOUND).await?;
    }
    create_restore(
        &pool,
        "k1-back",
        json!({"backupName": "k1-only", "keyName": "k1"}),
    )
    .await?;
    let st = job_phase(&restores, "k1-back", "Succeeded", MINUTES(3)).await?;
    ensure!(
        st["restorePoint"].is_null(),
        "a selective restore takes no restore point: {st:#}"
    );
    same_key_back(&pool, &http, &app, &public).await?;

    // Events say what happened.
    let seen = events(&pool).await?;
    for (reason, type_) in [
        ("CredentialsNotFound", "Normal"),
        ("JobFailed", "Warning"),
        ("BackupSucceeded", "Normal"),
    ] {
        ensure!(
            has_event(&seen, reason, type_),
            "an Event {reason} ({type_})"
        );
    }
    // The credentials appear nowhere but in their Secrets: not in the jobs' status, not in
    // Events or the pool's other objects, not in the operator's or the partitions' logs.
    let mut text = serde_json::to_string(&backups.list(&ListParams::default()).await?)?;
    text += &serde_json::to_string(&restores.list(&ListParams::default()).await?)?;
    text += &serde_json::to_string(&schedules.list(&ListParams::default()).await?)?;
    text += &serde_json::to_string(&seen)?;
    text += &serde_json::to_string(
        &pool
            .ns
            .api::<keystead_operator::crd::ManagedHsm>()
            .list(&ListParams::default())
            .await?,
    )?;
    for (ns, pod) in pods_of(&cluster, &pool.ns.name)
        .await?
        .into_iter()
        .chain(pods_of(&cluster, OPERATOR_NS).await?)
    {
        text += &cluster.container_log(&ns, &pod.0, &pod.1, usize::MAX);
    }
    for secret in &credentials {
        ensure!(
            !text.contains(secret.as_str()),
            "a credential ({}…) leaked into status, Events or logs",
            &secret[..6]
        );
    }
    // Deleting the namespace completes (no finalizer holds it) and keeps every folder:
    // backups outlive their namespace.
    let before = listed(&s3, &s3_keys).await?.len();
    pool.ns.delete_and_wait(MINUTES(3)).await?;
    let after = listed(&s3, &s3_keys).await?.len();
    ensure!(
        after == before,
        "{before} folders before the namespace's deletion, {after} after"
    );
    Ok(())
}

/// Where a `pvc://<claim>/...` folder of the claim whose data is in `claim_dir` is.
fn folder_path(claim_dir: &Path, claim: &str, location: &str) -> anyhow::Result<PathBuf> {
    let rest = location
        .strip_prefix(&format!("pvc://{claim}/"))
        .with_context(|| {
            format!("a filesystem backup location is pvc://{claim}/...: {location}")
        })?;
    Ok(claim_dir.join(rest))
}

/// A backup folder as written: a manifest and at least one chunk, under `under`.
fn backup_folder(dir: &Path, under: &Path) -> anyhow::Result<()> {
    ensure!(
        dir.starts_with(under),
        "{} is under {}",
        dir.display(),
        under.display()
    );
    ensure!(
        dir.join("manifest.json").is_file(),
        "{} holds manifest.json",
        dir.display()
    );
    let files = std::fs::read_dir(dir)?.count();
    ensure!(
        files >= 2,
        "{} holds the manifest and chunks",
        dir.display()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn backups_to_a_shared_claim_restore_points_and_schedule_retention() -> anyhow::Result<()> {
    const CLAIM: &str = "backups";
    let cluster = Cluster::dev().await?;
    let ns = TestNamespace::create_in(&cluster, "fsbackup").await?;
    // The claim for backups: ReadWriteMany, so the three partitions mount it.
    create(
        &ns.api::<PersistentVolumeClaim>(),
        json!({"metadata": {"name": CLAIM},
               "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "standard",
                        "resources": {"requests": {"storage": "1Gi"}}}}),
    )
    .await?;
    let pool = Pool::create(ns, json!({"backupVolumes": [{"claimName": CLAIM}]})).await?;
    pool.provisioned().await?;
    pool.activate().await?;
    let (app, http) = first_key(&pool).await?;
    pool.wait("BackupVolumesReady True", MINUTES(1), |st| {
        st["conditions"].as_array().is_some_and(|cs| {
            cs.iter().any(|c| {
                c["type"] == "BackupVolumesReady"
                    && c["status"] == "True"
                    && c["reason"] == "VolumesBound"
            })
        })
    })
    .await?;
    let fingerprint = pool.status().await["securityDomainFingerprint"].clone();
    // Where the provisioner keeps the claim's data (a hostPath volume for ReadWriteMany).
    let volume = pool
        .ns
        .api::<PersistentVolumeClaim>()
        .get(CLAIM)
        .await?
        .spec
        .and_then(|s| s.volume_name)
        .context("the claim is bound")?;
    let pv = Api::<PersistentVolume>::all(cluster.client.clone())
        .get(&volume)
        .await?;
    let claim_dir = PathBuf::from(
        pv.spec
            .and_then(|s| s.host_path)
            .context("a hostPath volume")?
            .path,
    );
    let folder =
        |location: &Value| folder_path(&claim_dir, CLAIM, location.as_str().unwrap_or_default());
    let backups: Api<Backup> = pool.ns.api();

    // A claim the pool does not mount: the Backup waits and says what to do.
    create_backup(
        &pool,
        "unmounted",
        json!({"destination": {"filesystem": {"claimName": "not-mounted"}}}),
    )
    .await?;
    let st = eventually(
        "the Backup to an unmounted claim waits",
        MINUTES(1),
        || async {
            let st = backup_status(&pool, "unmounted").await?;
            let (reason, message) = condition(&st, "Succeeded");
            Ok((reason == "PoolNotReady" && message.contains("spec.backupVolumes")).then_some(st))
        },
    )
    .await?;
    ensure!(st["phase"] == "Pending", "{st:#}");
    backups.delete("unmounted", &Default::default()).await?;

    // A Backup of the pool to the claim.
    let fs = |path: &str| json!({"filesystem": {"claimName": CLAIM, "path": path}});
    create_backup(&pool, "manual", json!({"destination": fs("manual")})).await?;
    let st = job_phase(&backups, "manual", "Succeeded", MINUTES(3)).await?;
    ensure!(st["keyCount"].as_i64().unwrap_or(0) >= 1, "{st:#}");
    ensure!(st["securityDomainFingerprint"] == fingerprint, "{st:#}");
    ensure!(
        st["digest"]
            .as_str()
            .is_some_and(|d| d.starts_with("sha256:")),
        "{st:#}"
    );
    ensure!(
        st["jobPartition"].is_string() && st["completionTime"].is_string(),
        "{st:#}"
    );
    let manual = folder(&st["location"])?;
    backup_folder(&manual, &claim_dir.join("manual"))?;
    // The pool records its newest successful backup.
    pool.wait("lastBackup = manual", MINUTES(1), |st| {
        st["lastBackup"]["name"] == "manual"
            && st["conditions"].as_array().is_some_and(|cs| {
                cs.iter()
                    .any(|c| c["type"] == "LastBackupSucceeded" && c["status"] == "True")
            })
    })
    .await?;

    // The key is deleted; a full Restore of that Backup brings it back on every partition,
    // after writing a restore point (a backup of the state it replaced) beside it.
    let public = public_key(&http, &app, "k1").await?;
    delete_key(&http, &app, "k1").await?;
    for name in PODS {
        key_answer_on(&pool, name, &app, "k1", StatusCode::NOT_FOUND).await?;
    }
    create_restore(&pool, "back", json!({"backupName": "manual"})).await?;
    let st = job_phase(&pool.ns.api::<Restore>(), "back", "Succeeded", MINUTES(3)).await?;
    ensure!(folder(&st["source"])? == manual, "{st:#}");
    backup_folder(&folder(&st["restorePoint"])?, &claim_dir.join("manual"))?;
    same_key_back(&pool, &http, &app, &public).await?;
    http.sign_and_verify(&app, "k1").await?;

    // A schedule every minute, the first run at once, keeping one backup: the second run
    // expires the first Backup, and its finalizer deletes the first folder.
    let first = minutely(&pool, fs("scheduled"), 1).await?;
    let b1 = backups.get(&first).await?;
    ensure!(
        b1.metadata
            .finalizers
            .unwrap_or_default()
            .iter()
            .any(|f| f == "keystead.io/backup-folder"),
        "the scheduled Backup has the folder finalizer"
    );
    let st = job_phase(&backups, &first, "Succeeded", MINUTES(3)).await?;
    let first_folder = folder(&st["location"])?;
    backup_folder(&first_folder, &claim_dir.join("scheduled"))?;
    // The next minute's run (at most a minute away, plus the backup).
    let second = eventually("a second scheduled Backup", MINUTES(3), || async {
        Ok(scheduled(&pool, "minutely")
            .await?
            .into_iter()
            .find(|n| *n != first))
    })
    .await?;
    let st = job_phase(&backups, &second, "Succeeded", MINUTES(3)).await?;
    let second_folder = folder(&st["location"])?;
    backup_folder(&second_folder, &claim_dir.join("scheduled"))?;
    ensure!(first_folder != second_folder);
    eventually(
        "the first scheduled Backup expired and its folder deleted",
        MINUTES(2),
        || async {
            Ok((backups.get_opt(&first).await?.is_none() && !first_folder.exists()).then_some(()))
        },
    )
    .await?;
    ensure!(second_folder.join("manifest.json").is_file());
    // Retention touches only the schedule's own Backups.
    ensure!(manual.join("manifest.json").is_file() && backups.get_opt("manual").await?.is_some());
    let seen = events(&pool).await?;
    ensure!(
        has_event(&seen, "BackupExpired", "Normal"),
        "an Event for the expiry"
    );
    ensure!(
        has_event(&seen, "FolderDeleted", "Normal"),
        "an Event for the deleted folder"
    );
    pool.ns.delete_and_wait(MINUTES(3)).await?;
    Ok(())
}

/// Scale the operator's Deployment to `replicas` and wait until that many operator pods
/// run (Ready) — or none is left.
async fn scale_operator(cluster: &Cluster, replicas: i32) -> anyhow::Result<()> {
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::Pod;
    use kube::api::{Patch, PatchParams};
    let deployments: Api<Deployment> = Api::namespaced(cluster.client.clone(), OPERATOR_NS);
    let list = deployments
        .list(&ListParams::default().labels(OPERATOR_SELECTOR))
        .await?;
    let name = list
        .items
        .first()
        .and_then(|d| d.metadata.name.clone())
        .context("the operator's Deployment")?;
    deployments
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": replicas}})),
        )
        .await?;
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), OPERATOR_NS);
    eventually(
        &format!("{replicas} operator pod(s) running"),
        MINUTES(2),
        || async {
            let list = pods
                .list(&ListParams::default().labels(OPERATOR_SELECTOR))
                .await?;
            let n = if replicas == 0 {
                list.items.len()
            } else {
                list.items
                    .iter()
                    .filter(|p| ready(p) && p.metadata.deletion_timestamp.is_none())
                    .count()
            };
            Ok((n == replicas as usize).then_some(()))
        },
    )
    .await
}

/// Every status Backup `name` in `pool` has, in order, from a watch started now.
fn record_statuses(
    pool: &Pool,
    name: &str,
) -> (Arc<Mutex<Vec<Value>>>, tokio::task::JoinHandle<()>) {
    use futures::StreamExt;
    use kube::runtime::{WatchStreamExt, watcher};
    let seen = Arc::new(Mutex::new(Vec::new()));
    let api: Api<Backup> = pool.ns.api();
    let cfg = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let out = seen.clone();
    let task = tokio::spawn(async move {
        let mut stream = std::pin::pin!(watcher(api, cfg).applied_objects());
        while let Some(Ok(b)) = stream.next().await {
            let st = serde_json::to_value(&b.status).unwrap_or_default();
            out.lock().expect("not poisoned").push(st);
        }
    });
    (seen, task)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_operator_killed_mid_job_resumes_it_and_lost_jobs_fail_while_the_schedule_goes_on()
-> anyhow::Result<()> {
    let cluster = Cluster::dev().await?;
    let stores = stores()?;
    let (pool, _app, _) = activated_pool(&cluster, "jobs", json!({})).await?;
    let gate = Gate::start(&stores.s3_endpoint).await?;
    let keys = BTreeMap::from([
        (
            "AWS_ACCESS_KEY_ID".to_string(),
            format!("AKIA{}", &unique()[..16].to_uppercase()),
        ),
        ("AWS_SECRET_ACCESS_KEY".to_string(), unique()),
    ]);
    create_secret(&pool, "s3-credentials", &keys).await?;
    let prefix = unique();
    // The store as the partitions reach it (through the gate), and as the test reads it.
    let through_gate = |p: &str| stores.s3(&gate.url(), &format!("{prefix}/{p}"), "s3-credentials");
    let direct = |p: &str| {
        stores.s3(
            &stores.s3_endpoint,
            &format!("{prefix}/{p}"),
            "s3-credentials",
        )
    };
    let backups: Api<Backup> = pool.ns.api();

    // 1. A job starts and cannot finish while the gate holds.
    gate.hold();
    let (history, watch) = record_statuses(&pool, "mid-job");
    create_backup(
        &pool,
        "mid-job",
        json!({"destination": through_gate("restart")}),
    )
    .await?;
    let st = job_recorded(&pool, "mid-job").await?;
    let (job, partition) = (st["jobId"].clone(), st["jobPartition"].clone());
    ensure!(
        complete(&listed(&direct("restart"), &keys).await?).is_empty(),
        "the job has not written its manifest yet"
    );
    // The operator crashes (SIGKILL: no graceful shutdown); the node agent restarts it.
    let operator = operator_pod(&cluster).await?;
    crash_and_restart(
        &cluster,
        OPERATOR_NS,
        operator.metadata.name.as_deref().unwrap_or_default(),
    )
    .await?;
    ensure!(backup_status(&pool, "mid-job").await?["phase"] == "Running");
    // The store answers again: the restarted operator follows the same job to its end.
    gate.release();
    let st = job_phase(&backups, "mid-job", "Succeeded", MINUTES(4)).await?;
    ensure!(
        st["jobId"] == job && st["jobPartition"] == partition,
        "{st:#}"
    );
    watch.abort();
    let history = history.lock().expect("not poisoned").clone();
    ensure!(
        history.len() >= 2,
        "the watch saw the Backup's statuses: {history:?}"
    );
    for (i, h) in history.iter().enumerate() {
        ensure!(
            h["jobId"].is_null() || h["jobId"] == job,
            "status #{i} names another job: {h:#}"
        );
    }
    // Exactly one backup folder: no second job was started.
    let folders = listed(&direct("restart"), &keys).await?;
    ensure!(
        folders.len() == 1 && folders[0].manifest.is_ok(),
        "{folders:?}"
    );
    ensure!(
        st["location"]
            .as_str()
            .is_some_and(|l| l.ends_with(&format!("/{prefix}/restart/{}", folders[0].folder))),
        "{st:#}"
    );

    // 2. A job that finishes while the operator is down (its Deployment scaled to zero), on
    // a partition that restarts before the operator polls it: the outcome is lost with the
    // partition's memory. The operator, back, says so and what to do; the folder stays.
    gate.hold();
    create_backup(
        &pool,
        "unseen",
        json!({"destination": through_gate("unseen")}),
    )
    .await?;
    let st = job_recorded(&pool, "unseen").await?;
    let unseen_partition = st["jobPartition"].as_str().unwrap_or_default().to_string();
    let unseen_location = st["location"].as_str().unwrap_or_default().to_string();
    scale_operator(&cluster, 0).await?;
    gate.release();
    eventually("the unseen job's backup written", MINUTES(4), || async {
        Ok((complete(&listed(&direct("unseen"), &keys).await?).len() == 1).then_some(()))
    })
    .await?;
    crash_and_restart(&cluster, &pool.ns.name, &unseen_partition).await?;
    scale_operator(&cluster, 1).await?;
    let st = job_phase(&backups, "unseen", "Failed", MINUTES(3)).await?;
    let (reason, message) = condition(&st, "Succeeded");
    ensure!(reason == "JobLost", "{st:#}");
    let folders = listed(&direct("unseen"), &keys).await?;
    ensure!(
        unseen_location.ends_with(&format!("/{}", complete(&folders)[0].folder)),
        "{unseen_location} {folders:?}"
    );
    for part in [
        unseen_location.as_str(),
        unseen_partition.as_str(),
        "restarted",
        "kubectl hsm backup list",
        "new Backup",
    ] {
        ensure!(message.contains(part), "{part:?} in {message:?}");
    }

    // 3. A schedule whose first job is lost while it runs (its partition restarts, and the
    // job's outcome with its memory): that Backup fails with JobLost, saying what happened
    // and what to do, and the next run makes a good backup.
    gate.hold();
    let lost = minutely(&pool, through_gate("scheduled"), 2).await?;
    let st = job_recorded(&pool, &lost).await?;
    let partition = st["jobPartition"].as_str().unwrap_or_default().to_string();
    // The partition names the folder when the job starts; the status records it at once.
    let location = st["location"].as_str().unwrap_or_default().to_string();
    let uri = format!("s3://{}/{prefix}/scheduled", stores.s3_bucket);
    ensure!(
        location.starts_with(&format!("{uri}/pool-")),
        "status.location while Running: {st:#}"
    );
    crash_and_restart(&cluster, &pool.ns.name, &partition).await?;
    let st = job_phase(&backups, &lost, "Failed", MINUTES(3)).await?;
    let (reason, message) = condition(&st, "Succeeded");
    ensure!(reason == "JobLost", "{st:#}");
    for part in [
        location.as_str(),
        partition.as_str(),
        "restarted",
        &uri,
        "kubectl hsm backup list",
        "new Backup",
    ] {
        ensure!(message.contains(part), "{part:?} in {message:?}");
    }
    ensure!(st["error"].as_str() == Some(message.as_str()), "{st:#}");
    ensure!(
        has_event(&events(&pool).await?, "JobLost", "Warning"),
        "a Warning Event JobLost"
    );
    gate.release();
    let next = eventually("the schedule's next Backup", MINUTES(3), || async {
        Ok(scheduled(&pool, "minutely")
            .await?
            .into_iter()
            .find(|n| *n != lost))
    })
    .await?;
    let st = job_phase(&backups, &next, "Succeeded", MINUTES(3)).await?;
    let folders = listed(&direct("scheduled"), &keys).await?;
    let done = complete(&folders);
    ensure!(done.len() == 1, "{folders:?}");
    ensure!(
        st["location"]
            .as_str()
            .is_some_and(|l| l.ends_with(&format!("/{}", done[0].folder))),
        "{st:#}"
    );
    // The schedule reports the success; retention drops the lost Backup (a failure older than
    // the newest success) and its finalizer lets it go (it has no folder to delete).
    let schedules: Api<BackupSchedule> = pool.ns.api();
    eventually("the schedule's LastBackupSucceeded", MINUTES(1), || async {
        let sst = serde_json::to_value(&schedules.get("minutely").await?.status)?;
        Ok((sst["lastSuccessfulBackup"] == next.as_str()
            && sst["conditions"].as_array().is_some_and(|cs| {
                cs.iter()
                    .any(|c| c["type"] == "LastBackupSucceeded" && c["status"] == "True")
            }))
        .then_some(()))
    })
    .await?;
    eventually(
        "the lost Backup expired and deleted",
        MINUTES(2),
        || async { Ok(backups.get_opt(&lost).await?.is_none().then_some(())) },
    )
    .await?;
    // Deleting the namespace completes and keeps the schedule's folders (the schedule may
    // have made another by now).
    let before = complete(&listed(&direct("scheduled"), &keys).await?).len();
    pool.ns.delete_and_wait(MINUTES(3)).await?;
    let after = complete(&listed(&direct("scheduled"), &keys).await?).len();
    ensure!(
        after >= before && after >= 1,
        "the scheduled backups are kept: {before} before the namespace's deletion, {after} after"
    );
    Ok(())
}
