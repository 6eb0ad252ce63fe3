//! The in-memory key index: for every key, the revisions at which it changed. Pure data
//! structure, no IO; values live in RocksDB under their revision.

use std::collections::{BTreeSet, HashMap};
use std::ops::Bound;
use std::sync::Arc;

use crate::types::KeyRange;

/// A position in the history: the main revision of a write txn and the change's index in it.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Default,
    serde::Serialize,
    serde::Deserialize,
)]
pub struct Rev {
    pub main: i64,
    pub sub: i64,
}

impl Rev {
    pub fn new(main: i64, sub: i64) -> Self {
        Self { main, sub }
    }

    /// 16 big-endian bytes, so RocksDB's byte order is revision order.
    pub fn to_bytes(self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&self.main.to_be_bytes());
        b[8..].copy_from_slice(&self.sub.to_be_bytes());
        b
    }

    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        let main = i64::from_be_bytes(b.get(..8)?.try_into().ok()?);
        let sub = i64::from_be_bytes(b.get(8..16)?.try_into().ok()?);
        Some(Self { main, sub })
    }
}

/// One change of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    pub rev: Rev,
    pub tombstone: bool,
    /// Create revision of the generation this change belongs to (0 for a tombstone).
    pub create: i64,
    /// Version within the generation (0 for a tombstone).
    pub version: i64,
}

impl Change {
    /// The index entry of a stored record.
    pub fn of(rev: Rev, r: &super::Record) -> Self {
        Self { rev, tombstone: r.tombstone, create: r.create_revision, version: r.version }
    }
}

/// Changes of one key in revision order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyHistory {
    changes: Vec<Change>,
}

impl KeyHistory {
    /// The live change visible at revision `rev`, or `None` if the key did not exist then.
    pub fn at(&self, rev: i64) -> Option<&Change> {
        let pos = self.changes.partition_point(|c| c.rev.main <= rev);
        let c = self.changes.get(pos.checked_sub(1)?)?;
        (!c.tombstone).then_some(c)
    }

    /// The newest change, live or not.
    pub fn last(&self) -> Option<&Change> {
        self.changes.last()
    }

    /// The live change right before `rev` (the `prev_kv` of the change at `rev`).
    pub fn before(&self, rev: Rev) -> Option<&Change> {
        let pos = self.changes.partition_point(|c| c.rev < rev);
        let c = self.changes.get(pos.checked_sub(1)?)?;
        (!c.tombstone).then_some(c)
    }

    pub fn push(&mut self, c: Change) {
        debug_assert!(self.changes.last().is_none_or(|l| l.rev < c.rev));
        self.changes.push(c);
    }

    /// Drops every change not needed to read at revisions `>= at`: all but the newest change
    /// `<= at`, and that one too if it is a tombstone. Returns the dropped revisions.
    pub fn compact(&mut self, at: i64) -> Vec<Rev> {
        let pos = self.changes.partition_point(|c| c.rev.main <= at);
        if pos == 0 {
            return Vec::new();
        }
        let keep_from = if self.changes[pos - 1].tombstone { pos } else { pos - 1 };
        self.changes.drain(..keep_from).map(|c| c.rev).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }
}

/// Every key's history, ordered by key.
///
/// Every write looks its key up (twice: for the previous version, then to record the change),
/// so point lookups go through a hash map: a B-tree walk compared the key against a dozen or
/// more heap-allocated keys, which was most of the apply path's CPU in profiles. The ordered set
/// shares the key allocations and serves ranges; it changes only when a key appears or goes.
#[derive(Debug, Default)]
pub struct KeyIndex {
    histories: HashMap<Arc<[u8]>, KeyHistory>,
    order: BTreeSet<Arc<[u8]>>,
}

impl KeyIndex {
    pub fn get(&self, key: &[u8]) -> Option<&KeyHistory> {
        self.histories.get(key)
    }

    pub fn push(&mut self, key: &[u8], c: Change) {
        if let Some(h) = self.histories.get_mut(key) {
            h.push(c);
        } else {
            let mut h = KeyHistory::default();
            h.push(c);
            let key: Arc<[u8]> = key.into();
            self.order.insert(key.clone());
            self.histories.insert(key, h);
        }
    }

    /// Histories of the keys in `range`, in key order.
    pub fn range<'a>(
        &'a self,
        range: &'a KeyRange,
    ) -> Box<dyn Iterator<Item = (&'a [u8], &'a KeyHistory)> + 'a> {
        if range.is_single() {
            return Box::new(
                self.histories
                    .get_key_value(range.key.as_slice())
                    .map(|(k, h)| (&**k, h))
                    .into_iter(),
            );
        }
        let start = Bound::Included(range.key.as_slice());
        let end = if range.range_end == [0] {
            Bound::Unbounded
        } else if range.range_end.as_slice() <= range.key.as_slice() {
            return Box::new(std::iter::empty());
        } else {
            Bound::Excluded(range.range_end.as_slice())
        };
        Box::new(
            self.order
                .range::<[u8], _>((start, end))
                .filter_map(|k| self.histories.get(&**k).map(|h| (&**k, h))),
        )
    }

    /// Compacts every key at `at`; returns the dropped revisions.
    pub fn compact(&mut self, at: i64) -> Vec<Rev> {
        let mut dropped = Vec::new();
        let order = &mut self.order;
        self.histories.retain(|k, h| {
            dropped.extend(h.compact(at));
            if h.is_empty() {
                order.remove(&**k);
            }
            !h.is_empty()
        });
        dropped
    }

    pub fn len(&self) -> usize {
        self.histories.len()
    }

    pub fn is_empty(&self) -> bool {
        self.histories.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(main: i64, create: i64, version: i64) -> Change {
        Change { rev: Rev::new(main, 0), tombstone: false, create, version }
    }
    fn del(main: i64) -> Change {
        Change { rev: Rev::new(main, 0), tombstone: true, create: 0, version: 0 }
    }

    #[test]
    fn visibility_across_generations() {
        let mut h = KeyHistory::default();
        h.push(put(2, 2, 1));
        h.push(put(4, 2, 2));
        h.push(del(6));
        h.push(put(8, 8, 1));
        assert_eq!(h.at(1), None);
        assert_eq!(h.at(3).map(|c| c.version), Some(1));
        assert_eq!(h.at(5).map(|c| c.version), Some(2));
        assert_eq!(h.at(6), None);
        assert_eq!(h.at(7), None);
        assert_eq!(h.at(9).map(|c| c.create), Some(8));
        assert_eq!(h.before(Rev::new(4, 0)).map(|c| c.rev.main), Some(2));
        assert_eq!(h.before(Rev::new(8, 0)), None, "tombstone before a recreate");
    }

    #[test]
    fn compaction_keeps_what_reads_need() {
        let mut h = KeyHistory::default();
        h.push(put(2, 2, 1));
        h.push(put(4, 2, 2));
        h.push(del(6));
        h.push(put(8, 8, 1));
        assert_eq!(h.compact(5), vec![Rev::new(2, 0)]);
        assert_eq!(h.at(5).map(|c| c.version), Some(2));
        assert_eq!(h.compact(7), vec![Rev::new(4, 0), Rev::new(6, 0)]);
        assert_eq!(h.at(8).map(|c| c.version), Some(1));
        let mut gone = KeyHistory::default();
        gone.push(put(2, 2, 1));
        gone.push(del(3));
        assert_eq!(gone.compact(3).len(), 2);
        assert!(gone.is_empty());
    }

    #[test]
    fn ranges() {
        let mut idx = KeyIndex::default();
        for (i, k) in ["a", "ab", "b", "c"].iter().enumerate() {
            idx.push(k.as_bytes(), put(i64::try_from(i).unwrap() + 2, 2, 1));
        }
        let keys = |r: KeyRange| -> Vec<String> {
            idx.range(&r).map(|(k, _)| String::from_utf8(k.to_vec()).unwrap()).collect()
        };
        assert_eq!(keys(KeyRange::prefix("a")), ["a", "ab"]);
        assert_eq!(keys(KeyRange::single("b")), ["b"]);
        assert_eq!(keys(KeyRange { key: b"ab".to_vec(), range_end: vec![0] }), ["ab", "b", "c"]);
        assert_eq!(keys(KeyRange { key: vec![0], range_end: vec![0] }).len(), 4);
        assert!(keys(KeyRange { key: b"c".to_vec(), range_end: b"a".to_vec() }).is_empty());
    }

    #[test]
    fn compaction_forgets_deleted_keys_in_lookups_and_ranges() {
        let mut idx = KeyIndex::default();
        idx.push(b"a", put(2, 2, 1));
        idx.push(b"b", put(3, 3, 1));
        idx.push(b"a", del(4));
        assert_eq!(idx.compact(4).len(), 2);
        assert_eq!((idx.len(), idx.order.len()), (1, 1));
        assert!(idx.get(b"a").is_none());
        let all = KeyRange { key: vec![0], range_end: vec![0] };
        let keys = |idx: &KeyIndex| idx.range(&all).map(|(k, _)| k.to_vec()).collect::<Vec<_>>();
        assert_eq!(keys(&idx), [b"b".to_vec()]);
        idx.push(b"a", put(5, 5, 1));
        assert_eq!(keys(&idx), [b"a".to_vec(), b"b".to_vec()]);
        assert_eq!(idx.get(b"a").and_then(KeyHistory::last).map(|c| c.create), Some(5));
    }

    #[test]
    fn rev_bytes_sort_like_revs() {
        let a = Rev::new(3, 9).to_bytes();
        let b = Rev::new(4, 0).to_bytes();
        assert!(a < b);
        assert_eq!(Rev::from_bytes(&a), Some(Rev::new(3, 9)));
    }
}
