//! MVCC key-value store with etcd semantics on RocksDB: one global revision, per-key
//! create/mod revision and version, ranges at past revisions, transactions and compaction.
//!
//! Values are stored in the `kv` column family under their revision; [`index::KeyIndex`]
//! (rebuilt at open) maps keys to revisions. Writes go through [`Mvcc::writer`], which holds the
//! write lock, stages changes in one `WriteBatch` and publishes events only after the batch is
//! in the database; reads take the read lock, so they never see half of an applied batch.

pub mod index;

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use rocksdb::{DB, Direction, IteratorMode, WriteBatch};
use serde::{Deserialize, Serialize};

use crate::db::{CF_KV, CF_META, cf};
use crate::error::{KvError, StoreError};
use crate::types::{
    Compare, CompareResult, CompareTarget, DeleteRangeRequest, DeleteRangeResponse, Event,
    EventKind, KeyRange, KeyValue, PutRequest, PutResponse, RangeRequest, RangeResponse, TxnOp,
    TxnOpResponse, TxnRequest, TxnResponse, WriteOp, WriteResult,
};
use index::{Change, KeyIndex, Rev};

const META_REV: &[u8] = b"rev";
const META_COMPACT: &[u8] = b"compact";
const META_APPLIED: &[u8] = b"applied";

/// What the `kv` column family stores per change.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Record {
    #[serde(with = "crate::types::bytes")]
    pub key: Vec<u8>,
    #[serde(with = "crate::types::bytes")]
    pub value: Vec<u8>,
    pub create_revision: i64,
    pub version: i64,
    pub lease: i64,
    pub tombstone: bool,
}

impl Record {
    fn to_kv(&self, rev: Rev) -> KeyValue {
        KeyValue {
            key: self.key.clone(),
            create_revision: self.create_revision,
            mod_revision: rev.main,
            version: self.version,
            value: self.value.clone(),
            lease: self.lease,
        }
    }
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    bincode::serialize(v).expect("in-memory serialization of plain data cannot fail")
}

fn decode_record(b: &[u8]) -> Result<Record, StoreError> {
    bincode::deserialize(b).map_err(|source| StoreError::Decode { what: "mvcc record", source })
}

fn read_i64(db: &DB, key: &[u8]) -> Result<i64, StoreError> {
    Ok(match db.get_pinned_cf(cf(db, CF_META), key)? {
        Some(b) => i64::from_be_bytes(
            b.as_ref()
                .try_into()
                .map_err(|_| StoreError::Corrupt(format!("meta {key:?} is not 8 bytes")))?,
        ),
        None => 0,
    })
}

#[derive(Debug)]
struct State {
    index: KeyIndex,
    /// Current revision; etcd starts at 1 with an empty store.
    rev: i64,
    compact: i64,
    /// Opaque state of the layer above (the raft state machine's applied log id and
    /// membership), written atomically with the data it describes.
    applied: Vec<u8>,
}

/// How much a writer records about its changes for the watch hub. Building events costs a copy
/// of every key and value, and their `prev_kv` a read of every overwritten value, so the state
/// machine asks only for what current watchers need (a batch published with less detail makes
/// its watchers read the revisions back from history; see `crate::watch`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum EventDetail {
    /// No events: nobody watches.
    None,
    /// Events without `prev_kv`.
    Events,
    /// Events with `prev_kv` (the previous live value of each changed key).
    WithPrevKv,
}

/// The MVCC store. Cheap to share (`Arc`), readable from many tasks.
#[derive(Debug)]
pub struct Mvcc {
    db: Arc<DB>,
    state: RwLock<State>,
}

/// All MVCC data, as carried in raft snapshots and backups.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MvccDump {
    pub revision: i64,
    pub compact_revision: i64,
    /// `(revision, record)` in revision order.
    pub records: Vec<(Rev, Record)>,
    /// The opaque applied state at the time of the dump (see [`MvccWriter::commit`]).
    #[serde(with = "crate::types::bytes")]
    pub applied: Vec<u8>,
}

impl Mvcc {
    /// Opens the MVCC view of `db`, rebuilding the key index from the `kv` column family.
    pub fn open(db: Arc<DB>) -> Result<Self, StoreError> {
        let state = Self::load(&db)?;
        Ok(Self { db, state: RwLock::new(state) })
    }

    fn load(db: &DB) -> Result<State, StoreError> {
        let mut index = KeyIndex::default();
        for item in db.iterator_cf(cf(db, CF_KV), IteratorMode::Start) {
            let (k, v) = item?;
            let rev = Rev::from_bytes(&k).ok_or_else(|| StoreError::Corrupt("kv key".into()))?;
            let r = decode_record(&v)?;
            index.push(&r.key, Change::of(rev, &r));
        }
        let rev = read_i64(db, META_REV)?.max(1);
        let compact = read_i64(db, META_COMPACT)?;
        let applied = db.get_cf(cf(db, CF_META), META_APPLIED)?.unwrap_or_default();
        Ok(State { index, rev, compact, applied })
    }

    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn db(&self) -> &Arc<DB> {
        &self.db
    }

    pub fn revision(&self) -> i64 {
        self.read().rev
    }

    pub fn compact_revision(&self) -> i64 {
        self.read().compact
    }

    /// The opaque applied state last committed (empty if none).
    pub fn applied(&self) -> Vec<u8> {
        self.read().applied.clone()
    }

    pub fn key_count(&self) -> usize {
        self.read().index.len()
    }

    /// Reads a range at `req.revision` (0 = current).
    pub fn range(&self, req: &RangeRequest) -> Result<RangeResponse, KvError> {
        let st = self.read();
        let reader = Reader { db: &self.db, pending: None };
        range_in(&st, &reader, req, st.rev)
    }

    /// Starts applying a batch of writes, recording full events (see [`Mvcc::writer_with`]).
    /// Nothing is visible to readers until [`MvccWriter::commit`].
    pub fn writer(&self) -> MvccWriter<'_> {
        self.writer_with(|| EventDetail::WithPrevKv)
    }

    /// Starts applying a batch of writes, recording the events `detail` asks for. `detail` is
    /// called once the write lock is held, so a watcher that registers after it answered reads
    /// the revision this batch commits, and never needs the batch's events.
    pub fn writer_with(&self, detail: impl FnOnce() -> EventDetail) -> MvccWriter<'_> {
        let st = self.state.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        MvccWriter {
            db: &self.db,
            st,
            pending: HashMap::new(),
            batch: WriteBatch::default(),
            events: Vec::new(),
            detail: detail(),
        }
    }

    /// Events with revisions in `from..=to`, in revision order, stopping after about `limit`
    /// events at a revision boundary. Also returns the last revision covered. `Compacted` if
    /// `from` is not retained.
    pub fn events(&self, from: i64, to: i64, limit: usize) -> Result<(Vec<Event>, i64), KvError> {
        let st = self.read();
        if from <= st.compact {
            return Err(KvError::Compacted { compact_revision: st.compact });
        }
        let to = to.min(st.rev);
        let mut out = Vec::new();
        if from > to {
            return Ok((out, to));
        }
        let mut upto = to;
        let reader = Reader { db: &self.db, pending: None };
        let start = Rev::new(from, 0).to_bytes();
        let iter = self
            .db
            .iterator_cf(cf(&self.db, CF_KV), IteratorMode::From(&start, Direction::Forward));
        let mut last_main = 0;
        for item in iter {
            let (k, v) = item.map_err(StoreError::from)?;
            let rev = Rev::from_bytes(&k).ok_or_else(|| StoreError::Corrupt("kv key".into()))?;
            if rev.main > to {
                break;
            }
            if out.len() >= limit && rev.main != last_main {
                upto = last_main;
                break;
            }
            last_main = rev.main;
            let r = decode_record(&v)?;
            let prev_kv = match st.index.get(&r.key).and_then(|h| h.before(rev)) {
                Some(c) => reader.get(c.rev)?.map(|p| p.to_kv(c.rev)),
                None => None,
            };
            out.push(if r.tombstone {
                Event {
                    kind: EventKind::Delete,
                    kv: KeyValue { key: r.key, mod_revision: rev.main, ..KeyValue::default() },
                    prev_kv,
                }
            } else {
                Event { kind: EventKind::Put, kv: r.to_kv(rev), prev_kv }
            });
        }
        Ok((out, upto))
    }

    /// A consistent copy of all MVCC data, in memory: the reference [`Mvcc::dump_into`] is
    /// tested against (the store itself streams).
    #[cfg(test)]
    pub fn dump(&self) -> Result<MvccDump, StoreError> {
        let (snapshot, revision, compact_revision, applied) = self.read_view();
        let mut records = Vec::new();
        for item in snapshot.iterator_cf(cf(&self.db, CF_KV), IteratorMode::Start) {
            let (k, v) = item?;
            let rev = Rev::from_bytes(&k).ok_or_else(|| StoreError::Corrupt("kv key".into()))?;
            records.push((rev, decode_record(&v)?));
        }
        Ok(MvccDump { revision, compact_revision, records, applied })
    }

    /// Writes all MVCC data to `w` in the layout of `bincode::serialize(&MvccDump)`, one
    /// record at a time: each record's stored bytes are copied as they are and nothing is held
    /// in memory (building a raft snapshot through [`Mvcc::dump`] held the history twice). The
    /// record count is only known at the end and is then written at its place near the start,
    /// which is why `w` must seek. Without `with_applied` the dump carries an empty applied
    /// state (a backup is data, not raft membership); the summary reports the real one.
    pub fn dump_into<W: Write + Seek>(
        &self,
        w: &mut W,
        with_applied: bool,
    ) -> Result<DumpSummary, StoreError> {
        let (snapshot, revision, compact_revision, applied) = self.read_view();
        let io = |source| StoreError::Io { path: "dump".into(), source };
        let enc = |source| StoreError::Decode { what: "dump", source };
        let start = w.stream_position().map_err(io)?;
        bincode::serialize_into(&mut *w, &(revision, compact_revision, 0u64)).map_err(enc)?;
        let mut records = 0u64;
        for item in snapshot.iterator_cf(cf(&self.db, CF_KV), IteratorMode::Start) {
            let (k, v) = item?;
            let rev = Rev::from_bytes(&k).ok_or_else(|| StoreError::Corrupt("kv key".into()))?;
            bincode::serialize_into(&mut *w, &rev).map_err(enc)?;
            w.write_all(&v).map_err(io)?;
            records += 1;
        }
        let written: &[u8] = if with_applied { &applied } else { &[] };
        bincode::serialize_into(&mut *w, written).map_err(enc)?;
        let end = w.stream_position().map_err(io)?;
        // The count follows the two revisions (8 bytes each).
        w.seek(SeekFrom::Start(start + 16)).map_err(io)?;
        w.write_all(&records.to_le_bytes()).map_err(io)?;
        w.seek(SeekFrom::Start(end)).map_err(io)?;
        Ok(DumpSummary { revision, records, applied })
    }

    /// A RocksDB snapshot and the state that matches it. Writers commit their RocksDB batch
    /// while holding the write lock, so a snapshot taken under the read lock matches the state
    /// copied with it; the lock is released before a caller's (long) scan.
    fn read_view(&self) -> (rocksdb::Snapshot<'_>, i64, i64, Vec<u8>) {
        let st = self.read();
        (self.db.snapshot(), st.rev, st.compact, st.applied.clone())
    }

    /// Replaces all MVCC data with `dump` (tests; the store reads dumps with
    /// [`Mvcc::restore_from`]).
    #[cfg(test)]
    pub fn restore(&self, dump: &MvccDump) -> Result<(), StoreError> {
        let mut r = Replacement::new(self);
        for (rev, record) in &dump.records {
            r.push(*rev, record);
        }
        r.commit(dump.revision, dump.compact_revision, dump.applied.clone())
    }

    /// Replaces all MVCC data with a dump read from `r` (the layout [`Mvcc::dump_into`]
    /// writes), record by record, with `applied` in place of the dump's own applied state.
    /// Nothing changes unless the whole dump decodes. Returns the dump's revision.
    pub fn restore_from(&self, r: &mut impl Read, applied: Vec<u8>) -> Result<i64, StoreError> {
        let mut replacement = Replacement::new(self);
        let (revision, compact) = read_dump(r, |rev, record| replacement.push(rev, &record))?;
        replacement.commit(revision, compact, applied)?;
        Ok(revision)
    }
}

/// Reads a dump in the layout [`Mvcc::dump_into`] writes, handing each record to `each` in
/// revision order; returns its revision and compacted revision. A stream that is cut off or
/// does not decode is an error.
pub fn read_dump(
    r: &mut impl Read,
    mut each: impl FnMut(Rev, Record),
) -> Result<(i64, i64), StoreError> {
    let dec = |source| StoreError::Decode { what: "dump", source };
    let (revision, compact, count): (i64, i64, u64) =
        bincode::deserialize_from(&mut *r).map_err(dec)?;
    for _ in 0..count {
        let (rev, record): (Rev, Record) = bincode::deserialize_from(&mut *r).map_err(dec)?;
        each(rev, record);
    }
    // The dump's applied state, which callers replace: read so that a cut-off stream fails.
    let _: Vec<u8> = bincode::deserialize_from(&mut *r).map_err(dec)?;
    Ok((revision, compact))
}

/// What [`Mvcc::dump_into`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DumpSummary {
    pub revision: i64,
    pub records: u64,
    /// The store's applied state at the dump (written into it only `with_applied`).
    pub applied: Vec<u8>,
}

/// All MVCC data being replaced (snapshot install, backup restore): one atomic RocksDB batch
/// and the key index that goes with it.
struct Replacement<'a> {
    mvcc: &'a Mvcc,
    batch: WriteBatch,
    index: KeyIndex,
}

impl<'a> Replacement<'a> {
    fn new(mvcc: &'a Mvcc) -> Self {
        let mut batch = WriteBatch::default();
        // Revisions are positive, so every record key sorts inside [0x00.., 0xff..).
        batch.delete_range_cf(cf(&mvcc.db, CF_KV), [0u8; 16], [0xffu8; 16]);
        Self { mvcc, batch, index: KeyIndex::default() }
    }

    fn push(&mut self, rev: Rev, r: &Record) {
        self.batch.put_cf(cf(&self.mvcc.db, CF_KV), rev.to_bytes(), encode(r));
        self.index.push(&r.key, Change::of(rev, r));
    }

    /// Writes the batch and swaps the state in; readers wait only for this part.
    fn commit(mut self, revision: i64, compact: i64, applied: Vec<u8>) -> Result<(), StoreError> {
        let meta = cf(&self.mvcc.db, CF_META);
        self.batch.put_cf(meta, META_REV, revision.to_be_bytes());
        self.batch.put_cf(meta, META_COMPACT, compact.to_be_bytes());
        self.batch.put_cf(meta, META_APPLIED, &applied);
        let mut st = self.mvcc.state.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        self.mvcc.db.write(self.batch)?;
        *st = State { index: self.index, rev: revision.max(1), compact, applied };
        Ok(())
    }
}

/// Reads records by revision, seeing the writer's staged changes first.
struct Reader<'a> {
    db: &'a DB,
    pending: Option<&'a HashMap<Rev, Record>>,
}

impl Reader<'_> {
    fn get(&self, rev: Rev) -> Result<Option<Record>, StoreError> {
        if let Some(r) = self.pending.and_then(|p| p.get(&rev)) {
            return Ok(Some(r.clone()));
        }
        match self.db.get_pinned_cf(cf(self.db, CF_KV), rev.to_bytes())? {
            Some(b) => Ok(Some(decode_record(&b)?)),
            None => Ok(None),
        }
    }

    fn kv(&self, rev: Rev) -> Result<KeyValue, StoreError> {
        self.get(rev)?.map(|r| r.to_kv(rev)).ok_or_else(|| {
            StoreError::Corrupt(format!("index names revision {rev:?} missing from kv"))
        })
    }
}

/// Range read at `req.revision` against state `st`, with `current` as the newest readable
/// revision (a txn reads its own writes).
fn range_in(
    st: &State,
    reader: &Reader<'_>,
    req: &RangeRequest,
    current: i64,
) -> Result<RangeResponse, KvError> {
    let rev = if req.revision <= 0 { current } else { req.revision };
    if rev > current {
        return Err(KvError::FutureRevision);
    }
    if rev < st.compact {
        return Err(KvError::Compacted { compact_revision: st.compact });
    }
    let limit = usize::try_from(req.limit).unwrap_or(0);
    let mut count = 0i64;
    let mut kvs = Vec::new();
    for (key, h) in st.index.range(&req.range) {
        let Some(c) = h.at(rev) else { continue };
        count += 1;
        if req.count_only || (limit > 0 && kvs.len() >= limit) {
            continue;
        }
        if req.keys_only {
            kvs.push(KeyValue {
                key: key.to_vec(),
                create_revision: c.create,
                mod_revision: c.rev.main,
                version: c.version,
                value: Vec::new(),
                lease: 0,
            });
        } else {
            kvs.push(reader.kv(c.rev)?);
        }
    }
    let more = limit > 0 && count > i64::try_from(limit).unwrap_or(i64::MAX);
    Ok(RangeResponse { revision: st.rev, kvs, more, count })
}

/// An open write batch on the MVCC store (holds the write lock).
pub struct MvccWriter<'a> {
    db: &'a DB,
    st: RwLockWriteGuard<'a, State>,
    pending: HashMap<Rev, Record>,
    batch: WriteBatch,
    events: Vec<Event>,
    detail: EventDetail,
}

/// Changes made by one write op: its main revision is `st.rev + 1` once `subs > 0`.
struct TxnCursor {
    main: i64,
    subs: i64,
}

impl MvccWriter<'_> {
    pub fn revision(&self) -> i64 {
        self.st.rev
    }

    /// The event detail this writer records (what [`MvccWriter::commit`] returns).
    pub fn detail(&self) -> EventDetail {
        self.detail
    }

    /// Applies one write. State-dependent failures (compacted, future revision) are returned as
    /// `WriteResult::Error` and change nothing.
    pub fn apply(&mut self, op: WriteOp) -> Result<WriteResult, StoreError> {
        let mut cur = TxnCursor { main: self.st.rev + 1, subs: 0 };
        let res = match op {
            WriteOp::Put(p) => match self.put(&mut cur, p)? {
                Ok(r) => WriteResult::Put(r),
                Err(e) => WriteResult::Error(e),
            },
            WriteOp::DeleteRange(d) => WriteResult::DeleteRange(self.delete(&mut cur, &d)?),
            WriteOp::Txn(t) => {
                // Validate reads first so a failing range cannot leave half a txn staged.
                if let Err(e) = self.check_txn(&t, cur.main) {
                    WriteResult::Error(e)
                } else {
                    WriteResult::Txn(self.txn(&mut cur, t)?)
                }
            }
            WriteOp::Compact(at) => match self.compact(at) {
                Ok(()) => WriteResult::Compact { revision: self.st.rev },
                Err(e) => WriteResult::Error(e),
            },
        };
        if cur.subs > 0 {
            self.st.rev = cur.main;
        }
        Ok(match res {
            WriteResult::Put(mut r) => {
                r.revision = self.st.rev;
                WriteResult::Put(r)
            }
            WriteResult::DeleteRange(mut r) => {
                r.revision = self.st.rev;
                WriteResult::DeleteRange(r)
            }
            WriteResult::Txn(mut r) => {
                set_txn_revision(&mut r, self.st.rev);
                WriteResult::Txn(r)
            }
            other => other,
        })
    }

    fn reader(&self) -> Reader<'_> {
        Reader { db: self.db, pending: Some(&self.pending) }
    }

    fn stage(&mut self, cur: &mut TxnCursor, r: Record) -> Rev {
        let rev = next_rev(cur);
        cur.subs += 1;
        self.batch.put_cf(cf(self.db, CF_KV), rev.to_bytes(), encode(&r));
        self.st.index.push(&r.key, Change::of(rev, &r));
        self.pending.insert(rev, r);
        rev
    }

    fn put(
        &mut self,
        cur: &mut TxnCursor,
        p: PutRequest,
    ) -> Result<Result<PutResponse, KvError>, StoreError> {
        let prev =
            self.st.index.get(&p.key).and_then(|h| h.last().copied()).filter(|c| !c.tombstone);
        if prev.is_none() && (p.ignore_value || p.ignore_lease) {
            return Ok(Err(KvError::InvalidArgument("key not found".into())));
        }
        // The index has the previous create revision and version; the previous value is read
        // only when the request or a watcher needs it (etcd does the same).
        let want_prev =
            p.prev_kv || p.ignore_value || p.ignore_lease || self.detail == EventDetail::WithPrevKv;
        let mut prev_kv = match prev {
            Some(c) if want_prev => Some(self.reader().kv(c.rev)?),
            _ => None,
        };
        let value = match (&prev_kv, p.ignore_value) {
            (Some(prev), true) => prev.value.clone(),
            _ => p.value,
        };
        let lease = match (&prev_kv, p.ignore_lease) {
            (Some(prev), true) => prev.lease,
            _ => p.lease,
        };
        let (create, version) = match prev {
            Some(c) => (c.create, c.version + 1),
            None => (cur.main, 1),
        };
        let record =
            Record { key: p.key, value, create_revision: create, version, lease, tombstone: false };
        if self.detail != EventDetail::None {
            let kv = record.to_kv(next_rev(cur));
            let prev_kv = match self.detail {
                EventDetail::WithPrevKv if p.prev_kv => prev_kv.clone(),
                EventDetail::WithPrevKv => prev_kv.take(),
                _ => None,
            };
            self.events.push(Event { kind: EventKind::Put, kv, prev_kv });
        }
        self.stage(cur, record);
        Ok(Ok(PutResponse { revision: 0, prev_kv: if p.prev_kv { prev_kv } else { None } }))
    }

    fn delete(
        &mut self,
        cur: &mut TxnCursor,
        d: &DeleteRangeRequest,
    ) -> Result<DeleteRangeResponse, StoreError> {
        let want_prev = d.prev_kv || self.detail == EventDetail::WithPrevKv;
        let live: Vec<(Vec<u8>, Rev)> = self
            .st
            .index
            .range(&d.range)
            .filter_map(|(k, h)| h.last().filter(|c| !c.tombstone).map(|c| (k.to_vec(), c.rev)))
            .collect();
        let mut prev_kvs = Vec::new();
        for (key, prev_rev) in &live {
            let prev = if want_prev { Some(self.reader().kv(*prev_rev)?) } else { None };
            let rec = Record {
                key: key.clone(),
                value: Vec::new(),
                create_revision: 0,
                version: 0,
                lease: 0,
                tombstone: true,
            };
            let rev = self.stage(cur, rec);
            if self.detail != EventDetail::None {
                self.events.push(Event {
                    kind: EventKind::Delete,
                    kv: KeyValue {
                        key: key.clone(),
                        mod_revision: rev.main,
                        ..KeyValue::default()
                    },
                    prev_kv: if self.detail == EventDetail::WithPrevKv {
                        prev.clone()
                    } else {
                        None
                    },
                });
            }
            if d.prev_kv
                && let Some(prev) = prev
            {
                prev_kvs.push(prev);
            }
        }
        Ok(DeleteRangeResponse {
            revision: 0,
            deleted: i64::try_from(live.len()).unwrap_or(i64::MAX),
            prev_kvs,
        })
    }

    fn check_txn(&self, t: &TxnRequest, main: i64) -> Result<(), KvError> {
        for op in t.success.iter().chain(&t.failure) {
            match op {
                TxnOp::Range(r) if r.revision > 0 => {
                    if r.revision > main - 1 {
                        return Err(KvError::FutureRevision);
                    }
                    if r.revision < self.st.compact {
                        return Err(KvError::Compacted { compact_revision: self.st.compact });
                    }
                }
                TxnOp::Txn(inner) => self.check_txn(inner, main)?,
                _ => {}
            }
        }
        Ok(())
    }

    fn compare(&self, c: &Compare, cur: i64) -> Result<bool, StoreError> {
        let mut matched_any = false;
        for (_, h) in self.st.index.range(&c.range) {
            let Some(ch) = h.at(cur) else { continue };
            matched_any = true;
            let kv = match &c.target {
                CompareTarget::Value(_) | CompareTarget::Lease(_) => self.reader().kv(ch.rev)?,
                _ => KeyValue {
                    create_revision: ch.create,
                    mod_revision: ch.rev.main,
                    version: ch.version,
                    ..KeyValue::default()
                },
            };
            if !compare_kv(c, &kv) {
                return Ok(false);
            }
        }
        if !matched_any {
            // A missing key has version, create and mod revision 0 and no value (etcd).
            if matches!(c.target, CompareTarget::Value(_)) {
                return Ok(false);
            }
            return Ok(compare_kv(c, &KeyValue::default()));
        }
        Ok(true)
    }

    fn txn(&mut self, cur: &mut TxnCursor, t: TxnRequest) -> Result<TxnResponse, StoreError> {
        let mut ok = true;
        let visible = if cur.subs > 0 { cur.main } else { self.st.rev };
        for c in &t.compare {
            if !self.compare(c, visible)? {
                ok = false;
                break;
            }
        }
        let ops = if ok { t.success } else { t.failure };
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            responses.push(match op {
                TxnOp::Range(r) => {
                    let visible = if cur.subs > 0 { cur.main } else { self.st.rev };
                    let resp =
                        range_in(&self.st, &self.reader(), &r, visible).map_err(|e| match e {
                            KvError::Storage(s) => StoreError::Corrupt(s),
                            other => StoreError::Corrupt(format!(
                                "txn range failed after validation: {other}"
                            )),
                        })?;
                    TxnOpResponse::Range(resp)
                }
                TxnOp::Put(p) => match self.put(cur, p)? {
                    Ok(r) => TxnOpResponse::Put(r),
                    // ignore_value on a missing key inside a txn: etcd fails the txn; we report
                    // an empty put response rather than abort the already-staged ops.
                    Err(_) => TxnOpResponse::Put(PutResponse::default()),
                },
                TxnOp::DeleteRange(d) => TxnOpResponse::DeleteRange(self.delete(cur, &d)?),
                TxnOp::Txn(inner) => TxnOpResponse::Txn(self.txn(cur, inner)?),
            });
        }
        Ok(TxnResponse { revision: 0, succeeded: ok, responses })
    }

    fn compact(&mut self, at: i64) -> Result<(), KvError> {
        if at > self.st.rev {
            return Err(KvError::FutureRevision);
        }
        if at <= self.st.compact {
            return Err(KvError::Compacted { compact_revision: self.st.compact });
        }
        let kv = cf(self.db, CF_KV);
        for rev in self.st.index.compact(at) {
            self.batch.delete_cf(kv, rev.to_bytes());
            self.pending.remove(&rev);
        }
        self.st.compact = at;
        self.batch.put_cf(cf(self.db, CF_META), META_COMPACT, at.to_be_bytes());
        Ok(())
    }

    /// Writes the batch and `applied` (the caller's applied state, e.g. the raft log id) in one
    /// atomic RocksDB write and returns the new revision and the events to publish. The WAL is
    /// not synced here: the raft log, which shares the WAL, was synced before these entries
    /// were committed, and a crash replays them.
    pub fn commit(mut self, applied: Option<Vec<u8>>) -> Result<(i64, Vec<Event>), StoreError> {
        let meta = cf(self.db, CF_META);
        self.batch.put_cf(meta, META_REV, self.st.rev.to_be_bytes());
        if let Some(a) = applied {
            self.batch.put_cf(meta, META_APPLIED, &a);
            self.st.applied = a;
        }
        self.db.write(std::mem::take(&mut self.batch))?;
        Ok((self.st.rev, std::mem::take(&mut self.events)))
    }
}

/// The revision the next change staged at `cur` gets.
fn next_rev(cur: &TxnCursor) -> Rev {
    Rev::new(cur.main, cur.subs)
}

fn set_txn_revision(r: &mut TxnResponse, rev: i64) {
    r.revision = rev;
    for resp in &mut r.responses {
        match resp {
            TxnOpResponse::Put(p) => p.revision = rev,
            TxnOpResponse::DeleteRange(d) => d.revision = rev,
            TxnOpResponse::Range(g) => g.revision = rev,
            TxnOpResponse::Txn(t) => set_txn_revision(t, rev),
        }
    }
}

fn compare_kv(c: &Compare, kv: &KeyValue) -> bool {
    use std::cmp::Ordering;
    let ord = match &c.target {
        CompareTarget::Version(v) => kv.version.cmp(v),
        CompareTarget::Create(v) => kv.create_revision.cmp(v),
        CompareTarget::Mod(v) => kv.mod_revision.cmp(v),
        CompareTarget::Lease(v) => kv.lease.cmp(v),
        CompareTarget::Value(v) => kv.value.as_slice().cmp(v.as_slice()),
    };
    match c.result {
        CompareResult::Equal => ord == Ordering::Equal,
        CompareResult::NotEqual => ord != Ordering::Equal,
        CompareResult::Greater => ord == Ordering::Greater,
        CompareResult::Less => ord == Ordering::Less,
    }
}

/// Keeps the key range of a request honest: `KeyRange` values from clients are used as-is,
/// except that an empty key with a single-key range is rejected (etcd: "key not found").
pub fn validate_range(r: &KeyRange) -> Result<(), KvError> {
    if r.key.is_empty() && r.range_end.is_empty() {
        return Err(KvError::InvalidArgument("key is not provided".into()));
    }
    Ok(())
}

#[cfg(test)]
mod model_tests;
#[cfg(test)]
mod tests;
