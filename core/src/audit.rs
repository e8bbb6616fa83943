//! The audit log format: one JSON record per request, each chained to the previous one by a
//! SHA-256 hash so that editing, deleting, inserting or reordering records is detectable.
//!
//! Chain rule (see `docs/audit.md`):
//! `hash = hex(SHA-256(prevHash || canonical JSON of the record without "hash"))`, where
//! `prevHash` is the previous record's `hash` as its 64 lowercase hex ASCII characters, the
//! canonical JSON has object keys sorted by byte order and no whitespace, and the first record
//! (`seq` 1) has `prevHash` = 64 zeros ([`GENESIS_HASH`]).
//!
//! A record holds only the fields below: there is no field for a token, a request body or key
//! material, so none can be logged.

use std::io::BufRead;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use crate::audit_record::{AuditRecord, Checkpoint};

/// `prevHash` of the first record of a chain.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The most a record keeps of a free-text field (`path`, `caller`, `keyName`, …): a longer
/// value is cut and marked `...[truncated, N bytes]` (N = its full length), so no request can
/// make a record large.
pub const MAX_FIELD_BYTES: usize = 1024;

/// Cut `value` to [`MAX_FIELD_BYTES`] (at a character boundary), marking the cut.
fn cap(value: &mut String) {
    if value.len() <= MAX_FIELD_BYTES {
        return;
    }
    let full = value.len();
    let marker = format!("...[truncated, {full} bytes]");
    let mut keep = MAX_FIELD_BYTES.saturating_sub(marker.len());
    while !value.is_char_boundary(keep) {
        keep -= 1;
    }
    value.truncate(keep);
    value.push_str(&marker);
}

/// `operation` of a checkpoint record.
pub const CHECKPOINT_OPERATION: &str = "AuditCheckpoint";

/// What a checkpoint signs: domain-separated, every field that places it in its chain.
pub fn checkpoint_message(partition: &str, seq: u64, time: &str, prev_hash: &str) -> Vec<u8> {
    format!("keystead-audit-checkpoint-v1\n{partition}\n{seq}\n{time}\n{prev_hash}").into_bytes()
}

/// A public key checkpoints are verified with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointKey {
    pub key_id: String,
    /// Uncompressed P-256 point.
    pub public_point: Vec<u8>,
}

impl CheckpointKey {
    pub fn from_public_point(point: &[u8]) -> Self {
        Self {
            key_id: hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, point)),
            public_point: point.to_vec(),
        }
    }

    /// The key of a partition's certificate (PEM), e.g. `p0/tls.crt` of a local pool or
    /// `tls.crt` of a partition's Secret in Kubernetes.
    pub fn from_cert_pem(pem_text: &str) -> Result<Self, String> {
        let block = pem::parse(pem_text)
            .map_err(|e| format!("not a PEM certificate ({e}); give the partition's tls.crt"))?;
        let (_, cert) = x509_parser::parse_x509_certificate(block.contents())
            .map_err(|e| format!("not an X.509 certificate ({e}); give the partition's tls.crt"))?;
        let point = cert.public_key().subject_public_key.data.to_vec();
        if point.len() != 65 || point[0] != 4 {
            return Err("the certificate's key is not an uncompressed P-256 point (partitions sign checkpoints with ECDSA P-256)".into());
        }
        Ok(Self::from_public_point(&point))
    }
}

/// The chain is broken (or a line is not a record) at `line` (1-based).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct ChainError {
    pub line: usize,
    pub reason: String,
}

/// What a successful verification saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VerifyReport {
    pub records: u64,
    /// `None` when the file holds no record.
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    /// Hash of the last record (the genesis hash for an empty file): keep it as an anchor.
    pub last_hash: String,
    /// Checkpoint records seen, and how many of them were verified against the given keys
    /// (none are without [`VerifyOptions::checkpoint_keys`]).
    #[serde(default)]
    pub checkpoints: u64,
    #[serde(default)]
    pub checkpoints_verified: u64,
    /// `seq` of the last checkpoint, and the records after it (not covered by a signature:
    /// they could have been cut off without a trace).
    #[serde(default)]
    pub last_checkpoint_seq: Option<u64>,
    #[serde(default)]
    pub unsigned_tail: u64,
}

/// Verification options.
#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    /// Accept a file whose first record is not `seq` 1 (a log rotated by an external tool).
    /// Without it, a missing head is reported as deleted records.
    pub allow_partial_start: bool,
    /// The `hash` the last record must have (a value recorded earlier, e.g. from the last
    /// verification): detects records cut off the end of the file.
    pub expect_last_hash: Option<String>,
    /// Verify every checkpoint against these keys: a checkpoint with a bad signature, by an
    /// unknown key or without a signature fails the verification, and so does a log with no
    /// checkpoint at all.
    pub checkpoint_keys: Vec<CheckpointKey>,
}

/// Sorted-key, whitespace-free JSON: the form the chain hashes.
pub(crate) fn canonical_json(v: &Value) -> String {
    let mut out = String::new();
    write_canonical(v, &mut out);
    out
}

fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push('{');
            for (i, (k, val)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_canonical(val, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

#[cfg(test)]
pub(crate) fn record_value(record: &AuditRecord) -> Value {
    // Serialising a struct of strings and integers into a Value cannot fail.
    serde_json::to_value(record).unwrap_or(Value::Null)
}

/// `hex(SHA-256(prev_hash || canonical))`: `canonical` is a record's canonical JSON without
/// its "hash" field.
fn hash_of(prev_hash: &str, canonical: &[u8]) -> String {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    ctx.update(prev_hash.as_bytes());
    ctx.update(canonical);
    hex::encode(ctx.finish().as_ref())
}

/// `hex(SHA-256(prev_hash || canonical JSON of `object` without "hash"))`.
fn compute_hash(prev_hash: &str, object: &serde_json::Map<String, Value>) -> String {
    let mut without = object.clone();
    without.remove("hash");
    let canonical = canonical_json(&Value::Object(without));
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    ctx.update(prev_hash.as_bytes());
    ctx.update(canonical.as_bytes());
    hex::encode(ctx.finish().as_ref())
}

fn is_hash(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Checks one line on its own: a JSON record whose `hash` matches its content and `prevHash`.
fn check_line(text: &str, line: usize) -> Result<AuditRecord, ChainError> {
    let err = |reason: String| ChainError { line, reason };
    let value: Value = serde_json::from_str(text).map_err(|e| {
        err(format!(
            "not a JSON audit record ({e}); the line was edited or cut"
        ))
    })?;
    let Value::Object(object) = &value else {
        return Err(err("not a JSON object".into()));
    };
    let record: AuditRecord = serde_json::from_value(value.clone())
        .map_err(|e| err(format!("not an audit record ({e})")))?;
    if !is_hash(&record.prev_hash) || !is_hash(&record.hash) {
        return Err(err("prevHash or hash is not 64 lowercase hex digits".into()));
    }
    let expected = compute_hash(&record.prev_hash, object);
    if expected != record.hash {
        return Err(err(format!(
            "record seq {} was modified: its content does not match its hash",
            record.seq
        )));
    }
    Ok(record)
}

/// The writer side of a chain: assigns `seq`, `prevHash` and `hash`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditChain {
    next_seq: u64,
    last_hash: String,
}

impl Default for AuditChain {
    fn default() -> Self {
        Self::new()
    }
}

impl AuditChain {
    /// A new chain (the next record is `seq` 1 with the genesis `prevHash`).
    pub fn new() -> Self {
        Self {
            next_seq: 1,
            last_hash: GENESIS_HASH.to_owned(),
        }
    }

    /// Continues a chain after its last line (`None` for an empty log). The line must be a
    /// valid, self-consistent record; otherwise the log's tail is damaged and the error says
    /// so (line number 1 = that last line).
    pub fn resume(last_line: Option<&str>) -> Result<Self, ChainError> {
        match last_line.map(str::trim).filter(|l| !l.is_empty()) {
            None => Ok(Self::new()),
            Some(line) => {
                let record = check_line(line, 1)?;
                Ok(Self {
                    next_seq: record.seq.saturating_add(1),
                    last_hash: record.hash,
                })
            }
        }
    }

    /// The `seq` the next sealed record gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The hash of the last sealed record (genesis if none).
    pub fn last_hash(&self) -> &str {
        &self.last_hash
    }

    /// Sets `seq`, `prevHash` and `hash` of `record` (and normalises: the query string is
    /// dropped from `path`, an empty `caller` becomes `anonymous`, free-text fields are cut
    /// to [`MAX_FIELD_BYTES`]) and advances the chain.
    pub fn seal(&mut self, record: AuditRecord) -> AuditRecord {
        self.seal_line(record).0
    }

    /// [`seal`](Self::seal), and the record's log line (its canonical JSON, no newline) made
    /// in the same pass.
    pub fn seal_line(&mut self, mut record: AuditRecord) -> (AuditRecord, String) {
        if let Some(i) = record.path.find('?') {
            record.path.truncate(i);
        }
        for field in [
            &mut record.request_id,
            &mut record.partition,
            &mut record.caller,
            &mut record.client_address,
            &mut record.method,
            &mut record.path,
            &mut record.operation,
        ] {
            cap(field);
        }
        for field in [
            &mut record.data_action,
            &mut record.key_name,
            &mut record.key_version,
            &mut record.member,
            &mut record.error_code,
        ]
        .into_iter()
        .flatten()
        {
            cap(field);
        }
        if record.caller.is_empty() {
            record.caller = "anonymous".to_owned();
        }
        record.latency_ms = if record.latency_ms.is_finite() && record.latency_ms > 0.0 {
            (record.latency_ms * 1000.0).round() / 1000.0
        } else {
            0.0
        };
        record.seq = self.next_seq;
        record.prev_hash = self.last_hash.clone();
        record.hash = String::new();
        let (unhashed, at) = crate::audit_record::unhashed(&record);
        record.hash = hash_of(&record.prev_hash, &unhashed);
        self.next_seq = self.next_seq.saturating_add(1);
        self.last_hash = record.hash.clone();
        let line = crate::audit_record::with_hash(&unhashed, at, &record.hash);
        (record, line)
    }
}

/// Verifies a whole log with default options (must start at `seq` 1, no tail anchor).
pub fn verify_lines<R: BufRead>(reader: R) -> Result<VerifyReport, ChainError> {
    verify_lines_with(reader, &VerifyOptions::default())
}

/// Verifies a log: every line is a self-consistent record, `seq` increases by one, each
/// `prevHash` is the previous `hash`. Blank lines are only allowed at the end of the file.
pub fn verify_lines_with<R: BufRead>(
    reader: R,
    options: &VerifyOptions,
) -> Result<VerifyReport, ChainError> {
    let mut report = VerifyReport {
        records: 0,
        first_seq: None,
        last_seq: None,
        last_hash: GENESIS_HASH.to_owned(),
        checkpoints: 0,
        checkpoints_verified: 0,
        last_checkpoint_seq: None,
        unsigned_tail: 0,
    };
    let mut blank_at: Option<usize> = None;
    let mut last_line = 0;
    for (i, line) in reader.lines().enumerate() {
        let n = i + 1;
        last_line = n;
        let text = line.map_err(|e| ChainError {
            line: n,
            reason: format!("cannot read the line: {e}"),
        })?;
        if text.trim().is_empty() {
            blank_at.get_or_insert(n);
            continue;
        }
        if let Some(b) = blank_at {
            return Err(ChainError {
                line: b,
                reason: "blank line inside the log: a record was removed".into(),
            });
        }
        let record = check_line(&text, n)?;
        match report.last_seq {
            None => {
                if record.seq == 1 && record.prev_hash != GENESIS_HASH {
                    return Err(ChainError {
                        line: n,
                        reason: "the first record (seq 1) does not start from the genesis hash"
                            .into(),
                    });
                }
                if record.seq != 1 && !options.allow_partial_start {
                    return Err(ChainError {
                        line: n,
                        reason: format!(
                            "the log starts at seq {} instead of 1: earlier records were deleted (use --allow-partial-start for a rotated log)",
                            record.seq
                        ),
                    });
                }
                report.first_seq = Some(record.seq);
            }
            Some(prev_seq) => {
                if record.seq != prev_seq.saturating_add(1) {
                    return Err(ChainError {
                        line: n,
                        reason: format!(
                            "expected seq {} after seq {prev_seq} but found seq {}: records were deleted, inserted or reordered",
                            prev_seq.saturating_add(1),
                            record.seq
                        ),
                    });
                }
                if record.prev_hash != report.last_hash {
                    return Err(ChainError {
                        line: n,
                        reason: format!(
                            "record seq {} does not chain to the previous record: a record was deleted, inserted or replaced",
                            record.seq
                        ),
                    });
                }
            }
        }
        if record.operation == CHECKPOINT_OPERATION {
            report.checkpoints += 1;
            report.last_checkpoint_seq = Some(record.seq);
            report.unsigned_tail = 0;
            if !options.checkpoint_keys.is_empty() {
                verify_checkpoint(&record, &options.checkpoint_keys)
                    .map_err(|reason| ChainError { line: n, reason })?;
                report.checkpoints_verified += 1;
            }
        } else {
            report.unsigned_tail += 1;
        }
        report.records += 1;
        report.last_seq = Some(record.seq);
        report.last_hash = record.hash;
    }
    if !options.checkpoint_keys.is_empty() && report.checkpoints_verified == 0 {
        return Err(ChainError {
            line: last_line,
            reason: "the log holds no signed checkpoint: it cannot be told from a log written without the partition's key".into(),
        });
    }
    if let Some(expected) = &options.expect_last_hash
        && !expected.trim().eq_ignore_ascii_case(&report.last_hash)
    {
        return Err(ChainError {
            line: last_line,
            reason: format!(
                "the last record's hash is {} but {} was expected: records were removed from the end (or the anchor belongs to another log)",
                report.last_hash,
                expected.trim()
            ),
        });
    }
    Ok(report)
}

/// Check a checkpoint record's signature against `keys`.
fn verify_checkpoint(record: &AuditRecord, keys: &[CheckpointKey]) -> Result<(), String> {
    use base64::Engine;
    let cp = record.checkpoint.as_ref().ok_or_else(|| {
        format!(
            "checkpoint seq {} carries no signature: it was not written by a partition",
            record.seq
        )
    })?;
    let key = keys.iter().find(|k| k.key_id == cp.key_id).ok_or_else(|| {
        format!(
            "checkpoint seq {} is signed by key {} which is none of the given certificates",
            record.seq, cp.key_id
        )
    })?;
    let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cp.signature.trim())
        .map_err(|_| {
            format!(
                "checkpoint seq {}: the signature is not base64url",
                record.seq
            )
        })?;
    let msg = checkpoint_message(
        &record.partition,
        record.seq,
        &record.time,
        &record.prev_hash,
    );
    aws_lc_rs::signature::UnparsedPublicKey::new(
        &aws_lc_rs::signature::ECDSA_P256_SHA256_ASN1,
        &key.public_point,
    )
    .verify(&msg, &sig)
    .map_err(|_| {
        format!(
            "checkpoint seq {} has a bad signature: the records before it were rewritten",
            record.seq
        )
    })
}

impl AuditChain {
    /// Seal a checkpoint record: `sign` gets [`checkpoint_message`] for this position in the
    /// chain and returns the signature; the record's hash then covers it.
    pub fn seal_checkpoint(
        &mut self,
        mut record: AuditRecord,
        sign: impl FnOnce(&[u8]) -> Checkpoint,
    ) -> AuditRecord {
        record.operation = CHECKPOINT_OPERATION.to_owned();
        let msg = checkpoint_message(
            &record.partition,
            self.next_seq,
            &record.time,
            &self.last_hash,
        );
        record.checkpoint = Some(sign(&msg));
        self.seal(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_json_sorts_keys_recursively() {
        let v: Value =
            serde_json::from_str(r#"{"b":1,"a":{"d":[1,{"z":0,"y":"\u00e9\n"}],"c":null}}"#)
                .unwrap();
        assert_eq!(
            canonical_json(&v),
            r#"{"a":{"c":null,"d":[1,{"y":"é\n","z":0}]},"b":1}"#
        );
    }

    /// A partition's signer: ECDSA P-256 as the partition's TLS key.
    fn signer() -> (aws_lc_rs::signature::EcdsaKeyPair, CheckpointKey) {
        use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair};
        let k = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_ASN1_SIGNING).unwrap();
        let key = CheckpointKey::from_public_point(k.public_key().as_ref());
        (k, key)
    }

    fn sign_with(k: &aws_lc_rs::signature::EcdsaKeyPair, key_id: &str, msg: &[u8]) -> Checkpoint {
        use base64::Engine;
        let sig = k.sign(&aws_lc_rs::rand::SystemRandom::new(), msg).unwrap();
        Checkpoint {
            key_id: key_id.to_owned(),
            signature: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sig.as_ref()),
        }
    }

    fn request(n: u64) -> AuditRecord {
        AuditRecord {
            partition: "p0".into(),
            time: format!("2026-12-06T00:00:{n:02}Z"),
            caller: "alice".into(),
            operation: "KeySign".into(),
            path: format!("/keys/k{n}/sign"),
            status: 200,
            ..AuditRecord::default()
        }
    }

    /// A log of `n` requests with a checkpoint after every `every`; returns its lines.
    fn log_with_checkpoints(
        k: &aws_lc_rs::signature::EcdsaKeyPair,
        key: &CheckpointKey,
        n: u64,
        every: u64,
    ) -> Vec<String> {
        let mut chain = AuditChain::new();
        let mut lines = Vec::new();
        for i in 1..=n {
            lines.push(chain.seal(request(i)).to_json_line());
            if i % every == 0 {
                let cp = chain.seal_checkpoint(request(i), |m| sign_with(k, &key.key_id, m));
                lines.push(cp.to_json_line());
            }
        }
        lines
    }

    fn verify_with(lines: &[String], keys: &[CheckpointKey]) -> Result<VerifyReport, ChainError> {
        verify_lines_with(
            lines.join("\n").as_bytes(),
            &VerifyOptions {
                checkpoint_keys: keys.to_vec(),
                ..VerifyOptions::default()
            },
        )
    }

    #[test]
    fn signed_checkpoints_verify_and_report_the_unsigned_tail() {
        let (k, key) = signer();
        let lines = log_with_checkpoints(&k, &key, 10, 4);
        let r = verify_with(&lines, std::slice::from_ref(&key)).unwrap();
        assert_eq!((r.checkpoints, r.checkpoints_verified), (2, 2));
        assert_eq!(
            r.unsigned_tail, 2,
            "records 9 and 10 come after the last checkpoint"
        );
        // Without keys the chain still verifies; checkpoints are counted, not verified.
        let r = verify_with(&lines, &[]).unwrap();
        assert_eq!((r.checkpoints, r.checkpoints_verified), (2, 0));
        // Another key, or no checkpoint at all, fails when keys are given.
        let (_, other) = signer();
        let e = verify_with(&lines, &[other]).unwrap_err();
        assert!(e.reason.contains("none of the given certificates"), "{e}");
        let plain: Vec<String> = {
            let mut c = AuditChain::new();
            (1..=3).map(|i| c.seal(request(i)).to_json_line()).collect()
        };
        let e = verify_with(&plain, std::slice::from_ref(&key)).unwrap_err();
        assert!(e.reason.contains("no signed checkpoint"), "{e}");
    }

    /// Someone with write access to the file but not the key rewrites an early record and
    /// re-chains everything after it (the unkeyed chain alone would verify): the first
    /// checkpoint after the change no longer verifies. Same for truncating to before a
    /// checkpoint and forging a checkpoint without a signature.
    #[test]
    fn rewriting_before_a_checkpoint_is_detected_without_an_anchor() {
        let (k, key) = signer();
        let lines = log_with_checkpoints(&k, &key, 8, 4);
        let mut records: Vec<AuditRecord> = lines
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        records[1].caller = "mallory".into();
        let mut chain = AuditChain::new();
        let rewritten: Vec<String> = records
            .into_iter()
            .map(|mut r| {
                let checkpoint = r.checkpoint.take();
                let mut sealed = chain.seal(AuditRecord {
                    checkpoint: checkpoint.clone(),
                    ..r
                });
                // keep the stolen signature in place
                sealed.checkpoint = checkpoint;
                sealed.to_json_line()
            })
            .collect();
        // The unkeyed chain does verify the rewrite (this is what the checkpoints add).
        assert!(verify_with(&rewritten, &[]).is_ok());
        let e = verify_with(&rewritten, std::slice::from_ref(&key)).unwrap_err();
        assert!(e.reason.contains("bad signature"), "{e}");
        // A forged checkpoint without a signature.
        let mut chain = AuditChain::new();
        let mut forged: Vec<String> = (1..=3)
            .map(|i| chain.seal(request(i)).to_json_line())
            .collect();
        forged.push(
            chain
                .seal(AuditRecord {
                    operation: CHECKPOINT_OPERATION.into(),
                    ..request(4)
                })
                .to_json_line(),
        );
        let e = verify_with(&forged, std::slice::from_ref(&key)).unwrap_err();
        assert!(e.reason.contains("carries no signature"), "{e}");
    }

    #[test]
    fn seal_sets_chain_fields() {
        let mut chain = AuditChain::new();
        let r = chain.seal(AuditRecord {
            path: "/keys/k/sign?api-version=7.5".into(),
            ..AuditRecord::default()
        });
        assert_eq!(r.seq, 1);
        assert_eq!(r.prev_hash, GENESIS_HASH);
        assert_eq!(r.path, "/keys/k/sign");
        assert_eq!(r.caller, "anonymous");
        assert!(is_hash(&r.hash));
        assert_eq!(chain.last_hash(), r.hash);
        assert_eq!(chain.next_seq(), 2);
        assert!(!r.to_json_line().contains("intent"));
    }

    #[test]
    fn long_fields_are_cut_and_marked() {
        let mut chain = AuditChain::new();
        let r = chain.seal(AuditRecord {
            path: format!("/keys/{}", "é".repeat(30_000)),
            caller: "c".repeat(5000),
            key_name: Some("k".repeat(2000)),
            ..AuditRecord::default()
        });
        assert!(r.path.len() <= MAX_FIELD_BYTES, "{}", r.path.len());
        assert!(
            r.path.ends_with("...[truncated, 60006 bytes]"),
            "{}",
            r.path
        );
        assert!(r.caller.ends_with("[truncated, 5000 bytes]"));
        assert!(r.key_name.as_ref().unwrap().len() <= MAX_FIELD_BYTES);
        let short = chain.seal(AuditRecord {
            path: "/keys/k1".into(),
            ..AuditRecord::default()
        });
        assert_eq!(short.path, "/keys/k1");
        let log = format!("{}\n{}\n", r.to_json_line(), short.to_json_line());
        assert_eq!(verify_lines(std::io::Cursor::new(log)).unwrap().records, 2);
    }
}
