//! The KMS v2 plugin's gRPC surface against a real local pool (three partition processes,
//! real TLS, a least-privileged token): round trips with an oct-HSM (A256KW) and an RSA-HSM
//! (RSA-OAEP-256) key; bad input (unknown key id, tampered ciphertext, oversized requests,
//! missing annotations) gets a clear error and never kills the plugin; the token file is
//! re-read when it changes; a dead endpoint is failed over; an unreachable pool makes Status
//! fail within the plugin's budget. The latency benchmark is `kms_bench.rs`.

use keystead_e2e::kms::{LocalPool, Plugin};
use keystead_e2e::steps::eventually;
use keystead_kms_plugin::plugin::ALG_ANNOTATION;
use keystead_kms_plugin::proto::{DecryptRequest, EncryptRequest, KeyManagementServiceClient};
use keystead_kms_plugin::tonic::Code;
use std::time::{Duration, Instant};

fn seed() -> Vec<u8> {
    (0..32u8)
        .map(|i| i.wrapping_mul(7).wrapping_add(3))
        .collect()
}

async fn round_trip(c: &mut KeyManagementServiceClient, alg: &str) -> (Vec<u8>, String) {
    // The first call of a fresh plugin opens its TLS connection; on a loaded machine that may
    // miss the plugin's budget once, as it may with the API server, which polls Status again.
    let status = eventually("Status answers", Duration::from_secs(30), || {
        let mut c = c.clone();
        async move { Ok(Some(c.status().await?)) }
    })
    .await
    .expect("Status");
    assert_eq!(
        (status.version.as_str(), status.healthz.as_str()),
        ("v2", "ok")
    );
    let enc = c
        .encrypt(EncryptRequest {
            plaintext: seed(),
            uid: "uid-1".into(),
        })
        .await
        .expect("Encrypt");
    assert_eq!(
        enc.key_id, status.key_id,
        "Encrypt uses the version Status names"
    );
    assert_eq!(
        enc.annotations.get(ALG_ANNOTATION).map(Vec::as_slice),
        Some(alg.as_bytes())
    );
    assert!(!enc.ciphertext.is_empty() && enc.ciphertext.len() < 1024);
    assert!(!enc.ciphertext.windows(32).any(|w| w == seed().as_slice()));
    let dec = c
        .decrypt(DecryptRequest {
            ciphertext: enc.ciphertext.clone(),
            uid: "uid-2".into(),
            key_id: enc.key_id.clone(),
            annotations: enc.annotations.clone(),
        })
        .await
        .expect("Decrypt");
    assert_eq!(dec.plaintext, seed());
    (enc.ciphertext, enc.key_id)
}

#[tokio::test]
async fn kms_plugin_grpc_surface_on_a_local_pool() {
    let tmp = tempfile::tempdir().unwrap();
    let pool = LocalPool::start(tmp.path(), "kek", "oct").await.unwrap();
    let args = Plugin::pool_args(&pool).unwrap();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut plugin = Plugin::start(tmp.path(), "oct", "kek", &args)
        .await
        .unwrap();
    let mut c = plugin.client().await.unwrap();

    let (ct, key_id) = round_trip(&mut c, "A256KW").await;
    let ann = std::collections::HashMap::from([(ALG_ANNOTATION.to_string(), b"A256KW".to_vec())]);
    let decrypt = |ciphertext: Vec<u8>, key_id: &str, annotations| DecryptRequest {
        ciphertext,
        uid: "bad".into(),
        key_id: key_id.into(),
        annotations,
    };

    // Unknown key ids: another key, a malformed id, a version the pool does not have.
    for bad in ["other/abc", "kek", "kek/../../x"] {
        let e = c
            .decrypt(decrypt(ct.clone(), bad, ann.clone()))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{bad}: {e:?}");
        assert!(e.message().contains("unknown key id"), "{}", e.message());
    }
    let e = c
        .decrypt(decrypt(
            ct.clone(),
            "kek/00000000000000000000000000000000",
            ann.clone(),
        ))
        .await
        .unwrap_err();
    assert!(
        matches!(e.code(), Code::NotFound | Code::InvalidArgument),
        "{e:?}"
    );

    // Tampered ciphertext: every byte position flipped is refused by the pool's integrity check.
    for i in [0, ct.len() / 2, ct.len() - 1] {
        let mut t = ct.clone();
        t[i] ^= 0x01;
        let e = c
            .decrypt(decrypt(t, &key_id, ann.clone()))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(
            e.message().contains("altered or made with another key"),
            "{}",
            e.message()
        );
        assert!(
            !e.message()
                .contains(&String::from_utf8_lossy(&seed()).to_string())
        );
    }
    let e = c
        .decrypt(decrypt(ct[..ct.len() - 8].to_vec(), &key_id, ann.clone()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");

    // Missing or foreign annotations.
    let e = c
        .decrypt(decrypt(ct.clone(), &key_id, Default::default()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains(ALG_ANNOTATION), "{}", e.message());
    let rsa1_5 =
        std::collections::HashMap::from([(ALG_ANNOTATION.to_string(), b"RSA1_5".to_vec())]);
    let e = c
        .decrypt(decrypt(ct.clone(), &key_id, rsa1_5))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);

    // Oversized: over the codec's limit (refused before the plugin sees it), over the DEK and
    // ciphertext limits, and a DEK A256KW cannot wrap.
    let e = c
        .encrypt(EncryptRequest {
            plaintext: vec![7; 100 * 1024],
            uid: "big".into(),
        })
        .await
        .unwrap_err();
    // tonic answers OutOfRange for a message over the decoding limit.
    assert!(
        matches!(e.code(), Code::OutOfRange | Code::ResourceExhausted),
        "{e:?}"
    );
    for (len, what) in [
        (0, "empty"),
        (520, "over 512 bytes"),
        (20, "not a multiple of 8"),
    ] {
        let e = c
            .encrypt(EncryptRequest {
                plaintext: vec![7; len],
                uid: "odd".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{what}: {e:?}");
    }
    let e = c
        .decrypt(decrypt(vec![1; 2000], &key_id, ann.clone()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = c
        .decrypt(decrypt(Vec::new(), &key_id, ann.clone()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);

    // Still serving after all of it.
    assert!(plugin.running(), "the plugin exited: {}", plugin.log_text());
    round_trip(&mut c, "A256KW").await;

    // Rotation: Status names the new version at once, Encrypt uses it, and what the old
    // version wrapped still decrypts with the old key id.
    let v2 = pool.rotate().unwrap();
    let (_, new_id) = round_trip(&mut c, "A256KW").await;
    assert_eq!(new_id, format!("kek/{v2}"));
    assert_ne!(new_id, key_id);
    let old = c
        .decrypt(decrypt(ct.clone(), &key_id, ann.clone()))
        .await
        .unwrap();
    assert_eq!(old.plaintext, seed());

    // The token file is read again when it changes: a principal without a role is refused,
    // the plugin's own token works again.
    let good = std::fs::read_to_string(&pool.token_file).unwrap();
    let stranger = pool.hsm(&["token", "--subject", "stranger"]).unwrap();
    std::fs::write(&pool.token_file, stranger.trim()).unwrap();
    let e = c.status().await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(
        e.message().contains("Managed HSM Crypto User"),
        "{}",
        e.message()
    );
    std::fs::write(&pool.token_file, &good).unwrap();
    round_trip(&mut c, "A256KW").await;

    // Nothing secret in the plugin's log: no token, no DEK.
    let log = plugin.log_text();
    assert!(
        !log.contains(good.trim()) && !log.contains(stranger.trim()),
        "a token in the log"
    );
    assert!(
        log.contains("Decrypt") && log.contains("failed"),
        "failures are logged: {log}"
    );

    // The pool unreachable (every partition stopped): Status fails with Unavailable within
    // the plugin's 2.5 s budget (the API server's KMS timeout is 3 s); back when it returns.
    pool.signal(&["p0", "p1", "p2"], "-STOP").unwrap();
    let start = Instant::now();
    let e = c.status().await.unwrap_err();
    let took = start.elapsed();
    pool.signal(&["p0", "p1", "p2"], "-CONT").unwrap();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(took < Duration::from_secs(3), "Status took {took:?}");
    assert!(
        e.message()
            .contains("no partition of the Keystead pool answered"),
        "{}",
        e.message()
    );
    eventually("Status healthy again", Duration::from_secs(60), || {
        let mut c = c.clone();
        async move { Ok(c.status().await.ok().filter(|s| s.healthz == "ok")) }
    })
    .await
    .unwrap();
}

/// An RSA-HSM key (RSA-OAEP-256), and failover: the first endpoint given is a closed port
/// and the second a stopped partition; the plugin still answers through the third.
#[tokio::test]
async fn kms_plugin_rsa_key_and_failover() {
    let tmp = tempfile::tempdir().unwrap();
    let pool = LocalPool::start(tmp.path(), "rsa-kek", "RSA")
        .await
        .unwrap();
    let p = pool.pool().unwrap();
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("https://127.0.0.1:{}", l.local_addr().unwrap().port())
    };
    let token = pool.token_file.display().to_string();
    let ca = p.ca_file.display().to_string();
    let args = [
        "--endpoint",
        &closed,
        "--endpoint",
        &p.endpoints[0],
        "--endpoint",
        &p.endpoints[1],
        "--endpoint",
        &p.endpoints[2],
        "--ca-file",
        &ca,
        "--token-file",
        &token,
        "--attempt-timeout",
        "2s",
        "--timeout",
        "8s",
    ];
    let plugin = Plugin::start(tmp.path(), "rsa", "rsa-kek", &args)
        .await
        .unwrap();
    let mut c = plugin.client().await.unwrap();
    let (ct, key_id) = round_trip(&mut c, "RSA-OAEP-256").await;

    pool.signal(&["p0"], "-STOP").unwrap();
    async {
        // The plugin prefers the endpoint that answered last (p0): the first call after p0
        // stopped waits for one attempt timeout, then goes on.
        for _ in 0..3 {
            round_trip(&mut c, "RSA-OAEP-256").await;
        }
        let mut t = ct.clone();
        t[10] ^= 0x80;
        let ann = std::collections::HashMap::from([(
            ALG_ANNOTATION.to_string(),
            b"RSA-OAEP-256".to_vec(),
        )]);
        let e = c
            .decrypt(DecryptRequest {
                ciphertext: t,
                uid: "t".into(),
                key_id,
                annotations: ann,
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    }
    .await;
    pool.signal(&["p0"], "-CONT").unwrap();

    // Moving to another pool key (here from RSA to oct): the new plugin encrypts with the new
    // key and still decrypts what the old one wrote when the old key is named with
    // --decrypt-key; without it, the old key id is refused with a message saying so.
    pool.hsm(&[
        "key",
        "create",
        "kek-new",
        "--kty",
        "oct",
        "--size",
        "256",
        "--op",
        "wrapKey",
        "--op",
        "unwrapKey",
    ])
    .unwrap();
    pool.grant_crypto_user(keystead_e2e::kms::PLUGIN_PRINCIPAL, "/keys/kek-new")
        .unwrap();
    let (old_ct, old_id) = round_trip(&mut c, "RSA-OAEP-256").await;
    let ann = |alg: &str| {
        std::collections::HashMap::from([(ALG_ANNOTATION.to_string(), alg.as_bytes().to_vec())])
    };
    let base: Vec<String> = Plugin::pool_args(&pool).unwrap();
    let mut moved_args: Vec<&str> = base.iter().map(String::as_str).collect();
    moved_args.extend(["--decrypt-key", "rsa-kek"]);
    let moved = Plugin::start(tmp.path(), "moved", "kek-new", &moved_args)
        .await
        .unwrap();
    let mut m = moved.client().await.unwrap();
    let (_, new_id) = round_trip(&mut m, "A256KW").await;
    assert!(new_id.starts_with("kek-new/"), "{new_id}");
    let dec = m
        .decrypt(DecryptRequest {
            ciphertext: old_ct.clone(),
            uid: "old".into(),
            key_id: old_id.clone(),
            annotations: ann("RSA-OAEP-256"),
        })
        .await
        .expect("the old key's ciphertext decrypts after the move");
    assert_eq!(dec.plaintext, seed());
    let plain_args: Vec<&str> = base.iter().map(String::as_str).collect();
    let strict = Plugin::start(tmp.path(), "strict", "kek-new", &plain_args)
        .await
        .unwrap();
    let mut s = strict.client().await.unwrap();
    let e = s
        .decrypt(DecryptRequest {
            ciphertext: old_ct,
            uid: "old".into(),
            key_id: old_id,
            annotations: ann("RSA-OAEP-256"),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("--decrypt-key"), "{}", e.message());
}
