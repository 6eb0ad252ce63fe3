//! Membership changes through joint consensus on an in-process cluster, and malformed gRPC on
//! the etcd KV service.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{Cluster, get, put, tuning, until};
use skiff_store::Store;
use skiff_store::node::{AdminRequest, AdminResponse, MemberInfo};
use skiff_store::types::{KeyRange, RangeRequest};

async fn admin(s: &Store, req: AdminRequest) -> anyhow::Result<Vec<MemberInfo>> {
    let AdminResponse::Members(m) = s.admin(req).await?;
    Ok(m)
}

fn names(members: &[MemberInfo]) -> Vec<String> {
    let mut n: Vec<String> = members.iter().map(|m| m.member.name.clone()).collect();
    n.sort();
    n
}

/// Keys under `/m/` with their mod revisions, as `store` serves them.
async fn stored(s: &Store, linearizable: bool) -> anyhow::Result<BTreeMap<String, i64>> {
    let r = s
        .range(&RangeRequest { range: KeyRange::prefix("/m/"), ..Default::default() }, linearizable)
        .await?;
    Ok(r.kvs
        .into_iter()
        .map(|kv| (String::from_utf8_lossy(&kv.key).into_owned(), kv.mod_revision))
        .collect())
}

/// Writes `/m/bg-N` through `stores` (round robin) until `stop`; returns the acked ones.
fn background_writer(
    stores: Vec<Store>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<BTreeMap<String, i64>> {
    tokio::spawn(async move {
        let mut acked = BTreeMap::new();
        let mut n = 0usize;
        while !stop.load(Ordering::Relaxed) && n < 5000 {
            let k = format!("/m/bg-{n:05}");
            if let Ok(rev) = put(&stores[n % stores.len()], &k, "v").await {
                acked.insert(k, rev);
            }
            n += 1;
        }
        acked
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn remove_then_add_member_keeps_every_acked_write() -> anyhow::Result<()> {
    let mut c = Cluster::start(3, tuning()).await?;
    let leader = c.leader(&[0, 1, 2]).await?;
    let removed = (0..3).find(|i| *i != leader).expect("a follower");
    let kept: Vec<usize> = (0..3).filter(|i| *i != removed).collect();
    let other = kept.iter().copied().find(|i| *i != leader).expect("two kept");

    let mut acked = BTreeMap::new();
    for i in 0..20 {
        let k = format!("/m/pre-{i:02}");
        acked.insert(k.clone(), put(c.node(i % 3), &k, "before").await?);
    }

    // Remove a follower while writes go on through the two members that stay.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = background_writer(kept.iter().map(|i| c.node(*i).clone()).collect(), stop.clone());
    let after_remove = admin(c.node(other), AdminRequest::Remove { id: c.id(removed) }).await?;
    assert_eq!(after_remove.len(), 2, "{:?}", names(&after_remove));
    assert!(!after_remove.iter().any(|m| m.id == c.id(removed)));
    for i in &kept {
        let s = c.node(*i).clone();
        until("member list shows 2 on every kept member", Duration::from_secs(10), || {
            s.members().len() == 2
        })
        .await?;
    }
    c.kill(removed).await;

    // The two left commit writes and serve linearizable reads on both.
    for i in 0..10 {
        let k = format!("/m/two-{i:02}");
        let rev = put(c.node(kept[i % 2]), &k, "two").await?;
        acked.insert(k.clone(), rev);
        for j in &kept {
            assert_eq!(get(c.node(*j), &k, true).await?, Some(b"two".to_vec()));
        }
    }

    // Add a fresh member with an empty data dir; it must catch up before it votes.
    let new = c.start_joiner("n3", tuning()).await?;
    let member = c.members[new].clone();
    let after_add = admin(c.node(leader), AdminRequest::Add(member)).await?;
    assert_eq!(names(&after_add), {
        let mut n: Vec<String> = kept.iter().map(|i| c.members[*i].name.clone()).collect();
        n.push("n3".into());
        n.sort();
        n
    });
    assert!(after_add.iter().all(|m| !m.is_learner), "n3 is a voter: {after_add:?}");
    stop.store(true, Ordering::Relaxed);
    acked.extend(writer.await?);
    assert!(acked.len() > 30, "background writes succeeded: {}", acked.len());

    // Writes through the new member (forwarded to the leader) commit too.
    for i in 0..5 {
        let k = format!("/m/new-{i:02}");
        acked.insert(k.clone(), put(c.node(new), &k, "new").await?);
    }
    let last = *acked.values().max().expect("writes");
    let s3 = c.node(new).clone();
    until("n3 applied every write", Duration::from_secs(20), || s3.mvcc().revision() >= last)
        .await?;
    until("n3 lists itself", Duration::from_secs(10), || s3.members().len() == 3).await?;

    // Every acked write is on every member at its acked revision, and the members agree.
    // (A write that timed out on the client may still have committed, so extra keys are
    // allowed; they must be the same everywhere.)
    let reference = stored(c.node(leader), true).await?;
    for (k, rev) in &acked {
        assert_eq!(reference.get(k), Some(rev), "acked write {k} at {rev}");
    }
    for i in c.alive() {
        let name = &c.members[i].name;
        assert_eq!(stored(c.node(i), true).await?, reference, "linearizable read on {name}");
        assert_eq!(stored(c.node(i), false).await?, reference, "serializable read on {name}");
    }
    // n3 serves history from before it joined, at the same revisions.
    let first = acked["/m/pre-00"];
    let old = c
        .node(new)
        .range(
            &RangeRequest {
                range: KeyRange::prefix("/m/pre-"),
                revision: first,
                ..Default::default()
            },
            true,
        )
        .await?;
    assert_eq!(old.kvs.len(), 1, "at revision {first} only the first key existed");
    assert_eq!(old.kvs[0].mod_revision, first);
    c.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn removing_the_leader_hands_over_without_losing_writes() -> anyhow::Result<()> {
    let mut c = Cluster::start(3, tuning()).await?;
    let leader = c.leader(&[0, 1, 2]).await?;
    let kept: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = background_writer(kept.iter().map(|i| c.node(*i).clone()).collect(), stop.clone());
    // Asked through a follower: the request is forwarded to the leader, which removes itself.
    let after = admin(c.node(kept[0]), AdminRequest::Remove { id: c.id(leader) }).await?;
    assert_eq!(after.len(), 2, "{:?}", names(&after));
    let new = c.leader(&kept).await?;
    assert_ne!(new, leader, "the removed leader stepped down");
    stop.store(true, Ordering::Relaxed);
    let mut acked = writer.await?;
    c.kill(leader).await;
    for i in 0..5 {
        let k = format!("/m/after-{i}");
        acked.insert(k.clone(), put(c.node(kept[i % 2]), &k, "x").await?);
    }
    let reference = stored(c.node(new), true).await?;
    for (k, rev) in &acked {
        assert_eq!(reference.get(k), Some(rev), "acked write {k} at {rev}");
    }
    for i in &kept {
        assert_eq!(c.node(*i).members().len(), 2);
        assert_eq!(stored(c.node(*i), true).await?, reference);
    }
    c.shutdown().await;
    Ok(())
}
