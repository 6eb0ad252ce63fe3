//! In-process 3-node clusters: leader loss, partitions, snapshots, forwarding, watch continuity.

#![expect(clippy::many_single_char_names, reason = "c for cluster, t for tuning, w for watcher")]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{Cluster, get, put, tuning, until};
use skiff_store::KvError;
use skiff_store::types::{EventKind, KeyRange, RangeRequest};
use skiff_store::watch::WatchSpec;

fn prefix_range(p: &str) -> RangeRequest {
    RangeRequest { range: KeyRange::prefix(p), ..Default::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_kill_loses_no_acked_write_and_watches_have_no_gaps() -> anyhow::Result<()> {
    let mut c = Cluster::start(3, tuning()).await?;
    let leader = c.leader(&[0, 1, 2]).await?;
    let mut watchers: Vec<_> = (0..3)
        .map(|i| {
            c.node(i).watch(WatchSpec {
                range: KeyRange::prefix("/k/"),
                start_revision: 1,
                ..Default::default()
            })
        })
        .collect::<Result<_, _>>()?;

    // Concurrent writers through every node; some writes fail while the leader is gone.
    let mut acked = BTreeMap::new();
    let stores: Vec<_> = (0..3).map(|i| c.node(i).clone()).collect();
    let write_round = |round: usize| {
        let stores = stores.clone();
        async move {
            let mut tasks = Vec::new();
            for w in 0..12 {
                let s = stores[w % 3].clone();
                tasks.push(tokio::spawn(async move {
                    let k = format!("/k/{round}-{w}");
                    (k.clone(), put(&s, &k, &format!("v{round}-{w}")).await)
                }));
            }
            let mut out = Vec::new();
            for t in tasks {
                out.push(t.await.expect("writer task"));
            }
            out
        }
    };
    for round in 0..5 {
        for (k, r) in write_round(round).await {
            acked.insert(k, r?);
        }
    }
    c.kill(leader).await;
    let survivors: Vec<usize> = c.alive();
    let new_leader = c.leader(&survivors).await?;
    assert_ne!(new_leader, leader);
    for round in 5..10 {
        for (k, r) in write_round(round).await {
            // Writes sent to the dead node fail; the rest must succeed.
            if let Ok(rev) = r {
                acked.insert(k, rev);
            }
        }
    }
    assert!(acked.len() >= 5 * 12 + 5 * 8, "writes through survivors succeed: {}", acked.len());

    for i in &survivors {
        let s = c.node(*i);
        let all = s.range(&prefix_range("/k/"), true).await?;
        let have: BTreeMap<String, i64> = all
            .kvs
            .iter()
            .map(|kv| (String::from_utf8_lossy(&kv.key).into_owned(), kv.mod_revision))
            .collect();
        for (k, rev) in &acked {
            assert_eq!(have.get(k), Some(rev), "acked write {k} at {rev} on node {i}");
        }
        // The watcher on this survivor saw every change, in order, once.
        let w = &mut watchers[*i];
        let mut seen = Vec::new();
        while seen.len() < all.kvs.len() {
            let evs = tokio::time::timeout(Duration::from_secs(10), w.next()).await??;
            for e in evs {
                assert_eq!(e.kind, EventKind::Put);
                seen.push((e.kv.mod_revision, String::from_utf8_lossy(&e.kv.key).into_owned()));
            }
        }
        let mut sorted = seen.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted, seen, "watch on node {i}: ordered, no duplicates");
        let from_watch: BTreeMap<String, i64> = seen.into_iter().map(|(r, k)| (k, r)).collect();
        assert_eq!(from_watch, have, "watch on node {i} saw exactly the stored changes");
    }
    c.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn minority_refuses_writes_and_linearizable_reads_then_heals() -> anyhow::Result<()> {
    let mut c = Cluster::start(3, tuning()).await?;
    let old = c.leader(&[0, 1, 2]).await?;
    put(c.node(old), "/p/before", "1").await?;
    let majority: Vec<usize> = (0..3).filter(|i| *i != old).collect();
    c.partition(&[old], &majority);

    // The isolated old leader can neither commit nor serve linearizable reads.
    let w = put(c.node(old), "/p/minority", "x").await;
    assert!(w.is_err(), "minority write must fail, got {w:?}");
    let r = get(c.node(old), "/p/before", true).await;
    assert!(r.is_err(), "minority linearizable read must fail, got {r:?}");
    // A serializable read is local and still answers.
    assert_eq!(get(c.node(old), "/p/before", false).await?, Some(b"1".to_vec()));

    let new = c.leader(&majority).await?;
    let follower = majority.iter().copied().find(|i| *i != new).expect("two in the majority");
    // Writes through the majority's follower are forwarded to its leader.
    let rev = put(c.node(follower), "/p/majority", "y").await?;
    assert_eq!(get(c.node(new), "/p/majority", true).await?, Some(b"y".to_vec()));
    assert_eq!(get(c.node(follower), "/p/majority", true).await?, Some(b"y".to_vec()));

    c.heal();
    let old_store = c.node(old).clone();
    until("old leader catches up", Duration::from_secs(20), || old_store.mvcc().revision() >= rev)
        .await?;
    assert_eq!(get(c.node(old), "/p/majority", true).await?, Some(b"y".to_vec()));
    // The minority write was never committed (or, if its entry survived, it is committed
    // everywhere): all replicas agree.
    let mine = get(c.node(old), "/p/minority", true).await?;
    for i in &majority {
        assert_eq!(get(c.node(*i), "/p/minority", true).await?, mine);
    }
    c.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lagging_follower_installs_a_streamed_snapshot_and_keeps_history() -> anyhow::Result<()> {
    let mut t = tuning();
    t.snapshot_every = 40;
    t.keep_logs = 5;
    let mut c = Cluster::start(3, t.clone()).await?;
    let leader = c.leader(&[0, 1, 2]).await?;
    let lagger = (0..3).find(|i| *i != leader).expect("a follower");
    let others: Vec<usize> = (0..3).filter(|i| *i != lagger).collect();
    c.partition(&[lagger], &others);
    // Enough entries that the leader snapshots and purges past the follower's log; big
    // values so the snapshot spans several 1 MiB chunks.
    let big = "x".repeat(64 * 1024);
    let mut last = 0;
    for i in 0..120 {
        last = put(c.node(leader), &format!("/s/{i:03}"), &big).await?;
    }
    let lstore = c.node(leader).clone();
    until("leader purged its log", Duration::from_secs(20), || {
        lstore.raft().metrics().borrow().purged.is_some_and(|p| p.index > 20)
    })
    .await?;
    c.heal();
    let fstore = c.node(lagger).clone();
    until("follower installs the snapshot", Duration::from_secs(30), || {
        fstore.mvcc().revision() >= last
    })
    .await?;
    let r = fstore.range(&prefix_range("/s/"), false).await?;
    assert_eq!(r.count, 120);
    // History survived the snapshot: a watch from the first write replays all 120 puts.
    let mut w = fstore.watch(WatchSpec {
        range: KeyRange::prefix("/s/"),
        start_revision: 2,
        ..Default::default()
    })?;
    let mut n = 0;
    while n < 120 {
        n += tokio::time::timeout(Duration::from_secs(10), w.next()).await??.len();
    }
    assert_eq!(n, 120);
    drop(w);
    // The installed snapshot is the follower's own now, and a restart finds it.
    let installed = fstore.raft().metrics().borrow().snapshot;
    assert!(installed.is_some_and(|s| s.index > 20), "{installed:?}");
    drop(fstore);
    c.kill(lagger).await;
    c.restart(lagger, t).await?;
    let fstore = c.node(lagger).clone();
    until("the restarted follower reports its snapshot", Duration::from_secs(10), || {
        fstore.raft().metrics().borrow().snapshot >= installed
    })
    .await?;
    assert_eq!(c.node(lagger).range(&prefix_range("/s/"), false).await?.count, 120);
    c.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn oversized_write_is_refused_without_a_state_change() -> anyhow::Result<()> {
    let mut c = Cluster::start(1, tuning()).await?;
    c.leader(&[0]).await?;
    let before = c.node(0).mvcc().revision();
    let big = "x".repeat(skiff_store::types::MAX_REQUEST_BYTES + 1);
    let r = put(c.node(0), "/big", &big).await;
    assert!(matches!(r, Err(KvError::RequestTooLarge { .. })), "{r:?}");
    assert_eq!(c.node(0).mvcc().revision(), before);
    c.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn garbage_on_the_peer_port_gets_errors_and_changes_nothing() -> anyhow::Result<()> {
    use skiff_store::raft::network::Method;
    use skiff_store::raft::wire::{self, REPLY_ERR};
    use tokio::io::AsyncWriteExt;

    let mut c = Cluster::start(1, tuning()).await?;
    c.leader(&[0]).await?;
    put(c.node(0), "/k", "v").await?;
    let before = c.node(0).mvcc().revision();
    let addr = wire::peer_addr(&c.members[0].peer_url).map_err(anyhow::Error::msg)?.to_string();

    // An undecodable request body gets an error reply on a connection that stays usable.
    let mut s = tokio::net::TcpStream::connect(&addr).await?;
    for id in [1, 2] {
        s.write_all(&wire::encode_raw(id, Method::Forward.code(), b"\xff\xff")?).await?;
        let reply = tokio::time::timeout(Duration::from_secs(10), wire::read_frame(&mut s))
            .await??
            .expect("a reply");
        assert_eq!((reply.id, reply.kind), (id, REPLY_ERR));
        let msg = String::from_utf8(reply.body)?;
        assert!(msg.contains("undecodable peer request"), "{msg}");
    }
    // An unknown request kind or an impossible length closes the connection, nothing else.
    let closed = |mut s: tokio::net::TcpStream| async move {
        let read = tokio::time::timeout(Duration::from_secs(10), wire::read_frame(&mut s)).await;
        matches!(read, Ok(Ok(None)))
    };
    s.write_all(&wire::encode_raw(3, 0xee, b"")?).await?;
    assert!(closed(s).await, "closed after an unknown kind");
    let mut s = tokio::net::TcpStream::connect(&addr).await?;
    s.write_all(&u32::MAX.to_be_bytes()).await?;
    assert!(closed(s).await, "closed after an oversized frame");

    assert_eq!(c.node(0).mvcc().revision(), before);
    assert_eq!(get(c.node(0), "/k", true).await?, Some(b"v".to_vec()));
    put(c.node(0), "/k", "w").await?;
    assert_eq!(c.node(0).mvcc().revision(), before + 1);
    c.shutdown().await;
    Ok(())
}

/// The leader acknowledges its own log appends to openraft before its WAL sync, so that
/// replication does not wait for its disk; openraft then counts the leader's copy towards a
/// commit early. Nothing may act on such a commit until the leader's sync is done: no member
/// applies the entry and the write is not acknowledged, though both followers hold it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nothing_is_applied_beyond_the_leaders_synced_log() -> anyhow::Result<()> {
    let mut c = Cluster::start(3, tuning()).await?;
    let l = c.leader(&[0, 1, 2]).await?;
    put(c.node(l), "/d/before", "1").await?;
    let leader = c.node(l).clone();
    let before = leader.raft().metrics().borrow().last_log_index.unwrap_or(0);
    let sync = c.nodes[l].as_ref().expect("leader runs").sync.clone();
    sync.hold();
    let write = tokio::spawn({
        let leader = leader.clone();
        async move { put(&leader, "/d/held", "x").await }
    });
    // Replication does not wait for the leader's disk: both followers report the entry
    // appended (and synced) to the leader.
    let metrics = leader.raft().metrics();
    until("both followers hold the entry", Duration::from_secs(10), || {
        let m = metrics.borrow();
        m.replication.as_ref().is_some_and(|r| {
            r.iter().filter(|(id, _)| **id != leader.id()).count() == 2
                && r.iter().all(|(_, matched)| matched.is_some_and(|m| m.index > before))
        })
    })
    .await?;
    let entry = before + 1;
    // Two heartbeat rounds: had the followers been sent the commit, they would have applied.
    for _ in 0..2 {
        leader.raft().get_read_log_id().await?;
    }
    for i in 0..3 {
        let applied = c.node(i).raft().metrics().borrow().last_applied.map_or(0, |a| a.index);
        assert!(applied < entry, "member {i} applied {applied} before the leader synced {entry}");
        assert_eq!(get(c.node(i), "/d/held", false).await?, None, "member {i}");
    }
    assert!(!write.is_finished(), "write acknowledged before the leader's sync");

    sync.release();
    let rev = write.await??;
    for i in 0..3 {
        let s = c.node(i).clone();
        until("every member applies the write", Duration::from_secs(10), || {
            s.mvcc().revision() >= rev
        })
        .await?;
        assert_eq!(get(c.node(i), "/d/held", false).await?, Some(b"x".to_vec()));
    }
    c.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_through_a_follower_is_visible_there_when_acknowledged() -> anyhow::Result<()> {
    let mut c = Cluster::start(3, tuning()).await?;
    let leader = c.leader(&[0, 1, 2]).await?;
    let follower = (leader + 1) % 3;
    // As etcd: the member a client writes through has applied the write when it answers, so
    // a serializable (local) read there sees it.
    for i in 0..100 {
        let (k, v) = (format!("/ryw/{i}"), format!("v{i}"));
        let rev = put(c.node(follower), &k, &v).await?;
        assert!(c.node(follower).mvcc().revision() >= rev, "write {i} not applied when acked");
        assert_eq!(get(c.node(follower), &k, false).await?, Some(v.into_bytes()), "write {i}");
    }
    c.shutdown().await;
    Ok(())
}
