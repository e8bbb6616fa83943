//! `kubectl hsm audit verify` with the built binary: a good chain passes; an edited line, a
//! deleted line and a swapped pair each fail naming the line.

use std::path::Path;
use std::process::{Command, Output};

use keystead_core::audit::{AuditChain, AuditRecord};

fn chain(n: u64) -> Vec<String> {
    let mut c = AuditChain::new();
    (1..=n)
        .map(|i| {
            c.seal(AuditRecord {
                time: "2026-01-01T00:00:00Z".into(),
                request_id: format!("req-{i}"),
                partition: "p0".into(),
                caller: "alice".into(),
                client_address: "10.0.0.1:443".into(),
                method: "POST".into(),
                path: "/keys/k/sign".into(),
                operation: "KeySign".into(),
                data_action: Some("Microsoft.KeyVault/managedHsm/keys/sign/action".into()),
                key_name: Some("k".into()),
                status: 200,
                latency_ms: 0.5,
                ..AuditRecord::default()
            })
            .to_json_line()
        })
        .collect()
}

fn write(dir: &Path, name: &str, lines: &[String]) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("{}\n", lines.join("\n"))).unwrap();
    path
}

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kubectl-hsm"))
        .args(args)
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn good_chain_passes() {
    let dir = tempfile::tempdir().unwrap();
    let lines = chain(4);
    let path = write(dir.path(), "good.log", &lines);
    let out = run(&["audit", "verify", path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("records:   4"), "{stdout}");
    assert!(stdout.contains("first seq: 1"), "{stdout}");
    assert!(stdout.contains("last seq:  4"), "{stdout}");
    let last: serde_json::Value = serde_json::from_str(&lines[3]).unwrap();
    let hash = last["hash"].as_str().unwrap();
    assert!(stdout.contains(hash), "{stdout}");

    let out = run(&["audit", "verify", path.to_str().unwrap(), "-o", "json"]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(v["records"], 4);
    assert_eq!(v["firstSeq"], 1);
    assert_eq!(v["lastSeq"], 4);
    assert_eq!(v["lastHash"], hash);

    // The anchor matches.
    let out = run(&[
        "audit",
        "verify",
        path.to_str().unwrap(),
        "--expect-last-hash",
        hash,
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

fn assert_fails_at(path: &Path, line: usize) {
    let out = run(&["audit", "verify", path.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!("line {line}:")),
        "expected line {line}: {stderr}"
    );
    let out = run(&["audit", "verify", path.to_str().unwrap(), "-o", "json"]);
    assert!(!out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(v["line"], line);
}

#[test]
fn edited_line_fails() {
    let dir = tempfile::tempdir().unwrap();
    let mut lines = chain(5);
    lines[2] = lines[2].replace("\"caller\":\"alice\"", "\"caller\":\"mallory\"");
    assert_fails_at(&write(dir.path(), "edited.log", &lines), 3);
}

#[test]
fn deleted_line_fails() {
    let dir = tempfile::tempdir().unwrap();
    let mut lines = chain(5);
    lines.remove(1);
    assert_fails_at(&write(dir.path(), "deleted.log", &lines), 2);
}

#[test]
fn swapped_pair_fails() {
    let dir = tempfile::tempdir().unwrap();
    let mut lines = chain(5);
    lines.swap(3, 4);
    assert_fails_at(&write(dir.path(), "swapped.log", &lines), 4);
}

#[test]
fn truncated_tail_fails_only_with_an_anchor() {
    let dir = tempfile::tempdir().unwrap();
    let lines = chain(5);
    let last: serde_json::Value = serde_json::from_str(&lines[4]).unwrap();
    let path = write(dir.path(), "cut.log", &lines[..3]);
    assert!(
        run(&["audit", "verify", path.to_str().unwrap()])
            .status
            .success()
    );
    let out = run(&[
        "audit",
        "verify",
        path.to_str().unwrap(),
        "--expect-last-hash",
        last["hash"].as_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("line 3:"));
}

#[test]
fn missing_file_is_a_clear_error() {
    let out = run(&["audit", "verify", "/nonexistent/audit.log"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("cannot open the audit log"));
}
