//! Encrypt/Decrypt latency through the KMS plugin against a local pool, beside the same
//! wrapkey/unwrapkey sent to the pool directly over HTTPS (what the plugin adds), for
//! docs/benchmarks.md. Ignored (run on demand):
//! `cargo build --workspace --bins && cargo test -p keystead-e2e --test kms_bench -- --ignored
//! --nocapture` (`KMS_BENCH_N`, default 1000 calls of each).

use keystead_core::keys::{Base64Url, KeyOperationResult, KeyOperationsParameters};
use keystead_e2e::kms::{LocalPool, Plugin};
use keystead_kms_plugin::proto::{DecryptRequest, EncryptRequest};
use std::time::{Duration, Instant};

fn report(label: &str, mut v: Vec<Duration>) {
    v.sort();
    let q = |p: f64| v[((v.len() as f64 * p) as usize).min(v.len() - 1)].as_secs_f64() * 1e3;
    println!(
        "{label}: n={} p50={:.2} ms p99={:.2} ms max={:.2} ms",
        v.len(),
        q(0.50),
        q(0.99),
        q(1.0)
    );
}

#[tokio::test]
#[ignore = "benchmark: run on demand (docs/benchmarks.md)"]
async fn kms_latency() {
    let tmp = tempfile::tempdir().unwrap();
    let n: usize = std::env::var("KMS_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let seed = vec![0x5a_u8; 32];
    for (kty, key, alg) in [("oct", "kek", "A256KW"), ("RSA", "rsa-kek", "RSA-OAEP-256")] {
        let dir = tmp.path().join(kty);
        let pool = LocalPool::start(&dir, key, kty).await.unwrap();
        let args = Plugin::pool_args(&pool).unwrap();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let plugin = Plugin::start(&dir, kty, key, &args).await.unwrap();
        let mut c = plugin.client().await.unwrap();
        let first = Instant::now();
        c.status().await.unwrap();
        println!(
            "{alg} first Status (new connection, TLS): {:?}",
            first.elapsed()
        );

        let (mut enc, mut dec) = (Vec::with_capacity(n), Vec::with_capacity(n));
        let mut last = None;
        for i in 0..n {
            let t = Instant::now();
            let r = c
                .encrypt(EncryptRequest {
                    plaintext: seed.clone(),
                    uid: format!("b{i}"),
                })
                .await
                .unwrap();
            enc.push(t.elapsed());
            let t = Instant::now();
            let d = c
                .decrypt(DecryptRequest {
                    ciphertext: r.ciphertext.clone(),
                    uid: format!("b{i}"),
                    key_id: r.key_id.clone(),
                    annotations: r.annotations.clone(),
                })
                .await
                .unwrap();
            dec.push(t.elapsed());
            assert_eq!(d.plaintext, seed);
            last = Some(r);
        }
        report(&format!("{alg} plugin Encrypt"), enc);
        report(&format!("{alg} plugin Decrypt"), dec);

        // The same calls straight to one partition (one keep-alive connection).
        let p = pool.pool().unwrap();
        let ca = std::fs::read(&p.ca_file).unwrap();
        let http = reqwest::Client::builder()
            .tls_certs_only(reqwest::Certificate::from_pem_bundle(&ca).unwrap())
            .build()
            .unwrap();
        let token = std::fs::read_to_string(&pool.token_file).unwrap();
        let version = last.unwrap().key_id.rsplit('/').next().unwrap().to_string();
        let base = format!("{}/keys/{key}/{version}", p.endpoints[0]);
        let call = |op: &'static str, value: Vec<u8>| {
            let (http, token, url) = (
                http.clone(),
                token.clone(),
                format!("{base}/{op}?api-version=7.4"),
            );
            async move {
                let body = KeyOperationsParameters {
                    alg: alg.into(),
                    value: Base64Url::from(value),
                    ..Default::default()
                };
                let r: KeyOperationResult = http
                    .post(url)
                    .bearer_auth(token.trim())
                    .json(&body)
                    .send()
                    .await
                    .unwrap()
                    .error_for_status()
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                r.value.unwrap().into_inner()
            }
        };
        let (mut wrap, mut unwrap) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for _ in 0..n {
            let t = Instant::now();
            let w = call("wrapkey", seed.clone()).await;
            wrap.push(t.elapsed());
            let t = Instant::now();
            assert_eq!(call("unwrapkey", w).await, seed);
            unwrap.push(t.elapsed());
        }
        report(&format!("{alg} direct wrapkey"), wrap);
        report(&format!("{alg} direct unwrapkey"), unwrap);
    }
}
