//! The hash-chained audit log: sealing, resuming and detecting every kind of tampering.

use keystead_core::audit::*;
use proptest::prelude::*;

fn record(i: u64) -> AuditRecord {
    AuditRecord {
        time: format!("2026-01-01T00:00:{:02}Z", i % 60),
        request_id: format!("req-{i}"),
        partition: "hsm-0".into(),
        caller: "alice".into(),
        client_address: "10.0.0.1:5000".into(),
        method: "POST".into(),
        path: format!("/keys/k{i}/sign"),
        operation: "KeySign".into(),
        data_action: Some("Microsoft.KeyVault/managedHsm/keys/sign/action".into()),
        key_name: Some(format!("k{i}")),
        key_version: if i.is_multiple_of(2) {
            Some("abc".into())
        } else {
            None
        },
        status: 200,
        error_code: None,
        latency_ms: i as f64 + 0.25,
        ..AuditRecord::default()
    }
}

fn chain(n: u64) -> Vec<String> {
    let mut c = AuditChain::new();
    (1..=n).map(|i| c.seal(record(i)).to_json_line()).collect()
}

fn verify(lines: &[String]) -> Result<VerifyReport, ChainError> {
    verify_lines(lines.join("\n").as_bytes())
}

#[test]
fn good_chain_verifies() {
    let lines = chain(5);
    let report = verify(&lines).unwrap();
    assert_eq!(report.records, 5);
    assert_eq!(report.first_seq, Some(1));
    assert_eq!(report.last_seq, Some(5));
    let last: AuditRecord = serde_json::from_str(&lines[4]).unwrap();
    assert_eq!(report.last_hash, last.hash);
    // A trailing newline is fine.
    let with_nl = format!("{}\n", lines.join("\n"));
    assert_eq!(verify_lines(with_nl.as_bytes()).unwrap(), report);
}

#[test]
fn empty_log_verifies_with_genesis_hash() {
    let report = verify_lines(&b""[..]).unwrap();
    assert_eq!(report.records, 0);
    assert_eq!(report.last_hash, GENESIS_HASH);
    assert_eq!(report.first_seq, None);
}

#[test]
fn records_are_camel_case_json_without_empty_options() {
    let line = chain(1).remove(0);
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    for field in [
        "time",
        "requestId",
        "partition",
        "caller",
        "clientAddress",
        "method",
        "path",
        "operation",
        "dataAction",
        "keyName",
        "status",
        "latencyMs",
        "seq",
        "prevHash",
        "hash",
    ] {
        assert!(v.get(field).is_some(), "{field} missing in {line}");
    }
    assert!(v.get("keyVersion").is_none());
    assert!(v.get("errorCode").is_none());
    assert_eq!(v["prevHash"], GENESIS_HASH);
}

#[test]
fn edited_record_is_detected_at_its_line() {
    let mut lines = chain(4);
    lines[2] = lines[2].replace("\"status\":200", "\"status\":403");
    let err = verify(&lines).unwrap_err();
    assert_eq!(err.line, 3);
    assert!(err.reason.contains("modified"), "{err}");
}

#[test]
fn added_field_is_detected() {
    let mut lines = chain(3);
    lines[1] = lines[1].replacen('{', "{\"note\":\"x\",", 1);
    assert_eq!(verify(&lines).unwrap_err().line, 2);
}

#[test]
fn deleted_record_is_detected() {
    let mut lines = chain(5);
    lines.remove(2);
    let err = verify(&lines).unwrap_err();
    assert_eq!(err.line, 3);
    assert!(err.reason.contains("seq"), "{err}");
}

#[test]
fn deleted_first_record_is_detected_unless_partial_start_allowed() {
    let mut lines = chain(3);
    lines.remove(0);
    let err = verify(&lines).unwrap_err();
    assert_eq!(err.line, 1);
    let opts = VerifyOptions {
        allow_partial_start: true,
        ..VerifyOptions::default()
    };
    let report = verify_lines_with(lines.join("\n").as_bytes(), &opts).unwrap();
    assert_eq!(report.first_seq, Some(2));
}

#[test]
fn swapped_records_are_detected() {
    let mut lines = chain(5);
    lines.swap(1, 2);
    assert_eq!(verify(&lines).unwrap_err().line, 2);
}

#[test]
fn inserted_record_is_detected() {
    let mut lines = chain(4);
    // A forged record sealed on its own chain with a plausible seq.
    let mut other = AuditChain::new();
    let mut forged = other.seal(record(99));
    forged.seq = 3;
    lines.insert(2, serde_json::to_string(&forged).unwrap());
    assert_eq!(verify(&lines).unwrap_err().line, 3);
}

#[test]
fn replaced_record_resealed_with_right_seq_is_detected_by_the_chain() {
    // An attacker recomputes the edited record's own hash but cannot fix the next record.
    let mut lines = chain(4);
    let mut c = AuditChain::resume(Some(&lines[0])).unwrap();
    let mut edited = record(2);
    edited.caller = "mallory".into();
    lines[1] = c.seal(edited).to_json_line();
    let err = verify(&lines).unwrap_err();
    assert_eq!(err.line, 3);
    assert!(err.reason.contains("chain"), "{err}");
}

#[test]
fn blank_line_in_the_middle_is_detected() {
    let mut lines = chain(3);
    lines[1] = String::new();
    assert_eq!(verify(&lines).unwrap_err().line, 2);
}

#[test]
fn truncated_tail_needs_an_anchor() {
    let lines = chain(5);
    let anchor = verify(&lines).unwrap().last_hash;
    let truncated = &lines[..3];
    // Without an anchor a shorter log is indistinguishable from an older one.
    assert!(verify(truncated).is_ok());
    let opts = VerifyOptions {
        expect_last_hash: Some(anchor.clone()),
        ..VerifyOptions::default()
    };
    let err = verify_lines_with(truncated.join("\n").as_bytes(), &opts).unwrap_err();
    assert_eq!(err.line, 3);
    assert!(err.reason.contains("expected"), "{err}");
    assert!(verify_lines_with(lines.join("\n").as_bytes(), &opts).is_ok());
}

#[test]
fn garbage_and_cut_lines_are_reported() {
    let mut lines = chain(3);
    let cut = lines[2].len() / 2;
    lines[2].truncate(cut);
    let err = verify(&lines).unwrap_err();
    assert_eq!(err.line, 3);
    assert!(verify(&["not json".to_string()]).is_err());
    assert!(verify(&["[1,2]".to_string()]).is_err());
}

#[test]
fn resume_continues_the_chain() {
    let lines = chain(3);
    let mut c = AuditChain::resume(Some(&lines[2])).unwrap();
    assert_eq!(c.next_seq(), 4);
    let mut all = lines.clone();
    all.push(c.seal(record(4)).to_json_line());
    assert_eq!(verify(&all).unwrap().records, 4);
    assert_eq!(AuditChain::resume(None).unwrap(), AuditChain::new());
    assert_eq!(AuditChain::resume(Some("  ")).unwrap(), AuditChain::new());
    let damaged = lines[2].replace("alice", "bob");
    assert!(AuditChain::resume(Some(&damaged)).is_err());
    assert!(AuditChain::resume(Some("{\"seq\":")).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Deleting any single record other than the last is always detected.
    #[test]
    fn any_single_deletion_is_detected(n in 2u64..12, idx in 0usize..11) {
        let mut lines = chain(n);
        let idx = idx % (lines.len() - 1);
        lines.remove(idx);
        prop_assert!(verify(&lines).is_err());
    }

    /// Changing any single byte of any record is detected (or makes it unparseable).
    #[test]
    fn any_byte_flip_is_detected(n in 1u64..6, line in 0usize..6, pos in 0usize..400, byte in 32u8..127) {
        let mut lines = chain(n);
        let line = line % lines.len();
        let mut bytes = lines[line].clone().into_bytes();
        let pos = pos % bytes.len();
        prop_assume!(bytes[pos] != byte);
        bytes[pos] = byte;
        lines[line] = String::from_utf8(bytes).unwrap();
        prop_assert!(verify(&lines).is_err());
    }
}
