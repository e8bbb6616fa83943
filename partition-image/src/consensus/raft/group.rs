//! The group as this partition sees it: voters, members and retired members (what the
//! membership plans decide on), and whether this partition leads it.

use super::{Member, Replica};
use std::collections::{BTreeMap, BTreeSet};

/// The group as a plan sees it.
#[derive(Clone, Debug, Default)]
pub struct Group {
    /// Voters (of every configuration while a joint change is in progress).
    pub voters: BTreeSet<u64>,
    /// Every member, voters and learners.
    pub nodes: BTreeMap<u64, Member>,
    /// Removed members (node id → name).
    pub retired: BTreeMap<u64, String>,
}

impl Group {
    pub fn is_voter(&self, id: u64) -> bool {
        self.voters.contains(&id)
    }

    pub fn describe(&self, id: u64) -> String {
        match self.nodes.get(&id) {
            Some(n) => format!("{id} ('{}' at {})", n.name, n.url),
            None => id.to_string(),
        }
    }
}

impl Replica {
    /// The group as this partition sees it (effective membership, retired members).
    pub fn group(&self) -> Group {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        Group {
            voters: membership.voter_ids().collect(),
            nodes: membership.nodes().map(|(id, n)| (*id, n.clone())).collect(),
            retired: self
                .sm
                .state
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .retired_members
                .clone(),
        }
    }

    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().current_leader == Some(self.id)
    }
}
