//! The audit log: `audit::verify_lines` (what `kubectl hsm audit verify` runs) and
//! `AuditChain::resume` on its last line (what a partition does at start-up). A log that
//! verifies can be resumed, and the resumed chain continues after its last record.
#![no_main]

use keystead_core::audit::{self, AuditChain, AuditRecord};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let verdict = audit::verify_lines(std::io::Cursor::new(data));
    let text = String::from_utf8_lossy(data);
    let last = text.lines().rev().find(|l| !l.trim().is_empty());
    let resumed = AuditChain::resume(last);
    if let Ok(report) = verdict
        && std::str::from_utf8(data).is_ok()
    {
        let mut chain = resumed.expect("a verified log resumes");
        assert_eq!(chain.last_hash(), report.last_hash);
        let next = chain.seal(AuditRecord::default());
        assert_eq!(next.prev_hash, report.last_hash);
        if let Some(last_seq) = report.last_seq {
            assert_eq!(next.seq, last_seq.saturating_add(1));
        }
    }
});
