//! Histories of concurrent key operations and a linearizability checker for them.
//!
//! Each operation is recorded as it happens: its invocation time, and then either its
//! completion time and result (`ok`), or a definite "it did not take effect" (`fail`), or
//! nothing certain (`info`: a timeout, a broken connection, a 5xx that does not say the
//! change was not committed). Nothing is retried: an answer is what the history holds.
//!
//! The model is one register per key name (the checker handles keys independently: a
//! history is linearizable iff each key's sub-history is). A key is `Absent`, `Live(t)` or
//! `Deleted(t)`, where `t` is the id of the operation whose write the key's current version
//! carries (every create and update writes its own id in the tag `op`, so each read says
//! which write it saw). [`step`] is the sequential specification of the seven operations
//! against the Key Vault API; [`check`] searches for a linearization of each key's history
//! with the Wing & Gong / Lowe algorithm (depth-first over the operations that may take
//! effect next, memoized on the set of operations taken and the register's state).
//!
//! - `ok` operations must be linearized, between their invocation and their completion, with
//!   the result they returned.
//! - `info` operations may be linearized anywhere after their invocation, or not at all
//!   (only writes matter: an `info` read or sign is dropped).
//! - `fail` operations are left out: they must not have taken effect. A read that sees the
//!   tag of a failed create or update has no linearization (no operation in the history
//!   writes that tag); [`check`] names that case explicitly.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashSet};
use std::fmt;

/// The id of an operation (unique in a run); creates and updates write it in the tag `op`.
pub type OpId = u64;

/// The state of one key name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyState {
    /// Never created, or purged.
    Absent,
    /// Active; its current version carries the tag written by operation `t`.
    Live(OpId),
    /// Soft-deleted; recovering it brings back the version tagged by `t`.
    Deleted(OpId),
}

/// What a client asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Call {
    /// `POST /keys/{k}/create` with tag `op` = this operation's id (a new version).
    Create,
    /// `PATCH /keys/{k}` with tag `op` = this operation's id (the current version).
    Update,
    /// `DELETE /keys/{k}` (soft delete).
    Delete,
    /// `DELETE /deletedkeys/{k}`.
    Purge,
    /// `POST /deletedkeys/{k}/recover`.
    Recover,
    /// `GET /keys/{k}`.
    Read,
    /// `POST /keys/{k}/sign` (current version).
    Sign,
}

impl Call {
    /// Whether the call can change the key (an `info` of any other call is dropped).
    pub fn writes(self) -> bool {
        !matches!(self, Call::Read | Call::Sign)
    }
}

/// A definite answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ret {
    /// 2xx. `seen`: the tag `op` of the version in the answer (read, delete, recover, and a
    /// create's or update's own tag); `None` when the answer carries no version (purge,
    /// sign) or no tag (then the checker only accepts it where no tag is needed).
    Done { seen: Option<OpId> },
    /// 404: no such (active, or deleted for purge/recover) key.
    NotFound,
    /// 409: a deleted key of that name exists (create), or an active one (recover).
    Conflict,
}

/// How an operation ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A definite answer, completed at `at` (ns since the run started).
    Ok { at: u64, ret: Ret },
    /// Certainly no effect (the answer said the change was not committed and is safe to
    /// retry); the reason is kept for the report.
    Fail(String),
    /// Unknown: it may or may not have taken effect.
    Info(String),
}

/// One operation of the history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Op {
    pub id: OpId,
    /// The client (operations of one client never overlap).
    pub process: usize,
    /// The partition the request was sent to.
    pub partition: usize,
    pub key: String,
    pub call: Call,
    /// Invocation time, ns since the run started.
    pub invoke: u64,
    pub outcome: Outcome,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = |ns: u64| ns as f64 / 1e6;
        write!(
            f,
            "op {} client {} partition {} {:?} {} invoked at {:.1} ms: ",
            self.id,
            self.process,
            self.partition,
            self.call,
            self.key,
            ms(self.invoke)
        )?;
        match &self.outcome {
            Outcome::Ok { at, ret } => write!(f, "ok {ret:?} at {:.1} ms", ms(*at)),
            Outcome::Fail(why) => write!(f, "fail ({why})"),
            Outcome::Info(why) => write!(f, "info ({why})"),
        }
    }
}

/// The sequential specification: the state after `op` (with its result `ret`, or `None` for
/// an operation of unknown outcome that took effect) applied to `s`, or `None` if that
/// result is impossible from `s`.
pub fn step(s: KeyState, op: &Op, ret: Option<Ret>) -> Option<KeyState> {
    use Call as C;
    use KeyState::{Absent, Deleted, Live};
    use Ret::{Conflict, Done, NotFound};
    let own = op.id;
    // A 2xx answer that names a version must name the one the model has.
    let seen_is = |seen: Option<OpId>, t: OpId| seen.is_none_or(|x| x == t);
    match (op.call, ret, s) {
        // Create: a new version, unless a deleted key of that name exists.
        (C::Create, Some(Done { seen }), Absent | Live(_)) if seen_is(seen, own) => Some(Live(own)),
        (C::Create, None, Absent | Live(_)) => Some(Live(own)),
        (C::Create, Some(Conflict), Deleted(_)) => Some(s),
        // Update: the current version's tags.
        (C::Update, Some(Done { seen }), Live(_)) if seen_is(seen, own) => Some(Live(own)),
        (C::Update, None, Live(_)) => Some(Live(own)),
        (C::Update, Some(NotFound), Absent | Deleted(_)) => Some(s),
        // Delete: soft delete of an active key.
        (C::Delete, Some(Done { seen }), Live(t)) if seen_is(seen, t) => Some(Deleted(t)),
        (C::Delete, None, Live(t)) => Some(Deleted(t)),
        (C::Delete, Some(NotFound), Absent | Deleted(_)) => Some(s),
        // Purge: of a deleted key.
        (C::Purge, Some(Done { .. }) | None, Deleted(_)) => Some(Absent),
        (C::Purge, Some(NotFound), Absent | Live(_)) => Some(s),
        // Recover: a deleted key becomes active again, as it was.
        (C::Recover, Some(Done { seen }), Deleted(t)) if seen_is(seen, t) => Some(Live(t)),
        (C::Recover, None, Deleted(t)) => Some(Live(t)),
        (C::Recover, Some(NotFound), Absent) => Some(s),
        (C::Recover, Some(Conflict), Live(_)) => Some(s),
        // Read and sign: the current version, or 404.
        (C::Read, Some(Done { seen: Some(x) }), Live(t)) if x == t => Some(s),
        (C::Sign, Some(Done { .. }), Live(_)) => Some(s),
        (C::Read | C::Sign, Some(NotFound), Absent | Deleted(_)) => Some(s),
        _ => None,
    }
}

/// Why a key's history is not linearizable.
#[derive(Debug)]
pub struct Anomaly {
    pub key: String,
    pub what: String,
    /// The operations of the key involved (in invocation order).
    pub ops: Vec<Op>,
}

impl fmt::Display for Anomaly {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "key {}: {}", self.key, self.what)?;
        for op in &self.ops {
            writeln!(f, "  {op}")?;
        }
        Ok(())
    }
}

/// What [`check`] looked at.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    pub keys: usize,
    pub ok: usize,
    pub fail: usize,
    pub info: usize,
    /// Search steps taken, over all keys.
    pub steps: u64,
}

/// The tag of every write that no answer names (see `check_key`).
const UNSEEN: OpId = u64::MAX;

/// Search steps allowed per key before the checker gives up (then it reports the key as not
/// checked, which fails the run: a history too hard to decide is not a pass).
pub const STEP_BUDGET: u64 = 20_000_000;

/// Check a whole history: every key's operations must be linearizable.
pub fn check(history: &[Op]) -> Result<Summary, Vec<Anomaly>> {
    let mut by_key: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
    for op in history {
        by_key.entry(op.key.as_str()).or_default().push(op);
    }
    let mut summary = Summary {
        keys: by_key.len(),
        ..Summary::default()
    };
    for op in history {
        match op.outcome {
            Outcome::Ok { .. } => summary.ok += 1,
            Outcome::Fail(_) => summary.fail += 1,
            Outcome::Info(_) => summary.info += 1,
        }
    }
    let mut anomalies = Vec::new();
    for (key, ops) in by_key {
        match check_key(key, &ops) {
            Ok(steps) => summary.steps += steps,
            Err(a) => anomalies.push(a),
        }
    }
    if anomalies.is_empty() {
        Ok(summary)
    } else {
        Err(anomalies)
    }
}

#[derive(Clone, Copy)]
struct Event {
    /// Index into the key's ops.
    op: usize,
    call: bool,
    at: u64,
}

/// The tag an `ok` answer saw, if any.
fn seen(op: &Op) -> Option<OpId> {
    match op.outcome {
        Outcome::Ok {
            ret: Ret::Done { seen },
            ..
        } => seen,
        _ => None,
    }
}

fn sorted(ops: &[&Op]) -> Vec<Op> {
    let mut v: Vec<Op> = ops.iter().map(|o| (*o).clone()).collect();
    v.sort_by_key(|o| (o.invoke, o.id));
    v
}

/// Search a linearization of one key's operations; Ok(steps taken).
fn check_key(key: &str, all: &[&Op]) -> Result<u64, Anomaly> {
    // A write answered "not committed" must never be seen.
    for f in all.iter().filter(|o| matches!(o.outcome, Outcome::Fail(_))) {
        if let Some(r) = all.iter().find(|o| seen(o) == Some(f.id) && o.id != f.id) {
            return Err(Anomaly {
                key: key.into(),
                what: format!(
                    "op {} was answered 'not committed' (fail) but op {} saw its write",
                    f.id, r.id
                ),
                ops: sorted(&[f, r]),
            });
        }
    }
    // Every value seen was written by a create or update of this key that may have taken
    // effect (cheap to tell, and the search would take long to exhaust the alternatives).
    for r in all
        .iter()
        .filter(|o| !matches!(o.call, Call::Create | Call::Update))
    {
        let Some(t) = seen(r) else { continue };
        let writer = all.iter().find(|w| {
            w.id == t
                && matches!(w.call, Call::Create | Call::Update)
                && !matches!(w.outcome, Outcome::Fail(_))
        });
        if writer.is_none() {
            return Err(Anomaly {
                key: key.into(),
                what: format!(
                    "op {} saw the tag {t}, which no create or update of this key wrote",
                    r.id
                ),
                ops: sorted(&[r]),
            });
        }
    }
    // The operations that take part: ok ones, and info writes.
    let ops: Vec<&Op> = all
        .iter()
        .copied()
        .filter(|o| match o.outcome {
            Outcome::Ok { .. } => true,
            Outcome::Fail(_) => false,
            Outcome::Info(_) => o.call.writes(),
        })
        .collect();
    let mut events = Vec::with_capacity(ops.len() * 2);
    for (i, o) in ops.iter().enumerate() {
        events.push(Event {
            op: i,
            call: true,
            at: o.invoke,
        });
        if let Outcome::Ok { at, .. } = o.outcome {
            events.push(Event {
                op: i,
                call: false,
                at: at.max(o.invoke),
            });
        }
    }
    // At equal times, invocations first (the operations overlap: the permissive reading).
    events.sort_by_key(|e| (e.at, !e.call, e.op));
    let mut call_pos = vec![0; ops.len()];
    let mut ret_pos = vec![None; ops.len()];
    for (p, e) in events.iter().enumerate() {
        if e.call {
            call_pos[e.op] = p;
        } else {
            ret_pos[e.op] = Some(p);
        }
    }
    // Tags nobody else saw are all alike: a register holding one behaves as one holding
    // any other for every later operation of the history (no answer names it). Writing one
    // sentinel for them merges states the search would otherwise tell apart.
    let observed: HashSet<OpId> = ops
        .iter()
        .filter(|o| !matches!(o.call, Call::Create | Call::Update))
        .filter_map(|o| seen(o))
        .collect();
    let canon = |t: OpId| if observed.contains(&t) { t } else { UNSEEN };
    let stepped: Vec<Op> = ops
        .iter()
        .map(|o| {
            let mut o = (*o).clone();
            if matches!(o.call, Call::Create | Call::Update) {
                o.id = canon(o.id);
                if let Outcome::Ok {
                    ret: Ret::Done { seen },
                    ..
                } = &mut o.outcome
                {
                    *seen = seen.map(canon);
                }
            }
            o
        })
        .collect();
    // Operations of unknown outcome with the same effect (same call, same canonical tag)
    // are interchangeable once invoked: the search takes them earliest first (a group's
    // taken members are a prefix of it), instead of trying every subset.
    let mut groups: BTreeMap<(u8, OpId), Vec<usize>> = BTreeMap::new();
    for (i, o) in stepped.iter().enumerate() {
        if matches!(o.outcome, Outcome::Info(_)) {
            groups.entry((o.call as u8, o.id)).or_default().push(i);
        }
    }
    // For each info op, the members of its group invoked before it.
    let mut earlier: Vec<Vec<usize>> = vec![Vec::new(); ops.len()];
    for members in groups.values_mut() {
        members.sort_by_key(|&i| call_pos[i]);
        for (r, &i) in members.iter().enumerate() {
            earlier[i] = members[..r].to_vec();
        }
    }
    let ret_of = |i: usize| match stepped[i].outcome {
        Outcome::Ok { ret, .. } => Some(ret),
        _ => None,
    };
    let is_taken = |taken: &[u64], j: usize| taken[j / 64] & (1 << (j % 64)) != 0;
    let words = ops.len().div_ceil(64);
    let mut taken = vec![0u64; words];
    let mut removed = vec![false; events.len()];
    let mut returns_left = ret_pos.iter().flatten().count();
    let mut state = KeyState::Absent;
    let mut cache: HashSet<(Vec<u64>, KeyState)> = HashSet::new();
    let is_info = |i: usize| matches!(ops[i].outcome, Outcome::Info(_));
    // The operations that may take effect next: the invocations before the first pending
    // completion; those with a definite answer first (an operation of unknown outcome is
    // placed only when nothing else fits).
    let candidates = |removed: &[bool]| -> (Vec<usize>, Option<usize>) {
        let mut definite = Vec::new();
        let mut unknown = Vec::new();
        for (p, e) in events.iter().enumerate() {
            if removed[p] {
                continue;
            }
            if !e.call {
                definite.extend(unknown);
                return (definite, Some(e.op));
            }
            if is_info(e.op) {
                unknown.push(p);
            } else {
                definite.push(p);
            }
        }
        definite.extend(unknown);
        (definite, None)
    };
    struct Frame {
        cands: Vec<usize>,
        /// The first completion not placed yet (what blocks this point).
        blocking: Option<usize>,
        next: usize,
        /// The operation taken to reach this frame, and the state before it.
        took: Option<(usize, KeyState)>,
    }
    let (cands, blocking) = candidates(&removed);
    let mut frames = vec![Frame {
        cands,
        blocking,
        next: 0,
        took: None,
    }];
    // The deepest point reached, for the report: depth, the op that could not be placed,
    // the state there.
    let mut deepest: (usize, Option<usize>, KeyState) = (0, None, state);
    let mut steps: u64 = 0;
    loop {
        if returns_left == 0 {
            return Ok(steps);
        }
        let depth = frames.len();
        let f = frames.last_mut().expect("the root frame is never popped");
        if f.next < f.cands.len() {
            steps += 1;
            if steps > STEP_BUDGET {
                return Err(Anomaly {
                    key: key.into(),
                    what: format!(
                        "not decided within {STEP_BUDGET} search steps (too many concurrent operations of unknown outcome); treat as not checked"
                    ),
                    ops: sorted(&ops),
                });
            }
            let p = f.cands[f.next];
            f.next += 1;
            let i = events[p].op;
            let in_turn = earlier[i].iter().all(|&j| is_taken(&taken, j));
            let Some(s2) = step(state, &stepped[i], ret_of(i)).filter(|_| in_turn) else {
                continue;
            };
            let mut t2 = taken.clone();
            t2[i / 64] |= 1 << (i % 64);
            if !cache.insert((t2.clone(), s2)) {
                continue;
            }
            let prev = state;
            state = s2;
            taken = t2;
            removed[p] = true;
            if let Some(r) = ret_pos[i] {
                removed[r] = true;
                returns_left -= 1;
            }
            let (cands, blocking) = candidates(&removed);
            frames.push(Frame {
                cands,
                blocking,
                next: 0,
                took: Some((i, prev)),
            });
            continue;
        }
        // Nothing more to try here: backtrack.
        if depth >= deepest.0 {
            deepest = (depth, f.blocking, state);
        }
        let f = frames.pop().expect("a frame");
        let Some((i, prev)) = f.took else {
            return Err(no_linearization(key, &ops, deepest));
        };
        if frames.is_empty() {
            unreachable!("only the root frame took nothing");
        }
        state = prev;
        taken[i / 64] &= !(1 << (i % 64));
        removed[call_pos[i]] = false;
        if let Some(r) = ret_pos[i] {
            removed[r] = false;
            returns_left += 1;
        }
    }
}

/// The report of a history without linearization: the operation that could not be placed
/// at the deepest point the search reached, the operations overlapping it and the last few
/// completed before it.
fn no_linearization(key: &str, ops: &[&Op], deepest: (usize, Option<usize>, KeyState)) -> Anomaly {
    let Some(s) = deepest.1.map(|s| ops[s]) else {
        return Anomaly {
            key: key.into(),
            what: "no linearization".into(),
            ops: sorted(ops),
        };
    };
    let end = match s.outcome {
        Outcome::Ok { at, .. } => at,
        _ => u64::MAX,
    };
    let mut before: Vec<&Op> = ops
        .iter()
        .copied()
        .filter(|o| matches!(o.outcome, Outcome::Ok { at, .. } if at < s.invoke))
        .collect();
    before.sort_by_key(|o| o.invoke);
    let keep = before.len().saturating_sub(6);
    let mut involved: Vec<&Op> = before.split_off(keep);
    involved.extend(ops.iter().copied().filter(|o| {
        o.invoke <= end
            && match o.outcome {
                Outcome::Ok { at, .. } => at >= s.invoke,
                _ => true,
            }
    }));
    involved.sort_by_key(|o| o.id);
    involved.dedup_by_key(|o| o.id);
    let answer = match &s.outcome {
        Outcome::Ok { ret, .. } => format!("{ret:?}"),
        o => format!("{o:?}"),
    };
    Anomaly {
        key: key.into(),
        what: format!(
            "no linearization: at best {} operations were placed, the register then {:?}, and op {} ({:?} answered {answer}) could not be placed",
            deepest.0.saturating_sub(1),
            deepest.2,
            s.id,
            s.call,
        ),
        ops: sorted(&involved),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small history builder: times in ms.
    struct H {
        ops: Vec<Op>,
    }

    impl H {
        fn new() -> H {
            H { ops: Vec::new() }
        }

        fn push(&mut self, id: OpId, call: Call, from: u64, outcome: Outcome) -> &mut H {
            self.ops.push(Op {
                id,
                process: id as usize,
                partition: 0,
                key: "k".into(),
                call,
                invoke: from * 1_000_000,
                outcome,
            });
            self
        }

        fn ok(&mut self, id: OpId, call: Call, from: u64, to: u64, ret: Ret) -> &mut H {
            self.push(
                id,
                call,
                from,
                Outcome::Ok {
                    at: to * 1_000_000,
                    ret,
                },
            )
        }

        fn done(&mut self, id: OpId, call: Call, from: u64, to: u64, seen: Option<OpId>) -> &mut H {
            self.ok(id, call, from, to, Ret::Done { seen })
        }

        fn fail(&mut self, id: OpId, call: Call, from: u64) -> &mut H {
            self.push(id, call, from, Outcome::Fail("not committed".into()))
        }

        fn info(&mut self, id: OpId, call: Call, from: u64) -> &mut H {
            self.push(id, call, from, Outcome::Info("timed out".into()))
        }

        fn check(&self) -> Result<Summary, Vec<Anomaly>> {
            check(&self.ops)
        }

        fn rejected(&self) -> String {
            match self.check() {
                Ok(s) => panic!("a non-linearizable history was accepted: {s:?}"),
                Err(a) => a.iter().map(|a| a.to_string()).collect(),
            }
        }
    }

    use Call::*;

    #[test]
    fn checker_accepts_an_empty_and_a_sequential_history() {
        assert!(H::new().check().is_ok());
        let mut h = H::new();
        h.ok(1, Read, 0, 1, Ret::NotFound)
            .done(2, Create, 2, 3, Some(2))
            .done(3, Read, 4, 5, Some(2))
            .done(4, Update, 6, 7, Some(4))
            .done(5, Sign, 8, 9, None)
            .done(6, Read, 10, 11, Some(4))
            .done(7, Delete, 12, 13, Some(4))
            .ok(8, Read, 14, 15, Ret::NotFound)
            .ok(9, Create, 16, 17, Ret::Conflict)
            .ok(10, Sign, 18, 19, Ret::NotFound)
            .done(11, Recover, 20, 21, Some(4))
            .done(12, Read, 22, 23, Some(4))
            .done(13, Delete, 24, 25, Some(4))
            .done(14, Purge, 26, 27, None)
            .ok(15, Recover, 28, 29, Ret::NotFound)
            .done(16, Create, 30, 31, Some(16))
            .done(17, Read, 32, 33, Some(16));
        let s = h.check().expect("linearizable");
        assert_eq!((s.keys, s.ok), (1, 17));
    }

    #[test]
    fn checker_rejects_a_stale_read_after_an_acknowledged_write() {
        let mut h = H::new();
        h.done(1, Create, 0, 1, Some(1))
            .done(2, Update, 2, 3, Some(2))
            // Invoked after the update was acknowledged, yet sees the create's version.
            .done(3, Read, 4, 5, Some(1));
        let why = h.rejected();
        assert!(why.contains("op 3"), "{why}");
    }

    #[test]
    fn checker_rejects_a_read_on_a_cut_off_partition_that_skips_the_read_barrier() {
        // What an isolated partition serving reads from its local state would answer: the
        // majority acknowledged a delete; the minority still signs and reads the old version.
        let mut h = H::new();
        h.done(1, Create, 0, 1, Some(1))
            .done(2, Read, 2, 3, Some(1))
            .done(3, Delete, 4, 6, Some(1))
            .done(4, Sign, 7, 8, None);
        assert!(h.rejected().contains("op 4"));
        let mut h = H::new();
        h.done(1, Create, 0, 1, Some(1))
            .done(2, Update, 4, 6, Some(2))
            .done(3, Read, 7, 8, Some(1));
        assert!(h.rejected().contains("op 3"));
    }

    #[test]
    fn checker_accepts_either_order_of_overlapping_operations() {
        for seen in [1, 2] {
            let mut h = H::new();
            h.done(1, Create, 0, 1, Some(1))
                .done(2, Update, 2, 10, Some(2))
                .done(3, Read, 3, 4, Some(seen))
                .done(4, Read, 11, 12, Some(2));
            assert!(h.check().is_ok(), "read seeing {seen}");
        }
    }

    #[test]
    fn checker_rejects_a_read_going_back_in_time() {
        // Two reads during a slow update: the first sees the new value, the second (invoked
        // after the first completed) the old one.
        let mut h = H::new();
        h.done(1, Create, 0, 1, Some(1))
            .done(2, Update, 2, 20, Some(2))
            .done(3, Read, 3, 4, Some(2))
            .done(4, Read, 5, 6, Some(1));
        assert!(h.rejected().contains("op 4"));
    }

    #[test]
    fn checker_rejects_a_write_answered_not_committed_that_took_effect() {
        let mut h = H::new();
        h.done(1, Create, 0, 1, Some(1))
            .fail(2, Update, 2)
            .done(3, Read, 10, 11, Some(2));
        let why = h.rejected();
        assert!(why.contains("answered 'not committed'"), "{why}");
        // A failed delete that took effect: no tag, caught by the search itself.
        let mut h = H::new();
        h.done(1, Create, 0, 1, Some(1))
            .fail(2, Delete, 2)
            .ok(3, Read, 10, 11, Ret::NotFound);
        assert!(h.rejected().contains("no linearization"));
    }

    #[test]
    fn checker_lets_an_unknown_outcome_take_effect_or_not() {
        for later in [Some(2), Some(1)] {
            let mut h = H::new();
            h.done(1, Create, 0, 1, Some(1))
                .info(2, Update, 2)
                .done(3, Read, 10, 11, later);
            assert!(h.check().is_ok(), "{later:?}");
        }
        // ... but once seen, it has happened: an older value cannot come back.
        let mut h = H::new();
        h.done(1, Create, 0, 1, Some(1))
            .info(2, Update, 2)
            .done(3, Read, 10, 11, Some(2))
            .done(4, Read, 12, 13, Some(1));
        assert!(h.rejected().contains("op 4"));
        // An unknown-outcome write cannot take effect before it was invoked.
        let mut h = H::new();
        h.done(1, Create, 0, 1, Some(1))
            .done(3, Read, 2, 3, Some(2))
            .info(2, Update, 5);
        h.rejected();
    }

    #[test]
    fn checker_rejects_impossible_answers_of_each_call() {
        let cases: Vec<(&str, H)> = vec![
            ("sign of a key never created", {
                let mut h = H::new();
                h.done(1, Sign, 0, 1, None);
                h
            }),
            ("create over a deleted key", {
                let mut h = H::new();
                h.done(1, Create, 0, 1, Some(1))
                    .done(2, Delete, 2, 3, Some(1))
                    .done(3, Create, 4, 5, Some(3));
                h
            }),
            ("recover bringing back another version", {
                let mut h = H::new();
                h.done(1, Create, 0, 1, Some(1))
                    .done(2, Update, 2, 3, Some(2))
                    .done(3, Delete, 4, 5, Some(2))
                    .done(4, Recover, 6, 7, Some(1));
                h
            }),
            ("purge of an active key", {
                let mut h = H::new();
                h.done(1, Create, 0, 1, Some(1)).done(2, Purge, 2, 3, None);
                h
            }),
            ("404 for an active key", {
                let mut h = H::new();
                h.done(1, Create, 0, 1, Some(1))
                    .ok(2, Update, 2, 3, Ret::NotFound);
                h
            }),
            ("a lost acknowledged create", {
                let mut h = H::new();
                h.done(1, Create, 0, 1, Some(1))
                    .ok(2, Read, 2, 3, Ret::NotFound);
                h
            }),
        ];
        for (what, h) in cases {
            assert!(h.check().is_err(), "accepted: {what}");
        }
    }

    /// xorshift64*, for the randomized tests.
    struct Rng(u64);
    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            let mut x = self.0;
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            self.0 = x;
            x.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
        }
    }

    /// A history produced by a real register (each operation takes effect at one instant
    /// inside its interval), with `clients` concurrent clients and some unknown outcomes.
    fn generated(seed: u64, clients: usize, n: usize) -> Vec<Op> {
        let mut rng = Rng(seed | 1);
        let calls = [Create, Update, Delete, Purge, Recover, Read, Read, Sign];
        let mut state = KeyState::Absent;
        // Each client's next free time; operations take effect in time order.
        let mut free = vec![0u64; clients];
        let mut ops = Vec::new();
        let mut now = 0u64;
        for id in 1..=n as u64 {
            let c = rng.below(clients as u64) as usize;
            let invoke = free[c].max(now.saturating_sub(rng.below(5)));
            now = now.max(invoke) + 1 + rng.below(3);
            let call = calls[rng.below(calls.len() as u64) as usize];
            let op = |outcome| Op {
                id,
                process: c,
                partition: 0,
                key: "k".into(),
                call,
                invoke,
                outcome,
            };
            // Try the answers in turn: the first one the register allows is the real one.
            let answers = [
                Ret::Done {
                    seen: match (call, state) {
                        (Create | Update, _) => Some(id),
                        (_, KeyState::Live(t) | KeyState::Deleted(t)) => Some(t),
                        _ => None,
                    },
                },
                Ret::NotFound,
                Ret::Conflict,
            ];
            let probe = op(Outcome::Info(String::new()));
            let (ret, next) = answers
                .iter()
                .find_map(|r| step(state, &probe, Some(*r)).map(|s| (*r, s)))
                .expect("some answer is possible");
            state = next;
            let done = now + rng.below(4);
            free[c] = done + 1;
            let outcome = if call.writes() && rng.below(12) == 0 {
                Outcome::Info("lost answer".into())
            } else {
                Outcome::Ok { at: done, ret }
            };
            ops.push(op(outcome));
        }
        ops
    }

    #[test]
    fn checker_accepts_histories_of_a_real_register_and_rejects_them_mutated() {
        for seed in 1..=40u64 {
            let ops = generated(seed, 4, 150);
            let s = check(&ops)
                .unwrap_or_else(|a| panic!("seed {seed}: {}", a[0]))
                .clone();
            assert!(s.ok > 100, "seed {seed}: {s:?}");
            // One read made to see the write of an operation invoked only after the read
            // completed (a value from the future): must be rejected.
            let mut mutated = ops.clone();
            let reads: Vec<(usize, u64)> = ops
                .iter()
                .enumerate()
                .filter_map(|(p, o)| match o.outcome {
                    Outcome::Ok {
                        at,
                        ret: Ret::Done { seen: Some(_) },
                    } if o.call == Read => Some((p, at)),
                    _ => None,
                })
                .collect();
            let future = reads.iter().find_map(|&(p, end)| {
                ops.iter()
                    .find(|w| matches!(w.call, Create | Update) && w.invoke > end)
                    .map(|w| (p, w.id))
            });
            let (p, w) = future.expect("a read before some later write");
            let Outcome::Ok { at, .. } = mutated[p].outcome else {
                unreachable!()
            };
            mutated[p].outcome = Outcome::Ok {
                at,
                ret: Ret::Done { seen: Some(w) },
            };
            assert!(
                check(&mutated).is_err(),
                "seed {seed}: read {} made to see the later write {w} was accepted",
                mutated[p].id
            );
        }
    }

    #[test]
    fn checker_decides_quickly_with_many_operations_of_unknown_outcome() {
        // 60 writes whose answers were lost, all pending together, around a few definite
        // answers: without merging alike states the search would try every subset.
        let mut h = H::new();
        h.done(1, Create, 0, 1, Some(1));
        for id in 2..32 {
            let call = [Create, Update, Delete, Purge, Recover][(id % 5) as usize];
            h.info(id, call, 2 + id);
        }
        h.done(100, Read, 70, 71, Some(1))
            .ok(101, Read, 72, 73, Ret::NotFound)
            .done(102, Read, 74, 75, Some(11))
            .ok(103, Sign, 76, 77, Ret::NotFound)
            .done(104, Sign, 78, 79, None)
            .done(105, Read, 80, 81, Some(11));
        let s = h.check().expect("linearizable");
        assert!(s.steps < 2_000_000, "{s:?}");
        // A read of a value that no write produced: rejected at once.
        h.done(106, Read, 82, 83, Some(999));
        assert!(h.rejected().contains("no create or update"));
    }
}
