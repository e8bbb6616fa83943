//! Writes taken by a follower, forwarded to the leader in batches.
//!
//! Concurrent writes at a follower share one peer request (`POST /internal/forward-batch`,
//! a JSON array of commands) instead of one request each ([`super::rounds`]): under load the
//! follower and the leader parse, encrypt and route one HTTP request per round trip instead
//! of one per write. The leader proposes a batch's commands concurrently (openraft appends
//! them together) and answers, in order, the index each was committed at, or why not. Alone,
//! a write waits for exactly one round, as with a request of its own.
//!
//! A leader that does not know the batch route (an older version, during a rolling upgrade)
//! answers 404 before doing anything: the batch is then sent one command at a time to
//! `/internal/forward`, which every version serves.

use super::client::{PeerClient, PeerError};
use super::rounds::{Policy, RoundFn, Rounds};
use super::{ForwardReply, LEADER_WAIT, Raft, member_url};
use crate::config::PeerSettings;
use crate::state::Command;
use openraft::error::{ClientWriteError, RaftError};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

/// The leader's answer for one command of a batch.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum Forwarded {
    /// Committed (and applied on the leader) at this log index.
    Index(u64),
    /// This partition is not the leader: nothing was done.
    NotLeader,
    /// The leader's Raft member failed with the command in hand: it may still be committed.
    Failed(String),
}

/// What a forwarded write came to, at the follower.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Forward {
    /// Committed at this log index.
    Committed(u64),
    /// Certainly not done (no leader known, the leader changed, the leader not reachable):
    /// safe to try again.
    Retry(String),
    /// Certainly not done, and trying again would fail the same way (the change cannot be
    /// sent at all).
    Failed(String),
    /// Maybe done: the leader did not confirm it.
    Uncertain(String),
}

/// Bytes of commands one forward request carries at most (a command is at most the API's
/// request body, 4 MiB; the peer API accepts 32 MiB).
const REQUEST_BYTES: usize = 8 * 1024 * 1024;

/// One round at a time while rounds are quick; a slow one (a burst being committed) lets up
/// to three more start beside it, so that a write does not wait behind a round for long.
const POLICY: Policy = Policy {
    max_rounds: 4,
    slow: Duration::from_millis(5),
    max_batch: 128,
};

/// Forwards this follower's writes to the leader in shared requests.
pub struct Forwarder {
    rounds: Rounds<Vec<u8>, Forward>,
}

impl Forwarder {
    pub fn new(raft: Raft, client: Arc<PeerClient>, peers: Vec<PeerSettings>) -> Self {
        let round: RoundFn<Vec<u8>, Forward> = Arc::new(move |commands: Vec<Vec<u8>>| {
            let (raft, client, peers) = (raft.clone(), client.clone(), peers.clone());
            Box::pin(async move { round(&raft, &client, &peers, commands).await })
        });
        Forwarder {
            rounds: Rounds::new(POLICY, round),
        }
    }

    /// Forward `cmd` to the leader in the next round.
    pub async fn forward(&self, cmd: &Command) -> Forward {
        let bytes = match serde_json::to_vec(cmd) {
            Ok(b) => b,
            Err(e) => return Forward::Failed(format!("the change does not serialize: {e}")),
        };
        self.rounds
            .join(bytes)
            .await
            .unwrap_or_else(|| Forward::Uncertain("the forwarding round was dropped".into()))
    }
}

/// Send `commands` (serialized) to the current leader, in requests of at most
/// [`REQUEST_BYTES`] each (and at least one command).
async fn round(
    raft: &Raft,
    client: &PeerClient,
    peers: &[PeerSettings],
    commands: Vec<Vec<u8>>,
) -> Vec<Forward> {
    let leader = {
        let m = raft.metrics();
        let m = m.borrow();
        // This partition leading now: the caller proposes here again.
        m.current_leader.filter(|l| *l != m.id).and_then(|id| {
            m.membership_config
                .membership()
                .nodes()
                .find(|(n, _)| **n == id)
                .map(|(_, node)| (id, node.clone()))
        })
    };
    let Some((id, node)) = leader else {
        let why = "no other partition is known to lead".to_string();
        return vec![Forward::Retry(why); commands.len()];
    };
    let url = member_url(peers, id, &node);
    let mut out = Vec::with_capacity(commands.len());
    let mut chunk: Vec<Vec<u8>> = Vec::new();
    let mut chunk_bytes = 0;
    let mut commands = commands.into_iter().peekable();
    while let Some(c) = commands.next() {
        chunk_bytes += c.len() + 1;
        chunk.push(c);
        let full = commands
            .peek()
            .is_none_or(|n| chunk_bytes + n.len() + 1 > REQUEST_BYTES);
        if full {
            out.extend(send(client, &url, &node.name, std::mem::take(&mut chunk)).await);
            chunk_bytes = 0;
        }
    }
    out
}

/// One forward request with `chunk` (one entry per command).
async fn send(client: &PeerClient, url: &str, leader: &str, chunk: Vec<Vec<u8>>) -> Vec<Forward> {
    let n = chunk.len();
    let mut body = Vec::with_capacity(chunk.iter().map(|c| c.len() + 1).sum::<usize>() + 1);
    body.push(b'[');
    for (i, c) in chunk.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(c);
    }
    body.push(b']');
    let answer = client
        .post_raw::<Vec<Forwarded>>(url, "/internal/forward-batch", body, LEADER_WAIT)
        .await;
    match answer {
        Ok(items) if items.len() == n => items
            .into_iter()
            .map(|f| match f {
                Forwarded::Index(i) => Forward::Committed(i),
                Forwarded::NotLeader => Forward::Retry(format!("{leader} is no longer the leader")),
                Forwarded::Failed(e) => Forward::Uncertain(format!(
                    "the leader {leader} did not confirm the change: {e}"
                )),
            })
            .collect(),
        Ok(items) => vec![
            Forward::Uncertain(format!(
                "the leader {leader} answered {} results for {n} forwarded changes",
                items.len()
            ));
            n
        ],
        // An older leader without the batch route (nothing was done): one at a time.
        Err(PeerError::Status(_, 404, _)) => {
            let mut out = Vec::with_capacity(n);
            for c in chunk {
                out.push(one(client, url, leader, c).await);
            }
            out
        }
        Err(e) => vec![failed(leader, &e); n],
    }
}

/// `/internal/forward` with one command.
async fn one(client: &PeerClient, url: &str, leader: &str, command: Vec<u8>) -> Forward {
    match client
        .post_raw::<ForwardReply>(url, "/internal/forward", command, LEADER_WAIT)
        .await
    {
        Ok(r) => Forward::Committed(r.index),
        Err(e) => failed(leader, &e),
    }
}

fn failed(leader: &str, e: &PeerError) -> Forward {
    if e.not_sent() {
        Forward::Retry(e.to_string())
    } else {
        Forward::Uncertain(format!(
            "the leader {leader} did not confirm the change: {e}"
        ))
    }
}

/// The leader's side: propose every command of a batch at once, and say what became of each.
pub async fn serve_batch(raft: &Raft, commands: Vec<Command>) -> Vec<Forwarded> {
    let writes = commands.into_iter().map(|cmd| async move {
        match raft.client_write(cmd).await {
            Ok(r) => Forwarded::Index(r.log_id.index),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => Forwarded::NotLeader,
            Err(e) => Forwarded::Failed(e.to_string()),
        }
    });
    futures::future::join_all(writes).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PartitionConfig;
    use crate::local::{LocalOptions, prepare};
    use axum::Json;
    use axum::routing::post;
    use std::sync::Mutex;

    /// A leader of an older version has no batch route: it answers 404 without doing
    /// anything, and the follower sends the batch's commands one at a time, in order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_leader_without_the_batch_route_gets_the_commands_one_by_one_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (configs, _) = prepare(&LocalOptions {
            dir: dir.path().to_path_buf(),
            partitions: 3,
            pool_name: "forward".into(),
            extend: None,
            read_consistency: None,
        })
        .expect("prepare a local pool's files");
        let follower = PartitionConfig::load(&configs[0]).expect("config of p0");
        let leader = PartitionConfig::load(&configs[1]).expect("config of p1");
        let (cert, key, _) = crate::tls::read_files(&leader.tls).expect("p1's TLS files");
        let tls = crate::tls::server_config(&cert, &key, None).expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("address").port();

        // The old leader: `/internal/forward` only; anything else is axum's 404.
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let batch_calls: Arc<Mutex<u32>> = Arc::default();
        let (s, b) = (seen.clone(), batch_calls.clone());
        let router = axum::Router::new()
            .route(
                "/internal/forward",
                post(move |Json(cmd): Json<Command>| {
                    let s = s.clone();
                    async move {
                        let mut s = s.lock().unwrap();
                        s.push(serde_json::to_string(&cmd).unwrap());
                        Json(ForwardReply {
                            index: 100 + s.len() as u64,
                        })
                    }
                }),
            )
            .fallback(move || {
                *b.lock().unwrap() += 1;
                async { (axum::http::StatusCode::NOT_FOUND, "no such peer operation") }
            });
        let server = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (acceptor, router) = (acceptor.clone(), router.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = hyper_util::service::TowerToHyperService::new(router);
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                    .await;
                });
            }
        });

        let client = PeerClient::new(&follower).expect("the follower's peer client");
        let mut url = url::Url::parse(
            &follower
                .peers
                .iter()
                .find(|p| p.name == leader.partition_id)
                .expect("p1 among p0's peers")
                .url,
        )
        .expect("peer URL");
        url.set_port(Some(port)).expect("port");
        let commands: Vec<Command> = (1..=3).map(|now| Command::PurgeExpired { now }).collect();
        let serialized: Vec<Vec<u8>> = commands
            .iter()
            .map(|c| serde_json::to_vec(c).unwrap())
            .collect();
        let out = send(&client, url.as_str(), "p1", serialized.clone()).await;
        assert_eq!(
            out,
            vec![
                Forward::Committed(101),
                Forward::Committed(102),
                Forward::Committed(103)
            ]
        );
        assert_eq!(
            *batch_calls.lock().unwrap(),
            1,
            "the batch route was tried once"
        );
        let expected: Vec<String> = serialized
            .into_iter()
            .map(|b| String::from_utf8(b).unwrap())
            .collect();
        assert_eq!(*seen.lock().unwrap(), expected, "one by one, in order");
        server.abort();
    }
}
