//! The security-domain lifecycle over the API: download, re-protection, recovery by upload
//! into a fresh partition, and the refusals.

mod common;

use common::{ADMIN, TestPool, custodians};
use keystead_core::sd::{self, CustodianPrivateKey, ExchangeCertificate};
use reqwest::{Method, StatusCode};
use serde_json::json;

const CRYPTO_USER: &str = "21dbd100-6940-42c2-9190-5d6cb909625b";

fn keys(idx: &[usize]) -> Vec<CustodianPrivateKey> {
    idx.iter()
        .map(|&i| CustodianPrivateKey::from_pem(&custodians()[i].1, None).unwrap())
        .collect()
}

#[tokio::test]
async fn download_validates_its_input_and_is_administrator_only() {
    let pool = TestPool::start().await;
    let jwks = pool.certificate_jwks(3);
    for (certs, required, needle) in [
        (jwks[..2].to_vec(), 2, "3 to 10"),
        (
            std::iter::repeat_n(jwks[0].clone(), 11).collect::<Vec<_>>(),
            2,
            "3 to 10",
        ),
        (jwks.clone(), 4, "quorum"),
        (jwks.clone(), 1, "quorum"),
        (
            vec![jwks[0].clone(), jwks[0].clone(), jwks[1].clone()],
            2,
            "more than once",
        ),
    ] {
        let (s, v) = pool
            .call(
                Some(ADMIN),
                Method::POST,
                "/securitydomain/download",
                Some(json!({"certificates": certs, "required": required})),
            )
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
        let msg = v["error"]["message"].as_str().unwrap().to_lowercase();
        assert!(msg.contains(needle), "{needle}: {msg}");
    }
    // Nothing changed.
    let (_, st) = pool
        .call(Some(ADMIN), Method::GET, "/admin/status", None)
        .await;
    assert_eq!(st["activation"], "Provisioned");
    // Not an administrator.
    let (s, v) = pool
        .call(
            Some("mallory"),
            Method::POST,
            "/securitydomain/download",
            Some(json!({"certificates": jwks, "required": 2})),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("securitydomain/download/action")
    );
}

#[tokio::test]
async fn download_activates_and_redownload_reprotects_the_same_domain() {
    let pool = TestPool::start().await;
    let (s, h, v) = pool
        .call_full(
            Some(ADMIN),
            Method::POST,
            "/securitydomain/download",
            Some(json!({"certificates": pool.certificate_jwks(3), "required": 2})),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let poll = h["azure-asyncoperation"].to_str().unwrap().to_string();
    assert_eq!(
        poll,
        format!("{}/securitydomain/download/pending", pool.url)
    );
    let file = v["value"].as_str().unwrap().to_string();
    let (s, v) = pool
        .call(
            Some(ADMIN),
            Method::GET,
            "/securitydomain/download/pending",
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["status"], "Success");
    let fp = sd::inspect_domain_file(&file).unwrap().fingerprint;
    assert_eq!(pool.app.store.read().fingerprint(), Some(fp.as_str()));
    // The file opens with any 2 of the 3 custodian keys and gives the pool's fingerprint.
    assert_eq!(
        sd::recover_domain(&file, &keys(&[0, 2]))
            .unwrap()
            .fingerprint(),
        fp
    );

    // Re-download with a different set (keys 1 and 2 plus a new one): same domain, new protection.
    let (new_cert, new_key) = sd::generate_custodian("newcomer", 2048, None).unwrap();
    let mut jwks = pool.certificate_jwks(3)[1..].to_vec();
    jwks.push(
        serde_json::to_value(
            sd::CustodianKey::from_pem(&new_cert)
                .unwrap()
                .to_jwk()
                .unwrap(),
        )
        .unwrap(),
    );
    let (s, v) = pool
        .call(
            Some(ADMIN),
            Method::POST,
            "/securitydomain/download",
            Some(json!({"certificates": jwks, "required": 3})),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let file2 = v["value"].as_str().unwrap().to_string();
    let summary = sd::inspect_domain_file(&file2).unwrap();
    assert_eq!(summary.fingerprint, fp);
    assert_eq!(summary.quorum, 3);
    let mut all = keys(&[1, 2]);
    all.push(CustodianPrivateKey::from_pem(&new_key, None).unwrap());
    assert_eq!(sd::recover_domain(&file2, &all).unwrap().fingerprint(), fp);
    // The old custodian 0 no longer matches a share of the new file.
    assert!(sd::recover_domain(&file2, &keys(&[0, 1, 2])).is_err());
    // The re-download is recorded pool-wide (who, when, under how many keys) and reported
    // by /admin/status, from which the operator raises a Warning Event; the activating
    // download is not counted.
    let (s, st) = pool
        .call(Some(ADMIN), Method::GET, "/admin/status", None)
        .await;
    assert_eq!(s, StatusCode::OK, "{st}");
    assert_eq!(st["securityDomainRedownloads"], 1, "{st}");
    let last = &st["lastSecurityDomainRedownload"];
    assert_eq!(last["principal"], ADMIN, "{st}");
    assert_eq!(last["wrappingKeys"], 3, "{st}");
    assert_eq!(last["quorum"], 3, "{st}");
    assert!(last["time"].as_i64().unwrap() > 1_700_000_000, "{st}");
}

/// `securityDomainRedownload: refused` (opt-in): the activating download works, any later
/// download is refused with 403 saying why, and nothing is recorded as handed out.
#[tokio::test]
async fn a_pool_that_refuses_redownload_hands_out_its_domain_once() {
    let pool = TestPool::start_with(common::Options {
        security_domain_redownload: keystead_partition::config::RedownloadPolicy::Refused,
        ..Default::default()
    })
    .await;
    let body = json!({"certificates": pool.certificate_jwks(3), "required": 2});
    let (s, v) = pool
        .call(
            Some(ADMIN),
            Method::POST,
            "/securitydomain/download",
            Some(body.clone()),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let (s, v) = pool
        .call(
            Some(ADMIN),
            Method::POST,
            "/securitydomain/download",
            Some(body),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert_eq!(v["error"]["code"], "RedownloadRefused", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("securityDomainRedownload"),
        "{v}"
    );
    assert!(v.get("value").is_none(), "no domain file in a refusal: {v}");
    let (_, st) = pool
        .call(Some(ADMIN), Method::GET, "/admin/status", None)
        .await;
    assert_eq!(st["securityDomainRedownloads"], 0, "{st}");
}

#[tokio::test]
async fn recovery_by_upload_into_a_fresh_partition_keeps_the_domain_and_its_keys() {
    // Pool A: activate, create a key, back it up.
    let a = TestPool::start().await;
    let file = a.activate().await;
    a.assign("user", CRYPTO_USER, "/").await;
    let (s, created) = a
        .call(
            Some("user"),
            Method::POST,
            "/keys/k/create",
            Some(json!({"kty": "EC-HSM", "crv": "P-256"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{created}");
    let (_, backup) = a
        .call(Some("user"), Method::POST, "/keys/k/backup", None)
        .await;
    let fp_a = a.app.store.read().fingerprint().unwrap().to_string();

    // Pool B: a fresh partition.
    let b = TestPool::start().await;
    // Upload without an exchange key is refused and says what to do.
    let (s, v) = b
        .call(
            Some(ADMIN),
            Method::POST,
            "/securitydomain/upload",
            Some(json!({"value": "{}"})),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    let (s, tk) = b
        .call(Some(ADMIN), Method::GET, "/securitydomain/upload", None)
        .await;
    assert_eq!(s, StatusCode::OK, "{tk}");
    assert_eq!(tk["key_format"], "jwk");
    let transfer_key = tk["transfer_key"]
        .as_str()
        .expect("transfer_key is a JSON string");
    let jwk: serde_json::Value = serde_json::from_str(transfer_key).unwrap();
    assert!(jwk["x5c"][0].is_string());
    let (_, st) = b
        .call(Some(ADMIN), Method::GET, "/admin/status", None)
        .await;
    assert_eq!(st["activation"], "RecoveryPending");
    // Asking again gives the same exchange key (idempotent).
    let (_, tk2) = b
        .call(Some(ADMIN), Method::GET, "/securitydomain/upload", None)
        .await;
    assert_eq!(tk2["transfer_key"], tk["transfer_key"]);

    // Custodians, offline: build the transfer blob with 2 of 3 keys.
    let exchange = ExchangeCertificate::from_transfer_key_json(transfer_key).unwrap();
    let blob = sd::build_transfer_blob(&file, &keys(&[0, 1]), &exchange).unwrap();

    // A blob for another exchange key is rejected, and B stays unactivated.
    let other_pool = TestPool::start().await;
    let (_, tk_other) = other_pool
        .call(Some(ADMIN), Method::GET, "/securitydomain/upload", None)
        .await;
    let other_exchange =
        ExchangeCertificate::from_transfer_key_json(tk_other["transfer_key"].as_str().unwrap())
            .unwrap();
    let wrong = sd::build_transfer_blob(&file, &keys(&[0, 1]), &other_exchange).unwrap();
    let (s, v) = b
        .call(
            Some(ADMIN),
            Method::POST,
            "/securitydomain/upload",
            Some(json!({"value": wrong})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (_, st) = b
        .call(Some(ADMIN), Method::GET, "/admin/status", None)
        .await;
    assert_eq!(st["activation"], "RecoveryPending");
    // A tampered blob is rejected.
    let mut tampered: serde_json::Value = serde_json::from_str(&blob).unwrap();
    let ct = tampered["ciphertext"].as_str().unwrap().to_string();
    let mut raw = keystead_core::b64::decode_url(&ct).unwrap();
    raw[0] ^= 1;
    tampered["ciphertext"] = json!(keystead_core::b64::encode_url(raw));
    let (s, v) = b
        .call(
            Some(ADMIN),
            Method::POST,
            "/securitydomain/upload",
            Some(json!({"value": tampered.to_string()})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");

    // The right blob activates B with A's domain.
    let (s, h, v) = b
        .call_full(
            Some(ADMIN),
            Method::POST,
            "/securitydomain/upload",
            Some(json!({"value": blob})),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    assert!(
        h["azure-asyncoperation"]
            .to_str()
            .unwrap()
            .ends_with("/securitydomain/upload/pending")
    );
    let (_, v) = b
        .call(
            Some(ADMIN),
            Method::GET,
            "/securitydomain/upload/pending",
            None,
        )
        .await;
    assert_eq!(v["status"], "Success");
    assert_eq!(b.app.store.read().fingerprint(), Some(fp_a.as_str()));
    // Single use: the same blob again is refused (the pool is active now).
    let (s, _) = b
        .call(
            Some(ADMIN),
            Method::POST,
            "/securitydomain/upload",
            Some(json!({"value": blob})),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    let (s, _) = b
        .call(Some(ADMIN), Method::GET, "/securitydomain/upload", None)
        .await;
    assert_eq!(
        s,
        StatusCode::CONFLICT,
        "no exchange key for an activated pool"
    );

    // A's key backup restores into B and signs; the signature verifies against A's public key.
    b.assign("user", CRYPTO_USER, "/").await;
    let (s, v) = b
        .call(
            Some("user"),
            Method::POST,
            "/keys/restore",
            Some(json!({"value": backup["value"]})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["key"]["x"], created["key"]["x"]);
    let digest = keystead_core::b64::encode_url(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        b"hello",
    ));
    let (_, sig) = b
        .call(
            Some("user"),
            Method::POST,
            "/keys/k//sign",
            Some(json!({"alg": "ES256", "value": digest})),
        )
        .await;
    let (_, ok) = a
        .call(
            Some("user"),
            Method::POST,
            "/keys/k//verify",
            Some(json!({"alg": "ES256", "digest": digest, "value": sig["value"]})),
        )
        .await;
    assert_eq!(ok["value"], true);
}
