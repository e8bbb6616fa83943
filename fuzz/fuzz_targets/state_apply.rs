//! The replicated state machine's commands (`PoolState::apply`), as they arrive from the
//! Raft log, a snapshot replay or a peer. Input: commands as JSON lines, applied in order to
//! one state. Invariants: a refused command leaves the state exactly as it was; `precheck`
//! agrees with `apply`; the state survives a snapshot round trip.
#![no_main]

use keystead_partition::state::{Command, PoolState};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut state = PoolState::default();
    for line in data.split(|b| *b == b'\n').take(64) {
        let Ok(cmd) = serde_json::from_slice::<Command>(line) else {
            continue;
        };
        let before = state.clone();
        let pre = state.precheck(&cmd);
        let result = state.apply(&cmd);
        if let Some(pre) = pre {
            assert_eq!(
                pre.is_ok(),
                result.is_ok(),
                "precheck {pre:?} disagrees with apply {result:?}"
            );
        }
        if let Err(e) = &result {
            assert_eq!(state, before, "refused command ({e}) changed the state");
            assert!(!e.to_string().is_empty());
        }
    }
    let json = serde_json::to_vec(&state).expect("the state serializes");
    let back: PoolState = serde_json::from_slice(&json).expect("a snapshot of the state parses");
    assert_eq!(back, state, "snapshot round trip changed the state");
});
