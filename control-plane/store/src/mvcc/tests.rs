//! Unit tests of the MVCC core against a real RocksDB in a temp dir.

#![expect(clippy::many_single_char_names, reason = "short names keep the cases readable")]

use super::*;
use crate::types::*;

struct Fixture {
    _dir: tempfile::TempDir,
    mvcc: Mvcc,
}

fn fixture() -> Fixture {
    let dir = tempfile::Builder::new().prefix("skiff-test-mvcc").tempdir().unwrap();
    let db = crate::db::open(dir.path()).unwrap();
    Fixture { mvcc: Mvcc::open(db).unwrap(), _dir: dir }
}

fn write(m: &Mvcc, op: WriteOp) -> WriteResult {
    let mut w = m.writer();
    let r = w.apply(op).unwrap();
    w.commit(None).unwrap();
    r
}

fn put(m: &Mvcc, k: &str, v: &str) -> i64 {
    match write(
        m,
        WriteOp::Put(PutRequest { key: k.into(), value: v.into(), ..Default::default() }),
    ) {
        WriteResult::Put(p) => p.revision,
        other => panic!("put failed: {other:?}"),
    }
}

fn get(m: &Mvcc, k: &str, rev: i64) -> Result<Option<KeyValue>, KvError> {
    let r =
        m.range(&RangeRequest { range: KeyRange::single(k), revision: rev, ..Default::default() })?;
    Ok(r.kvs.into_iter().next())
}

fn del(m: &Mvcc, r: KeyRange) -> DeleteRangeResponse {
    match write(m, WriteOp::DeleteRange(DeleteRangeRequest { range: r, prev_kv: true })) {
        WriteResult::DeleteRange(d) => d,
        other => panic!("delete failed: {other:?}"),
    }
}

#[test]
fn revisions_versions_and_history() {
    let f = fixture();
    let m = &f.mvcc;
    assert_eq!(m.revision(), 1, "etcd starts at revision 1");
    assert_eq!(put(m, "a", "1"), 2);
    assert_eq!(put(m, "a", "2"), 3);
    assert_eq!(put(m, "b", "x"), 4);
    let a = get(m, "a", 0).unwrap().unwrap();
    assert_eq!(
        (a.create_revision, a.mod_revision, a.version, a.value.as_slice()),
        (2, 3, 2, &b"2"[..])
    );
    assert_eq!(get(m, "a", 2).unwrap().unwrap().value, b"1");
    assert_eq!(get(m, "a", 1).unwrap(), None);
    let d = del(m, KeyRange::single("a"));
    assert_eq!((d.deleted, d.revision), (1, 5));
    assert_eq!(d.prev_kvs[0].value, b"2");
    assert_eq!(get(m, "a", 0).unwrap(), None);
    assert_eq!(get(m, "a", 4).unwrap().unwrap().version, 2);
    // Re-creating starts a new generation.
    put(m, "a", "3");
    let a = get(m, "a", 0).unwrap().unwrap();
    assert_eq!((a.create_revision, a.version), (6, 1));
    // Deleting nothing does not move the revision.
    let d = del(m, KeyRange::single("zzz"));
    assert_eq!((d.deleted, d.revision), (0, 6));
    assert!(matches!(get(m, "a", 99), Err(KvError::FutureRevision)));
}

#[test]
fn ranges_limits_counts_and_keys_only() {
    let f = fixture();
    let m = &f.mvcc;
    for k in ["/r/a", "/r/b", "/r/c", "/s/a"] {
        put(m, k, "v");
    }
    let r = m
        .range(&RangeRequest { range: KeyRange::prefix("/r/"), limit: 2, ..Default::default() })
        .unwrap();
    assert_eq!((r.kvs.len(), r.count, r.more), (2, 3, true));
    let r = m
        .range(&RangeRequest {
            range: KeyRange::prefix("/r/"),
            count_only: true,
            ..Default::default()
        })
        .unwrap();
    assert_eq!((r.kvs.len(), r.count), (0, 3));
    let r = m
        .range(&RangeRequest {
            range: KeyRange::prefix("/"),
            keys_only: true,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(r.kvs.len(), 4);
    assert!(r.kvs.iter().all(|kv| kv.value.is_empty() && kv.version == 1));
    // Everything from a key on.
    let r = m
        .range(&RangeRequest {
            range: KeyRange { key: b"/r/c".to_vec(), range_end: vec![0] },
            ..Default::default()
        })
        .unwrap();
    assert_eq!(r.count, 2);
}

#[test]
fn txn_compares_on_every_target_and_missing_keys() {
    let f = fixture();
    let m = &f.mvcc;
    put(m, "k", "v1");
    let cmp = |target, result| Compare { range: KeyRange::single("k"), result, target };
    let txn = |c: Vec<Compare>| {
        let t = TxnRequest {
            compare: c,
            success: vec![TxnOp::Put(PutRequest {
                key: "k".into(),
                value: "ok".into(),
                ..Default::default()
            })],
            failure: vec![TxnOp::Range(RangeRequest {
                range: KeyRange::single("k"),
                ..Default::default()
            })],
        };
        match write(m, WriteOp::Txn(t)) {
            WriteResult::Txn(t) => t,
            other => panic!("{other:?}"),
        }
    };
    assert!(
        !txn(vec![cmp(CompareTarget::Value(b"nope".to_vec()), CompareResult::Equal)]).succeeded
    );
    assert!(!txn(vec![cmp(CompareTarget::Mod(1), CompareResult::Equal)]).succeeded);
    let r = txn(vec![
        cmp(CompareTarget::Mod(2), CompareResult::Equal),
        cmp(CompareTarget::Version(1), CompareResult::Equal),
    ]);
    assert!(r.succeeded);
    assert_eq!(r.revision, 3);
    assert!(
        txn(vec![
            cmp(CompareTarget::Create(2), CompareResult::Equal),
            cmp(CompareTarget::Version(1), CompareResult::Greater)
        ])
        .succeeded
    );
    assert!(txn(vec![cmp(CompareTarget::Value(b"ok".to_vec()), CompareResult::Equal)]).succeeded);
    assert!(txn(vec![cmp(CompareTarget::Version(9), CompareResult::Less)]).succeeded);
    // The failure branch returns the read, and a txn without writes keeps the revision.
    let before = m.revision();
    let r = txn(vec![cmp(CompareTarget::Version(1), CompareResult::Equal)]);
    assert!(!r.succeeded);
    assert_eq!(r.revision, before);
    let TxnOpResponse::Range(g) = &r.responses[0] else { panic!() };
    assert_eq!(g.kvs[0].value, b"ok");
    // Missing key: create revision 0 ("create if absent"), value compares fail.
    let missing = |target, result| Compare { range: KeyRange::single("absent"), result, target };
    let t = TxnRequest {
        compare: vec![missing(CompareTarget::Create(0), CompareResult::Equal)],
        success: vec![TxnOp::Put(PutRequest {
            key: "absent".into(),
            value: "new".into(),
            ..Default::default()
        })],
        failure: vec![],
    };
    let WriteResult::Txn(r) = write(m, WriteOp::Txn(t.clone())) else { panic!() };
    assert!(r.succeeded);
    let WriteResult::Txn(r) = write(m, WriteOp::Txn(t)) else { panic!() };
    assert!(!r.succeeded, "second create-if-absent must fail");
    let t = TxnRequest {
        compare: vec![
            missing(CompareTarget::Value(Vec::new()), CompareResult::Equal),
            Compare {
                range: KeyRange::single("nothing"),
                result: CompareResult::Equal,
                target: CompareTarget::Value(Vec::new()),
            },
        ],
        ..Default::default()
    };
    let WriteResult::Txn(r) = write(m, WriteOp::Txn(t)) else { panic!() };
    assert!(!r.succeeded);
}

#[test]
fn txn_writes_share_one_revision_and_read_their_own_writes() {
    let f = fixture();
    let m = &f.mvcc;
    let t = TxnRequest {
        compare: vec![],
        success: vec![
            TxnOp::Put(PutRequest { key: "x".into(), value: "1".into(), ..Default::default() }),
            TxnOp::Put(PutRequest { key: "y".into(), value: "2".into(), ..Default::default() }),
            TxnOp::Range(RangeRequest { range: KeyRange::prefix(""), ..Default::default() }),
        ],
        failure: vec![],
    };
    let WriteResult::Txn(r) = write(m, WriteOp::Txn(t)) else { panic!() };
    assert_eq!(r.revision, 2);
    let TxnOpResponse::Range(g) = &r.responses[2] else { panic!() };
    assert_eq!(g.kvs.len(), 2);
    assert!(g.kvs.iter().all(|kv| kv.mod_revision == 2));
    let ev = m.events(2, 2, 100).unwrap().0;
    assert_eq!(ev.len(), 2);
}

#[test]
fn compaction_answers_compacted_and_keeps_latest() {
    let f = fixture();
    let m = &f.mvcc;
    put(m, "a", "1"); // 2
    put(m, "a", "2"); // 3
    put(m, "b", "1"); // 4
    del(m, KeyRange::single("b")); // 5
    put(m, "c", "1"); // 6
    assert_eq!(write(m, WriteOp::Compact(5)), WriteResult::Compact { revision: 6 });
    assert!(matches!(get(m, "a", 3), Err(KvError::Compacted { compact_revision: 5 })));
    assert_eq!(get(m, "a", 5).unwrap().unwrap().value, b"2");
    assert_eq!(get(m, "b", 5).unwrap(), None);
    assert_eq!(get(m, "c", 0).unwrap().unwrap().value, b"1");
    assert!(matches!(write(m, WriteOp::Compact(4)), WriteResult::Error(KvError::Compacted { .. })));
    assert!(matches!(write(m, WriteOp::Compact(60)), WriteResult::Error(KvError::FutureRevision)));
    assert!(matches!(m.events(5, 6, 10), Err(KvError::Compacted { .. })));
    assert_eq!(m.events(6, 6, 10).unwrap().0.len(), 1);
    // Only the records still needed remain on disk: a@3, c@6.
    assert_eq!(m.dump().unwrap().records.len(), 2);
}

#[test]
fn reopen_rebuilds_index_and_revisions() {
    let dir = tempfile::Builder::new().prefix("skiff-test-mvcc").tempdir().unwrap();
    {
        let m = Mvcc::open(crate::db::open(dir.path()).unwrap()).unwrap();
        put(&m, "a", "1");
        put(&m, "a", "2");
        del(&m, KeyRange::single("a"));
        write(&m, WriteOp::Compact(3));
    }
    let m = Mvcc::open(crate::db::open(dir.path()).unwrap()).unwrap();
    assert_eq!((m.revision(), m.compact_revision()), (4, 3));
    assert_eq!(get(&m, "a", 3).unwrap().unwrap().value, b"2");
    assert_eq!(get(&m, "a", 0).unwrap(), None);
    assert_eq!(put(&m, "a", "3"), 5);
}

#[test]
fn watch_events_carry_prev_kv_in_revision_order() {
    let f = fixture();
    let m = &f.mvcc;
    put(m, "a", "1");
    put(m, "a", "2");
    del(m, KeyRange::prefix("a"));
    let ev = m.events(2, 10, 100).unwrap().0;
    let kinds: Vec<_> = ev.iter().map(|e| (e.kind, e.kv.mod_revision)).collect();
    assert_eq!(kinds, [(EventKind::Put, 2), (EventKind::Put, 3), (EventKind::Delete, 4)]);
    assert_eq!(ev[1].prev_kv.as_ref().unwrap().value, b"1");
    assert_eq!(ev[2].prev_kv.as_ref().unwrap().value, b"2");
    assert!(ev[0].prev_kv.is_none());
    // The writer reports the same events live.
    let mut w = m.writer();
    w.apply(WriteOp::Put(PutRequest { key: "b".into(), value: "x".into(), ..Default::default() }))
        .unwrap();
    let (rev, live) = w.commit(None).unwrap();
    assert_eq!((rev, live.len()), (5, 1));
    assert_eq!(m.events(5, 5, 10).unwrap().0, live);
}

#[test]
fn dump_and_restore_round_trip() {
    let a = fixture();
    put(&a.mvcc, "k1", "v1");
    put(&a.mvcc, "k2", "v2");
    write(&a.mvcc, WriteOp::Compact(2));
    let dump = a.mvcc.dump().unwrap();
    let b = fixture();
    put(&b.mvcc, "junk", "x");
    b.mvcc.restore(&dump).unwrap();
    assert_eq!(b.mvcc.dump().unwrap(), dump);
    assert_eq!(get(&b.mvcc, "junk", 0).unwrap(), None);
    assert_eq!(get(&b.mvcc, "k2", 0).unwrap().unwrap().mod_revision, 3);
}

#[test]
fn streamed_dump_is_the_dump_layout_and_restores() {
    let a = fixture();
    put(&a.mvcc, "k1", "v1");
    put(&a.mvcc, "k2", "v2");
    del(&a.mvcc, KeyRange::single("k1"));
    write(&a.mvcc, WriteOp::Compact(2));
    a.mvcc.writer().commit(Some(b"applied-state".to_vec())).unwrap();
    let dump = a.mvcc.dump().unwrap();
    // Written after a prefix, as into a file that already holds something.
    let mut out = std::io::Cursor::new(b"prefix".to_vec());
    out.set_position(6);
    let summary = a.mvcc.dump_into(&mut out, true).unwrap();
    assert_eq!(&out.get_ref()[6..], bincode::serialize(&dump).unwrap());
    assert_eq!((summary.revision, summary.records), (dump.revision, dump.records.len() as u64));
    assert_eq!(summary.applied, b"applied-state");

    let b = fixture();
    put(&b.mvcc, "junk", "x");
    let streamed = &out.get_ref()[6..];
    // A cut-off stream is refused and changes nothing.
    for cut in [0, 10, streamed.len() / 2, streamed.len() - 1] {
        assert!(b.mvcc.restore_from(&mut &streamed[..cut], b"x".to_vec()).is_err(), "cut {cut}");
        assert_eq!(get(&b.mvcc, "junk", 0).unwrap().unwrap().value, b"x");
    }
    assert_eq!(b.mvcc.restore_from(&mut &streamed[..], b"mine".to_vec()).unwrap(), dump.revision);
    let restored = b.mvcc.dump().unwrap();
    assert_eq!(restored.records, dump.records);
    assert_eq!((restored.revision, restored.compact_revision), (dump.revision, 2));
    assert_eq!(restored.applied, b"mine");
    assert_eq!(get(&b.mvcc, "junk", 0).unwrap(), None);
    assert_eq!(get(&b.mvcc, "k2", 0).unwrap().unwrap().mod_revision, 3);
}

/// The MVCC record and dump as encoded before their byte fields were marked as byte strings
/// (what existing data dirs, raft snapshots and backups hold).
mod before_bytes {
    #[derive(serde::Serialize, serde::Deserialize)]
    pub struct Record {
        pub key: Vec<u8>,
        pub value: Vec<u8>,
        pub create_revision: i64,
        pub version: i64,
        pub lease: i64,
        pub tombstone: bool,
    }

    #[derive(serde::Serialize, serde::Deserialize)]
    pub struct MvccDump {
        pub revision: i64,
        pub compact_revision: i64,
        pub records: Vec<(super::Rev, Record)>,
        pub applied: Vec<u8>,
    }
}

#[test]
fn records_and_dumps_written_before_byte_strings_read_back_unchanged() {
    let rec = |key: &[u8], value: Vec<u8>, tombstone| Record {
        key: key.to_vec(),
        value,
        create_revision: 2,
        version: 3,
        lease: 7,
        tombstone,
    };
    let old_rec = |r: &Record| before_bytes::Record {
        key: r.key.clone(),
        value: r.value.clone(),
        create_revision: r.create_revision,
        version: r.version,
        lease: r.lease,
        tombstone: r.tombstone,
    };
    let records = vec![
        (Rev::new(2, 0), rec(b"/registry/a", (0..=255).collect(), false)),
        (Rev::new(3, 1), rec(b"", Vec::new(), true)),
        (Rev::new(4, 0), rec(&[0xff, 0], vec![0; 70_000], false)),
    ];
    for (_, r) in &records {
        let old = bincode::serialize(&old_rec(r)).unwrap();
        assert_eq!(encode(r), old, "record bytes unchanged");
        assert_eq!(&decode_record(&old).unwrap(), r);
    }
    let dump = MvccDump {
        revision: 4,
        compact_revision: 1,
        records: records.clone(),
        applied: vec![9, 8, 7],
    };
    let old = bincode::serialize(&before_bytes::MvccDump {
        revision: 4,
        compact_revision: 1,
        records: records.iter().map(|(rev, r)| (*rev, old_rec(r))).collect(),
        applied: vec![9, 8, 7],
    })
    .unwrap();
    assert_eq!(bincode::serialize(&dump).unwrap(), old, "dump bytes unchanged");
    assert_eq!(bincode::deserialize::<MvccDump>(&old).unwrap(), dump);
    // A truncated dump is an error, not a panic or a huge allocation.
    for cut in [1, 20, old.len() / 2, old.len() - 1] {
        assert!(bincode::deserialize::<MvccDump>(&old[..cut]).is_err(), "cut at {cut}");
    }
}

/// A dump taken while another thread keeps writing is a consistent cut: exactly the records up
/// to its revision, and the applied state written with that revision.
#[test]
fn dump_during_writes_is_a_consistent_cut() {
    use std::sync::atomic::{AtomicBool, Ordering};
    /// Stops the writer when the checks end, failed ones included (else the scope never ends).
    struct StopOnDrop<'a>(&'a AtomicBool);
    impl Drop for StopOnDrop<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let f = fixture();
    let m = &f.mvcc;
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let mut w = m.writer();
                let rev = w.revision() + 1;
                w.apply(WriteOp::Put(PutRequest {
                    key: format!("k{}", i % 50).into_bytes(),
                    value: vec![b'v'; 64],
                    ..Default::default()
                }))
                .unwrap();
                w.commit(Some(rev.to_be_bytes().to_vec())).unwrap();
            }
        });
        let _stop = StopOnDrop(&stop);
        for _ in 0..20 {
            let d = m.dump().unwrap();
            // One record per put, at revisions 2..=revision (revision 1 is the empty store).
            let revs: Vec<i64> = d.records.iter().map(|(r, _)| r.main).collect();
            let want: Vec<i64> = (2..=d.revision).collect();
            assert_eq!(revs, want, "dump at revision {}", d.revision);
            if d.revision > 1 {
                assert_eq!(d.applied, d.revision.to_be_bytes().to_vec());
            }
        }
    });
}
