//! Helpers of the backup tests: the object stores, job polling, pool population, recovery.
#![allow(dead_code)]

use crate::common::{ADMIN, TestPool, custodians};
use keystead_core::sd::{self, CustodianPrivateKey, ExchangeCertificate};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

pub const CRYPTO_USER: &str = "21dbd100-6940-42c2-9190-5d6cb909625b";
pub const BACKUP_ROLE: &str = "7b127d3c-77bd-4e3e-bbe0-dbb8971fa7f8";

#[path = "../../../tests/support/object_stores.rs"]
mod object_stores;
pub use object_stores::object_stores;

/// A storage parameter object for each store: (label, sasTokenParameters), each under a
/// fresh prefix.
pub fn destinations(file_dir: &std::path::Path) -> Vec<(&'static str, Value)> {
    let env = object_stores();
    let unique = uuid::Uuid::new_v4().simple().to_string();
    vec![
        (
            "file",
            json!({"storageResourceUri": format!("file://{}/{unique}", file_dir.display())}),
        ),
        (
            "azurite",
            json!({"storageResourceUri": format!("{}/{unique}", env["KEYSTEAD_TEST_AZURITE_URL"]), "useManagedIdentity": true}),
        ),
        (
            "s3",
            json!({
                "storageResourceUri": format!("s3://{}/{unique}", env["KEYSTEAD_TEST_S3_BUCKET"]),
                "storageOptions": {
                    "aws_endpoint": env["KEYSTEAD_TEST_S3_ENDPOINT"],
                    "aws_allow_http": "true",
                    "aws_access_key_id": "testing",
                    "aws_secret_access_key": "testing",
                    "aws_region": "us-east-1"
                }
            }),
        ),
    ]
}

/// Poll a job's status URL until it is no longer InProgress (deadline 120 s).
pub async fn wait_job(pool: &TestPool, subject: &str, pending_path: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (s, v) = pool
            .call(Some(subject), Method::GET, pending_path, None)
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        if v["status"] != "InProgress" {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "job {pending_path} still running: {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn pending_path(h: &reqwest::header::HeaderMap) -> String {
    let url = h["azure-asyncoperation"].to_str().unwrap();
    let u = url::Url::parse(url).unwrap();
    u.path().to_string()
}

/// Run a full backup to `params`; returns the final status.
pub async fn backup(pool: &TestPool, subject: &str, params: &Value) -> Value {
    let (s, h, v) = pool
        .call_full(Some(subject), Method::POST, "/backup", Some(params.clone()))
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    assert_eq!(v["status"], "InProgress");
    let st = wait_job(pool, subject, &pending_path(&h)).await;
    // The folder is named from the start (a lost job still says where it wrote).
    if st["status"] == "Succeeded" {
        assert_eq!(
            v["azureStorageBlobContainerUri"], st["azureStorageBlobContainerUri"],
            "the 202 answer names the final folder"
        );
    }
    st
}

/// Run a full restore (or a check with `/prerestore`) of `folder`; returns the final status.
pub async fn restore(pool: &TestPool, path: &str, params: &Value, folder: &str) -> Value {
    let (s, h, v) = pool
        .call_full(
            Some(ADMIN),
            Method::PUT,
            path,
            Some(json!({"sasTokenParameters": params, "folderToRestore": folder})),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    wait_job(pool, ADMIN, &pending_path(&h)).await
}

/// Selective restore of key `name` from `folder`.
pub async fn restore_key(pool: &TestPool, name: &str, params: &Value, folder: &str) -> Value {
    let (s, h, v) = pool
        .call_full(
            Some(ADMIN),
            Method::PUT,
            &format!("/keys/{name}/restore"),
            Some(json!({"sasTokenParameters": params, "folder": folder})),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    wait_job(pool, ADMIN, &pending_path(&h)).await
}

/// The folder name of a finished backup.
pub fn folder_of(status: &Value) -> String {
    assert_eq!(status["status"], "Succeeded", "{status}");
    let url = status["azureStorageBlobContainerUri"].as_str().unwrap();
    url.rsplit('/').next().unwrap().to_string()
}

pub async fn assign(pool: &TestPool, role: &str, principal: &str) -> String {
    pool.assign(principal, role, "/").await
}

pub async fn create_key(pool: &TestPool, name: &str, body: Value) -> Value {
    let (s, v) = pool
        .call(
            Some("user"),
            Method::POST,
            &format!("/keys/{name}/create"),
            Some(body),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v
}

pub fn digest(msg: &[u8]) -> String {
    keystead_core::b64::encode_url(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, msg))
}

/// Sign `digest` with key `kid_path` (`/keys/{name}/{version}`) and algorithm `alg`.
pub async fn sign(pool: &TestPool, kid_path: &str, alg: &str, digest: &str) -> String {
    let (s, v) = pool
        .call(
            Some("user"),
            Method::POST,
            &format!("{kid_path}/sign"),
            Some(json!({"alg": alg, "value": digest})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v["value"].as_str().unwrap().to_string()
}

pub async fn verify(pool: &TestPool, kid_path: &str, alg: &str, digest: &str, sig: &str) -> bool {
    let (s, v) = pool
        .call(
            Some("user"),
            Method::POST,
            &format!("{kid_path}/verify"),
            Some(json!({"alg": alg, "digest": digest, "value": sig})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v["value"] == true
}

/// Recover `pool` (fresh) with the security domain `file` and custodian keys 0 and 1.
pub async fn recover(pool: &TestPool, file: &str) {
    let (s, tk) = pool
        .call(Some(ADMIN), Method::GET, "/securitydomain/upload", None)
        .await;
    assert_eq!(s, StatusCode::OK, "{tk}");
    let exchange =
        ExchangeCertificate::from_transfer_key_json(tk["transfer_key"].as_str().unwrap()).unwrap();
    let keys: Vec<CustodianPrivateKey> = [0usize, 1]
        .iter()
        .map(|&i| CustodianPrivateKey::from_pem(&custodians()[i].1, None).unwrap())
        .collect();
    let blob = sd::build_transfer_blob(file, &keys, &exchange).unwrap();
    let (s, v) = pool
        .call(
            Some(ADMIN),
            Method::POST,
            "/securitydomain/upload",
            Some(json!({"value": blob})),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, v) = pool
            .call(
                Some(ADMIN),
                Method::GET,
                "/securitydomain/upload/pending",
                None,
            )
            .await;
        if v["status"] == "Success" {
            break;
        }
        assert_ne!(v["status"], "Failed", "{v}");
        assert!(Instant::now() < deadline, "upload still pending: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(pool.app.keyring.is_unsealed());
}

/// Open the filesystem store at `uri` (`file://…`) from the test.
pub fn file_store(uri: &str) -> keystead_partition::backup::dest::Destination {
    use keystead_partition::backup::dest;
    dest::open(
        &dest::StorageParameters {
            storage_resource_uri: uri.into(),
            ..Default::default()
        },
        &dest::LocalPaths::anywhere(),
    )
    .unwrap()
}

/// A key record shaped like a real EC P-256 key (key `i`, one version, `tags`); its wrapped
/// material is opaque bytes (backup and full restore never unwrap it).
pub fn ec_record(
    i: usize,
    tags: std::collections::BTreeMap<String, String>,
) -> keystead_partition::state::KeyRecord {
    use keystead_partition::state::{Attributes, KeyRecord, KeyVersion, WrappedBytes};
    let jwk: keystead_core::keys::JsonWebKey = serde_json::from_value(json!({
        "kty": "EC-HSM", "crv": "P-256",
        "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
        "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"
    }))
    .unwrap();
    KeyRecord {
        name: format!("key-{i:07}"),
        versions: vec![KeyVersion {
            version: format!("{:032x}", i as u128 * 7919 + 1),
            kty: "EC-HSM".into(),
            key_ops: vec!["sign".into(), "verify".into()],
            public_jwk: jwk,
            wrapped: WrappedBytes(vec![7u8; 180]),
            attributes: Attributes {
                enabled: true,
                nbf: None,
                exp: None,
                created: 1_700_000_000,
                updated: 1_700_000_000,
                exportable: false,
            },
            tags,
            release_policy: None,
        }]
        .into(),
        rotation_policy: None,
    }
}

/// A full backup of `keys` records of ~4 KiB each (15 tags of 250 bytes: ~40 MiB for 10,000
/// keys) made in the security domain `file` by a one-partition pool, written to a fresh
/// `file://` store: (the store's directory, its URI, the manifest). Its RBAC lets the local
/// administrator (Administrator and Crypto User) into the pool it is restored to.
pub async fn big_backup(
    file: &str,
    keys: usize,
) -> (
    tempfile::TempDir,
    String,
    keystead_partition::backup::format::Manifest,
) {
    use keystead_partition::state::Command;
    let src = TestPool::start().await;
    recover(&src, file).await;
    let admin = keystead_partition::local::ADMIN_SUBJECT;
    src.assign(admin, keystead_core::rbac::ADMINISTRATOR_ROLE_ID, "/")
        .await;
    src.assign(admin, keystead_core::rbac::CRYPTO_USER_ROLE_ID, "/")
        .await;
    let rbac = src.app.store.read().rbac.clone();
    let record = |i: usize| {
        let tags = (0..15)
            .map(|t| (format!("tag-{t:02}"), format!("{i:07}-{}", "v".repeat(240))))
            .collect();
        ec_record(i, tags)
    };
    src.app
        .store
        .propose(Command::RestoreAll {
            keys: (0..keys).map(record).collect(),
            deleted: vec![],
            rbac: Box::new(rbac),
        })
        .await
        .unwrap();
    let root = tempfile::tempdir().unwrap();
    let uri = format!("file://{}", root.path().display());
    let m = keystead_partition::backup::write_backup(&src.app, &file_store(&uri), false)
        .await
        .unwrap();
    (root, uri, m)
}
