//! Backup, Restore and BackupSchedule in the loop with REAL partitions: the
//! `keystead-operator` binary against the API emulator, the harness (`tests/kubelet`) playing
//! the StatefulSet controller, the kubelet and the service-account issuer. The backups go to
//! a `filesystem` destination: the operator's `--backup-filesystem-root` is a directory of the
//! test, and every partition is a process on this machine, so all of them see the same claim
//! directory (a ReadWriteMany volume in a real cluster). Every wait has a deadline.

mod emulator;
mod kubelet;

use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use keystead_operator::crd::{Backup, BackupSchedule, Restore};
use kube::Api;
use kube::api::PostParams;
use kubelet::pool::*;
use kubelet::{Cluster, objects};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const BACKUPS: &str = "keystead.io/v1alpha1/backups";
const RESTORES: &str = "keystead.io/v1alpha1/restores";
const SCHEDULES: &str = "keystead.io/v1alpha1/backupschedules";
/// The claim every destination of this test names.
const CLAIM: &str = "backups";
const CRYPTO_OFFICER: &str = "Microsoft.KeyVault/providers/Microsoft.Authorization/roleDefinitions/515eb02d-2335-4d2d-92f2-b1cbdf9c3778";

fn object(c: &Cluster, collection: &str, name: &str) -> Option<Value> {
    c.emu.get(collection, Some(NS), name)
}

fn status(c: &Cluster, collection: &str, name: &str) -> Value {
    object(c, collection, name)
        .map(|o| o["status"].clone())
        .unwrap_or(Value::Null)
}

/// Wait until the object's `status.phase` is `Succeeded` and return its status; a `Failed`
/// phase fails the test at once with the object's status.
async fn succeeded(c: &Cluster, collection: &str, name: &str, limit: Duration) -> Value {
    wait(c, &format!("{collection}/{name} Succeeded"), limit, || {
        let st = status(c, collection, name);
        assert_ne!(st["phase"], "Failed", "{collection}/{name} failed: {st:#}");
        st["phase"] == "Succeeded"
    })
    .await;
    status(c, collection, name)
}

/// The directory of a `pvc://<CLAIM>/...` folder URL: where the claim's data is.
fn folder_path(claim_dir: &Path, location: &str) -> PathBuf {
    let rest = location
        .strip_prefix(&format!("pvc://{CLAIM}/"))
        .unwrap_or_else(|| panic!("a filesystem backup location is pvc://{CLAIM}/...: {location}"));
    claim_dir.join(rest)
}

/// A backup folder as written: a manifest and at least one chunk.
fn assert_backup_folder(dir: &Path, under: &Path) {
    assert!(
        dir.starts_with(under),
        "{} is under the destination {}",
        dir.display(),
        under.display()
    );
    assert!(
        dir.join("manifest.json").is_file(),
        "{} holds manifest.json",
        dir.display()
    );
    let files = std::fs::read_dir(dir).unwrap().count();
    assert!(
        files >= 2,
        "{} holds the manifest and chunks",
        dir.display()
    );
}

fn filesystem(path: &str) -> Value {
    json!({"filesystem": {"claimName": CLAIM, "path": path}})
}

/// Until `GET /keys/{key}` answers `want` on every partition.
async fn key_status_everywhere(c: &Cluster, app: &str, key: &str, want: StatusCode) {
    for pod in ["pool-0", "pool-1", "pool-2"] {
        key_status_on(c, pod, app, key, want).await;
    }
}

/// The public part of `key` (its JWK's `x` and `y`).
async fn public_key(pool: &PoolHttp, app: &str, key: &str) -> Value {
    let (s, v) = pool
        .call(app, Method::GET, &format!("/keys/{key}"), None)
        .await;
    assert_eq!(s, StatusCode::OK, "GET /keys/{key}: {v}");
    assert!(v["key"]["x"].is_string(), "{v}");
    json!([v["key"]["x"], v["key"]["y"]])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backup_restore_and_schedule_with_real_partitions() {
    let c = Cluster::start().await;
    let mut operator = c.start_operator();
    // The claim for backups (ReadWriteMany: the three partitions mount it).
    let pvc: PersistentVolumeClaim = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": CLAIM, "namespace": NS},
        "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Gi"}}},
    }))
    .unwrap();
    let pvcs = Api::<PersistentVolumeClaim>::namespaced(c.client.clone(), NS);
    pvcs.create(&PostParams::default(), &pvc).await.unwrap();
    // The provisioner binds it.
    pvcs.patch_status(
        CLAIM,
        &Default::default(),
        &kube::api::Patch::Merge(json!({"status": {"phase": "Bound"}})),
    )
    .await
    .unwrap();
    let spec = pool_spec(json!({"backupVolumes": [{"claimName": CLAIM}]}));
    let (app, _custodians) = activated_pool_with_a_key(&c, spec).await;
    let fingerprint = hsm_status(&c)["securityDomainFingerprint"].clone();
    let claim = c.claim_dir(NS, CLAIM).expect("the claim exists");
    wait(
        &c,
        "BackupVolumesReady True",
        Duration::from_secs(30),
        || {
            hsm_status(&c)["conditions"].as_array().is_some_and(|cs| {
                cs.iter().any(|x| {
                    x["type"] == "BackupVolumesReady"
                        && x["status"] == "True"
                        && x["reason"] == "VolumesBound"
                })
            })
        },
    )
    .await;
    let folder_path = |location: &str| folder_path(&claim, location);

    // 0. A claim the pool does not mount: the Backup waits and says what to do.
    let backups: Api<Backup> = Api::namespaced(c.client.clone(), NS);
    let b: Backup = serde_json::from_value(json!({
        "apiVersion": "keystead.io/v1alpha1", "kind": "Backup",
        "metadata": {"name": "unmounted", "namespace": NS},
        "spec": {"hsmRef": {"name": "pool"},
                 "destination": {"filesystem": {"claimName": "not-mounted"}}},
    }))
    .unwrap();
    backups.create(&PostParams::default(), &b).await.unwrap();
    wait(
        &c,
        "the Backup to an unmounted claim waits with a message",
        Duration::from_secs(60),
        || {
            let st = status(&c, BACKUPS, "unmounted");
            st["phase"] == "Pending"
                && st["conditions"].as_array().is_some_and(|cs| {
                    cs.iter().any(|x| {
                        x["reason"] == "PoolNotReady"
                            && x["message"]
                                .as_str()
                                .is_some_and(|m| m.contains("spec.backupVolumes"))
                    })
                })
        },
    )
    .await;
    backups
        .delete("unmounted", &Default::default())
        .await
        .unwrap();

    // 1. A Backup of the pool to the filesystem destination.
    let b: Backup = serde_json::from_value(json!({
        "apiVersion": "keystead.io/v1alpha1", "kind": "Backup",
        "metadata": {"name": "manual", "namespace": NS},
        "spec": {"hsmRef": {"name": "pool"}, "destination": filesystem("manual")},
    }))
    .unwrap();
    backups.create(&PostParams::default(), &b).await.unwrap();
    let st = succeeded(&c, BACKUPS, "manual", Duration::from_secs(120)).await;
    assert!(st["keyCount"].as_i64().unwrap_or(0) >= 1, "{st:#}");
    assert_eq!(st["securityDomainFingerprint"], fingerprint, "{st:#}");
    assert!(
        st["digest"]
            .as_str()
            .is_some_and(|d| d.starts_with("sha256:")),
        "{st:#}"
    );
    assert!(st["jobPartition"].is_string() && st["completionTime"].is_string());
    let manual = folder_path(st["location"].as_str().expect("status.location"));
    assert_backup_folder(&manual, &claim.join("manual"));
    // The pool records its newest successful backup.
    wait(
        &c,
        "ManagedHsm lastBackup = manual",
        Duration::from_secs(30),
        || {
            let h = hsm_status(&c);
            h["lastBackup"]["name"] == "manual"
                && h["conditions"].as_array().is_some_and(|cs| {
                    cs.iter()
                        .any(|x| x["type"] == "LastBackupSucceeded" && x["status"] == "True")
                })
        },
    )
    .await;

    // 2. The key is deleted through the pool: no partition serves it any more.
    let pool = PoolHttp::new(&c, "pool-0");
    let public = public_key(&pool, &app, "k1").await;
    let (s, v) = pool.call(&app, Method::DELETE, "/keys/k1", None).await;
    assert_eq!(s, StatusCode::OK, "delete: {v}");
    key_status_everywhere(&c, &app, "k1", StatusCode::NOT_FOUND).await;

    // 3. A full Restore of that Backup brings it back on every partition, and it signs.
    let restores: Api<Restore> = Api::namespaced(c.client.clone(), NS);
    let r: Restore = serde_json::from_value(json!({
        "apiVersion": "keystead.io/v1alpha1", "kind": "Restore",
        "metadata": {"name": "back", "namespace": NS},
        "spec": {"hsmRef": {"name": "pool"}, "backupName": "manual"},
    }))
    .unwrap();
    restores.create(&PostParams::default(), &r).await.unwrap();
    let st = succeeded(&c, RESTORES, "back", Duration::from_secs(120)).await;
    assert_eq!(
        st["source"].as_str().map(&folder_path),
        Some(manual.clone()),
        "{st:#}"
    );
    // The partition wrote a restore point (a backup of the state it replaced) first.
    let point = folder_path(st["restorePoint"].as_str().expect("status.restorePoint"));
    assert_backup_folder(&point, &claim.join("manual"));
    usable_everywhere(&c, &app, "k1").await;
    assert_eq!(
        public_key(&pool, &app, "k1").await,
        public,
        "the same key is back"
    );

    // 4. A single-key Backup, the key deleted and purged, a selective Restore of that key.
    let b: Backup = serde_json::from_value(json!({
        "apiVersion": "keystead.io/v1alpha1", "kind": "Backup",
        "metadata": {"name": "k1-only", "namespace": NS},
        "spec": {"hsmRef": {"name": "pool"}, "keyName": "k1", "destination": filesystem("keys")},
    }))
    .unwrap();
    backups.create(&PostParams::default(), &b).await.unwrap();
    let st = succeeded(&c, BACKUPS, "k1-only", Duration::from_secs(120)).await;
    assert_eq!(st["keyCount"], 1, "{st:#}");
    let single = folder_path(st["location"].as_str().unwrap());
    assert_backup_folder(&single, &claim.join("keys"));
    assert!(
        single.to_string_lossy().contains("-key-k1-"),
        "{}",
        single.display()
    );
    // Purging takes a Crypto Officer; the administrator gives itself that role.
    let admin = token(&c, ADMIN_SA).await;
    assign_role(&pool, &admin, CRYPTO_OFFICER, ADMIN_SA).await;
    let (s, v) = pool.call(&app, Method::DELETE, "/keys/k1", None).await;
    assert_eq!(s, StatusCode::OK, "delete: {v}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (s, v) = pool
            .call(&admin, Method::DELETE, "/deletedkeys/k1", None)
            .await;
        if s == StatusCode::NO_CONTENT || s == StatusCode::OK {
            break;
        }
        assert!(Instant::now() < deadline, "purge: {s} {v}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    key_status_everywhere(&c, &app, "k1", StatusCode::NOT_FOUND).await;
    let r: Restore = serde_json::from_value(json!({
        "apiVersion": "keystead.io/v1alpha1", "kind": "Restore",
        "metadata": {"name": "k1-back", "namespace": NS},
        "spec": {"hsmRef": {"name": "pool"}, "backupName": "k1-only", "keyName": "k1"},
    }))
    .unwrap();
    restores.create(&PostParams::default(), &r).await.unwrap();
    let st = succeeded(&c, RESTORES, "k1-back", Duration::from_secs(120)).await;
    assert!(
        st["restorePoint"].is_null(),
        "a selective restore takes no restore point: {st:#}"
    );
    usable_everywhere(&c, &app, "k1").await;
    assert_eq!(
        public_key(&pool, &app, "k1").await,
        public,
        "the same key is back"
    );

    // 5. A schedule every minute, the first run at once, keeping one backup: the second run
    // expires the first Backup, and its finalizer deletes the first folder.
    let schedules: Api<BackupSchedule> = Api::namespaced(c.client.clone(), NS);
    let s: BackupSchedule = serde_json::from_value(json!({
        "apiVersion": "keystead.io/v1alpha1", "kind": "BackupSchedule",
        "metadata": {"name": "nightly", "namespace": NS},
        "spec": {"hsmRef": {"name": "pool"}, "schedule": "* * * * *", "immediate": true,
                 "destination": filesystem("scheduled"), "retention": {"maxCount": 1}},
    }))
    .unwrap();
    schedules.create(&PostParams::default(), &s).await.unwrap();
    let scheduled = |c: &Cluster| -> Vec<String> {
        let mut names: Vec<String> = objects(&c.emu, BACKUPS)
            .iter()
            .filter(|b| b["metadata"]["labels"]["keystead.io/backup-schedule"] == "nightly")
            .filter_map(|b| b["metadata"]["name"].as_str().map(String::from))
            .collect();
        names.sort();
        names
    };
    wait(
        &c,
        "the schedule's first Backup",
        Duration::from_secs(30),
        || !scheduled(&c).is_empty(),
    )
    .await;
    let first = scheduled(&c)[0].clone();
    let b1 = object(&c, BACKUPS, &first).unwrap();
    assert!(
        b1["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| f.iter().any(|x| x == "keystead.io/backup-folder")),
        "{b1:#}"
    );
    let st = succeeded(&c, BACKUPS, &first, Duration::from_secs(120)).await;
    let first_folder = folder_path(st["location"].as_str().unwrap());
    assert_backup_folder(&first_folder, &claim.join("scheduled"));
    // The next minute's run (at most a minute away, plus the backup).
    wait(
        &c,
        "a second scheduled Backup",
        Duration::from_secs(120),
        || scheduled(&c).iter().any(|n| *n != first),
    )
    .await;
    let second = scheduled(&c).into_iter().find(|n| *n != first).unwrap();
    let st = succeeded(&c, BACKUPS, &second, Duration::from_secs(120)).await;
    let second_folder = folder_path(st["location"].as_str().unwrap());
    assert_backup_folder(&second_folder, &claim.join("scheduled"));
    assert_ne!(first_folder, second_folder);
    wait(
        &c,
        "the first scheduled Backup expired and its folder deleted",
        Duration::from_secs(60),
        || object(&c, BACKUPS, &first).is_none() && !first_folder.exists(),
    )
    .await;
    assert_eq!(scheduled(&c), vec![second.clone()]);
    assert!(second_folder.join("manifest.json").is_file());
    // Retention touches only the schedule's own Backups.
    assert!(manual.join("manifest.json").is_file());
    assert!(object(&c, BACKUPS, "manual").is_some());
    let sst = object(&c, SCHEDULES, "nightly").unwrap()["status"].clone();
    assert!(sst["lastScheduleTime"].is_string(), "{sst:#}");
    let events: Vec<Value> = objects(&c.emu, "events.k8s.io/v1/events");
    assert!(
        events.iter().any(|e| e["reason"] == "BackupExpired"),
        "an Event for the expiry"
    );
    assert!(
        events.iter().any(|e| e["reason"] == "FolderDeleted"),
        "an Event for the deleted folder"
    );

    let _ = operator.start_kill();
    let _ = operator.wait().await;
}
