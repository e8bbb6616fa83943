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
    assign(c, CRYPTO_USER_ROLE_ID, ADMIN_SUBJECT).await;
    for i in 0..cluster::N {
        c.until("every partition holds the domain", 60, || {
            c.domain_loaded(i)
        })
        .await;
    }
}

/// Assign a built-in role at `/` to `principal` (as the administrator, through partition 0).
async fn assign(c: &Cluster, role: &str, principal: &str) {
    let (s, v) = c
        .call(
            0,
            Method::PUT,
            &format!(
                "/providers/Microsoft.Authorization/roleAssignments/{}",
                uuid::Uuid::new_v4()
            ),
            Some(json!({"properties": {
                "roleDefinitionId": format!("Microsoft.KeyVault/providers/Microsoft.Authorization/roleDefinitions/{role}"),
                "principalId": principal,
            }})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
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
