//! Append-only JSON-lines logs (the Raft log, a pool of one's command log): reading back the
//! complete records after a crash.

use crate::fsutil::sync_dir;
use anyhow::Context;
use serde::de::DeserializeOwned;
use std::fs::File;
use std::path::Path;

/// A record that cannot be read although complete records follow it (not a cut-off write).
#[derive(Debug)]
pub struct Damaged {
    /// Byte offset and 1-based line of the record.
    pub byte: usize,
    pub line: usize,
    pub error: serde_json::Error,
}

/// Pass each complete record of `bytes` to `each`, in order, with its length in bytes
/// (newline included: what appending it wrote); returns the length of the
/// complete prefix. The last line may be cut off by a crash (no newline, or not a whole
/// record): it is left out of the prefix. Blank lines are skipped.
pub fn read_complete<T: DeserializeOwned>(
    bytes: &[u8],
    mut each: impl FnMut(T, usize),
) -> Result<usize, Damaged> {
    let mut complete_len = 0;
    let mut start = 0;
    let mut line = 0;
    while start < bytes.len() {
        line += 1;
        let Some(end) = bytes[start..].iter().position(|&b| b == b'\n') else {
            // No newline: the write of this record was cut off.
            break;
        };
        let end = start + end;
        let record = &bytes[start..end];
        let next = end + 1;
        if !record.iter().all(u8::is_ascii_whitespace) {
            match serde_json::from_slice(record) {
                Ok(r) => each(r, next - start),
                // The last line, damaged: a cut-off write too.
                Err(_) if next == bytes.len() => break,
                Err(error) => {
                    return Err(Damaged {
                        byte: start,
                        line,
                        error,
                    });
                }
            }
        }
        start = next;
        complete_len = next;
    }
    Ok(complete_len)
}

/// The bytes of the log at `path` (`what`: "the Raft log") and whether the file existed.
pub fn read_log(path: &Path, what: &str) -> anyhow::Result<(Vec<u8>, bool)> {
    match std::fs::read(path) {
        Ok(b) => Ok((b, true)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok((Vec::new(), false)),
        Err(e) => Err(e).with_context(|| format!("cannot read {what} {}", path.display())),
    }
}

/// After the log at `path` (`len` bytes read, `complete_len` of them complete records) was
/// replayed and `file` opened on it: cut an incomplete last record (a write cut off by a
/// crash, never acknowledged) off the file durably before anything is appended, and fsync
/// the directory when the file was just created.
pub fn settle_log(
    file: &File,
    path: &Path,
    what: &str,
    complete_len: usize,
    len: usize,
    existed: bool,
) -> anyhow::Result<()> {
    if complete_len < len {
        tracing::warn!(
            file = %path.display(),
            at = complete_len,
            bytes = len - complete_len,
            "{what} ends with an incomplete record (a write cut off by a crash, never acknowledged); removing it"
        );
        // `complete_len` is at most the file's length, which fits in u64.
        let cut = u64::try_from(complete_len).unwrap_or(u64::MAX);
        file.set_len(cut)
            .and_then(|()| file.sync_all())
            .with_context(|| {
                format!(
                    "cannot cut the incomplete last record off {what} {} at byte {cut}",
                    path.display()
                )
            })?;
    }
    if !existed && let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        sync_dir(dir).with_context(|| format!("cannot fsync the directory {}", dir.display()))?;
    }
    // What was replayed is made durable before anything acts on it: records written
    // without an fsync of their own by the last run (a committed marker) could otherwise
    // still be lost to a power loss after this run relied on them.
    file.sync_data()
        .with_context(|| format!("cannot fsync {what} {}", path.display()))?;
    crate::fsutil::note_durable(path, file);
    Ok(())
}

/// The torn-write tests of the logs that use this module: tear a log inside its last record
/// at every byte offset, then check what survives.
#[cfg(test)]
pub mod tearing {
    /// Every length that cuts `intact` (a log ending with a newline) inside its last record.
    pub fn cuts_in_last_record(intact: &[u8]) -> std::ops::Range<usize> {
        let last_start = intact[..intact.len() - 1]
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |p| p + 1);
        last_start..intact.len()
    }

    /// Fail naming every cut of `cuts` after which data was lost (`failures`).
    pub fn assert_no_lost_cuts(failures: &[String], cuts: &std::ops::Range<usize>) {
        assert!(
            failures.is_empty(),
            "{} of {} cuts inside the last record (bytes {}..{}) lost data:\n{}",
            failures.len(),
            cuts.len(),
            cuts.start,
            cuts.end,
            failures.join("\n")
        );
    }
}
