//! Membership plans: what a membership request asks, and the pure decisions (what to do,
//! or why it is refused) the leader takes before carrying a change out (`super`).

use crate::consensus::raft::{Group, Member};
use keystead_core::members::{MemberRole, MemberSpec, MembersView};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// Voters a pool keeps unless a removal is forced: with three, it survives the loss of any
/// one partition.
pub const MIN_VOTERS: usize = 3;

/// A membership operation, as the receiving partition forwards it to the leader.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "camelCase")]
pub enum MembershipRequest {
    List,
    Add { member: MemberSpec },
    Remove { id: u64, force: bool },
    Replace { old: u64, member: MemberSpec },
}

impl MembershipRequest {
    /// Operation name in the audit log.
    pub fn audit_operation(&self) -> &'static str {
        match self {
            MembershipRequest::List => "MemberList",
            MembershipRequest::Add { .. } => "MemberAdd",
            MembershipRequest::Remove { .. } => "MemberRemove",
            MembershipRequest::Replace { .. } => "MemberReplace",
        }
    }

    /// The member the request concerns (name and node id, as far as the request says).
    pub fn audit_member(&self) -> (Option<String>, Option<u64>) {
        match self {
            MembershipRequest::List => (None, None),
            MembershipRequest::Add { member } | MembershipRequest::Replace { member, .. } => {
                (Some(member.name.clone()), Some(member.id))
            }
            MembershipRequest::Remove { id, .. } => (None, Some(*id)),
        }
    }
}

/// A refused (or failed) membership request: HTTP status, error code, message.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Refusal {
    pub status: u16,
    pub code: String,
    pub message: String,
}

impl Refusal {
    pub(super) fn new(status: u16, code: &str, message: impl Into<String>) -> Refusal {
        Refusal {
            status,
            code: code.to_string(),
            message: message.into(),
        }
    }

    pub(super) fn conflict(code: &str, message: impl Into<String>) -> Refusal {
        Refusal::new(409, code, message)
    }

    pub(super) fn not_member(id: u64) -> Refusal {
        Refusal::new(
            404,
            "MemberNotFound",
            format!(
                "node id {id} is not a member of the pool; list the members with GET /admin/members"
            ),
        )
    }

    pub(super) fn unavailable(message: impl Into<String>) -> Refusal {
        Refusal::new(503, "ServiceUnavailable", message)
    }
}

/// The leader's answer: the membership after the request, and whether the request is done
/// (false: accepted, still catching up — repeat it to finish).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct MembershipReply {
    pub view: MembersView,
    pub complete: bool,
}

pub type MembershipResult = Result<MembershipReply, Refusal>;

pub(super) fn member_of(spec: &MemberSpec) -> Member {
    Member {
        name: spec.name.clone(),
        url: spec.normalized_url(),
    }
}

/// Checks of a member about to join: valid, id never used by another member, name and
/// address not used by another member (`replacing` may share the name: a rebuilt partition
/// under a new id).
fn check_newcomer(g: &Group, spec: &MemberSpec, replacing: Option<u64>) -> Result<(), Refusal> {
    spec.validate()
        .map_err(|e| Refusal::new(400, "BadParameter", e.0))?;
    if let Some(name) = g.retired.get(&spec.id)
        && !g.nodes.contains_key(&spec.id)
    {
        return Err(Refusal::conflict(
            "MemberIdRetired",
            format!(
                "node id {} belonged to member '{name}', which was removed from the pool; Raft node ids are never reused: choose a new id",
                spec.id
            ),
        ));
    }
    let wanted = member_of(spec);
    if let Some(node) = g.nodes.get(&spec.id)
        && *node != wanted
    {
        return Err(Refusal::conflict(
            "MemberIdInUse",
            format!(
                "node id {} is already member {}; choose a new id for the new partition",
                spec.id,
                g.describe(spec.id)
            ),
        ));
    }
    for (id, node) in &g.nodes {
        if *id == spec.id {
            continue;
        }
        if node.name == wanted.name && Some(*id) != replacing {
            return Err(Refusal::conflict(
                "MemberNameInUse",
                format!(
                    "the name '{}' belongs to member {}; a name identifies one partition (its certificate's common name)",
                    wanted.name,
                    g.describe(*id)
                ),
            ));
        }
        if node.url == wanted.url {
            return Err(Refusal::conflict(
                "MemberUrlInUse",
                format!(
                    "{} is the address of member {}; a new partition at a member's address is that member healing (same id and name), or remove the member first",
                    wanted.url,
                    g.describe(*id)
                ),
            ));
        }
    }
    Ok(())
}

/// Refuse a voter set that would have no reachable majority (its changes could not commit:
/// the pool would stop).
pub fn check_majority(voters: &BTreeSet<u64>, reachable: &BTreeSet<u64>) -> Result<(), Refusal> {
    let up = voters.intersection(reachable).count();
    let need = voters.len() / 2 + 1;
    if up < need {
        return Err(Refusal::conflict(
            "NoReachableMajority",
            format!(
                "after this change the voters would be {voters:?}, of which only {up} answer (a majority is {need}); the change could not commit and the pool would stop. Bring the members back (GET /admin/members shows which are unreachable) or replace them first"
            ),
        ));
    }
    Ok(())
}

/// What adding a member takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddPlan {
    /// Not a member yet: add it as a learner, wait for it, then promote it if asked.
    AddLearner,
    /// Already a learner (an earlier request timed out): wait, then promote if asked.
    CatchUp,
    /// Already what was asked for.
    Done,
}

pub fn plan_add(g: &Group, spec: &MemberSpec) -> Result<AddPlan, Refusal> {
    check_newcomer(g, spec, None)?;
    if !g.nodes.contains_key(&spec.id) {
        return Ok(AddPlan::AddLearner);
    }
    match (g.is_voter(spec.id), spec.role) {
        (true, MemberRole::Voter) => Ok(AddPlan::Done),
        (true, MemberRole::Learner) => Err(Refusal::conflict(
            "MemberIsVoter",
            format!(
                "member {} is already a voter; to make it a learner, remove it and add a new partition as a learner",
                g.describe(spec.id)
            ),
        )),
        (false, _) => Ok(AddPlan::CatchUp),
    }
}

/// What removing a member takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemovePlan {
    Learner,
    Voter,
    /// Removed earlier (the request is repeated).
    AlreadyRemoved,
}

pub fn plan_remove(
    g: &Group,
    id: u64,
    reachable: &BTreeSet<u64>,
    force: bool,
) -> Result<RemovePlan, Refusal> {
    if !g.nodes.contains_key(&id) {
        if g.retired.contains_key(&id) {
            return Ok(RemovePlan::AlreadyRemoved);
        }
        return Err(Refusal::not_member(id));
    }
    if !g.is_voter(id) {
        return Ok(RemovePlan::Learner);
    }
    let remaining: BTreeSet<u64> = g.voters.iter().copied().filter(|v| *v != id).collect();
    if remaining.is_empty() {
        return Err(Refusal::conflict(
            "LastVoter",
            format!(
                "member {} is the last voter; removing it would leave no one to commit anything",
                g.describe(id)
            ),
        ));
    }
    if remaining.len() < MIN_VOTERS && !force {
        return Err(Refusal::conflict(
            "BelowQuorumSafeSize",
            format!(
                "removing member {} would leave {} voter(s); a pool needs {MIN_VOTERS} to survive the loss of one partition. Replace it instead (PUT /admin/members/{id} with the new partition), add a voter first, or repeat with ?force=true to shrink the pool anyway",
                g.describe(id),
                remaining.len()
            ),
        ));
    }
    check_majority(&remaining, reachable)?;
    Ok(RemovePlan::Voter)
}

/// What replacing voter `old` by a new member takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplacePlan {
    /// Add the new member as a learner, wait for it, then swap.
    AddLearner,
    /// The new member is already a learner: wait for it, then swap.
    CatchUp,
    /// The new member is already a voter: remove the old one.
    RemoveOld,
    /// Done earlier (the request is repeated).
    Done,
}

pub fn plan_replace(g: &Group, old: u64, spec: &MemberSpec) -> Result<ReplacePlan, Refusal> {
    if spec.id == old {
        return Err(Refusal::new(
            400,
            "BadParameter",
            format!(
                "a replacement needs a new node id (the body has id {old}, the member being replaced): Raft node ids are never reused for another partition. To bring back member {old} on a new disk, just start it with its id and name (it heals)"
            ),
        ));
    }
    if spec.role != MemberRole::Voter {
        return Err(Refusal::new(
            400,
            "BadParameter",
            "a replacement takes the old member's vote: its role must be voter (or omitted)",
        ));
    }
    if !g.nodes.contains_key(&old) {
        if g.retired.contains_key(&old)
            && g.is_voter(spec.id)
            && g.nodes.get(&spec.id) == Some(&member_of(spec))
        {
            return Ok(ReplacePlan::Done);
        }
        return Err(Refusal::not_member(old));
    }
    if !g.is_voter(old) {
        return Err(Refusal::conflict(
            "MemberIsLearner",
            format!(
                "member {} is a learner; replace applies to voters: remove the learner (DELETE /admin/members/{old}) and add the new partition",
                g.describe(old)
            ),
        ));
    }
    check_newcomer(g, spec, Some(old))?;
    Ok(match g.nodes.get(&spec.id) {
        None => ReplacePlan::AddLearner,
        Some(_) if g.is_voter(spec.id) => ReplacePlan::RemoveOld,
        Some(_) => ReplacePlan::CatchUp,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn node(name: &str, port: u16) -> Member {
        Member {
            name: name.into(),
            url: format!("https://127.0.0.1:{port}"),
        }
    }

    /// Voters 1..=3 (p0..p2), learner 5 (p5), retired 9 (p9).
    fn group() -> Group {
        Group {
            voters: BTreeSet::from([1, 2, 3]),
            nodes: BTreeMap::from([
                (1, node("p0", 1001)),
                (2, node("p1", 1002)),
                (3, node("p2", 1003)),
                (5, node("p5", 1005)),
            ]),
            retired: BTreeMap::from([(9, "p9".to_string())]),
        }
    }

    fn spec(id: u64, name: &str, port: u16) -> MemberSpec {
        MemberSpec {
            id,
            name: name.into(),
            url: format!("https://127.0.0.1:{port}/"),
            role: MemberRole::Voter,
        }
    }

    fn all() -> BTreeSet<u64> {
        BTreeSet::from([1, 2, 3, 4, 5])
    }

    fn code<T: std::fmt::Debug>(r: Result<T, Refusal>) -> String {
        r.unwrap_err().code
    }

    #[test]
    fn add_plans() {
        let g = group();
        assert_eq!(plan_add(&g, &spec(4, "p3", 1004)), Ok(AddPlan::AddLearner));
        // Repeated after a timeout: continue.
        assert_eq!(plan_add(&g, &spec(5, "p5", 1005)), Ok(AddPlan::CatchUp));
        assert_eq!(plan_add(&g, &spec(3, "p2", 1003)), Ok(AddPlan::Done));
        let mut learner = spec(3, "p2", 1003);
        learner.role = MemberRole::Learner;
        assert_eq!(code(plan_add(&g, &learner)), "MemberIsVoter");
        assert_eq!(code(plan_add(&g, &spec(9, "p9", 1009))), "MemberIdRetired");
        assert_eq!(code(plan_add(&g, &spec(3, "p3", 1004))), "MemberIdInUse");
        assert_eq!(code(plan_add(&g, &spec(4, "p1", 1004))), "MemberNameInUse");
        assert_eq!(code(plan_add(&g, &spec(4, "p3", 1002))), "MemberUrlInUse");
        assert_eq!(code(plan_add(&g, &spec(4, "p 3", 1004))), "BadParameter");
        // A retired name may come back under a new id.
        assert_eq!(plan_add(&g, &spec(10, "p9", 1010)), Ok(AddPlan::AddLearner));
    }

    #[test]
    fn remove_plans() {
        let g = group();
        assert_eq!(plan_remove(&g, 5, &all(), false), Ok(RemovePlan::Learner));
        assert_eq!(
            plan_remove(&g, 9, &all(), false),
            Ok(RemovePlan::AlreadyRemoved)
        );
        assert_eq!(code(plan_remove(&g, 7, &all(), false)), "MemberNotFound");
        // Three voters: removing one leaves two.
        let r = plan_remove(&g, 2, &all(), false).unwrap_err();
        assert_eq!(r.code, "BelowQuorumSafeSize");
        assert!(r.message.contains("PUT /admin/members/2"), "{}", r.message);
        assert_eq!(plan_remove(&g, 2, &all(), true), Ok(RemovePlan::Voter));
        // Forced, but the remaining two would have only one reachable voter.
        assert_eq!(
            code(plan_remove(&g, 2, &BTreeSet::from([1]), true)),
            "NoReachableMajority"
        );
        // Four voters, one down: removing a healthy one leaves 2 of 3 reachable.
        let mut four = group();
        four.voters.insert(5);
        assert_eq!(
            plan_remove(&four, 2, &BTreeSet::from([1, 3, 5]), false),
            Ok(RemovePlan::Voter)
        );
        assert_eq!(
            code(plan_remove(&four, 2, &BTreeSet::from([1, 2]), false)),
            "NoReachableMajority"
        );
        // The last voter, even forced.
        let one = Group {
            voters: BTreeSet::from([1]),
            nodes: BTreeMap::from([(1, node("p0", 1001))]),
            retired: BTreeMap::new(),
        };
        assert_eq!(code(plan_remove(&one, 1, &all(), true)), "LastVoter");
    }

    #[test]
    fn replace_plans() {
        let g = group();
        assert_eq!(
            plan_replace(&g, 3, &spec(4, "p3", 1004)),
            Ok(ReplacePlan::AddLearner)
        );
        // The rebuilt partition may keep the old one's name (not its address or id).
        assert_eq!(
            plan_replace(&g, 3, &spec(4, "p2", 1004)),
            Ok(ReplacePlan::AddLearner)
        );
        let refused = [
            // Not at the address of a member (that is the member healing).
            (3, spec(4, "p2", 1003), "MemberUrlInUse"),
            // Never under the old id.
            (3, spec(3, "p2", 1004), "BadParameter"),
            (5, spec(4, "p3", 1004), "MemberIsLearner"),
            (7, spec(4, "p3", 1004), "MemberNotFound"),
            (3, spec(9, "p3", 1004), "MemberIdRetired"),
        ];
        for (old, s, want) in refused {
            assert_eq!(code(plan_replace(&g, old, &s)), want, "{old} -> {s:?}");
        }
        assert_eq!(
            plan_replace(&g, 3, &spec(5, "p5", 1005)),
            Ok(ReplacePlan::CatchUp)
        );
        let mut learner = spec(4, "p3", 1004);
        learner.role = MemberRole::Learner;
        assert_eq!(code(plan_replace(&g, 3, &learner)), "BadParameter");
        // Finished earlier: 3 retired, 4 a voter.
        let mut done = group();
        done.voters = BTreeSet::from([1, 2, 4]);
        done.nodes.remove(&3);
        done.nodes.insert(4, node("p3", 1004));
        done.retired.insert(3, "p2".into());
        assert_eq!(
            plan_replace(&done, 3, &spec(4, "p3", 1004)),
            Ok(ReplacePlan::Done)
        );
    }

    #[test]
    fn majority() {
        let v = BTreeSet::from([1, 2, 3]);
        assert!(check_majority(&v, &BTreeSet::from([1, 2])).is_ok());
        assert!(check_majority(&v, &BTreeSet::from([3, 7])).is_err());
        let v4 = BTreeSet::from([1, 2, 3, 4]);
        assert!(check_majority(&v4, &BTreeSet::from([1, 2])).is_err());
        assert!(check_majority(&v4, &BTreeSet::from([1, 2, 4])).is_ok());
    }

    #[test]
    fn request_wire_form() {
        let r = MembershipRequest::Remove {
            id: 3,
            force: false,
        };
        let j = serde_json::to_value(&r).unwrap();
        assert_eq!(j["op"], "remove");
        assert_eq!(serde_json::from_value::<MembershipRequest>(j).unwrap(), r);
    }
}
