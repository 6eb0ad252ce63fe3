//! Seeded random writes checked against a plain in-memory model, at every [`EventDetail`]:
//! create revision, version, `prev_kv` and watch events must not depend on how much detail the
//! writer recorded, nor on a reopen (index rebuilt from disk) or a restore from a dump.

use std::collections::BTreeMap;

use super::*;
use crate::types::*;

/// Small deterministic generator (xorshift64*), so a failing seed can be replayed.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn flip(&mut self, one_in: u64) -> bool {
        self.below(one_in) == 0
    }

    fn key(&mut self) -> Vec<u8> {
        vec![b'a' + u8::try_from(self.below(3)).unwrap()]
    }
}

/// The expected store: live keys and the current revision.
struct Model {
    live: BTreeMap<Vec<u8>, KeyValue>,
    rev: i64,
}

/// One member under test: its own RocksDB and the detail its writers record.
struct Member {
    dir: tempfile::TempDir,
    mvcc: Option<Mvcc>,
    detail: EventDetail,
}

impl Member {
    fn new(detail: EventDetail) -> Self {
        let dir = tempfile::Builder::new().prefix("skiff-test-mvcc-model").tempdir().unwrap();
        let mvcc = Some(Mvcc::open(crate::db::open(dir.path()).unwrap()).unwrap());
        Self { dir, mvcc, detail }
    }

    fn mvcc(&self) -> &Mvcc {
        self.mvcc.as_ref().unwrap()
    }

    fn reopen(&mut self) {
        self.mvcc = None;
        self.mvcc = Some(Mvcc::open(crate::db::open(self.dir.path()).unwrap()).unwrap());
    }

    /// Applies `ops` as one batch; returns the results, the published range and live events.
    fn apply(&self, ops: &[WriteOp]) -> (Vec<String>, i64, i64, Vec<Event>) {
        let detail = self.detail;
        let mut w = self.mvcc().writer_with(|| detail);
        let from = w.revision() + 1;
        let results = ops.iter().map(|op| format!("{:?}", w.apply(op.clone()).unwrap())).collect();
        let (to, events) = w.commit(None).unwrap();
        (results, from, to, events)
    }
}

fn all() -> KeyRange {
    KeyRange { key: b"a".to_vec(), range_end: b"z".to_vec() }
}

/// Applies one put to the model at `rev.sub`; `None` if the put is refused (no key to keep
/// the value or lease of). Returns the response's `prev_kv` and the event.
fn model_put(m: &mut Model, main: i64, p: &PutRequest) -> Option<(Option<KeyValue>, Event)> {
    let prev = m.live.get(&p.key).cloned();
    if prev.is_none() && (p.ignore_value || p.ignore_lease) {
        return None;
    }
    let kv = KeyValue {
        key: p.key.clone(),
        create_revision: prev.as_ref().map_or(main, |k| k.create_revision),
        mod_revision: main,
        version: prev.as_ref().map_or(1, |k| k.version + 1),
        value: match &prev {
            Some(k) if p.ignore_value => k.value.clone(),
            _ => p.value.clone(),
        },
        lease: match &prev {
            Some(k) if p.ignore_lease => k.lease,
            _ => p.lease,
        },
    };
    m.live.insert(p.key.clone(), kv.clone());
    Some((prev.clone(), Event { kind: EventKind::Put, kv, prev_kv: prev }))
}

fn model_delete(m: &mut Model, main: i64, key: &[u8]) -> Option<Event> {
    let prev = m.live.remove(key)?;
    Some(Event {
        kind: EventKind::Delete,
        kv: KeyValue { key: key.to_vec(), mod_revision: main, ..KeyValue::default() },
        prev_kv: Some(prev),
    })
}

/// A random write op and the events the model expects from it (appended to `events`).
fn random_op(g: &mut Gen, m: &mut Model, events: &mut Vec<Event>) -> WriteOp {
    let main = m.rev + 1;
    let before = events.len();
    let kind = g.below(16);
    let op = if kind < 4 {
        // A txn with several changes, often to one key: put, delete, put again.
        let key = g.key();
        let mut success = Vec::new();
        for i in 0..2 + g.below(3) {
            let key = if g.flip(3) { g.key() } else { key.clone() };
            if g.flip(3) {
                if let Some(e) = model_delete(m, main, &key) {
                    events.push(e);
                }
                success.push(TxnOp::DeleteRange(DeleteRangeRequest {
                    range: KeyRange::single(key),
                    prev_kv: g.flip(2),
                }));
            } else {
                let p = PutRequest {
                    key,
                    value: format!("t{main}.{i}").into_bytes(),
                    lease: i64::try_from(g.below(3)).unwrap(),
                    prev_kv: g.flip(2),
                    ignore_value: g.flip(5),
                    ignore_lease: g.flip(5),
                };
                if let Some((_, e)) = model_put(m, main, &p) {
                    events.push(e);
                }
                success.push(TxnOp::Put(p));
            }
        }
        WriteOp::Txn(TxnRequest { compare: Vec::new(), success, failure: Vec::new() })
    } else if kind < 7 {
        let key = g.key();
        if let Some(e) = model_delete(m, main, &key) {
            events.push(e);
        }
        WriteOp::DeleteRange(DeleteRangeRequest {
            range: KeyRange::single(key),
            prev_kv: g.flip(2),
        })
    } else {
        let p = PutRequest {
            key: g.key(),
            value: format!("p{main}").into_bytes(),
            lease: i64::try_from(g.below(3)).unwrap(),
            prev_kv: g.flip(2),
            ignore_value: g.flip(6),
            ignore_lease: g.flip(6),
        };
        if let Some((_, e)) = model_put(m, main, &p) {
            events.push(e);
        }
        WriteOp::Put(p)
    };
    if events.len() > before {
        m.rev = main;
    }
    op
}

fn check_state(m: &Model, member: &Member, what: &str) {
    let r = member.mvcc().range(&RangeRequest { range: all(), ..Default::default() }).unwrap();
    let want: Vec<KeyValue> = m.live.values().cloned().collect();
    assert_eq!(r.kvs, want, "{what}: live keys ({:?})", member.detail);
    assert_eq!(member.mvcc().revision(), m.rev, "{what}: revision");
}

fn strip(events: &[Event]) -> Vec<Event> {
    events.iter().cloned().map(|e| Event { prev_kv: None, ..e }).collect()
}

#[test]
fn every_event_detail_matches_the_model_across_reopen_compaction_and_restore() {
    for seed in 1..=3u64 {
        let mut g = Gen(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        // An empty store is at revision 1; the first write takes 2.
        let mut m = Model { live: BTreeMap::new(), rev: 1 };
        // The last member changes its detail every batch, as watchers come and go: a value
        // written while nobody watched is still the right prev_kv once someone does.
        let details = [EventDetail::WithPrevKv, EventDetail::Events, EventDetail::None];
        let mut members: Vec<Member> =
            details.into_iter().chain([EventDetail::None]).map(Member::new).collect();
        for step in 0..100 {
            let what = format!("seed {seed} step {step}");
            if step % 37 == 36 && m.rev > 2 {
                // Compact somewhere in the past, as its own batch.
                let at = 1 + i64::try_from(g.below(u64::try_from(m.rev - 1).unwrap())).unwrap();
                let op = WriteOp::Compact(at);
                let results: Vec<_> =
                    members.iter().map(|x| x.apply(std::slice::from_ref(&op)).0).collect();
                assert!(results.windows(2).all(|w| w[0] == w[1]), "{what}: {results:?}");
            } else {
                members[3].detail = details[usize::try_from(g.below(3)).unwrap()];
                let mut expected = Vec::new();
                let ops: Vec<WriteOp> =
                    (0..=g.below(4)).map(|_| random_op(&mut g, &mut m, &mut expected)).collect();
                let mut results = Vec::new();
                for member in &members {
                    let (res, from, to, live) = member.apply(&ops);
                    assert_eq!(to, m.rev, "{what}: committed revision");
                    let (history, _) = member.mvcc().events(from, to, usize::MAX).unwrap();
                    assert_eq!(history, expected, "{what}: history ({:?})", member.detail);
                    match member.detail {
                        EventDetail::WithPrevKv => assert_eq!(live, expected, "{what}: live"),
                        EventDetail::Events => assert_eq!(live, strip(&expected), "{what}: live"),
                        EventDetail::None => assert!(live.is_empty(), "{what}: live"),
                    }
                    results.push(res);
                }
                // Responses (prev_kv included) do not depend on the detail recorded.
                assert!(results.windows(2).all(|w| w[0] == w[1]), "{what}: {results:?}");
            }
            for member in &members {
                check_state(&m, member, &what);
            }
            if step % 29 == 28 {
                // The index is rebuilt from disk: later create revisions and versions match.
                for member in &mut members {
                    member.reopen();
                    check_state(&m, member, &format!("{what} after reopen"));
                }
            }
            if step % 53 == 52 {
                // A snapshot installed on a follower: its index comes from the dump.
                let dump = members[0].mvcc().dump().unwrap();
                for member in &members[1..] {
                    member.mvcc().restore(&dump).unwrap();
                    check_state(&m, member, &format!("{what} after restore"));
                }
            }
        }
    }
}
