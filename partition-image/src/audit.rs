//! The partition's audit sink: one hash-chained JSON line per request, appended to a file
//! (mode 0600) and optionally echoed to stdout. The record format and the chain are
//! [`keystead_core::audit`]; a record has no field that could carry a token or key material.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub use keystead_core::audit::{AuditChain, AuditRecord, GENESIS_HASH};

/// The audit log cannot be opened or written.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("cannot open the audit log {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the audit log {path} ends with a damaged record ({reason}); refusing to continue the chain. Check it with `kubectl hsm audit verify {path}`, move the file aside as evidence, and restart (a new chain will begin)"
    )]
    DamagedTail { path: PathBuf, reason: String },
    #[error("cannot write the audit log {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Where audit records go.
#[derive(Debug, Clone, Default)]
pub struct AuditSinkConfig {
    /// The audit file (created with mode 0600 if missing, appended to otherwise).
    pub path: PathBuf,
    /// Also write each record as one JSON line to stdout.
    pub stdout: bool,
    /// Signs a checkpoint when the sink opens and after every [`CHECKPOINT_EVERY`] records.
    pub signer: Option<std::sync::Arc<CheckpointSigner>>,
}

/// Records between two signed checkpoints.
pub const CHECKPOINT_EVERY: u64 = 256;

/// The partition's identity key (its P-256 TLS key), used to sign audit checkpoints.
pub struct CheckpointSigner {
    partition: String,
    key: aws_lc_rs::signature::EcdsaKeyPair,
    key_id: String,
}

impl std::fmt::Debug for CheckpointSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointSigner")
            .field("partition", &self.partition)
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl CheckpointSigner {
    /// From the partition's TLS private key (PKCS#8 PEM, ECDSA P-256).
    pub fn from_pem_file(partition: &str, path: &Path) -> Result<Self, String> {
        use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair};
        use rustls::pki_types::PrivatePkcs8KeyDer;
        use rustls::pki_types::pem::PemObject;
        let der = PrivatePkcs8KeyDer::from_pem_file(path).map_err(|e| {
            format!(
                "cannot read a PKCS#8 private key from {}: {e}",
                path.display()
            )
        })?;
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, der.secret_pkcs8_der())
            .map_err(|_| {
                format!(
                    "{} is not a PKCS#8 ECDSA P-256 key; audit checkpoints need one",
                    path.display()
                )
            })?;
        let key_id =
            keystead_core::audit::CheckpointKey::from_public_point(key.public_key().as_ref())
                .key_id;
        Ok(Self {
            partition: partition.to_owned(),
            key,
            key_id,
        })
    }

    fn checkpoint(&self, chain: &mut AuditChain) -> AuditRecord {
        use base64::Engine;
        let base = AuditRecord {
            time: now_rfc3339(),
            request_id: uuid::Uuid::new_v4().to_string(),
            partition: self.partition.clone(),
            caller: format!("partition:{}", self.partition),
            client_address: "-".into(),
            method: "-".into(),
            path: "-".into(),
            ..AuditRecord::default()
        };
        chain.seal_checkpoint(base, |msg| {
            let sig = self
                .key
                .sign(&aws_lc_rs::rand::SystemRandom::new(), msg)
                .map(|s| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s.as_ref()))
                .unwrap_or_default();
            keystead_core::audit::Checkpoint {
                key_id: self.key_id.clone(),
                signature: sig,
            }
        })
    }
}

struct Inner {
    file: File,
    /// The file's length (regular files only): where a partly written line is cut off
    /// again, kept here instead of asking the file system before every record.
    len: Option<u64>,
    chain: AuditChain,
    /// Records written since the last checkpoint.
    since_checkpoint: u64,
}

/// Thread-safe writer of the audit chain.
pub struct AuditSink {
    path: PathBuf,
    stdout: bool,
    inner: Mutex<Inner>,
    signer: Option<std::sync::Arc<CheckpointSigner>>,
    /// Records that could not be written (`keystead_audit_write_failures_total`).
    failures: AtomicU64,
    /// When a lost record was last logged (at most one log line per interval).
    last_logged: Mutex<Option<Instant>>,
}

/// Lost records are logged at most once per this interval (with the count since).
const FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(10);

impl std::fmt::Debug for AuditSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditSink")
            .field("path", &self.path)
            .field("stdout", &self.stdout)
            .finish_non_exhaustive()
    }
}

/// The current time as RFC 3339 UTC (for [`AuditRecord::time`]).
pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Reads the last non-empty line of `file` (reading backwards from the end) and whether the
/// file ends with a newline.
fn last_line(file: &mut File) -> std::io::Result<(Option<String>, bool)> {
    let len = file.seek(SeekFrom::End(0))?;
    if len == 0 {
        return Ok((None, true));
    }
    let mut window: u64 = 64 * 1024;
    loop {
        let start = len.saturating_sub(window);
        file.seek(SeekFrom::Start(start))?;
        let mut buf = Vec::with_capacity((len - start) as usize);
        Read::by_ref(file).take(len - start).read_to_end(&mut buf)?;
        let ends_with_newline = buf.last() == Some(&b'\n');
        let trimmed_len = buf
            .iter()
            .rposition(|b| !b.is_ascii_whitespace())
            .map_or(0, |p| p + 1);
        if trimmed_len == 0 {
            if start == 0 {
                return Ok((None, ends_with_newline));
            }
            window = window.saturating_mul(4);
            continue;
        }
        let body = &buf[..trimmed_len];
        match body.iter().rposition(|b| *b == b'\n') {
            Some(nl) => {
                let line = String::from_utf8_lossy(&body[nl + 1..]).into_owned();
                return Ok((Some(line), ends_with_newline));
            }
            None if start == 0 => {
                return Ok((
                    Some(String::from_utf8_lossy(body).into_owned()),
                    ends_with_newline,
                ));
            }
            None => window = window.saturating_mul(4),
        }
    }
}

/// Cut `file` back to the end of its last complete line (after its last newline, or to
/// nothing), durably; the number of bytes removed.
fn cut_incomplete_tail(file: &mut File) -> std::io::Result<u64> {
    let len = file.seek(SeekFrom::End(0))?;
    let mut end = len;
    let mut keep = 0;
    while end > 0 {
        let start = end.saturating_sub(64 * 1024);
        file.seek(SeekFrom::Start(start))?;
        let mut buf = Vec::new();
        Read::by_ref(file).take(end - start).read_to_end(&mut buf)?;
        if let Some(nl) = buf.iter().rposition(|b| *b == b'\n') {
            keep = start + nl as u64 + 1;
            break;
        }
        end = start;
    }
    file.set_len(keep)?;
    file.sync_all()?;
    Ok(len - keep)
}

impl AuditSink {
    /// Opens (or creates, mode 0600) the audit file and resumes the chain from its last line.
    /// A damaged last line is an error: the partition must not start a chain it cannot link.
    pub fn open(config: &AuditSinkConfig) -> Result<Self, AuditError> {
        let path = config.path.clone();
        let stdout = config.stdout;
        let open_err = |source| AuditError::Open {
            path: path.clone(),
            source,
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(open_err)?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&path)
            .map_err(open_err)?;
        // An existing file may have been created with wider permissions. Only a regular
        // file: a device (`/dev/null`, `/dev/stderr`) is not the sink's to change.
        let meta = file.metadata().map_err(open_err)?;
        if meta.is_file() && meta.permissions().mode() & 0o077 != 0 {
            file.set_permissions(std::fs::Permissions::from_mode(0o600))
                .map_err(open_err)?;
        }
        let (mut last, mut ends_with_newline) = last_line(&mut file).map_err(open_err)?;
        if last.is_some() && !ends_with_newline && AuditChain::resume(last.as_deref()).is_err() {
            // An unreadable last record without its newline is a write cut off by a crash
            // or a power loss (records are complete with their newline): it never was a
            // record, so it is cut off and the chain goes on from the last complete one. A
            // damaged *complete* record is still refused below.
            let cut = cut_incomplete_tail(&mut file).map_err(open_err)?;
            tracing::warn!(file = %path.display(), bytes = cut, "the audit log ended with an incomplete record (a write cut off by a crash); removed it");
            (last, ends_with_newline) = last_line(&mut file).map_err(open_err)?;
        }
        let chain = AuditChain::resume(last.as_deref()).map_err(|e| AuditError::DamagedTail {
            path: path.clone(),
            reason: e.reason,
        })?;
        if last.is_some() && !ends_with_newline {
            file.write_all(b"\n").map_err(|source| AuditError::Write {
                path: path.clone(),
                source,
            })?;
        }
        let sink = Self {
            path,
            stdout,
            inner: Mutex::new(Inner {
                len: file
                    .metadata()
                    .ok()
                    .filter(|m| m.is_file())
                    .map(|m| m.len()),
                file,
                chain,
                since_checkpoint: 0,
            }),
            signer: config.signer.clone(),
            failures: AtomicU64::new(0),
            last_logged: Mutex::new(None),
        };
        // A checkpoint where this run starts: what came before is signed as found.
        if let Some(signer) = &sink.signer {
            let mut inner = sink.inner.lock().unwrap_or_else(|e| e.into_inner());
            let mut next = inner.chain.clone();
            let cp = signer.checkpoint(&mut next);
            // An unwritable log does not stop the partition: it is counted, and changes are
            // refused while their records cannot be written (see try_record).
            if let Err(e) = sink.append(&mut inner, next, &cp, cp.to_json_line()) {
                drop(inner);
                sink.failed(&e);
            }
        }
        Ok(sink)
    }

    /// The audit file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Hash of the last record written (an anchor for `kubectl hsm audit verify --expect-last-hash`).
    pub fn last_hash(&self) -> String {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.chain.last_hash().to_owned()
    }

    /// How many records could not be written since the partition started.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Writes `record` ([`AuditSink::try_record`]); a failure is counted and logged
    /// (tracing, error level, at most once per 10 s) rather than returned. Use `try_record`
    /// to fail the request instead.
    pub fn record(&self, record: AuditRecord) {
        let _ = self.try_record(record);
    }

    fn failed(&self, e: &AuditError) {
        let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        let mut last = self.last_logged.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_none_or(|t| t.elapsed() >= FAILURE_LOG_INTERVAL) {
            *last = Some(Instant::now());
            tracing::error!(error = %e, lost_since_start = n, "audit records cannot be written: changes are refused until the audit log is writable again");
        }
    }

    /// Seals `record` into the chain, appends it to the file (flushed, not fsynced) and, if
    /// configured, prints it to stdout. An empty `time` is set to now. Returns the sealed
    /// record. On a write error the chain does not advance and a partly written line is cut
    /// off again (where the file allows it), so the next record still links to the last
    /// complete one on disk. Failures are counted ([`AuditSink::failures`]) and logged.
    pub fn try_record(&self, record: AuditRecord) -> Result<AuditRecord, AuditError> {
        let r = self.write(record);
        if let Err(e) = &r {
            self.failed(e);
        }
        r
    }

    fn write(&self, mut record: AuditRecord) -> Result<AuditRecord, AuditError> {
        if record.time.is_empty() {
            record.time = now_rfc3339();
        }
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut next = inner.chain.clone();
        let (sealed, line) = next.seal_line(record);
        self.append(&mut inner, next, &sealed, line)?;
        inner.since_checkpoint += 1;
        if let Some(signer) = &self.signer
            && inner.since_checkpoint >= CHECKPOINT_EVERY
        {
            let mut next = inner.chain.clone();
            let cp = signer.checkpoint(&mut next);
            let line = cp.to_json_line();
            // The request's record is written; a checkpoint that cannot be is retried
            // after the next record (and counted as a failure).
            if let Err(e) = self.append(&mut inner, next, &cp, line) {
                self.failed(&e);
            }
        }
        Ok(sealed)
    }

    /// Append `sealed` (already sealed into `next`, a copy of the chain; `line` its log
    /// line) and advance the chain to `next`; on a write error the chain stays and a
    /// partial line is cut off.
    fn append(
        &self,
        inner: &mut Inner,
        next: AuditChain,
        sealed: &AuditRecord,
        mut line: String,
    ) -> Result<(), AuditError> {
        line.push('\n');
        let write_err = |source| AuditError::Write {
            path: self.path.clone(),
            source,
        };
        if let Err(e) = inner
            .file
            .write_all(line.as_bytes())
            .and_then(|()| inner.file.flush())
        {
            // Cut a partly written line off again (regular files only), and learn the
            // length anew if even that fails.
            if let Some(len) = inner.len
                && inner.file.set_len(len).is_err()
            {
                inner.len = inner
                    .file
                    .metadata()
                    .ok()
                    .filter(|m| m.is_file())
                    .map(|m| m.len());
            }
            return Err(write_err(e));
        }
        if let Some(len) = &mut inner.len {
            *len += line.len() as u64;
        }
        inner.chain = next;
        if sealed.checkpoint.is_some() {
            inner.since_checkpoint = 0;
        }
        if self.stdout {
            let mut out = std::io::stdout().lock();
            // stdout is a copy for log collection; the file is the record of truth.
            let _ = out.write_all(line.as_bytes()).and_then(|()| out.flush());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keystead_core::audit::verify_lines;
    use std::io::BufReader;
    use std::sync::Arc;

    fn rec(i: usize) -> AuditRecord {
        AuditRecord {
            request_id: format!("r{i}"),
            partition: "p0".into(),
            caller: "alice".into(),
            client_address: "127.0.0.1:1".into(),
            method: "GET".into(),
            path: "/keys?api-version=7.5".into(),
            operation: "KeyList".into(),
            status: 200,
            latency_ms: 1.5,
            ..AuditRecord::default()
        }
    }

    fn sink(path: &Path) -> Result<AuditSink, AuditError> {
        AuditSink::open(&AuditSinkConfig {
            path: path.to_path_buf(),
            stdout: false,
            signer: None,
        })
    }

    fn verify_file(path: &Path) -> keystead_core::audit::VerifyReport {
        verify_lines(BufReader::new(File::open(path).unwrap())).unwrap()
    }

    #[test]
    fn writes_a_verifiable_chain_with_private_permissions_and_resumes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/audit.log");
        let s = sink(&path).unwrap();
        for i in 0..3 {
            let sealed = s.try_record(rec(i)).unwrap();
            assert_eq!(sealed.seq, i as u64 + 1);
            assert!(!sealed.time.is_empty());
            assert_eq!(sealed.path, "/keys");
        }
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let last = s.last_hash();
        drop(s);
        assert_eq!(verify_file(&path).last_hash, last);
        let s = sink(&path).unwrap();
        assert_eq!(s.last_hash(), last);
        s.record(rec(3));
        let report = verify_file(&path);
        assert_eq!(report.records, 4);
        assert_eq!(report.last_seq, Some(4));
    }

    #[test]
    fn an_incomplete_last_record_is_cut_and_the_chain_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let s = sink(&path).unwrap();
        s.record(rec(0));
        s.record(rec(1));
        drop(s);
        let intact = std::fs::read(&path).unwrap();
        let last_start = intact[..intact.len() - 1]
            .iter()
            .rposition(|b| *b == b'\n')
            .unwrap()
            + 1;
        // A power loss tears the last record anywhere inside it, or leaves zeros after it.
        for cut in last_start + 1..intact.len() - 1 {
            let mut torn = intact[..cut].to_vec();
            if cut % 2 == 0 {
                torn.extend(std::iter::repeat_n(0u8, intact.len() - cut));
            }
            std::fs::write(&path, &torn).unwrap();
            let s = sink(&path).unwrap_or_else(|e| panic!("torn at {cut}: {e}"));
            s.record(rec(2));
            drop(s);
            let report = verify_file(&path);
            assert_eq!(
                report.records, 2,
                "torn at {cut}: the first record and the new one"
            );
        }
    }

    #[test]
    fn refuses_to_start_on_a_damaged_complete_last_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let s = sink(&path).unwrap();
        s.record(rec(0));
        drop(s);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"seq\":2,\"prevHa\n").unwrap();
        drop(f);
        let err = sink(&path).unwrap_err();
        assert!(matches!(err, AuditError::DamagedTail { .. }), "{err}");
        assert!(err.to_string().contains("kubectl hsm audit verify"));
    }

    #[test]
    fn a_missing_final_newline_is_repaired() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let mut chain = AuditChain::new();
        let line = chain.seal(rec(0)).to_json_line();
        std::fs::write(&path, &line).unwrap();
        let s = sink(&path).unwrap();
        s.record(rec(1));
        assert_eq!(verify_file(&path).records, 2);
    }

    #[test]
    fn resumes_a_log_larger_than_the_read_window() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let s = sink(&path).unwrap();
        for i in 0..600 {
            s.record(rec(i));
        }
        drop(s);
        assert!(std::fs::metadata(&path).unwrap().len() > 64 * 1024);
        let s = sink(&path).unwrap();
        assert_eq!(s.try_record(rec(600)).unwrap().seq, 601);
        assert_eq!(verify_file(&path).records, 601);
    }

    #[test]
    fn concurrent_writers_keep_one_chain() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let s = Arc::new(sink(&path).unwrap());
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let s = Arc::clone(&s);
                std::thread::spawn(move || {
                    for i in 0..50 {
                        s.record(rec(t * 100 + i));
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(verify_file(&path).records, 400);
    }

    #[test]
    fn widened_permissions_are_narrowed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        std::fs::write(&path, b"").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let _s = sink(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
