//! "The master key and key material are never plaintext on disk", checked as an outside
//! reviewer would: after a workload on a real pool of three processes (activation, imported
//! keys of known material, generated keys, signatures, a restart, a full backup to a folder
//! of the pool), every file under the pool directory — Raft logs, snapshots, sealed domain,
//! audit logs, backups — is searched for the master key and the imported key material in
//! raw bytes, lower- and upper-case hex, and standard and URL-safe base64 (padded or not).

mod cluster;
mod common;

use base64::Engine;
use cluster::Cluster;
use reqwest::{Method, StatusCode};
use serde_json::json;
use std::path::Path;

fn encodings(secret: &[u8]) -> Vec<(String, Vec<u8>)> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    vec![
        ("raw".into(), secret.to_vec()),
        ("hex".into(), hex::encode(secret).into_bytes()),
        ("HEX".into(), hex::encode_upper(secret).into_bytes()),
        ("base64".into(), STANDARD.encode(secret).into_bytes()),
        (
            "base64 (no pad)".into(),
            STANDARD_NO_PAD.encode(secret).into_bytes(),
        ),
        ("base64url".into(), URL_SAFE.encode(secret).into_bytes()),
        (
            "base64url (no pad)".into(),
            URL_SAFE_NO_PAD.encode(secret).into_bytes(),
        ),
    ]
}

fn files_under(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            files_under(&p, out);
        } else if p.is_file() {
            out.push(p);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_file_of_a_pool_holds_the_master_key_or_key_material() {
    let c = Cluster::start().await;
    c.activate().await;
    // Imported keys: material the test knows.
    let oct: Vec<u8> = (0..32).map(|_| rand_byte()).collect();
    let (s, v) = c
        .call(
            0,
            Method::PUT,
            "/keys/imported-oct",
            Some(json!({"key": {"kty": "oct-HSM", "k": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&oct),
                                "key_ops": ["wrapKey", "unwrapKey"]}, "Hsm": true})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    // Generated keys and use of them.
    for i in 0..5 {
        c.create(1, &format!("gen{i}")).await.unwrap();
        assert_eq!(c.sign(2, &format!("gen{i}")).await, StatusCode::OK);
    }
    // A restart (sealed domain, log replay) and a full backup into the pool's directory.
    c.kill(2);
    c.spawn(2);
    c.until("p2 serves again", 60, || c.ready(2)).await;
    let backups = c.dir.join("backups");
    let (s, v) = c
        .call(
            0,
            Method::POST,
            "/backup",
            Some(json!({"storageResourceUri": format!("file://{}", backups.display())})),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    c.until("the backup wrote its manifest", 60, || async {
        let mut files = Vec::new();
        if backups.exists() {
            files_under(&backups, &mut files);
        }
        files.iter().any(|f| f.ends_with("manifest.json"))
    })
    .await;

    // The master key, from the pool's own domain file and the custodians' keys.
    let file = c.domain_file().await;
    let keys: Vec<_> = common::custodians()
        .iter()
        .take(2)
        .map(|(_, k)| keystead_core::sd::CustodianPrivateKey::from_pem(k, None).unwrap())
        .collect();
    let domain = keystead_core::sd::recover_domain(&file, &keys).unwrap();
    let secrets = [
        ("the master key", domain.master_key().to_vec()),
        ("imported oct key", oct),
    ];
    let mut files = Vec::new();
    files_under(&c.dir, &mut files);
    let names: Vec<String> = files
        .iter()
        .map(|f| f.strip_prefix(&c.dir).unwrap().display().to_string())
        .collect();
    for want in ["log.jsonl", "audit.log", "manifest.json", "chunk-00000.bin"] {
        assert!(
            names.iter().any(|n| n.ends_with(want)),
            "the scan must cover {want}: {names:?}"
        );
    }
    let mut scanned = 0usize;
    for f in &files {
        let bytes = std::fs::read(f).unwrap();
        scanned += bytes.len();
        for (what, secret) in &secrets {
            for (enc, needle) in encodings(secret) {
                assert!(
                    !bytes.windows(needle.len()).any(|w| w == needle.as_slice()),
                    "{what} ({enc}) found in {}",
                    f.display()
                );
            }
        }
    }
    assert!(scanned > 10_000, "scanned only {scanned} bytes");
    // Control: the same search finds what is meant to be on disk (the domain's fingerprint,
    // in the backup manifest and the Raft log), so the zero above is not the search's doing.
    let fp = domain.fingerprint();
    let found = files.iter().any(|f| {
        let bytes = std::fs::read(f).unwrap();
        bytes.windows(fp.len()).any(|w| w == fp.as_bytes())
    });
    assert!(found, "the control value was not found: the scan is broken");
    println!("scanned {} files, {scanned} bytes", files.len());
}

fn rand_byte() -> u8 {
    let mut b = [0u8; 1];
    aws_lc_rs::rand::fill(&mut b).unwrap();
    b[0]
}
