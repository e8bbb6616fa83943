//! One audit record: its fields ([`AuditRecord`], [`Checkpoint`]) and its canonical JSON
//! written field by field — byte for byte what the generic form (`serde_json::Value`, keys
//! sorted, no whitespace) gives, without building a map per record. Sealing a record on the
//! request path used to cost more than an ES256 signature; the hash input and the log line
//! now come from one pass over the fields. The chain, its verification and checkpoints are
//! `audit`.

use serde::{Deserialize, Serialize};

fn is_false(b: &bool) -> bool {
    !*b
}

/// One audited request.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditRecord {
    /// RFC 3339 UTC time the request was received.
    pub time: String,
    pub request_id: String,
    /// Name of the partition that served the request.
    pub partition: String,
    /// The authenticated principal id, or `anonymous`.
    pub caller: String,
    pub client_address: String,
    pub method: String,
    /// Request path without the query string.
    pub path: String,
    /// Operation name, e.g. `KeySign`.
    pub operation: String,
    /// The data action checked, e.g. `Microsoft.KeyVault/managedHsm/keys/sign/action`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_action: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_version: Option<String>,
    /// The pool member (partition name) a membership change or a domain handover concerns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member: Option<String>,
    /// That member's Raft node id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member_id: Option<u64>,
    /// Written before a change is carried out (`status` 0); the outcome follows in a
    /// record with the same `requestId`. Omitted (false) on every other record.
    #[serde(default, skip_serializing_if = "is_false")]
    pub intent: bool,
    /// HTTP status code of the response (0 on an intent record).
    pub status: u16,
    /// Key Vault error code of a failed request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    /// Milliseconds from receiving the request to the response (rounded to microseconds).
    pub latency_ms: f64,
    /// Position in the chain, starting at 1.
    pub seq: u64,
    pub prev_hash: String,
    pub hash: String,
    /// Set on the partition's signed checkpoints (operation [`CHECKPOINT_OPERATION`]): a
    /// signature by the partition's identity key over the chain so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<Checkpoint>,
}

/// A checkpoint's signature: ECDSA P-256 / SHA-256 (ASN.1 DER, base64url) by the key whose
/// public point hashes to `keyId`, over [`checkpoint_message`]. Because `prevHash` commits to
/// every earlier record, rewriting or deleting anything before a checkpoint breaks it unless
/// the signer's private key is held too.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Checkpoint {
    /// Lowercase hex SHA-256 of the signer's uncompressed public point.
    pub key_id: String,
    pub signature: String,
}

impl AuditRecord {
    /// The record as one JSON line (no trailing newline).
    pub fn to_json_line(&self) -> String {
        line(self)
    }
}

/// One field, written the way `serde_json` writes it in compact form.
fn field<T: Serialize + ?Sized>(out: &mut Vec<u8>, first: &mut bool, key: &str, value: &T) {
    if !std::mem::take(first) {
        out.push(b',');
    }
    // Keys are ASCII identifiers: no escaping needed.
    out.push(b'"');
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b"\":");
    // Writing strings, integers, floats and booleans into a Vec cannot fail (a non-finite
    // float is written as `null`, as serde_json's Value would hold it).
    let _ = serde_json::to_writer(&mut *out, value);
}

/// The record's fields that sort before `"hash"`, from `{` on (no trailing comma).
fn before_hash(r: &AuditRecord, out: &mut Vec<u8>) {
    let first = &mut true;
    out.push(b'{');
    field(out, first, "caller", &r.caller);
    if let Some(cp) = &r.checkpoint {
        if !std::mem::take(first) {
            out.push(b',');
        }
        out.extend_from_slice(b"\"checkpoint\":{");
        let inner = &mut true;
        field(out, inner, "keyId", &cp.key_id);
        field(out, inner, "signature", &cp.signature);
        out.push(b'}');
    }
    field(out, first, "clientAddress", &r.client_address);
    if let Some(v) = &r.data_action {
        field(out, first, "dataAction", v);
    }
    if let Some(v) = &r.error_code {
        field(out, first, "errorCode", v);
    }
}

/// The fields that sort after `"hash"`, each preceded by a comma, up to the closing `}`.
fn after_hash(r: &AuditRecord, out: &mut Vec<u8>) {
    let first = &mut false;
    if r.intent {
        field(out, first, "intent", &true);
    }
    if let Some(v) = &r.key_name {
        field(out, first, "keyName", v);
    }
    if let Some(v) = &r.key_version {
        field(out, first, "keyVersion", v);
    }
    field(out, first, "latencyMs", &r.latency_ms);
    if let Some(v) = &r.member {
        field(out, first, "member", v);
    }
    if let Some(v) = r.member_id {
        field(out, first, "memberId", &v);
    }
    field(out, first, "method", &r.method);
    field(out, first, "operation", &r.operation);
    field(out, first, "partition", &r.partition);
    field(out, first, "path", &r.path);
    field(out, first, "prevHash", &r.prev_hash);
    field(out, first, "requestId", &r.request_id);
    field(out, first, "seq", &r.seq);
    field(out, first, "status", &r.status);
    field(out, first, "time", &r.time);
    out.push(b'}');
}

/// The canonical JSON of `r` without its `hash` field (what the chain hashes), and the
/// position where `,"hash":"…"` goes to make the log line.
pub(crate) fn unhashed(r: &AuditRecord) -> (Vec<u8>, usize) {
    let mut out = Vec::with_capacity(512);
    before_hash(r, &mut out);
    let at = out.len();
    after_hash(r, &mut out);
    (out, at)
}

/// The log line of `r` (canonical JSON with its `hash`) from [`unhashed`]'s output.
pub(crate) fn with_hash(unhashed: &[u8], at: usize, hash: &str) -> String {
    let mut line = Vec::with_capacity(unhashed.len() + hash.len() + 12);
    line.extend_from_slice(&unhashed[..at]);
    field(&mut line, &mut false, "hash", hash);
    line.extend_from_slice(&unhashed[at..]);
    // Only UTF-8 strings and ASCII went in.
    String::from_utf8(line).unwrap_or_default()
}

/// The canonical JSON of `r` with its `hash` (the log line, without the newline).
pub(crate) fn line(r: &AuditRecord) -> String {
    let (u, at) = unhashed(r);
    with_hash(&u, at, &r.hash)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{AuditChain, Checkpoint, canonical_json, record_value, verify_lines};

    fn records() -> Vec<AuditRecord> {
        let base = AuditRecord {
            time: "2026-12-07T06:00:00.123456Z".into(),
            request_id: "0b7c3c1e-2d2f-4c49-9d0e-6f3f3b0f1a2b".into(),
            partition: "p0".into(),
            caller: "local-admin".into(),
            client_address: "127.0.0.1:50000".into(),
            method: "POST".into(),
            path: "/keys/k1/0123/sign".into(),
            operation: "KeySign".into(),
            status: 200,
            latency_ms: 1.234,
            seq: 7,
            prev_hash: "ab".repeat(32),
            hash: "cd".repeat(32),
            ..AuditRecord::default()
        };
        let mut all = vec![AuditRecord::default(), base.clone()];
        let mut full = base.clone();
        full.data_action = Some("Microsoft.KeyVault/managedHsm/keys/sign/action".into());
        full.key_name = Some("k\"1\\ \u{e9}\u{1F511}\n\t\u{7}".into());
        full.key_version = Some(String::new());
        full.member = Some("p2".into());
        full.member_id = Some(u64::MAX);
        full.intent = true;
        full.status = 0;
        full.error_code = Some("Forbidden".into());
        full.latency_ms = 0.0;
        full.checkpoint = Some(Checkpoint {
            key_id: "ef".repeat(32),
            signature: "MEUCIQ-_".into(),
        });
        all.push(full);
        for latency in [f64::NAN, 1e21, 3.0, 1e-7, 12345.678] {
            let mut r = base.clone();
            r.latency_ms = latency;
            r.caller = "ünïcödé \u{2028}".into();
            all.push(r);
        }
        all
    }

    #[test]
    fn the_line_is_the_generic_canonical_json_byte_for_byte() {
        for r in records() {
            assert_eq!(line(&r), canonical_json(&record_value(&r)), "{r:?}");
            let mut unhashed_record = r.clone();
            unhashed_record.hash = String::new();
            let mut generic = record_value(&unhashed_record);
            if let serde_json::Value::Object(m) = &mut generic {
                m.remove("hash");
            }
            let (u, _) = unhashed(&r);
            assert_eq!(String::from_utf8(u).unwrap(), canonical_json(&generic));
        }
    }

    #[test]
    fn sealed_lines_verify_with_the_generic_checker() {
        let mut chain = AuditChain::new();
        let mut text = String::new();
        for r in records() {
            let (sealed, l) = chain.seal_line(r);
            assert_eq!(l, sealed.to_json_line());
            text.push_str(&l);
            text.push('\n');
        }
        let report = verify_lines(text.as_bytes()).unwrap();
        assert_eq!(report.records, records().len() as u64);
    }
}
