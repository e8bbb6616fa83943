//! Backups to object stores in the loop with REAL partitions: the `keystead-operator` binary
//! against the API emulator, the harness (`tests/kubelet`) playing the StatefulSet
//! controller, the kubelet and the service-account issuer, and the object stores of
//! `scripts/start-object-stores.sh` (moto for S3, Azurite for Azure Blob; started on demand).
//!
//! Covered: credentials from Kubernetes Secrets (S3 keys, an Azure account key, an Azure SAS
//! token), a Backup waiting for its missing Secret, credentials never in status, Events or
//! logs; an operator killed while a job runs (the new one resumes the same job, one folder);
//! jobs lost to a partition restart (`JobLost`, final, with what to do), and a schedule that
//! goes on afterwards.
//!
//! A job is kept running for as long as a test needs by a [`Gate`] between the partitions
//! and the S3 server: while it holds, store requests wait (object_store retries them), so
//! the job stays `InProgress` on its partition. Every wait has a deadline.

mod emulator;
mod kubelet;
#[path = "../../tests/support/object_stores.rs"]
mod object_stores;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use keystead_core::store;
use keystead_operator::backup::plan as backup_plan;
use keystead_operator::crd::{Backup, BackupDestination, BackupSchedule};
use keystead_partition::backup::{Listed, list_backups};
use kube::Api;
use kube::api::PostParams;
use kubelet::pool::*;
use kubelet::{Cluster, objects};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

const SCHEDULES: &str = "keystead.io/v1alpha1/backupschedules";
const EVENTS: &str = "events.k8s.io/v1/events";
const LEASES: &str = "coordination.k8s.io/v1/leases";
/// The Azurite emulator's published development account key (not a secret).
const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

// ---------------------------------------------------------------------------------------
// The object stores
// ---------------------------------------------------------------------------------------

/// The stores as the tests use them.
struct Stores {
    /// `http://127.0.0.1:<port>/devstoreaccount1/<container>`
    azurite: String,
    /// `http://127.0.0.1:<port>`
    s3_endpoint: String,
    s3_bucket: String,
}

fn stores() -> Stores {
    let vars = object_stores::object_stores();
    let var = |k: &str| {
        vars.get(k)
            .cloned()
            .unwrap_or_else(|| panic!("{k} in {vars:?}"))
    };
    Stores {
        azurite: var("KEYSTEAD_TEST_AZURITE_URL"),
        s3_endpoint: var("KEYSTEAD_TEST_S3_ENDPOINT"),
        s3_bucket: var("KEYSTEAD_TEST_S3_BUCKET"),
    }
}

/// A prefix no other test (or earlier run) writes under.
fn unique() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

fn s3_destination(endpoint: &str, prefix: &str, secret: &str) -> Value {
    json!({"s3": {"bucket": stores().s3_bucket, "prefix": prefix, "endpoint": endpoint,
                  "region": "us-east-1", "credentials": {"name": secret}}})
}

fn azure_destination(prefix: &str, secret: &str) -> Value {
    json!({"azureBlob": {"containerUri": stores().azurite, "prefix": prefix,
                         "credentials": {"name": secret}}})
}

/// Secret data (what a user puts in the credentials Secret).
fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, ByteString> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
        .collect()
}

/// Random S3 credentials (moto takes any; they are checked for in logs and objects).
fn s3_keys() -> BTreeMap<String, ByteString> {
    let id = format!("AKIA{}", &unique()[..16].to_uppercase());
    let secret = format!("{}{}", unique(), &unique()[..8]);
    data(&[
        ("AWS_ACCESS_KEY_ID", &id),
        ("AWS_SECRET_ACCESS_KEY", &secret),
    ])
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

/// A service SAS for the whole Azurite container with `permissions` (string-to-sign of
/// version 2020-12-06, signed with the emulator's account key): (token, its signature).
fn container_sas(permissions: &str) -> (String, String) {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let azurite = stores().azurite;
    let mut parts = azurite.rsplit('/');
    let (container, account) = (parts.next().unwrap(), parts.next().unwrap());
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
    let key = aws_lc_rs::hmac::Key::new(
        aws_lc_rs::hmac::HMAC_SHA256,
        &b64.decode(AZURITE_KEY).unwrap(),
    );
    let sig = b64.encode(aws_lc_rs::hmac::sign(&key, fields.join("\n").as_bytes()).as_ref());
    let token = format!(
        "sv={version}&sp={permissions}&se={}&sr=c&sig={}",
        percent_encode(&expiry),
        percent_encode(&sig)
    );
    (token, sig)
}

/// The backup folders under a destination, read from the store with the same parameters
/// the operator hands the partitions (`backup_plan::storage_parameters`).
async fn listed(destination: &Value, secret: &BTreeMap<String, ByteString>) -> Vec<Listed> {
    let d: BackupDestination = serde_json::from_value(destination.clone()).unwrap();
    let params = backup_plan::storage_parameters(&d, Some(secret)).unwrap();
    let dest = store::open(&params, &store::LocalPaths::anywhere()).unwrap();
    list_backups(&dest).await.unwrap()
}

/// Folders with a readable manifest (complete backups).
fn complete(folders: &[Listed]) -> Vec<&Listed> {
    folders.iter().filter(|l| l.manifest.is_ok()).collect()
}

/// A TCP gate in front of the S3 server. Open, it forwards every connection. Holding, it
/// accepts connections and parks them without reading: the partition's store requests wait
/// (and, after object_store's 30 s request timeout, are retried — for up to 3 minutes), so
/// a job stays `InProgress`. On release, parked connections are closed (the client retries
/// them on a new connection) rather than forwarded: a request a dead partition left behind
/// never reaches the store late.
struct Gate {
    addr: SocketAddr,
    open: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Gate {
    async fn start(upstream: &str) -> Gate {
        let upstream: SocketAddr = upstream
            .trim_start_matches("http://")
            .parse()
            .expect("the S3 endpoint is http://<ip>:<port>");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (open, rx) = watch::channel(true);
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                let mut rx = rx.clone();
                let held = !*rx.borrow();
                conns.spawn(async move {
                    if held {
                        // Parked until the gate opens, then dropped.
                        let _ = rx.wait_for(|open| *open).await;
                        return;
                    }
                    if let Ok(mut out) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
                while conns.try_join_next().is_some() {}
            }
        });
        Gate { addr, open, task }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn hold(&self) {
        self.open.send_replace(false);
    }

    fn release(&self) {
        self.open.send_replace(true);
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        // Aborting the accept loop drops its JoinSet, which aborts every connection.
        self.task.abort();
    }
}

// ---------------------------------------------------------------------------------------
// Objects
// ---------------------------------------------------------------------------------------

async fn create_secret(c: &Cluster, name: &str, data: &BTreeMap<String, ByteString>) {
    let s = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            namespace: Some(NS.into()),
            ..Default::default()
        },
        data: Some(data.clone()),
        ..Default::default()
    };
    Api::<Secret>::namespaced(c.client.clone(), NS)
        .create(&PostParams::default(), &s)
        .await
        .unwrap();
}

async fn create_backup(c: &Cluster, name: &str, destination: &Value) {
    let b: Backup = serde_json::from_value(json!({
        "apiVersion": "keystead.io/v1alpha1", "kind": "Backup",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"hsmRef": {"name": "pool"}, "destination": destination},
    }))
    .unwrap();
    Api::<Backup>::namespaced(c.client.clone(), NS)
        .create(&PostParams::default(), &b)
        .await
        .unwrap();
}

fn backup_status(c: &Cluster, name: &str) -> Value {
    c.emu
        .get(BACKUPS, Some(NS), name)
        .map(|o| o["status"].clone())
        .unwrap_or(Value::Null)
}

/// The reason and message of a status's `Succeeded` condition.
fn condition(st: &Value) -> (String, String) {
    st["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|x| x["type"] == "Succeeded"))
        .map(|x| {
            (
                x["reason"].as_str().unwrap_or("").to_string(),
                x["message"].as_str().unwrap_or("").to_string(),
            )
        })
        .unwrap_or_default()
}

/// Wait until Backup `name`'s phase is `phase` and return its status; a final phase other
/// than the one awaited fails the test at once.
async fn backup_phase(c: &Cluster, name: &str, phase: &str, limit: Duration) -> Value {
    wait(c, &format!("Backup {name} {phase}"), limit, || {
        let st = backup_status(c, name);
        if st["phase"] != phase && (st["phase"] == "Succeeded" || st["phase"] == "Failed") {
            panic!(
                "Backup {name} is {} instead of {phase}: {st:#}",
                st["phase"]
            );
        }
        st["phase"] == phase
    })
    .await;
    backup_status(c, name)
}

/// Create the Secret `name` with `data` and a Backup `name` to `destination` (which names
/// that Secret); its status once its phase is `phase`.
async fn through_secret(
    c: &Cluster,
    name: &str,
    destination: &Value,
    data: &BTreeMap<String, ByteString>,
    phase: &str,
) -> Value {
    create_secret(c, name, data).await;
    create_backup(c, name, destination).await;
    backup_phase(c, name, phase, Duration::from_secs(120)).await
}

/// A job the store refused: `JobFailed` with the partition's `StorageError`.
fn assert_storage_error(st: &Value) {
    assert_eq!(condition(st).0, "JobFailed", "{st:#}");
    assert!(
        st["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("StorageError")),
        "{st:#}"
    );
}

/// Wait until Backup `name` runs a job (its id recorded in the status); returns the status.
async fn job_recorded(c: &Cluster, name: &str) -> Value {
    wait(
        c,
        &format!("Backup {name} Running with a job id"),
        Duration::from_secs(120),
        || {
            let st = backup_status(c, name);
            st["phase"] == "Running" && st["jobId"].is_string() && st["jobPartition"].is_string()
        },
    )
    .await;
    backup_status(c, name)
}

/// Every status Backup `name` has had, in order (from the emulator's change log).
fn status_history(c: &Cluster, name: &str) -> Vec<Value> {
    c.emu
        .store
        .lock()
        .unwrap()
        .log
        .iter()
        .filter(|e| e.collection == BACKUPS && e.object["metadata"]["name"] == name)
        .map(|e| e.object["status"].clone())
        .collect()
}

/// The operator with its whole log (debug level) in `log`, under pod name `pod`.
fn start_operator_logging(c: &Cluster, pod: &str, log: &Path) -> tokio::process::Child {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    c.operator_command()
        .env("POD_NAME", pod)
        .env(
            "RUST_LOG",
            "debug,hyper=info,hyper_util=info,h2=info,rustls=info,tower=info",
        )
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .expect("the operator binary starts")
}

async fn stop(mut operator: tokio::process::Child) {
    let _ = operator.start_kill();
    let _ = operator.wait().await;
}

/// Kill partition `pod`'s container and wait until the restarted one is Ready again.
async fn restart_partition(c: &Cluster, pod: &str) {
    let restarts = |c: &Cluster| {
        c.history()
            .iter()
            .filter(|h| **h == format!("restart {NS}/{pod}"))
            .count()
    };
    let before = restarts(c);
    c.crash(NS, pod);
    wait(
        c,
        &format!("{pod} restarted and Ready"),
        Duration::from_secs(120),
        || restarts(c) > before && c.ready(NS, pod),
    )
    .await;
}

/// A cluster with an activated pool (key `k1`) and the operator `operator-0`, whose log
/// (debug level) goes to the returned file in `log_dir`.
async fn pool_and_operator(log_dir: &Path) -> (Cluster, tokio::process::Child, PathBuf) {
    let c = Cluster::start().await;
    let log = log_dir.join("operator.log");
    let operator = start_operator_logging(&c, "operator-0", &log);
    activated_pool_with_a_key(&c, pool_spec(json!({}))).await;
    (c, operator, log)
}

/// A gate in front of moto, and the Secret `s3-credentials` with fresh keys.
async fn gate_and_s3_secret(c: &Cluster) -> (Gate, BTreeMap<String, ByteString>) {
    let gate = Gate::start(&stores().s3_endpoint).await;
    let keys = s3_keys();
    create_secret(c, "s3-credentials", &keys).await;
    (gate, keys)
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backups_to_s3_and_azure_blob_with_credentials_from_secrets() {
    let stores = stores();
    let logs = tempfile::tempdir().unwrap();
    let (c, operator, log) = pool_and_operator(logs.path()).await;
    let fingerprint = hsm_status(&c)["securityDomainFingerprint"].clone();
    let prefix = unique();
    let mut credentials: Vec<String> = vec![AZURITE_KEY.into()];

    // 1. S3: the Backup waits for its Secret, and proceeds once it exists.
    let s3 = s3_destination(
        &stores.s3_endpoint,
        &format!("{prefix}/s3"),
        "s3-credentials",
    );
    create_backup(&c, "to-s3", &s3).await;
    wait(
        &c,
        "Backup to-s3 waits for its Secret",
        Duration::from_secs(60),
        || condition(&backup_status(&c, "to-s3")).0 == "CredentialsNotFound",
    )
    .await;
    let st = backup_status(&c, "to-s3");
    assert_eq!(st["phase"], "Pending", "{st:#}");
    assert!(condition(&st).1.contains("s3-credentials"), "{st:#}");
    let s3_keys = s3_keys();
    credentials.extend(
        s3_keys
            .values()
            .map(|v| String::from_utf8(v.0.clone()).unwrap()),
    );
    create_secret(&c, "s3-credentials", &s3_keys).await;
    // The wait is retried every 30 s.
    let st = backup_phase(&c, "to-s3", "Succeeded", Duration::from_secs(180)).await;
    let location = st["location"].as_str().expect("status.location");
    assert!(
        location.starts_with(&format!("s3://{}/{prefix}/s3/pool-", stores.s3_bucket)),
        "{st:#}"
    );
    assert_eq!(st["securityDomainFingerprint"], fingerprint, "{st:#}");
    // The backup is in the bucket: one complete folder, the one the status names.
    let folders = listed(&s3, &s3_keys).await;
    assert_eq!(folders.len(), 1, "{folders:?}");
    let m = folders[0].manifest.as_ref().expect("a complete backup");
    assert!(location.ends_with(&format!("/{}", folders[0].folder)));
    assert_eq!(Some(m.body.key_count as i64), st["keyCount"].as_i64());
    assert_eq!(json!(m.body.domain_fingerprint), fingerprint);

    // 2. Azure Blob with an account key. A wrong key in the Secret fails the job (so the
    // key from the Secret is what the partition uses, not the emulator's default); the
    // right one succeeds.
    let wrong_key = {
        use base64::Engine;
        let bytes: Vec<u8> = (0..4)
            .flat_map(|_| *uuid::Uuid::new_v4().as_bytes())
            .collect();
        base64::engine::general_purpose::STANDARD.encode(bytes)
    };
    credentials.push(wrong_key.clone());
    let with_key = |secret: &str| azure_destination(&format!("{prefix}/key"), secret);
    let wrong = data(&[("accountKey", &wrong_key)]);
    let st = through_secret(
        &c,
        "azure-wrong-key",
        &with_key("azure-wrong-key"),
        &wrong,
        "Failed",
    )
    .await;
    assert_storage_error(&st);
    let key_data = data(&[("accountKey", AZURITE_KEY)]);
    let with_key = with_key("azure-key");
    let st = through_secret(&c, "azure-key", &with_key, &key_data, "Succeeded").await;
    let location = st["location"].as_str().unwrap();
    assert!(
        location.starts_with(&format!("{}/{prefix}/key/pool-", stores.azurite)),
        "{st:#}"
    );
    let folders = listed(&with_key, &key_data).await;
    assert_eq!(complete(&folders).len(), 1, "{folders:?}");
    assert!(location.ends_with(&format!("/{}", folders[0].folder)));

    // 3. Azure Blob with a SAS token (with its leading '?', as the portal copies it). A
    // read-only SAS fails the job; a read-write one succeeds.
    let (read_only, ro_sig) = container_sas("rl");
    let (read_write, rw_sig) = container_sas("racwdl");
    for (token, sig) in [(&read_only, &ro_sig), (&read_write, &rw_sig)] {
        credentials.extend([token.clone(), sig.clone(), percent_encode(sig)]);
    }
    let with_sas = |secret: &str| azure_destination(&format!("{prefix}/sas"), secret);
    let ro = data(&[("sasToken", &read_only)]);
    let st = through_secret(&c, "azure-ro-sas", &with_sas("azure-ro-sas"), &ro, "Failed").await;
    assert_storage_error(&st);
    let sas_data = data(&[("sasToken", &format!("?{read_write}"))]);
    let st = through_secret(
        &c,
        "azure-sas",
        &with_sas("azure-sas"),
        &sas_data,
        "Succeeded",
    )
    .await;
    assert_eq!(st["securityDomainFingerprint"], fingerprint, "{st:#}");
    let folders = listed(&with_sas("azure-sas"), &sas_data).await;
    assert_eq!(
        folders.len(),
        1,
        "only the read-write SAS wrote: {folders:?}"
    );
    assert!(folders[0].manifest.is_ok());
    assert_eq!(
        st["location"].as_str(),
        Some(format!("{}/{prefix}/sas/{}", stores.azurite, folders[0].folder).as_str())
    );

    // 3b. A Backup naming a link-local endpoint (a cloud metadata service) is rejected by
    // the partition before it connects anywhere, with a message saying why; the operator
    // reports it as JobRejected (issue 11: the backup-options path to the partition's own
    // credentials).
    let meta = s3_destination(
        "http://169.254.169.254",
        &format!("{prefix}/meta"),
        "meta-creds",
    );
    create_secret(&c, "meta-creds", &s3_keys).await;
    create_backup(&c, "to-metadata", &meta).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while backup_status(&c, "to-metadata")["phase"] != "Failed" {
        assert!(
            std::time::Instant::now() < deadline,
            "Backup to-metadata is not Failed: {:#}",
            backup_status(&c, "to-metadata")
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let st = backup_status(&c, "to-metadata");
    let (reason, message) = condition(&st);
    assert_eq!(reason, "JobRejected", "{st:#}");
    assert!(message.contains("link-local"), "{st:#}");

    // 4. No credential anywhere but in the Secrets: not in any other object (Backups'
    // status, Events, the pool), not in the operator's log, not in the partitions' logs.
    let events = objects(&c.emu, EVENTS);
    for (reason, kind) in [
        ("CredentialsNotFound", "Normal"),
        ("JobFailed", "Warning"),
        ("BackupSucceeded", "Normal"),
    ] {
        assert!(
            events
                .iter()
                .any(|e| e["reason"] == reason && e["type"] == kind),
            "an Event {reason}: {events:#?}"
        );
    }
    stop(operator).await;
    let operator_log = std::fs::read_to_string(&log).unwrap();
    assert!(
        operator_log.contains("to-s3"),
        "the operator logged at debug level: {} bytes",
        operator_log.len()
    );
    let mut places: Vec<(String, String)> = vec![("the operator's log".into(), operator_log)];
    for pod in ["pool-0", "pool-1", "pool-2"] {
        places.push((format!("{pod}'s log"), c.container_log(NS, pod).unwrap()));
    }
    for (key, obj) in c.emu.store.lock().unwrap().objects.iter() {
        if !key.starts_with("v1/secrets|") {
            places.push((key.clone(), obj.to_string()));
        }
    }
    for (place, text) in &places {
        for secret in &credentials {
            assert!(
                !text.contains(secret.as_str()),
                "a credential ({}…) appears in {place}",
                &secret[..6]
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_operator_restarted_mid_job_resumes_the_same_job() {
    let stores = stores();
    let logs = tempfile::tempdir().unwrap();
    let (c, first, log) = pool_and_operator(logs.path()).await;
    let (gate, keys) = gate_and_s3_secret(&c).await;
    let prefix = format!("{}/restart", unique());
    // The store as the test reads it (directly), and as the partitions reach it (the gate).
    let direct = s3_destination(&stores.s3_endpoint, &prefix, "s3-credentials");

    // 1. The job starts and cannot finish while the gate holds.
    gate.hold();
    create_backup(
        &c,
        "mid-job",
        &s3_destination(&gate.url(), &prefix, "s3-credentials"),
    )
    .await;
    let st = job_recorded(&c, "mid-job").await;
    let (job, partition) = (st["jobId"].clone(), st["jobPartition"].clone());
    assert!(
        complete(&listed(&direct, &keys).await).is_empty(),
        "the job has not written its manifest yet"
    );

    // 2. The operator is killed (no graceful shutdown, the Lease is not released) and a new
    // one, under another pod name as a Deployment would start it, takes over after the
    // Lease expires.
    stop(first).await;
    let second = start_operator_logging(&c, "operator-1", &log);
    wait(
        &c,
        "the Lease held by operator-1",
        Duration::from_secs(120),
        || {
            c.emu
                .get(LEASES, Some("keystead-system"), "keystead-operator-leader")
                .is_some_and(|l| l["spec"]["holderIdentity"] == "operator-1")
        },
    )
    .await;
    assert_eq!(backup_status(&c, "mid-job")["phase"], "Running");

    // 3. The store answers again: the new operator follows the same job to its end.
    gate.release();
    let st = backup_phase(&c, "mid-job", "Succeeded", Duration::from_secs(240)).await;
    assert_eq!(st["jobId"], job, "{st:#}");
    assert_eq!(st["jobPartition"], partition, "{st:#}");
    for (i, h) in status_history(&c, "mid-job").iter().enumerate() {
        assert!(
            h["jobId"].is_null() || h["jobId"] == job,
            "status #{i} names another job: {h:#}"
        );
    }
    // Exactly one backup folder: no second job was started.
    let folders = listed(&direct, &keys).await;
    assert_eq!(folders.len(), 1, "{folders:?}");
    assert!(folders[0].manifest.is_ok(), "{folders:?}");
    assert!(
        st["location"]
            .as_str()
            .is_some_and(|l| l.ends_with(&format!("/{prefix}/{}", folders[0].folder))),
        "{st:#}"
    );
    stop(second).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn jobs_lost_to_a_partition_restart_fail_and_the_schedule_goes_on() {
    let stores = stores();
    let logs = tempfile::tempdir().unwrap();
    let (c, operator, log) = pool_and_operator(logs.path()).await;
    let (gate, keys) = gate_and_s3_secret(&c).await;
    let prefix = unique();
    let through_gate =
        |p: &str| s3_destination(&gate.url(), &format!("{prefix}/{p}"), "s3-credentials");
    let direct = |p: &str| {
        s3_destination(
            &stores.s3_endpoint,
            &format!("{prefix}/{p}"),
            "s3-credentials",
        )
    };

    // 1. A job that finished while the operator was down, on a partition that restarted
    // before the operator polled it: the outcome is lost with the partition's memory.
    gate.hold();
    create_backup(&c, "unseen", &through_gate("unseen")).await;
    let st = job_recorded(&c, "unseen").await;
    let partition = st["jobPartition"].as_str().unwrap().to_string();
    // The partition names the folder when the job starts; the status records it at once.
    let location = st["location"]
        .as_str()
        .unwrap_or_else(|| panic!("status.location while Running: {st:#}"))
        .to_string();
    assert!(
        location.starts_with(&format!("s3://{}/{prefix}/unseen/pool-", stores.s3_bucket)),
        "{location}"
    );
    stop(operator).await;
    gate.release();
    let deadline = Instant::now() + Duration::from_secs(240);
    while complete(&listed(&direct("unseen"), &keys).await).len() != 1 {
        assert!(
            Instant::now() < deadline,
            "the job did not write its backup\n{}",
            c.dump()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    restart_partition(&c, &partition).await;
    let operator = start_operator_logging(&c, "operator-1", &log);
    let st = backup_phase(&c, "unseen", "Failed", Duration::from_secs(180)).await;
    let (reason, message) = condition(&st);
    assert_eq!(reason, "JobLost", "{st:#}");
    // The message says what happened and what to do.
    let uri = format!("s3://{}/{prefix}/unseen", stores.s3_bucket);
    let folders = listed(&direct("unseen"), &keys).await;
    let written = complete(&folders);
    assert!(
        location.ends_with(&format!("/{}", written[0].folder)),
        "{location}"
    );
    for part in [
        location.as_str(),
        partition.as_str(),
        "restarted",
        &uri,
        "kubectl hsm backup list",
        "new Backup",
    ] {
        assert!(message.contains(part), "{part:?} in {message:?}");
    }
    assert_eq!(st["error"].as_str(), Some(message.as_str()));
    assert!(
        objects(&c.emu, EVENTS)
            .iter()
            .any(|e| e["reason"] == "JobLost" && e["type"] == "Warning"),
        "a Warning Event JobLost"
    );

    // 2. A schedule whose first job is lost while it runs (its partition restarts): that
    // Backup fails with JobLost, and the next run makes a good backup.
    gate.hold();
    let s: BackupSchedule = serde_json::from_value(json!({
        "apiVersion": "keystead.io/v1alpha1", "kind": "BackupSchedule",
        "metadata": {"name": "minutely", "namespace": NS},
        "spec": {"hsmRef": {"name": "pool"}, "schedule": "* * * * *", "immediate": true,
                 "destination": through_gate("scheduled"), "retention": {"maxCount": 2}},
    }))
    .unwrap();
    Api::<BackupSchedule>::namespaced(c.client.clone(), NS)
        .create(&PostParams::default(), &s)
        .await
        .unwrap();
    let scheduled = |c: &Cluster| scheduled_backups(c, "minutely");
    wait(
        &c,
        "the schedule's first Backup",
        Duration::from_secs(60),
        || !scheduled(&c).is_empty(),
    )
    .await;
    let lost = scheduled(&c)[0].clone();
    let st = job_recorded(&c, &lost).await;
    restart_partition(&c, st["jobPartition"].as_str().unwrap()).await;
    let st = backup_phase(&c, &lost, "Failed", Duration::from_secs(180)).await;
    assert_eq!(condition(&st).0, "JobLost", "{st:#}");
    gate.release();
    wait(
        &c,
        "the schedule's next Backup",
        Duration::from_secs(150),
        || scheduled(&c).iter().any(|n| *n != lost),
    )
    .await;
    let next = scheduled(&c).into_iter().find(|n| *n != lost).unwrap();
    let st = backup_phase(&c, &next, "Succeeded", Duration::from_secs(180)).await;
    let folders = listed(&direct("scheduled"), &keys).await;
    let done = complete(&folders);
    assert_eq!(done.len(), 1, "{folders:?}");
    assert!(
        st["location"]
            .as_str()
            .is_some_and(|l| l.ends_with(&format!("/{}", done[0].folder))),
        "{st:#}"
    );
    // The schedule reports the success; retention drops the lost Backup (a failure older
    // than the newest success) and its finalizer lets it go (it has no folder to delete).
    wait(
        &c,
        "the schedule's LastBackupSucceeded",
        Duration::from_secs(60),
        || {
            let sst = c
                .emu
                .get(SCHEDULES, Some(NS), "minutely")
                .map(|s| s["status"].clone())
                .unwrap_or_default();
            sst["lastSuccessfulBackup"] == next.as_str()
                && sst["conditions"].as_array().is_some_and(|cs| {
                    cs.iter()
                        .any(|x| x["type"] == "LastBackupSucceeded" && x["status"] == "True")
                })
        },
    )
    .await;
    wait(
        &c,
        "the lost Backup expired and deleted",
        Duration::from_secs(90),
        || c.emu.get(BACKUPS, Some(NS), &lost).is_none(),
    )
    .await;
    stop(operator).await;
}
