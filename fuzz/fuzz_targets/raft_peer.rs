//! Request bodies of the peer API (`/internal/...`) as `replica::peer` decodes them. Mode
//! byte: 0 Raft append-entries, 1 vote, 2 install-snapshot (its data is a state-machine
//! snapshot), 3 a forwarded command (applied to a pool state), 4 a domain hand-over request,
//! 5 a membership request. Each must round-trip.
#![no_main]

use keystead_fuzz::json_round_trip as rt;
use keystead_partition::consensus::raft::TypeConfig;
use keystead_partition::service::members::MembershipRequest;
use keystead_partition::service::sd::DomainRequest;
use keystead_partition::state::{Command, PoolState};
use libfuzzer_sys::fuzz_target;
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};

fn apply(cmd: &Command) {
    let mut state = PoolState::default();
    let before = state.clone();
    if state.apply(cmd).is_err() {
        assert_eq!(state, before, "a refused command changed the state");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, body)) = data.split_first() else {
        return;
    };
    match mode % 6 {
        0 => {
            if let Some(req) = rt::<AppendEntriesRequest<TypeConfig>>(body) {
                for e in &req.entries {
                    if let openraft::EntryPayload::Normal(cmd) = &e.payload {
                        apply(cmd);
                    }
                }
            }
        }
        1 => {
            let _ = rt::<VoteRequest<u64>>(body);
        }
        2 => {
            if let Some(req) = rt::<InstallSnapshotRequest<TypeConfig>>(body) {
                // The receiving state machine decodes the data as its snapshot file.
                let dir = keystead_fuzz::scratch_dir("peer-snapshot");
                std::fs::write(dir.join("snapshot.json"), &req.data).expect("write");
                let _ = keystead_partition::consensus::raft::state_machine::StateMachine::open(dir);
            }
        }
        3 => {
            if let Some(cmd) = rt::<Command>(body) {
                apply(&cmd);
            }
        }
        4 => {
            if let Ok(r) = serde_json::from_slice::<DomainRequest>(body) {
                let _ = keystead_core::sd::ExchangeCertificate::parse(&r.exchange_certificate);
            }
        }
        _ => {
            if let Some(r) = rt::<MembershipRequest>(body) {
                let _ = r.audit_operation();
                let _ = r.audit_member();
            }
        }
    }
});
