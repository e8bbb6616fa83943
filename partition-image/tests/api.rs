//! The data plane over real HTTPS: every route of the keys, security-domain and RBAC APIs,
//! and their errors.

mod common;

use common::{ADMIN, AUD, TestPool};
use keystead_core::b64;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

fn sha256(data: &[u8]) -> String {
    b64::encode_url(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data))
}

#[tokio::test]
async fn unauthenticated_requests_get_the_challenge_before_the_body_is_read() {
    let pool = TestPool::start().await;
    // No token, a nonsense route and a broken body: still the 401 challenge.
    let resp = pool
        .http()
        .post(format!("{}/keys/!!/create?api-version=7.5", pool.url))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let challenge = resp.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(challenge.starts_with("Bearer "), "{challenge}");
    assert!(
        challenge.contains("authorization=\"https://login.test/tenant\""),
        "{challenge}"
    );
    // The resource is the pool's own audience, never Azure's.
    assert!(
        challenge.contains(&format!("resource=\"{AUD}\"")),
        "{challenge}"
    );

    // A token of the trusted issuer minted for Azure's own Managed HSM is not for this pool.
    let azure = pool
        .issuer
        .issue(
            ADMIN,
            keystead_partition::config::AZURE_AUDIENCE,
            std::time::Duration::from_secs(60),
        )
        .unwrap();
    let resp = pool
        .http()
        .get(format!("{}/keys?api-version=7.5", pool.url))
        .bearer_auth(azure)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let body: Value = resp.json().await.unwrap();
    let msg = body["error"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("wrong audience") && msg.contains(AUD), "{msg}");

    // A token from another issuer is rejected with a reason.
    let other = keystead_partition::auth::LocalIssuer::load_or_create(
        &pool.dir.path().join("other-issuer"),
        "https://evil.test",
    )
    .unwrap();
    let t = other
        .issue(ADMIN, AUD, std::time::Duration::from_secs(60))
        .unwrap();
    let resp = pool
        .http()
        .get(format!("{}/keys", pool.url))
        .bearer_auth(t)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "Unauthorized");
}

#[tokio::test]
async fn a_pool_that_is_not_activated_refuses_key_operations_and_says_how_to_activate() {
    let pool = TestPool::start().await;
    let (s, v) = pool
        .call(
            Some(ADMIN),
            Method::POST,
            "/keys/k1/create",
            Some(json!({"kty": "EC-HSM", "crv": "P-256"})),
        )
        .await;
    // The administrator role does not carry keys/create; a crypto user does but the pool is not active.
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    let (s, v) = pool
        .call(Some(ADMIN), Method::GET, "/admin/status", None)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["activation"], "Provisioned");
    pool.assign("user1", "21dbd100-6940-42c2-9190-5d6cb909625b", "/")
        .await;
    let (s, v) = pool
        .call(
            Some("user1"),
            Method::POST,
            "/keys/k1/create",
            Some(json!({"kty": "EC-HSM", "crv": "P-256"})),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert_eq!(v["error"]["code"], "NotActivated");
    assert!(v["error"]["message"].as_str().unwrap().contains("download"));
}

const CRYPTO_USER: &str = "21dbd100-6940-42c2-9190-5d6cb909625b";
const CRYPTO_OFFICER: &str = "515eb02d-2335-4d2d-92f2-b1cbdf9c3778";

async fn active_pool() -> TestPool {
    let pool = TestPool::start().await;
    pool.activate().await;
    pool.assign("user", CRYPTO_USER, "/").await;
    pool.assign("officer", CRYPTO_OFFICER, "/").await;
    pool
}

#[tokio::test]
async fn key_lifecycle_over_the_api() {
    let pool = active_pool().await;
    let u = Some("user");
    // Create every key type.
    for (name, body) in [
        ("rsa2048", json!({"kty": "RSA-HSM", "key_size": 2048})),
        (
            "ec256",
            json!({"kty": "EC-HSM", "crv": "P-256", "tags": {"team": "pay"}}),
        ),
        ("ec256k", json!({"kty": "EC-HSM", "crv": "P-256K"})),
        ("aes256", json!({"kty": "oct-HSM", "key_size": 256})),
    ] {
        let (s, v) = pool
            .call(u, Method::POST, &format!("/keys/{name}/create"), Some(body))
            .await;
        assert_eq!(s, StatusCode::OK, "{name}: {v}");
        let kid = v["key"]["kid"].as_str().unwrap();
        assert!(
            kid.starts_with(&format!("{}/keys/{name}/", pool.url)),
            "{kid}"
        );
        assert!(
            v["key"].get("d").is_none() && v["key"].get("k").is_none(),
            "no private parts: {v}"
        );
        assert!(v["attributes"]["created"].is_i64());
        assert_eq!(v["attributes"]["recoverableDays"], 90);
    }
    // Get latest with the SDK's trailing slash, and by version.
    let (s, latest) = pool.call(u, Method::GET, "/keys/ec256/", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(latest["tags"]["team"], "pay");
    let version = latest["key"]["kid"]
        .as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_string();
    let (s, v) = pool
        .call(u, Method::GET, &format!("/keys/ec256/{version}"), None)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["key"]["x"], latest["key"]["x"]);
    // Unknown key and unknown version.
    let (s, v) = pool.call(u, Method::GET, "/keys/nope/", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(v["error"]["code"], "KeyNotFound");
    let (s, _) = pool.call(u, Method::GET, "/keys/ec256/0000", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // Paging: maxresults=3 over 4 keys gives an absolute nextLink.
    let (s, page1) = pool.call(u, Method::GET, "/keys?maxresults=3", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(page1["value"].as_array().unwrap().len(), 3);
    let next = page1["nextLink"].as_str().unwrap().to_string();
    assert!(next.starts_with(&pool.url), "{next}");
    let (s, page2) = pool
        .call(u, Method::GET, next.strip_prefix(&pool.url).unwrap(), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{page2}");
    assert_eq!(page2["value"].as_array().unwrap().len(), 1);
    assert!(page2.get("nextLink").is_none_or(|n| n.is_null()));
    let (s, v) = pool.call(u, Method::GET, "/keys?maxresults=26", None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");

    // Update: disable, tags; a disabled key refuses to sign.
    let (s, v) = pool
        .call(
            u,
            Method::PATCH,
            "/keys/ec256/",
            Some(json!({"attributes": {"enabled": false}, "tags": {"a": "b"}})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["attributes"]["enabled"], false);
    assert_eq!(v["tags"]["a"], "b");
    let (s, v) = pool
        .call(
            u,
            Method::POST,
            "/keys/ec256//sign",
            Some(json!({"alg": "ES256", "value": sha256(b"x")})),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");

    // Rotate: a new version, list versions shows both.
    let (s, v) = pool
        .call(u, Method::POST, "/keys/rsa2048/rotate", None)
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = pool
        .call(u, Method::GET, "/keys/rsa2048/versions", None)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["value"].as_array().unwrap().len(), 2);

    // Rotation policy: default, then set, then read back.
    let (s, v) = pool
        .call(u, Method::GET, "/keys/rsa2048/rotationpolicy", None)
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(
        v["id"]
            .as_str()
            .unwrap()
            .ends_with("/keys/rsa2048/rotationpolicy")
    );
    let (s, v) = pool
        .call(
            u,
            Method::PUT,
            "/keys/rsa2048/rotationpolicy",
            Some(json!({"lifetimeActions":[{"action":{"type":"Rotate"},"trigger":{"timeAfterCreate":"P90D"}}],"attributes":{"expiryTime":"P2Y"}})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["attributes"]["expiryTime"], "P2Y");
    assert!(v["attributes"]["created"].is_i64());
    let (s, v) = pool
        .call(u, Method::PUT, "/keys/rsa2048/rotationpolicy", Some(json!({"lifetimeActions":[{"action":{"type":"Rotate"},"trigger":{"timeAfterCreate":"90 days"}}]})))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");

    // Delete (soft), get/list deleted, recover, delete again and purge.
    let (s, v) = pool.call(u, Method::DELETE, "/keys/aes256", None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["recoveryId"], format!("{}/deletedkeys/aes256", pool.url));
    let deleted = v["deletedDate"].as_i64().unwrap();
    assert_eq!(
        v["scheduledPurgeDate"].as_i64().unwrap(),
        deleted + 90 * 86_400
    );
    let (s, _) = pool.call(u, Method::GET, "/keys/aes256/", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // Crypto User may not read deleted keys; the Crypto Officer may.
    let (s, v) = pool.call(u, Method::GET, "/deletedkeys/aes256", None).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("keys/deletedKeys/read/action")
    );
    let o = Some("officer");
    let (s, v) = pool.call(o, Method::GET, "/deletedkeys/aes256", None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = pool.call(o, Method::GET, "/deletedkeys", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["value"].as_array().unwrap().len(), 1);
    // The name is taken while soft-deleted.
    let (s, v) = pool
        .call(
            u,
            Method::POST,
            "/keys/aes256/create",
            Some(json!({"kty": "oct-HSM", "key_size": 128})),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    let (s, v) = pool
        .call(o, Method::POST, "/deletedkeys/aes256/recover", None)
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, _) = pool.call(u, Method::GET, "/keys/aes256/", None).await;
    assert_eq!(s, StatusCode::OK);
    pool.call(u, Method::DELETE, "/keys/aes256", None).await;
    let (s, _) = pool
        .call(o, Method::DELETE, "/deletedkeys/aes256", None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = pool.call(o, Method::GET, "/deletedkeys/aes256", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // Bad input.
    let (s, v) = pool
        .call(
            u,
            Method::POST,
            "/keys/bad_name/create",
            Some(json!({"kty": "EC-HSM"})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (s, v) = pool
        .call(
            u,
            Method::POST,
            "/keys/k9/create",
            Some(json!({"kty": "RSA-HSM", "key_size": 1024})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (s, v) = pool.call(u, Method::POST, "/keys/k9/create", None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (s, v) = pool.call(u, Method::GET, "/no/such/route", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
}

#[tokio::test]
async fn cryptographic_operations() {
    let pool = active_pool().await;
    let u = Some("user");
    pool.call(
        u,
        Method::POST,
        "/keys/r/create",
        Some(json!({"kty": "RSA-HSM", "key_size": 2048})),
    )
    .await;
    pool.call(
        u,
        Method::POST,
        "/keys/e/create",
        Some(json!({"kty": "EC-HSM", "crv": "P-384"})),
    )
    .await;
    pool.call(
        u,
        Method::POST,
        "/keys/a/create",
        Some(json!({"kty": "oct-HSM", "key_size": 256})),
    )
    .await;

    let sha384 =
        |d: &[u8]| b64::encode_url(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA384, d));
    for (key, alg, digest, other) in [
        ("r", "RS256", sha256(b"m"), sha256(b"other")),
        ("r", "PS256", sha256(b"m"), sha256(b"other")),
        ("e", "ES384", sha384(b"m"), sha384(b"other")),
    ] {
        let (s, v) = pool
            .call(
                u,
                Method::POST,
                &format!("/keys/{key}//sign"),
                Some(json!({"alg": alg, "value": digest})),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{alg}: {v}");
        let sig = v["value"].as_str().unwrap().to_string();
        let (s, v) = pool
            .call(
                u,
                Method::POST,
                &format!("/keys/{key}//verify"),
                Some(json!({"alg": alg, "digest": digest, "value": sig})),
            )
            .await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(v["value"], true, "{alg}");
        let (_, v) = pool
            .call(
                u,
                Method::POST,
                &format!("/keys/{key}//verify"),
                Some(json!({"alg": alg, "digest": other, "value": sig})),
            )
            .await;
        assert_eq!(v["value"], false, "{alg} must not verify another digest");
    }
    // Wrong digest length for the algorithm is a clear 400.
    let (s, v) = pool
        .call(
            u,
            Method::POST,
            "/keys/e//sign",
            Some(json!({"alg": "ES384", "value": sha256(b"m")})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");

    // RSA-OAEP-256 encrypt/decrypt and AES-GCM with a server-generated IV.
    let pt = b64::encode_url(b"attack at dawn");
    let (s, v) = pool
        .call(
            u,
            Method::POST,
            "/keys/r//encrypt",
            Some(json!({"alg": "RSA-OAEP-256", "value": pt})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = pool
        .call(
            u,
            Method::POST,
            "/keys/r//decrypt",
            Some(json!({"alg": "RSA-OAEP-256", "value": v["value"]})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["value"], pt);
    let (s, enc) = pool
        .call(
            u,
            Method::POST,
            "/keys/a//encrypt",
            Some(json!({"alg": "A256GCM", "value": pt})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{enc}");
    assert!(enc["iv"].is_string() && enc["tag"].is_string());
    let (s, v) = pool
        .call(u, Method::POST, "/keys/a//decrypt", Some(json!({"alg": "A256GCM", "value": enc["value"], "iv": enc["iv"], "tag": enc["tag"]})))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["value"], pt);
    // A tampered tag fails without detail.
    let mut tag = b64::decode_url(enc["tag"].as_str().unwrap()).unwrap();
    tag[0] ^= 1;
    let (s, v) = pool
        .call(u, Method::POST, "/keys/a//decrypt", Some(json!({"alg": "A256GCM", "value": enc["value"], "iv": enc["iv"], "tag": b64::encode_url(tag)})))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");

    // Wrap/unwrap with AES key wrap and RSA-OAEP.
    let cek = b64::encode_url([7u8; 32]);
    for (key, alg) in [("a", "A256KW"), ("r", "RSA-OAEP")] {
        let (s, w) = pool
            .call(
                u,
                Method::POST,
                &format!("/keys/{key}//wrapkey"),
                Some(json!({"alg": alg, "value": cek})),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{alg}: {w}");
        let (s, v) = pool
            .call(
                u,
                Method::POST,
                &format!("/keys/{key}//unwrapkey"),
                Some(json!({"alg": alg, "value": w["value"]})),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{alg}: {v}");
        assert_eq!(v["value"], cek);
    }
    // Random bytes.
    let (s, v) = pool
        .call(u, Method::POST, "/rng", Some(json!({"count": 32})))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        b64::decode_url(v["value"].as_str().unwrap()).unwrap().len(),
        32
    );
    // Release is a typed "not supported".
    let (s, v) = pool
        .call(
            u,
            Method::POST,
            "/keys/a//release",
            Some(json!({"target": "x"})),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_IMPLEMENTED, "{v}");
}

#[tokio::test]
async fn key_backup_restores_only_under_the_same_domain_and_rejects_tampering() {
    let pool = active_pool().await;
    let u = Some("user");
    pool.call(
        u,
        Method::POST,
        "/keys/b1/create",
        Some(json!({"kty": "EC-HSM", "crv": "P-256"})),
    )
    .await;
    pool.call(u, Method::POST, "/keys/b1/rotate", None).await;
    let (_, orig) = pool.call(u, Method::GET, "/keys/b1/", None).await;
    let (s, backup) = pool.call(u, Method::POST, "/keys/b1/backup", None).await;
    assert_eq!(s, StatusCode::OK, "{backup}");
    let blob = backup["value"].as_str().unwrap().to_string();

    // Restore over an existing key is refused.
    let (s, v) = pool
        .call(
            u,
            Method::POST,
            "/keys/restore",
            Some(json!({"value": blob})),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    // Delete and purge, then restore: both versions come back and sign.
    pool.call(u, Method::DELETE, "/keys/b1", None).await;
    pool.call(Some("officer"), Method::DELETE, "/deletedkeys/b1", None)
        .await;
    // A tampered blob is rejected and nothing is restored.
    let mut raw = b64::decode_url(&blob).unwrap();
    let last = raw.len() - 1;
    raw[last] ^= 1;
    let (s, v) = pool
        .call(
            u,
            Method::POST,
            "/keys/restore",
            Some(json!({"value": b64::encode_url(&raw)})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("integrity"),
        "{v}"
    );
    let (s, _) = pool.call(u, Method::GET, "/keys/b1/", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, v) = pool
        .call(
            u,
            Method::POST,
            "/keys/restore",
            Some(json!({"value": blob})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["key"]["x"], orig["key"]["x"]);
    let (_, versions) = pool.call(u, Method::GET, "/keys/b1/versions", None).await;
    assert_eq!(versions["value"].as_array().unwrap().len(), 2);
    let (s, _) = pool
        .call(
            u,
            Method::POST,
            "/keys/b1//sign",
            Some(json!({"alg": "ES256", "value": sha256(b"z")})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);

    // Another pool with another security domain refuses the blob, naming both domains.
    let other = active_pool().await;
    let (s, v) = other
        .call(
            u,
            Method::POST,
            "/keys/restore",
            Some(json!({"value": blob})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    let fp_a = pool.app.store.read().fingerprint().unwrap().to_string();
    let fp_b = other.app.store.read().fingerprint().unwrap().to_string();
    assert!(msg.contains(&fp_a) && msg.contains(&fp_b), "{msg}");
}

#[tokio::test]
async fn rbac_api_and_key_scoped_assignments() {
    let pool = active_pool().await;
    // Built-in definitions are listed.
    let (s, v) = pool
        .call(
            Some(ADMIN),
            Method::GET,
            "/providers/Microsoft.Authorization/roleDefinitions",
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(v["value"].as_array().unwrap().len() >= 9);
    // A principal with a role on one key only.
    pool.call(
        Some("user"),
        Method::POST,
        "/keys/mine/create",
        Some(json!({"kty": "EC-HSM", "crv": "P-256"})),
    )
    .await;
    pool.call(
        Some("user"),
        Method::POST,
        "/keys/theirs/create",
        Some(json!({"kty": "EC-HSM", "crv": "P-256"})),
    )
    .await;
    pool.assign("scoped", CRYPTO_USER, "/keys/mine").await;
    let (s, _) = pool
        .call(Some("scoped"), Method::GET, "/keys/mine/", None)
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, v) = pool
        .call(Some("scoped"), Method::GET, "/keys/theirs/", None)
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert_eq!(v["error"]["innererror"]["code"], "ForbiddenByRbac");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Microsoft.KeyVault/managedHsm/keys/read/action")
    );
    // Listing at /keys shows the key-scoped assignment; deleting it revokes access.
    let (s, v) = pool
        .call(
            Some(ADMIN),
            Method::GET,
            "/keys/mine/providers/Microsoft.Authorization/roleAssignments",
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let a = v["value"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["properties"]["principalId"] == "scoped")
        .unwrap()
        .clone();
    let name = a["name"].as_str().unwrap();
    let (s, v) = pool
        .call(
            Some(ADMIN),
            Method::DELETE,
            &format!("/keys/mine/providers/Microsoft.Authorization/roleAssignments/{name}"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, _) = pool
        .call(Some("scoped"), Method::GET, "/keys/mine/", None)
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    // A principal without any role cannot assign roles.
    let (s, v) = pool
        .call(
            Some("nobody"),
            Method::PUT,
            &format!(
                "/providers/Microsoft.Authorization/roleAssignments/{}",
                uuid::Uuid::new_v4()
            ),
            Some(json!({"properties": {"roleDefinitionId": CRYPTO_USER, "principalId": "nobody"}})),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
}

#[tokio::test]
async fn purge_protection_refuses_purge_before_the_date() {
    let pool = TestPool::start_with(common::Options {
        purge_protection: true,
        retention_days: 7,
        ..Default::default()
    })
    .await;
    pool.activate().await;
    pool.assign("user", CRYPTO_USER, "/").await;
    pool.assign("officer", CRYPTO_OFFICER, "/").await;
    pool.call(
        Some("user"),
        Method::POST,
        "/keys/p/create",
        Some(json!({"kty": "oct-HSM", "key_size": 128})),
    )
    .await;
    let (_, v) = pool
        .call(Some("user"), Method::DELETE, "/keys/p", None)
        .await;
    assert_eq!(v["attributes"]["recoveryLevel"], "CustomizedRecoverable");
    assert_eq!(v["attributes"]["recoverableDays"], 7);
    let (s, v) = pool
        .call(Some("officer"), Method::DELETE, "/deletedkeys/p", None)
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("purge protection")
    );
    let (s, _) = pool
        .call(Some("officer"), Method::GET, "/deletedkeys/p", None)
        .await;
    assert_eq!(s, StatusCode::OK, "the key is still there");
}

#[tokio::test]
async fn state_activation_and_keys_survive_a_restart() {
    let pool = active_pool().await;
    let (_, created) = pool
        .call(
            Some("user"),
            Method::POST,
            "/keys/keep/create",
            Some(json!({"kty": "EC-HSM", "crv": "P-256"})),
        )
        .await;
    let fp = pool.app.store.read().fingerprint().unwrap().to_string();
    let dir = pool.stop().await;
    let pool = TestPool::start_in(dir, common::Options::default()).await;
    assert_eq!(pool.app.store.read().fingerprint(), Some(fp.as_str()));
    let (s, v) = pool
        .call(Some("user"), Method::GET, "/keys/keep/", None)
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["key"]["x"], created["key"]["x"]);
    let (s, v) = pool
        .call(
            Some("user"),
            Method::POST,
            "/keys/keep//sign",
            Some(json!({"alg": "ES256", "value": sha256(b"q")})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    // No plaintext key material on disk: the data directory never contains the private scalar.
    let data = pool.dir.path().join("data");
    for entry in walk(&data) {
        let bytes = std::fs::read(&entry).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            !text.contains("\"d\":"),
            "{} holds a JWK private field",
            entry.display()
        );
    }
}

#[tokio::test]
async fn memory_only_seal_needs_the_domain_again_after_a_restart() {
    let pool = TestPool::start_with(common::Options {
        seal: false,
        ..Default::default()
    })
    .await;
    pool.activate().await;
    pool.assign("user", CRYPTO_USER, "/").await;
    let dir = pool.stop().await;
    let pool = TestPool::start_in(
        dir,
        common::Options {
            seal: false,
            ..Default::default()
        },
    )
    .await;
    let (s, v) = pool
        .call(
            Some("user"),
            Method::POST,
            "/keys/x/create",
            Some(json!({"kty": "EC-HSM", "crv": "P-256"})),
        )
        .await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert_eq!(v["error"]["code"], "PartitionSealed");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// The audit record of a failed request carries the Key Vault error code of its answer
/// (`errorCode`); a successful one carries none: no token (401), no such route (404), no role
/// granting the action (403).
#[tokio::test]
async fn audit_records_carry_the_error_code_of_a_failed_request() {
    let pool = TestPool::start().await;
    let cases: [(Option<&str>, &str); 3] = [
        (None, "/keys"),
        (Some(ADMIN), "/no-such-route"),
        (Some("nobody"), "/keys"),
    ];
    for (subject, path) in cases {
        let (status, headers, body) = pool.call_full(subject, Method::GET, path, None).await;
        assert!(status.is_client_error(), "{path}: {status} {body}");
        let code = body["error"]["code"].as_str().expect("an error code");
        let request_id = headers["x-ms-request-id"].to_str().unwrap().to_string();
        let record = audit_record(&pool, &request_id);
        assert_eq!(record["status"], status.as_u16(), "{record}");
        assert_eq!(record["errorCode"], code, "{path}: {record}");
    }
    let (status, headers, _) = pool
        .call_full(Some(ADMIN), Method::GET, "/admin/status", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let request_id = headers["x-ms-request-id"].to_str().unwrap().to_string();
    let record = audit_record(&pool, &request_id);
    assert!(record.get("errorCode").is_none(), "{record}");
}

/// The outcome record (not the intent) of request `request_id` in the pool's audit log.
fn audit_record(pool: &TestPool, request_id: &str) -> Value {
    std::fs::read_to_string(pool.app.audit.path())
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .rfind(|r| r["requestId"] == request_id && r.get("intent").is_none())
        .unwrap_or_else(|| panic!("no audit record of request {request_id}"))
}
