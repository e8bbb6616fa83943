//! What a partition reads back from its data directory at start-up, through the real
//! `open` functions. Mode byte: 0 the Raft log (`raft/log.jsonl`, `LogStore::open`); 1 the
//! vote (`raft/vote.json`); 2 the state machine's snapshot (`raft/snapshot.json`,
//! `StateMachine::open`); 3 the single store's command log (`commands.log`,
//! `SingleStore::open`, which replays every command into the state); 4 its snapshot.
//! A corrupt file must give an error, never a panic.
#![no_main]

use keystead_partition::consensus::raft::log_store::LogStore;
use keystead_partition::consensus::raft::state_machine::StateMachine;
use keystead_partition::consensus::single::SingleStore;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, body)) = data.split_first() else {
        return;
    };
    let dir = keystead_fuzz::scratch_dir("raft-disk");
    match mode % 5 {
        0 | 1 => {
            let name = if mode % 5 == 0 {
                "log.jsonl"
            } else {
                "vote.json"
            };
            std::fs::write(dir.join(name), body).expect("write");
            if let Ok(store) = LogStore::open(&dir) {
                let _ = store.is_pristine();
            }
        }
        2 => {
            std::fs::write(dir.join("snapshot.json"), body).expect("write");
            if let Ok(sm) = StateMachine::open(dir.clone()) {
                let _ = sm.shared.applied();
            }
        }
        m => {
            let name = if m == 3 {
                "commands.log"
            } else {
                "snapshot.json"
            };
            std::fs::write(dir.join(name), body).expect("write");
            let _ = SingleStore::open(&dir);
        }
    }
});
