//! Regression tests of the security review (issue 11, "Also found"), each on a pool of real
//! `keystead-partition serve` processes with real TLS: every test failed before its fix.

mod cluster;
mod common;

use cluster::Cluster;
use keystead_core::b64;
use keystead_core::rbac::CRYPTO_USER_ROLE_ID;
use keystead_partition::local::ADMIN_SUBJECT;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// A pool formed and activated through partition 0; the administrator is also Crypto User.
async fn pool() -> Cluster {
    let c = Cluster::start().await;
    activate_through_0(&c).await;
    c
}

/// Activate through partition 0 only (partition 1 may be unable to take changes).
async fn activate_through_0(c: &Cluster) {
    c.leader(&[0, 1, 2]).await;
    c.domain_file().await;
    c.assign_role(0, CRYPTO_USER_ROLE_ID, ADMIN_SUBJECT).await;
    for i in 0..cluster::N {
        c.until("every partition holds the domain", 60, || {
            c.domain_loaded(i)
        })
        .await;
    }
}

fn message(v: &Value) -> &str {
    v["error"]["message"].as_str().unwrap_or_default()
}

// ---------------------------------------------------------------------------------------
// 1. AES-GCM: the pool always makes the IV.
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcm_encrypt_refuses_a_caller_iv_and_makes_a_fresh_one() {
    let c = pool().await;
    let (s, v) = c
        .call(
            0,
            Method::POST,
            "/keys/gcm/create",
            Some(json!({"kty": "oct-HSM", "key_size": 256})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let iv = b64::encode_url([7u8; 12]);
    let encrypt = |body: Value| c.call(0, Method::POST, "/keys/gcm//encrypt", Some(body));
    let (s, v) =
        encrypt(json!({"alg": "A256GCM", "value": b64::encode_url(b"attack at dawn"), "iv": iv}))
            .await;
    assert_eq!(
        s,
        StatusCode::BAD_REQUEST,
        "a caller-chosen AES-GCM IV was accepted: {v}"
    );
    assert_eq!(v["error"]["code"], "BadParameter", "{v}");
    assert!(
        message(&v).contains("omit iv"),
        "the error says what to do: {v}"
    );
    // Without an iv: a fresh 12-byte IV each time, and decrypt takes it back.
    let plain = b64::encode_url(b"attack at dawn");
    let (s, a) = encrypt(json!({"alg": "A256GCM", "value": plain})).await;
    assert_eq!(s, StatusCode::OK, "{a}");
    let (_, b) = encrypt(json!({"alg": "A256GCM", "value": plain})).await;
    assert_ne!(a["iv"], b["iv"], "a fresh IV per encryption");
    assert_eq!(
        b64::decode_url(a["iv"].as_str().unwrap()).unwrap().len(),
        12
    );
    let (s, d) = c
        .call(
            0,
            Method::POST,
            "/keys/gcm//decrypt",
            Some(json!({"alg": "A256GCM", "value": a["value"], "iv": a["iv"], "tag": a["tag"]})),
        )
        .await;
    assert_eq!((s, &d["value"]), (StatusCode::OK, &json!(plain)), "{d}");
}

// ---------------------------------------------------------------------------------------
// 3. URI length, audit record size, audit write failures.
// ---------------------------------------------------------------------------------------

/// An HTTP/1.1 client trusting the pool's CA (the Host header and a long request line are
/// HTTP/1.1 matters; over HTTP/2 the server's header-list limit answers 431 first).
fn http1(c: &Cluster) -> reqwest::Client {
    let ca = std::fs::read(c.dir.join("ca.pem")).unwrap();
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .http1_only()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

fn audit_len(c: &Cluster, i: usize) -> u64 {
    std::fs::metadata(c.cfgs[i].audit_file())
        .map(|m| m.len())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_uris_get_414_and_audit_records_keep_a_bounded_path() {
    let c = Cluster::start().await;
    c.leader(&[0, 1, 2]).await;
    let http = http1(&c);
    let long = format!("{}/keys/{}", c.url(0), "a".repeat(60_000));
    let before = audit_len(&c, 0);
    for _ in 0..20 {
        let r = http.get(&long).send().await.unwrap();
        let status = r.status();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        assert_eq!(
            status,
            StatusCode::URI_TOO_LONG,
            "a 60 KB URI was not refused: {v}"
        );
        assert_eq!(v["error"]["code"], "UriTooLong", "{v}");
        assert!(message(&v).contains("8192"), "{v}");
    }
    let grown = audit_len(&c, 0) - before;
    assert!(
        grown < 20 * 2048,
        "20 refused requests grew the audit log by {grown} bytes"
    );
    // Authenticated: the same.
    let r = http
        .get(&long)
        .bearer_auth(c.token_for(ADMIN_SUBJECT))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::URI_TOO_LONG);
    // Under the URI cap but long: served (401 without a token), its path cut in the record.
    let r = http
        .get(format!("{}/keys/{}", c.url(0), "b".repeat(4000)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let records = c.audit_records(0);
    let last = records.last().unwrap();
    let path = last["path"].as_str().unwrap();
    assert!(
        path.len() <= 1100 && path.contains("[truncated"),
        "{} bytes kept: {}",
        path.len(),
        &path[..80]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_is_refused_and_not_applied_when_its_audit_record_cannot_be_written() {
    // Partition 1 writes its audit log to a device that is always full.
    let c = Cluster::start_with(|i, cfg| {
        if i == 1 {
            cfg.audit.file = Some("/dev/full".into());
        }
    })
    .await;
    activate_through_0(&c).await;
    let ec = json!({"kty": "EC", "crv": "P-256"});
    let (s, v) = c
        .call(1, Method::POST, "/keys/unaudited/create", Some(ec.clone()))
        .await;
    assert_eq!(
        s,
        StatusCode::SERVICE_UNAVAILABLE,
        "a change was made without its audit record: {v}"
    );
    assert_eq!(v["error"]["code"], "AuditLogUnavailable", "{v}");
    assert!(message(&v).contains("nothing was changed"), "{v}");
    // Nothing was applied: a later change through partition 0 is visible everywhere, the
    // refused one nowhere.
    c.create(0, "audited")
        .await
        .expect("create through partition 0");
    c.until("partition 1 applies the later create", 30, || async {
        c.key_identity(1, "audited").await.is_some()
    })
    .await;
    for i in 0..cluster::N {
        assert!(c.key_identity(i, "unaudited").await.is_none());
    }
    // Reads and cryptographic operations stay available (docs/audit.md), and are counted.
    assert_eq!(c.sign(1, "audited").await, StatusCode::OK);
    assert!(
        c.metric(1, "keystead_audit_write_failures_total")
            .await
            .is_some_and(|n| n >= 2.0)
    );
    assert_eq!(
        c.metric(0, "keystead_audit_write_failures_total").await,
        Some(0.0)
    );
}

// ---------------------------------------------------------------------------------------
// 4. Rotation-policy durations.
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_policy_durations_are_bounded_when_set() {
    let c = pool().await;
    c.create(0, "rot").await.unwrap();
    let put = |body: Value| c.call(0, Method::PUT, "/keys/rot/rotationpolicy", Some(body));
    let (s, v) =
        put(json!({"lifetimeActions": [], "attributes": {"expiryTime": "PT9223372036854775807S"}}))
            .await;
    assert_eq!(
        s,
        StatusCode::BAD_REQUEST,
        "an overflowing expiryTime was accepted: {v}"
    );
    assert!(
        message(&v).contains("attributes.expiryTime") && message(&v).contains("P28D"),
        "{v}"
    );
    let (s, v) = put(json!({"lifetimeActions": [{"trigger": {"timeAfterCreate": "P99999999999999D"}, "action": {"type": "Rotate"}}]})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(
        message(&v).contains("lifetimeActions[0].trigger.timeAfterCreate"),
        "{v}"
    );
    // A sane policy: the rotated version expires expiryTime after its creation.
    let (s, v) = put(json!({"lifetimeActions": [{"trigger": {"timeAfterCreate": "P90D"}, "action": {"type": "Rotate"}}], "attributes": {"expiryTime": "P2Y"}})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = c.call(0, Method::POST, "/keys/rot/rotate", None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let a = &v["attributes"];
    assert_eq!(
        a["exp"].as_i64().unwrap() - a["created"].as_i64().unwrap(),
        2 * 365 * 86_400,
        "{v}"
    );
}

// ---------------------------------------------------------------------------------------
// 6. /admin/status needs a data action.
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_status_is_for_administrators_only() {
    let c = pool().await;
    c.assign_role(0, CRYPTO_USER_ROLE_ID, "app").await;
    for who in ["nobody", "app"] {
        let (s, v) = c
            .call_as(&c.token_for(who), 0, Method::GET, "/admin/status", None)
            .await;
        assert_eq!(
            s,
            StatusCode::FORBIDDEN,
            "{who} read the pool's status: {v}"
        );
        assert!(message(&v).contains("securitydomain/download/read"), "{v}");
    }
    // The administrator (the operator's principal is one: docs/operator.md) still reads it.
    assert!(c.status(0).await.is_some());
}

// ---------------------------------------------------------------------------------------
// 7. POST /backup/delete deletes only what this pool can prove is its own.
// ---------------------------------------------------------------------------------------

async fn delete_folder(c: &Cluster, i: usize, params: &Value, body: Value) -> (StatusCode, Value) {
    let mut body = body;
    body["sasTokenParameters"] = params.clone();
    c.call(i, Method::POST, "/backup/delete", Some(body)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_delete_needs_a_verified_manifest_or_an_unfinished_job_of_this_pool() {
    let c = pool().await;
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    std::fs::create_dir_all(&store).unwrap();
    let params = json!({"storageResourceUri": format!("file://{}", store.display())});

    // A folder holding only a chunk: nothing proves it is this pool's.
    let planted = store.join("pool-planted");
    std::fs::create_dir_all(&planted).unwrap();
    std::fs::write(planted.join("chunk-00000.bin"), b"not ours").unwrap();
    let (s, v) = delete_folder(&c, 0, &params, json!({"folder": "pool-planted"})).await;
    assert_eq!(
        s,
        StatusCode::CONFLICT,
        "a folder without a manifest was deleted: {v}"
    );
    assert!(message(&v).contains("jobId"), "{v}");
    assert!(planted.join("chunk-00000.bin").is_file());

    // A backup job of this pool that did not finish names its folder: with its job id the
    // leftovers go (through any partition), with another job id they stay.
    let mut body = params.clone();
    body["keyName"] = json!("no-such-key");
    let (s, st) = c.call(0, Method::POST, "/backup", Some(body)).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{st}");
    let job = st["jobId"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    let st = loop {
        let (_, st) = c
            .call(0, Method::GET, &format!("/backup/{job}/pending"), None)
            .await;
        if st["status"] != "InProgress" {
            break st;
        }
        assert!(Instant::now() < deadline, "the job does not end: {st}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(st["status"], "Failed", "{st}");
    let url = st["azureStorageBlobContainerUri"].as_str().unwrap();
    let folder = url.rsplit('/').next().unwrap().to_string();
    std::fs::create_dir_all(store.join(&folder)).unwrap();
    std::fs::write(store.join(&folder).join("chunk-00000.bin"), b"leftover").unwrap();
    let other = uuid::Uuid::new_v4().simple().to_string();
    let (s, v) = delete_folder(&c, 0, &params, json!({"folder": folder, "jobId": other})).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    let (s, v) = delete_folder(
        &c,
        0,
        &params,
        json!({"folder": "pool-planted", "jobId": job}),
    )
    .await;
    assert_eq!(
        s,
        StatusCode::CONFLICT,
        "another folder than the job's: {v}"
    );
    assert!(planted.join("chunk-00000.bin").is_file());
    let (s, v) = delete_folder(&c, 1, &params, json!({"folder": folder, "jobId": job})).await;
    assert_eq!(
        (s, v["deletedObjects"].as_u64()),
        (StatusCode::OK, Some(1)),
        "{v}"
    );
    assert!(!store.join(&folder).exists());
}

// ---------------------------------------------------------------------------------------
// 8. The Host header is not reflected.
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn urls_in_answers_use_the_public_url_not_the_host_header() {
    let c = pool().await;
    let http1 = http1(&c);
    let token = c.token_for(ADMIN_SUBJECT);
    let public = c.url(0).to_string();
    let evil = "attacker.example:443";
    let send = |method: Method, path: &str, body: Option<Value>| {
        let mut r = http1
            .request(method, format!("{public}{path}"))
            .header("host", evil)
            .bearer_auth(&token);
        if let Some(b) = body {
            r = r.json(&b);
        }
        r.send()
    };
    for name in ["h1", "h2"] {
        let r = send(
            Method::POST,
            &format!("/keys/{name}/create?api-version=7.5"),
            Some(json!({"kty": "EC", "crv": "P-256"})),
        )
        .await
        .unwrap();
        let v: Value = r.json().await.unwrap();
        let kid = v["key"]["kid"].as_str().unwrap_or_default();
        assert!(
            kid.starts_with(&format!("{public}/keys/{name}/")),
            "the kid follows the Host header: {kid}"
        );
    }
    let r = send(Method::GET, "/keys?api-version=7.5&maxresults=1", None)
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    let next = v["nextLink"].as_str().unwrap_or_default();
    assert!(next.starts_with(&format!("{public}/keys?")), "{next}");
    let r = send(
        Method::POST,
        "/securitydomain/download?api-version=7.5",
        Some(json!({"certificates": cluster::custodian_jwks(), "required": 2})),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let op = r.headers()["azure-asyncoperation"].to_str().unwrap();
    assert!(
        op.starts_with(&format!("{public}/securitydomain/download/pending")),
        "{op}"
    );
}

// ---------------------------------------------------------------------------------------
// 9. Deleted and purged key material leaves every partition's memory.
// ---------------------------------------------------------------------------------------

async fn all_forget(c: &Cluster, what: &str) {
    for i in 0..cluster::N {
        c.until(
            &format!("partition {i} drops the cached key material after {what}"),
            15,
            || async { c.metric(i, "keystead_keyring_cached_versions").await == Some(0.0) },
        )
        .await;
    }
}

async fn all_sign(c: &Cluster, name: &str) {
    for i in 0..cluster::N {
        c.until(&format!("partition {i} signs with {name}"), 30, || async {
            c.sign(i, name).await == StatusCode::OK
        })
        .await;
        assert!(
            c.metric(i, "keystead_keyring_cached_versions")
                .await
                .is_some_and(|n| n >= 1.0)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_and_purge_evict_the_key_from_every_partition() {
    let c = pool().await;
    // Recover and purge are Crypto Officer actions.
    c.assign_role(
        0,
        keystead_core::rbac::CRYPTO_OFFICER_ROLE_ID,
        ADMIN_SUBJECT,
    )
    .await;
    c.create(0, "doomed").await.unwrap();
    all_sign(&c, "doomed").await;
    let (s, v) = c.call(0, Method::DELETE, "/keys/doomed", None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    all_forget(&c, "the delete").await;
    let (s, v) = c
        .call(0, Method::POST, "/deletedkeys/doomed/recover", None)
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    all_sign(&c, "doomed").await;
    let (s, v) = c.call(0, Method::DELETE, "/keys/doomed", None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = c.call(0, Method::DELETE, "/deletedkeys/doomed", None).await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
    all_forget(&c, "the purge").await;
}
