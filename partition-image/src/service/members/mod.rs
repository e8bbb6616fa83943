//! Membership of the pool's Raft group: the leader's side of `/admin/members`.
//!
//! Any partition accepts a membership request (authorised by the API layer) and forwards it
//! to the leader over the peer API (`POST /internal/members`), like a write. The leader plans
//! the change with the pure functions of `plan.rs` (what to do, or why it is refused), then
//! carries it out with openraft's joint-consensus membership changes:
//!
//! - **add**: the new member joins as a learner, the leader waits (bounded) until it has
//!   applied the pool's state and holds the domain of an activated pool, then promotes it to
//!   voter (unless a learner was asked for);
//! - **remove**: a learner is dropped; a voter is dropped only if at least [`MIN_VOTERS`]
//!   voters remain (or `force`, never the last voter) and the remaining voters have a
//!   reachable majority;
//! - **replace**: add the new member as above, then swap it for the old voter in one joint
//!   change.
//!
//! Every request is idempotent: repeating it after a timeout (202, leader change) continues
//! where it stopped. See `docs/replication.md` (Membership).

use super::app::App;
use crate::consensus::raft::client::PeerState;
use crate::consensus::raft::{LEADER_WAIT, Member, Replica};
use keystead_core::members::{MemberHealth, MemberInfo, MemberRole, MemberSpec, MembersView};
use openraft::ChangeMembers;
use openraft::error::{ClientWriteError, RaftError};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Voters a pool keeps unless a removal is forced: with three, it survives the loss of any
mod plan;
pub use plan::*;

/// one partition.
pub const MIN_VOTERS: usize = 3;
/// How long the leader waits for a new member to catch up before answering 202.
pub const CATCH_UP_WAIT: Duration = Duration::from_secs(60);
/// Timeout of one health probe of a member.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// A member this many entries behind is catching up rather than healthy.
const HEALTHY_LAG: u64 = 100;
/// Timeout of a membership request forwarded to the leader (longer than the catch-up wait).
const FORWARD_TIMEOUT: Duration = Duration::from_secs(100);

// ---- carrying the plans out (on the leader) ----

/// What this partition answers to `GET /internal/state` (and to its own probe).
pub async fn local_state(app: &App, replica: &Replica) -> PeerState {
    let m = replica.raft.metrics().borrow().clone();
    PeerState {
        initialized: replica.raft.is_initialized().await.unwrap_or(false),
        last_log_index: m.last_log_index.unwrap_or(0),
        applied_index: m.last_applied.map(|l| l.index).unwrap_or(0),
        recovering: replica.is_recovering(),
        domain_loaded: app.keyring.is_unsealed(),
        term: m.current_term,
        region_acks: app.regions.acks(),
        region_contact_ms: app.regions.region_contact_ms(),
        primary_contact_ms: app.regions.primary_contact_ms(),
    }
}

type Probes = BTreeMap<u64, Result<PeerState, String>>;

/// Ask every member (and `extra`) for its state, concurrently, with a short timeout.
pub(crate) async fn probe(app: &App, replica: &Replica, extra: Option<(u64, Member)>) -> Probes {
    let mut nodes = replica.group().nodes;
    if let Some((id, n)) = extra {
        nodes.entry(id).or_insert(n);
    }
    let calls = nodes.iter().map(|(id, node)| async move {
        if *id == replica.id {
            return (*id, Ok(local_state(app, replica).await));
        }
        let url = replica.url_of(*id, node);
        let r = replica
            .client
            .get::<PeerState>(&url, "/internal/state", PROBE_TIMEOUT)
            .await
            .map_err(|e| e.to_string());
        (*id, r)
    });
    futures::future::join_all(calls).await.into_iter().collect()
}

fn reachable(p: &Probes) -> BTreeSet<u64> {
    p.iter()
        .filter(|(_, r)| r.is_ok())
        .map(|(id, _)| *id)
        .collect()
}

/// The membership view from this partition's metrics and the probes.
fn view(app: &App, replica: &Replica, probes: &Probes) -> MembersView {
    let s = replica.status();
    let activated = app.store.read().is_activated();
    let members = s
        .members
        .iter()
        .map(|m| {
            let probe = probes.get(&m.node_id);
            let (health, state, error) = match probe {
                None => (
                    MemberHealth::Unreachable,
                    None,
                    Some("not probed".to_string()),
                ),
                Some(Err(e)) => (MemberHealth::Unreachable, None, Some(e.clone())),
                Some(Ok(st)) => {
                    let behind = m.lag.unwrap_or(0) > HEALTHY_LAG
                        || s.commit_index.saturating_sub(st.applied_index) > HEALTHY_LAG;
                    let health = if st.recovering || behind || (activated && !st.domain_loaded) {
                        MemberHealth::CatchingUp
                    } else {
                        MemberHealth::Healthy
                    };
                    (health, Some(st), None)
                }
            };
            MemberInfo {
                id: m.node_id,
                name: m.name.clone(),
                url: m.url.clone(),
                role: if m.voter {
                    MemberRole::Voter
                } else {
                    MemberRole::Learner
                },
                health,
                matched_index: m.matched_index,
                lag: m.lag,
                applied_index: state.map(|s| s.applied_index),
                domain_loaded: state.map(|s| s.domain_loaded),
                recovering: state.map(|s| s.recovering),
                error,
            }
        })
        .collect();
    MembersView {
        observed_by: s.name,
        leader: s.leader,
        term: s.term,
        commit_index: s.commit_index,
        members,
        pending: None,
    }
}

async fn reply(app: &App, replica: &Replica, pending: Option<String>) -> MembershipResult {
    let probes = probe(app, replica, None).await;
    let mut v = view(app, replica, &probes);
    let complete = pending.is_none();
    v.pending = pending;
    Ok(MembershipReply { view: v, complete })
}

fn raft_refusal(e: RaftError<u64, ClientWriteError<u64, Member>>) -> Refusal {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => Refusal::unavailable(
            "this partition stopped leading during the change; repeat the request (membership requests are idempotent) and check GET /admin/members",
        ),
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => Refusal::conflict(
            "MembershipChangeRefused",
            format!("the Raft group refused the change: {e}; check GET /admin/members and repeat"),
        ),
        RaftError::Fatal(e) => Refusal::unavailable(format!("the Raft member stopped: {e}")),
    }
}

/// Wait (bounded) until member `id` has applied `target` and, in an activated pool, holds
/// the domain. Ok(None) when it has; Ok(Some(what is missing)) at the deadline.
async fn wait_caught_up(
    app: &App,
    replica: &Replica,
    id: u64,
    node: &Member,
    target: u64,
) -> Result<Option<String>, Refusal> {
    let deadline = Instant::now() + CATCH_UP_WAIT;
    let url = replica.url_of(id, node);
    loop {
        if !replica.is_leader() {
            return Err(Refusal::unavailable(
                "this partition stopped leading while the new member caught up; repeat the request (membership requests are idempotent)",
            ));
        }
        let activated = app.store.read().is_activated();
        let missing = match replica
            .client
            .get::<PeerState>(&url, "/internal/state", PROBE_TIMEOUT)
            .await
        {
            Err(e) => format!("it does not answer ({e})"),
            Ok(s) if s.applied_index < target => format!(
                "it has applied index {} of {target}",
                s.applied_index
            ),
            Ok(s) if s.recovering => "it is still recovering".to_string(),
            Ok(s) if activated && !s.domain_loaded => {
                "it has not received the security domain yet (it must present its pool-CA certificate and workload identity)".to_string()
            }
            Ok(_) => return Ok(None),
        };
        if Instant::now() >= deadline {
            return Ok(Some(missing));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn still_catching_up(spec: &MemberSpec, missing: &str) -> String {
    format!(
        "member {} ('{}') is a learner and not caught up after {}s: {missing}. Repeat the same request to continue (it is idempotent)",
        spec.id,
        spec.name,
        CATCH_UP_WAIT.as_secs()
    )
}

/// Add `spec` as a learner if needed and wait for it; Some(pending message) if it did not
/// catch up in time.
async fn join_as_learner(
    app: &App,
    replica: &Replica,
    spec: &MemberSpec,
    add: bool,
) -> Result<Option<String>, Refusal> {
    let node = member_of(spec);
    if add {
        replica
            .raft
            .add_learner(spec.id, node.clone(), false)
            .await
            .map_err(raft_refusal)?;
        tracing::info!(id = spec.id, name = %spec.name, url = %node.url, "added a learner");
    }
    let target = replica
        .raft
        .metrics()
        .borrow()
        .last_applied
        .map(|l| l.index)
        .unwrap_or(0);
    Ok(wait_caught_up(app, replica, spec.id, &node, target)
        .await?
        .map(|missing| still_catching_up(spec, &missing)))
}

/// The voters with caught-up member `new` added (and `old` removed), checked to have a
/// reachable majority.
async fn voters_with(
    app: &App,
    replica: &Replica,
    new: u64,
    old: Option<u64>,
) -> Result<BTreeSet<u64>, Refusal> {
    let mut voters = replica.group().voters;
    if let Some(old) = old {
        voters.remove(&old);
    }
    voters.insert(new);
    let mut up = reachable(&probe(app, replica, None).await);
    up.insert(new);
    check_majority(&voters, &up)?;
    Ok(voters)
}

/// Carry out `req` on this partition, which must be the leader (List works anywhere).
pub async fn execute(app: &App, replica: &Replica, req: MembershipRequest) -> MembershipResult {
    if matches!(req, MembershipRequest::List) {
        return reply(app, replica, None).await;
    }
    let _serial = replica.membership_lock.lock().await;
    if !replica.is_leader() {
        return Err(Refusal::unavailable(
            "this partition is not the leader; repeat the request",
        ));
    }
    match req {
        MembershipRequest::List => reply(app, replica, None).await,
        MembershipRequest::Add { member } => {
            let plan = plan_add(&replica.group(), &member)?;
            if plan == AddPlan::Done {
                return reply(app, replica, None).await;
            }
            if let Some(pending) =
                join_as_learner(app, replica, &member, plan == AddPlan::AddLearner).await?
            {
                return reply(app, replica, Some(pending)).await;
            }
            if member.role == MemberRole::Voter {
                voters_with(app, replica, member.id, None).await?;
                replica
                    .raft
                    .change_membership(
                        ChangeMembers::AddVoterIds(BTreeSet::from([member.id])),
                        true,
                    )
                    .await
                    .map_err(raft_refusal)?;
                tracing::info!(id = member.id, name = %member.name, "promoted a member to voter");
            }
            reply(app, replica, None).await
        }
        MembershipRequest::Remove { id, force } => {
            let up = reachable(&probe(app, replica, None).await);
            let g = replica.group();
            let change = match plan_remove(&g, id, &up, force)? {
                RemovePlan::AlreadyRemoved => return reply(app, replica, None).await,
                RemovePlan::Learner => ChangeMembers::RemoveNodes(BTreeSet::from([id])),
                RemovePlan::Voter => ChangeMembers::RemoveVoters(BTreeSet::from([id])),
            };
            replica
                .raft
                .change_membership(change, false)
                .await
                .map_err(raft_refusal)?;
            tracing::info!(id, member = %g.describe(id), "removed a member");
            reply(app, replica, None).await
        }
        MembershipRequest::Replace { old, member } => {
            let plan = plan_replace(&replica.group(), old, &member)?;
            match plan {
                ReplacePlan::Done => return reply(app, replica, None).await,
                ReplacePlan::AddLearner | ReplacePlan::CatchUp => {
                    if let Some(pending) =
                        join_as_learner(app, replica, &member, plan == ReplacePlan::AddLearner)
                            .await?
                    {
                        return reply(app, replica, Some(pending)).await;
                    }
                }
                ReplacePlan::RemoveOld => {}
            }
            let g = replica.group();
            let voters = voters_with(app, replica, member.id, Some(old)).await?;
            replica
                .raft
                .change_membership(ChangeMembers::ReplaceAllVoters(voters), false)
                .await
                .map_err(raft_refusal)?;
            tracing::info!(old = %g.describe(old), new = member.id, name = %member.name, "replaced a member");
            reply(app, replica, None).await
        }
    }
}

/// A membership request on any partition: carried out here if this partition leads,
/// otherwise forwarded to the leader. A list falls back to this partition's own view when
/// no leader can be reached.
pub async fn request(app: &Arc<App>, req: MembershipRequest) -> MembershipResult {
    let Some(replica) = app.store.replica().cloned() else {
        return Err(Refusal::new(
            400,
            "NotReplicated",
            "this partition runs without peers (a pool of one); membership applies to replicated pools",
        ));
    };
    let list = matches!(req, MembershipRequest::List);
    let wait = if list {
        Duration::from_secs(3)
    } else {
        LEADER_WAIT
    };
    let deadline = Instant::now() + wait;
    loop {
        let leader = {
            let m = replica.raft.metrics().borrow().clone();
            m.current_leader.and_then(|l| {
                m.membership_config
                    .membership()
                    .get_node(&l)
                    .map(|n| (l, n.clone()))
            })
        };
        match leader {
            Some((l, _)) if l == replica.id => return execute(app, &replica, req).await,
            Some((l, node)) => {
                match replica
                    .client
                    .post::<_, MembershipResult>(
                        &replica.url_of(l, &node),
                        "/internal/members",
                        &req,
                        FORWARD_TIMEOUT,
                    )
                    .await
                {
                    Ok(r) => return r,
                    Err(e) if e.not_sent() => {
                        tracing::debug!(error = %e, "membership request not taken by the leader; retrying");
                    }
                    Err(e) if list => {
                        tracing::debug!(error = %e, "the leader did not list the members");
                    }
                    Err(e) => {
                        return Err(Refusal::unavailable(format!(
                            "the leader {} did not answer the membership request ({e}); requests are idempotent: check GET /admin/members and repeat it",
                            node.name
                        )));
                    }
                }
            }
            None => {}
        }
        if Instant::now() >= deadline {
            if list {
                return execute(app, &replica, req).await;
            }
            return Err(Refusal::unavailable(
                "no leader could be reached: a majority of the voters must be up and connected to change the membership",
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
