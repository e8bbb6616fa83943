//! Signed audit checkpoints on real partitions: each partition signs its chain with its
//! P-256 identity key when it starts and every 256 records; `kubectl hsm audit verify
//! --signer-cert` checks them, so rewriting records before a checkpoint is detected by the
//! log and the partition's certificate alone (no anchor kept elsewhere).

mod cluster;
mod common;

use cluster::Cluster;
use keystead_core::audit::{
    AuditChain, AuditRecord, CheckpointKey, VerifyOptions, verify_lines_with,
};
use std::process::Command;

fn hsm_bin() -> std::path::PathBuf {
    cluster::bin().with_file_name("kubectl-hsm")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_sign_checkpoints_and_a_rewrite_before_one_is_detected() {
    let c = Cluster::start().await;
    c.activate().await;
    for i in 0..3 {
        c.create(0, &format!("k{i}")).await.unwrap();
    }
    // A restart signs what the partition finds in its log.
    c.kill(0);
    c.spawn(0);
    c.until("p0 serves again", 60, || c.ready(0)).await;
    let log = c.cfgs[0].audit_file();
    let cert = &c.cfgs[0].tls.cert_file;
    let key = CheckpointKey::from_cert_pem(&std::fs::read_to_string(cert).unwrap()).unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    let opts = VerifyOptions {
        checkpoint_keys: vec![key.clone()],
        ..VerifyOptions::default()
    };
    let report = verify_lines_with(text.as_bytes(), &opts).unwrap();
    assert!(report.checkpoints_verified >= 2, "{report:?}");
    assert_eq!(report.first_seq, Some(1));

    // The CLI says the same.
    let out = Command::new(hsm_bin())
        .args(["-o", "json", "audit", "verify", "--signer-cert"])
        .arg(cert)
        .arg(&log)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], true, "{v}");
    assert!(v["checkpointsVerified"].as_u64().unwrap() >= 1, "{v}");

    // Someone who can write the file but lacks the key rewrites who made an early
    // request and re-chains every later record: the plain chain verifies, the
    // checkpoint after it does not.
    let mut chain = AuditChain::new();
    let rewritten: String = text
        .lines()
        .map(|l| {
            let mut r: AuditRecord = serde_json::from_str(l).unwrap();
            if r.seq == 2 {
                r.caller = "someone-else".into();
            }
            let cp = r.checkpoint.take();
            let mut sealed = chain.seal(AuditRecord {
                checkpoint: cp.clone(),
                ..r
            });
            sealed.checkpoint = cp;
            sealed.to_json_line() + "\n"
        })
        .collect();
    assert!(verify_lines_with(rewritten.as_bytes(), &VerifyOptions::default()).is_ok());
    let e = verify_lines_with(rewritten.as_bytes(), &opts).unwrap_err();
    assert!(e.reason.contains("bad signature"), "{e}");
    let forged = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(forged.path(), &rewritten).unwrap();
    let out = Command::new(hsm_bin())
        .args(["audit", "verify", "--signer-cert"])
        .arg(cert)
        .arg(forged.path())
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "the CLI must refuse the rewritten log"
    );
    // Another partition's certificate does not vouch for p0's log.
    let other =
        CheckpointKey::from_cert_pem(&std::fs::read_to_string(&c.cfgs[1].tls.cert_file).unwrap())
            .unwrap();
    let e = verify_lines_with(
        text.as_bytes(),
        &VerifyOptions {
            checkpoint_keys: vec![other],
            ..VerifyOptions::default()
        },
    )
    .unwrap_err();
    assert!(e.reason.contains("none of the given certificates"), "{e}");
}
