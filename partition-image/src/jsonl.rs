//! Append-only JSON-lines logs (the Raft log, a pool of one's command log): reading back the
//! complete records after a crash.

use serde::de::DeserializeOwned;

/// A record that cannot be read although complete records follow it (not a cut-off write).
#[derive(Debug)]
pub struct Damaged {
    /// Byte offset and 1-based line of the record.
    pub byte: usize,
    pub line: usize,
    pub error: serde_json::Error,
}

/// Pass each complete record of `bytes` to `each`, in order; returns the length of the
/// complete prefix. The last line may be cut off by a crash (no newline, or not a whole
/// record): it is left out of the prefix. Blank lines are skipped.
pub fn read_complete<T: DeserializeOwned>(
    bytes: &[u8],
    mut each: impl FnMut(T),
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
                Ok(r) => each(r),
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
