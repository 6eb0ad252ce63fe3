//! A linearizability checker for key-value histories (Wing & Gong's search with Lowe's
//! memoization, as in Porcupine), used by the store's fault-injection tests. Pure: no IO.
//!
//! Linearizability is local, so each key's sub-history is checked on its own against a
//! register model (put, get, compare-and-set). An operation whose outcome the client does not
//! know (a write that timed out) has no return time: it may take effect at any point after its
//! call, including never (linearized after everything else).

use std::collections::{BTreeMap, HashSet};

/// What a client asked.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Input {
    Put(Vec<u8>),
    Get,
    /// Set to `new` if the current value is `expect` (`None` = key absent).
    Cas {
        expect: Option<Vec<u8>>,
        new: Vec<u8>,
    },
}

/// What the client saw.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Output {
    Ok,
    Value(Option<Vec<u8>>),
    Swapped(bool),
    /// The outcome is unknown (only meaningful for writes).
    Unknown,
}

/// One client operation with its real-time interval (any monotonic clock unit).
#[derive(Debug, Clone)]
pub struct Operation {
    pub client: usize,
    pub key: Vec<u8>,
    pub input: Input,
    pub output: Output,
    pub call: u64,
    /// `None` when the outcome is unknown.
    pub ret: Option<u64>,
}

/// A key whose history has no linearization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub key: Vec<u8>,
    pub operations: usize,
}

type State = Option<Vec<u8>>;

/// Applies `op` to `state`; `None` if the recorded output is impossible in that state.
fn step(state: &State, input: &Input, output: &Output) -> Option<State> {
    match (input, output) {
        (Input::Put(v), Output::Ok | Output::Unknown) => Some(Some(v.clone())),
        (Input::Get, Output::Value(v)) => (v == state).then(|| state.clone()),
        (Input::Cas { expect, new }, Output::Swapped(true)) => {
            (expect == state).then(|| Some(new.clone()))
        }
        (Input::Cas { expect, .. }, Output::Swapped(false)) => {
            (expect != state).then(|| state.clone())
        }
        (Input::Cas { expect, new }, Output::Unknown) => {
            Some(if expect == state { Some(new.clone()) } else { state.clone() })
        }
        _ => None,
    }
}

#[derive(Debug, Clone, Copy)]
struct Event {
    op: usize,
    is_call: bool,
    time: u64,
}

/// Checks one key's operations. Reads with an unknown outcome must already be dropped.
fn check_key(ops: &[&Operation]) -> bool {
    let n = ops.len();
    let mut events: Vec<Event> = Vec::with_capacity(2 * n);
    for (i, o) in ops.iter().enumerate() {
        events.push(Event { op: i, is_call: true, time: o.call });
        events.push(Event { op: i, is_call: false, time: o.ret.unwrap_or(u64::MAX) });
    }
    // Calls before returns at equal times: touching intervals count as concurrent.
    events.sort_by_key(|e| (e.time, !e.is_call));
    // A doubly linked list over events, so linearized calls (and their returns) can be lifted
    // out and put back in O(1).
    let len = events.len();
    let mut next: Vec<usize> = (1..=len).collect();
    let mut prev: Vec<usize> = (0..len).map(|i| i.wrapping_sub(1)).collect();
    let mut ret_pos = vec![0usize; n];
    for (pos, e) in events.iter().enumerate() {
        if !e.is_call {
            ret_pos[e.op] = pos;
        }
    }
    let nil = usize::MAX;
    let mut head = if len == 0 { nil } else { 0 };
    for p in &mut next {
        if *p == len {
            *p = nil;
        }
    }
    let unlink = |pos: usize, head: &mut usize, next: &mut Vec<usize>, prev: &mut Vec<usize>| {
        let (p, nx) = (prev[pos], next[pos]);
        if p == nil {
            *head = nx;
        } else {
            next[p] = nx;
        }
        if nx != nil {
            prev[nx] = p;
        }
    };
    let relink = |pos: usize, head: &mut usize, next: &mut Vec<usize>, prev: &mut Vec<usize>| {
        let (p, nx) = (prev[pos], next[pos]);
        if p == nil {
            *head = pos;
        } else {
            next[p] = pos;
        }
        if nx != nil {
            prev[nx] = pos;
        }
    };
    let words = n.div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut cache: HashSet<(Vec<u64>, State)> = HashSet::new();
    let mut stack: Vec<(usize, State)> = Vec::new();
    let mut state: State = None;
    let mut cur = head;
    while head != nil {
        if cur == nil {
            // Nothing further can be linearized at this point: backtrack.
            let Some((pos, s)) = stack.pop() else { return false };
            let op = events[pos].op;
            state = s;
            linearized[op / 64] &= !(1 << (op % 64));
            relink(ret_pos[op], &mut head, &mut next, &mut prev);
            relink(pos, &mut head, &mut next, &mut prev);
            cur = next[pos];
            continue;
        }
        let e = events[cur];
        if e.is_call {
            let o = ops[e.op];
            if let Some(new_state) = step(&state, &o.input, &o.output) {
                let mut lin = linearized.clone();
                lin[e.op / 64] |= 1 << (e.op % 64);
                if cache.insert((lin.clone(), new_state.clone())) {
                    stack.push((cur, state));
                    state = new_state;
                    linearized = lin;
                    unlink(cur, &mut head, &mut next, &mut prev);
                    unlink(ret_pos[e.op], &mut head, &mut next, &mut prev);
                    cur = head;
                    continue;
                }
            }
            cur = next[cur];
        } else {
            // A return whose call is not linearized yet: this branch fails.
            cur = nil;
        }
    }
    true
}

/// Drops what cannot change the verdict but makes the search exponential: on a key without
/// compare-and-set, a put of unknown outcome whose value no read returned. Placing such a put
/// after everything else is always a valid choice (nothing observes it), so the history with it
/// is linearizable exactly when the history without it is. (With CAS on the key this does not
/// hold: an unobserved write can explain a failed CAS.)
fn prune(ops: Vec<&Operation>) -> Vec<&Operation> {
    if ops.iter().any(|o| matches!(o.input, Input::Cas { .. })) {
        return ops;
    }
    let observed: HashSet<&[u8]> = ops
        .iter()
        .filter_map(|o| match &o.output {
            Output::Value(Some(v)) => Some(v.as_slice()),
            _ => None,
        })
        .collect();
    ops.into_iter()
        .filter(|o| match (&o.input, &o.output) {
            (Input::Put(v), Output::Unknown) => observed.contains(v.as_slice()),
            _ => true,
        })
        .collect()
}

/// Checks a whole history; returns the first key without a linearization.
pub fn check(history: &[Operation]) -> Result<(), Violation> {
    let mut by_key: BTreeMap<&[u8], Vec<&Operation>> = BTreeMap::new();
    for o in history {
        if matches!(o.input, Input::Get) && o.output == Output::Unknown {
            continue;
        }
        by_key.entry(o.key.as_slice()).or_default().push(o);
    }
    for (key, ops) in by_key {
        let ops = prune(ops);
        if !check_key(&ops) {
            return Err(Violation { key: key.to_vec(), operations: ops.len() });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(client: usize, input: Input, output: Output, call: u64, ret: Option<u64>) -> Operation {
        Operation { client, key: b"k".to_vec(), input, output, call, ret }
    }
    fn put(v: &str) -> Input {
        Input::Put(v.as_bytes().to_vec())
    }
    fn got(v: Option<&str>) -> Output {
        Output::Value(v.map(|s| s.as_bytes().to_vec()))
    }

    #[test]
    fn sequential_and_concurrent_histories() {
        // put a, then get a: fine.
        assert!(
            check(&[
                op(0, put("a"), Output::Ok, 0, Some(1)),
                op(1, Input::Get, got(Some("a")), 2, Some(3))
            ])
            .is_ok()
        );
        // A stale read after the write returned: not linearizable.
        assert!(
            check(&[
                op(0, put("a"), Output::Ok, 0, Some(1)),
                op(1, Input::Get, got(None), 2, Some(3))
            ])
            .is_err()
        );
        // The same read overlapping the write: fine either way.
        assert!(
            check(&[
                op(0, put("a"), Output::Ok, 0, Some(5)),
                op(1, Input::Get, got(None), 2, Some(3))
            ])
            .is_ok()
        );
        // Two reads that disagree on the order of two overlapping writes.
        let h = [
            op(0, put("a"), Output::Ok, 0, Some(10)),
            op(1, put("b"), Output::Ok, 0, Some(10)),
            op(2, Input::Get, got(Some("a")), 11, Some(12)),
            op(3, Input::Get, got(Some("b")), 13, Some(14)),
        ];
        assert!(check(&h).is_err());
    }

    #[test]
    fn unknown_writes_may_or_may_not_happen() {
        let lost =
            [op(0, put("a"), Output::Unknown, 0, None), op(1, Input::Get, got(None), 5, Some(6))];
        assert!(check(&lost).is_ok());
        let late = [
            op(0, put("a"), Output::Unknown, 0, None),
            op(1, Input::Get, got(None), 5, Some(6)),
            op(1, Input::Get, got(Some("a")), 7, Some(8)),
        ];
        assert!(check(&late).is_ok());
        // Once seen, it cannot disappear.
        let flicker = [
            op(0, put("a"), Output::Unknown, 0, None),
            op(1, Input::Get, got(Some("a")), 5, Some(6)),
            op(1, Input::Get, got(None), 7, Some(8)),
        ];
        assert!(check(&flicker).is_err());
    }

    #[test]
    fn compare_and_set() {
        let cas = |e: Option<&str>, n: &str| Input::Cas {
            expect: e.map(|s| s.as_bytes().to_vec()),
            new: n.as_bytes().to_vec(),
        };
        let ok = [
            op(0, cas(None, "a"), Output::Swapped(true), 0, Some(1)),
            op(1, cas(None, "b"), Output::Swapped(false), 2, Some(3)),
            op(2, Input::Get, got(Some("a")), 4, Some(5)),
        ];
        assert!(check(&ok).is_ok());
        let both_won = [
            op(0, cas(None, "a"), Output::Swapped(true), 0, Some(10)),
            op(1, cas(None, "b"), Output::Swapped(true), 0, Some(10)),
        ];
        assert!(check(&both_won).is_err());
    }
}
