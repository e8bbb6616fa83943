//! Disaster recovery on real servers: pool A with keys of every type, several versions,
//! tags, a soft-deleted key and role assignments is backed up to the filesystem, Azurite
//! (Azure Blob) and an S3-compatible server; A is destroyed; pool B is activated by
//! uploading A's security domain with a quorum of custodian keys and restored from each
//! store; everything is identical and pre-disaster signatures verify. A pool with another
//! domain refuses the backup and stays unchanged.

mod backup_util;
mod common;

use backup_util::*;
use common::{ADMIN, TestPool};
use reqwest::{Method, StatusCode};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disaster_recovery_through_every_store() {
    let file_root = tempfile::tempdir().unwrap();
    let stores = destinations(file_root.path());

    // --- Pool A ---------------------------------------------------------------------
    let a = TestPool::start().await;
    let domain_file = a.activate().await;
    assign(&a, CRYPTO_USER, "user").await;
    let backup_operator = assign(&a, BACKUP_ROLE, "backup-operator").await;
    let rsa1 = create_key(
        &a,
        "rsa",
        json!({"kty": "RSA-HSM", "key_size": 2048, "tags": {"team": "payments"}}),
    )
    .await;
    let rsa2 = create_key(&a, "rsa", json!({"kty": "RSA-HSM", "key_size": 3072})).await;
    let ec = create_key(
        &a,
        "ec",
        json!({"kty": "EC-HSM", "crv": "P-256", "attributes": {"exp": 4102444800i64}}),
    )
    .await;
    let ec384 = create_key(&a, "ec384", json!({"kty": "EC-HSM", "crv": "P-384"})).await;
    let k1 = create_key(&a, "ec-k", json!({"kty": "EC-HSM", "crv": "P-256K"})).await;
    create_key(
        &a,
        "aes",
        json!({"kty": "oct-HSM", "key_size": 256, "tags": {"use": "wrap"}}),
    )
    .await;
    create_key(&a, "gone", json!({"kty": "EC-HSM", "crv": "P-256"})).await;
    let (s, v) = a
        .call(Some("user"), Method::DELETE, "/keys/gone", None)
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    // Signatures made before the disaster, with old and current versions.
    let d = digest(b"signed before the disaster");
    let kid_path = |v: &serde_json::Value| {
        url::Url::parse(v["key"]["kid"].as_str().unwrap())
            .unwrap()
            .path()
            .to_string()
    };
    let mut signed = vec![];
    for (key, alg) in [
        (&rsa1, "RS256"),
        (&rsa2, "PS256"),
        (&ec, "ES256"),
        (&ec384, "ES384"),
        (&k1, "ES256K"),
    ] {
        let path = kid_path(key);
        let digest = if alg == "ES384" {
            keystead_core::b64::encode_url(aws_lc_rs::digest::digest(
                &aws_lc_rs::digest::SHA384,
                b"x",
            ))
        } else {
            d.clone()
        };
        let sig = sign(&a, &path, alg, &digest).await;
        signed.push((path, alg, digest, sig));
    }
    let before = a.app.store.read().clone();
    assert_eq!(before.keys["rsa"].versions.len(), 2);
    assert_eq!(before.deleted.len(), 1);

    // Full backups, one per store; the Backup role suffices.
    let mut folders = vec![];
    for (label, params) in &stores {
        let st = backup(&a, "backup-operator", params).await;
        assert_eq!(st["status"], "Succeeded", "{label}: {st}");
        assert!(st["endTime"].as_i64().unwrap() >= st["startTime"].as_i64().unwrap());
        folders.push(folder_of(&st));
    }
    // A caller without the Backup action is refused.
    let (s, _) = a
        .call(
            Some("user"),
            Method::POST,
            "/backup",
            Some(stores[0].1.clone()),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);

    // --- Disaster: pool A is destroyed entirely ---------------------------------------
    let dir = a.stop().await;
    drop(dir);

    // --- Pool B: recovered by security-domain upload, then restored from each store ---
    let b = TestPool::start().await;
    recover(&b, &domain_file).await;
    // Something B has that the backup does not: the restore replaces it.
    assign(&b, CRYPTO_USER, "user").await;
    create_key(&b, "stray", json!({"kty": "EC-HSM", "crv": "P-256"})).await;
    for ((label, params), folder) in stores.iter().zip(&folders) {
        // The check-only restore verifies and decrypts without changing anything.
        let st = restore(&b, "/prerestore", params, folder).await;
        assert_eq!(st["status"], "Succeeded", "{label}: {st}");
        let st = restore(&b, "/restore", params, folder).await;
        assert_eq!(st["status"], "Succeeded", "{label}: {st}");
        assert!(
            st["statusDetails"]
                .as_str()
                .unwrap()
                .contains("restore-point"),
            "{st}"
        );
        let after = b.app.store.read().clone();
        assert_eq!(
            after.keys, before.keys,
            "{label}: keys, versions, attributes, tags"
        );
        assert_eq!(after.deleted, before.deleted, "{label}: soft-deleted keys");
        assert_eq!(
            after.rbac, before.rbac,
            "{label}: role definitions and assignments"
        );
        assert!(after.rbac.assignments.contains_key(&backup_operator));
        assert!(!after.keys.contains_key("stray"));
        for (path, alg, digest, sig) in &signed {
            assert!(
                verify(&b, path, alg, digest, sig).await,
                "{label}: {path} {alg}"
            );
        }
        // The restored keys sign again.
        let path = &signed[0].0;
        let sig = sign(&b, path, "RS256", &d).await;
        assert!(verify(&b, path, "RS256", &d, &sig).await);
    }

    // --- Pool C with another security domain: refused, unchanged ---------------------
    let c = TestPool::start().await;
    c.activate().await;
    let fp_c = c.app.store.read().fingerprint().unwrap().to_string();
    let fp_a = before.fingerprint().unwrap().to_string();
    let c_before = c.app.store.read().clone();
    let st = restore(&c, "/restore", &stores[0].1, &folders[0]).await;
    assert_eq!(st["status"], "Failed", "{st}");
    assert_eq!(st["error"]["code"], "SecurityDomainMismatch");
    let msg = st["error"]["message"].as_str().unwrap();
    assert!(msg.contains(&fp_a) && msg.contains(&fp_c), "{msg}");
    assert_eq!(*c.app.store.read(), c_before);
    let _ = ADMIN;
}
