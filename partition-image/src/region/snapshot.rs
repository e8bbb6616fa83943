//! A primary's snapshot sessions (docs/regions.md, catch-up): one consistent copy of the
//! replicated state at a primary index, cut into pages of bounded size that a replica region
//! stages through its own Raft group. At most [`MAX_SESSIONS`] copies are held; a session
//! ends at its last page or after [`SESSION_TTL`].

use super::link::StatePage;
use crate::state::PoolState;
use keystead_core::region::ReplicatedSettings;
use std::ops::Range;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Serialized records per page, at most (a page is one staged command in the replica).
pub const PAGE_BYTES: usize = 256 * 1024;
const MAX_SESSIONS: usize = 2;
const SESSION_TTL: Duration = Duration::from_secs(300);

struct Session {
    id: String,
    through: u64,
    keys: Vec<crate::state::KeyRecord>,
    deleted: Vec<crate::state::DeletedKey>,
    rbac: keystead_core::rbac::RbacState,
    settings: ReplicatedSettings,
    /// Per page: the range of keys and of deleted keys it carries.
    pages: Vec<(Range<usize>, Range<usize>)>,
    started: Instant,
}

#[derive(Default)]
pub struct Sessions {
    open: Mutex<Vec<Session>>,
}

/// Cut `sizes` into consecutive ranges of at most `budget` bytes (at least one item each).
fn cut(sizes: &[usize], budget: usize) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut bytes = 0;
    for (i, s) in sizes.iter().enumerate() {
        if i > start && bytes + s > budget {
            out.push(start..i);
            start = i;
            bytes = 0;
        }
        bytes += s;
    }
    if start < sizes.len() {
        out.push(start..sizes.len());
    }
    out
}

fn size<T: serde::Serialize>(v: &T) -> usize {
    serde_json::to_vec(v).map(|b| b.len()).unwrap_or(0)
}

impl Sessions {
    /// Start a session on a copy of `state` taken at primary index `through`; its first page.
    pub fn start(&self, state: PoolState, through: u64, epoch: u64) -> StatePage {
        let keys: Vec<usize> = state.keys.values().map(size).collect();
        let deleted: Vec<usize> = state.deleted.values().map(size).collect();
        let mut pages: Vec<(Range<usize>, Range<usize>)> = cut(&keys, PAGE_BYTES)
            .into_iter()
            .map(|k| (k, 0..0))
            .collect();
        pages.extend(cut(&deleted, PAGE_BYTES).into_iter().map(|d| (0..0, d)));
        if pages.is_empty() {
            pages.push((0..0, 0..0));
        }
        let settings = ReplicatedSettings {
            soft_delete_retention_days: state.settings.soft_delete_retention_days,
            purge_protection: state.settings.purge_protection,
        };
        let session = Session {
            id: uuid::Uuid::new_v4().to_string(),
            through,
            keys: state.keys.into_iter().map(|(_, v)| v).collect(),
            deleted: state.deleted.into_iter().map(|(_, v)| v).collect(),
            rbac: state.rbac,
            settings,
            pages,
            started: Instant::now(),
        };
        let first = page_of(&session, 0, epoch);
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.retain(|s| s.started.elapsed() < SESSION_TTL);
        while open.len() >= MAX_SESSIONS {
            open.remove(0);
        }
        if !first.last {
            open.push(session);
        }
        first
    }

    /// Page `page` of session `id` (the session ends with its last page).
    pub fn page(&self, id: &str, page: u64, epoch: u64) -> Option<StatePage> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.retain(|s| s.started.elapsed() < SESSION_TTL);
        let pos = open.iter().position(|s| s.id == id)?;
        if page as usize >= open[pos].pages.len() {
            return None;
        }
        let p = page_of(&open[pos], page as usize, epoch);
        if p.last {
            open.remove(pos);
        }
        Some(p)
    }
}

fn page_of(s: &Session, page: usize, epoch: u64) -> StatePage {
    let (k, d) = s.pages[page].clone();
    StatePage {
        session: s.id.clone(),
        through: s.through,
        epoch,
        page: page as u64,
        keys: s.keys[k].to_vec(),
        deleted: s.deleted[d].to_vec(),
        rbac: (page == 0).then(|| s.rbac.clone()),
        settings: s.settings.clone(),
        key_count: s.keys.len() as u64,
        deleted_count: s.deleted.len() as u64,
        last: page + 1 == s.pages.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_stay_within_the_budget_and_cover_everything_once() {
        assert_eq!(cut(&[], 10), Vec::<Range<usize>>::new());
        assert_eq!(cut(&[4, 4, 4], 8), vec![0..2, 2..3]);
        // A record larger than the budget travels alone.
        assert_eq!(cut(&[3, 20, 3], 8), vec![0..1, 1..2, 2..3]);
    }

    #[test]
    fn an_empty_state_is_one_last_page_and_keeps_no_session() {
        let s = Sessions::default();
        let p = s.start(PoolState::default(), 7, 1);
        assert!(p.last && p.rbac.is_some());
        assert_eq!((p.through, p.key_count), (7, 0));
        assert!(s.page(&p.session, 1, 1).is_none());
    }
}
