//! Batched read-index: one leadership confirmation serves every read that arrived before it
//! started.
//!
//! A linearizable read needs the leader's commit index as of a moment after the read
//! arrived, confirmed by a quorum (openraft's `get_read_log_id`: a round of heartbeats).
//! Done per request, every signature costs the leader two peer round trips and the
//! followers two requests each. Here concurrent reads share rounds ([`super::rounds`]).

use super::client::PeerClient;
use super::lease::{self, Leases};
use super::rounds::{Policy, RoundFn, Rounds};
use super::{Raft, ReadIndexReply, member_url};
use crate::config::PeerSettings;
use openraft::error::{CheckIsLeaderError, RaftError};
use std::sync::Arc;
use std::time::Duration;

/// How one round finds the read index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Confirm leadership here, or ask the leader (`/internal/read-index`).
    Any,
    /// Only as the leader (answers `/internal/read-index` for followers).
    LeaderOnly,
}

/// One round's answer: the index to have applied, or why there is none (no leader reachable,
/// not the leader).
pub type RoundResult = Result<u64, String>;

/// One round at a time while rounds are quick (cheap reads under load share it); when a
/// round is slow — a follower busy appending and syncing a burst of writes answers the
/// leadership heartbeat late — a few overlapping rounds keep readers and writers (every
/// request passes the barrier) from queueing behind it. Rounds on loopback take well under
/// a millisecond. A round serves every read waiting.
const POLICY: Policy = Policy {
    max_rounds: 4,
    slow: Duration::from_millis(10),
    max_batch: usize::MAX,
};

/// Shares leadership confirmations between concurrent reads.
pub struct Batcher {
    rounds: Rounds<(), RoundResult>,
}

impl Batcher {
    pub fn new(
        mode: Mode,
        raft: Raft,
        client: Arc<PeerClient>,
        peers: Vec<PeerSettings>,
        leases: Arc<Leases>,
    ) -> Self {
        let round: RoundFn<(), RoundResult> = Arc::new(move |waiting: Vec<()>| {
            let (raft, client, peers) = (raft.clone(), client.clone(), peers.clone());
            let leases = leases.clone();
            Box::pin(async move {
                let r = round(mode, &raft, &client, &peers, &leases).await;
                vec![r; waiting.len()]
            })
        });
        Batcher {
            rounds: Rounds::new(POLICY, round),
        }
    }

    /// The read index of a round that started after this call.
    pub async fn read_index(&self) -> RoundResult {
        self.rounds
            .join(())
            .await
            .unwrap_or_else(|| Err("the read-index round was dropped".into()))
    }
}

/// One leadership confirmation (2 s), or one question to the leader (3 s). A confirmation
/// renews the leader's read lease (when leases are on), counted from before its heartbeats
/// were sent.
async fn round(
    mode: Mode,
    raft: &Raft,
    client: &PeerClient,
    peers: &[PeerSettings],
    leases: &Leases,
) -> RoundResult {
    let sent = lease::now();
    let leading = match leases.enabled() {
        true => lease::leadership(raft).await.filter(|l| l.leading),
        false => None,
    };
    match tokio::time::timeout(Duration::from_secs(2), raft.get_read_log_id()).await {
        Err(_) => Err("leadership not confirmed by a quorum in time".into()),
        Ok(Ok((read, _))) => {
            let index = read.map(|l| l.index).unwrap_or(0);
            // The term and membership seen before the round: if either changed meanwhile,
            // the lease recorded does not match them and is not used.
            if let Some(l) = leading {
                leases.confirmed(l.term, l.membership, index, sent);
            }
            Ok(index)
        }
        Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)))) => {
            if mode == Mode::LeaderOnly {
                return Err("not the leader".into());
            }
            let (Some(id), Some(node)) = (f.leader_id, f.leader_node) else {
                return Err("no known leader".into());
            };
            let url = member_url(peers, id, &node);
            client
                .get::<ReadIndexReply>(&url, "/internal/read-index", Duration::from_secs(3))
                .await
                .map(|r| r.index)
                .map_err(|e| e.to_string())
        }
        Ok(Err(e)) => Err(e.to_string()),
    }
}
