//! Batched read-index: one leadership confirmation serves every read that arrived before it
//! started.
//!
//! A linearizable read needs the leader's commit index as of a moment after the read
//! arrived, confirmed by a quorum (openraft's `get_read_log_id`: a round of heartbeats).
//! Done per request, every signature costs the leader two peer round trips and the
//! followers two requests each. Here concurrent reads share rounds: a read joins the *next*
//! round (never one already in flight, which may have started before it arrived). One round
//! runs at a time and takes every read waiting when it starts; only when the round in flight
//! is slow (older than `SLOW_ROUND`) may another start beside it, up to `MAX_ROUNDS`. Under
//! load this is one confirmation per round trip instead of one per request; alone, a read
//! waits for exactly one round, as before.
//!
//! Overlapping rounds freely (a new round for every read that found all running rounds
//! busy, as from 37eec2f) split the waiting reads into more, smaller rounds — twice the
//! rounds per request: ES256 sign on a pinned pool cost ~95 µs of pool CPU per request
//! instead of ~74 µs (the extra heartbeats over HTTPS to both followers and their answers;
//! docs/benchmarks.md, issue 15).

use super::client::PeerClient;
use super::{Raft, ReadIndexReply, member_url};
use crate::config::PeerSettings;
use openraft::error::{CheckIsLeaderError, RaftError};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;

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

/// Rounds in flight at once. One suffices while rounds are quick (cheap reads under load
/// share it); when a round is slow — a follower busy appending and syncing a burst of writes
/// answers the leadership heartbeat late — a few overlapping rounds keep readers and writers
/// (every request passes the barrier) from queueing behind it.
const MAX_ROUNDS: usize = 4;

/// A round in flight for longer than this is slow: a read arriving meanwhile may start
/// another beside it (rounds on loopback take well under a millisecond).
const SLOW_ROUND: Duration = Duration::from_millis(10);

#[derive(Default)]
struct Queue {
    running: usize,
    /// When the latest round started.
    last_start: Option<std::time::Instant>,
    next: Vec<oneshot::Sender<RoundResult>>,
}

impl Queue {
    /// Whether a read that just queued should start a round of its own.
    fn start_another(&self) -> bool {
        self.running == 0
            || (self.running < MAX_ROUNDS
                && self.last_start.is_none_or(|t| t.elapsed() >= SLOW_ROUND))
    }
}

/// Shares leadership confirmations between concurrent reads.
pub struct Batcher {
    mode: Mode,
    raft: Raft,
    client: Arc<PeerClient>,
    peers: Vec<PeerSettings>,
    queue: Arc<Mutex<Queue>>,
}

impl Batcher {
    pub fn new(mode: Mode, raft: Raft, client: Arc<PeerClient>, peers: Vec<PeerSettings>) -> Self {
        Batcher {
            mode,
            raft,
            client,
            peers,
            queue: Arc::default(),
        }
    }

    /// The read index of a round that started after this call.
    pub async fn read_index(&self) -> RoundResult {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            q.next.push(tx);
            let start = q.start_another();
            if start {
                q.running += 1;
                q.last_start = Some(std::time::Instant::now());
            }
            start
        };
        if start {
            let (mode, raft, client, peers, queue) = (
                self.mode,
                self.raft.clone(),
                self.client.clone(),
                self.peers.clone(),
                self.queue.clone(),
            );
            tokio::spawn(async move {
                loop {
                    let waiters = {
                        let mut q = queue.lock().unwrap_or_else(|p| p.into_inner());
                        if q.next.is_empty() {
                            q.running -= 1;
                            return;
                        }
                        q.last_start = Some(std::time::Instant::now());
                        std::mem::take(&mut q.next)
                    };
                    // Every waiter taken here arrived before this round starts.
                    let r = round(mode, &raft, &client, &peers).await;
                    for w in waiters {
                        let _ = w.send(r.clone());
                    }
                }
            });
        }
        rx.await
            .unwrap_or_else(|_| Err("the read-index round was dropped".into()))
    }
}

/// One leadership confirmation (2 s), or one question to the leader (3 s).
async fn round(
    mode: Mode,
    raft: &Raft,
    client: &PeerClient,
    peers: &[PeerSettings],
) -> RoundResult {
    match tokio::time::timeout(Duration::from_secs(2), raft.get_read_log_id()).await {
        Err(_) => Err("leadership not confirmed by a quorum in time".into()),
        Ok(Ok((read, _))) => Ok(read.map(|l| l.index).unwrap_or(0)),
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
