//! `kill -9` of store members (the leader included) while clients write, then restarts: every
//! acknowledged write is on every member afterwards, at the revision it was acknowledged with.
//! Snapshots are small and frequent here, so members are killed while building them and
//! restarted members catch up by receiving one.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use skiff_e2e::masters::Masters;
use skiff_e2e::{unique_tag, wait};
use skiff_proto::etcdserverpb::kv_client::KvClient;
use skiff_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use skiff_proto::etcdserverpb::{PutRequest, RangeRequest, StatusRequest};

type Acked = Arc<Mutex<BTreeMap<String, i64>>>;

async fn writer(w: usize, urls: Vec<String>, acked: Acked, stop: Arc<AtomicBool>) {
    let mut i = 0usize;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let url = &urls[(w + i) % urls.len()];
        let key = format!("/k9/{w}/{i:06}");
        let put = async {
            let mut c = KvClient::connect(url.clone()).await?;
            let r = c
                .put(PutRequest {
                    key: key.clone().into_bytes(),
                    value: b"v".to_vec(),
                    ..Default::default()
                })
                .await?;
            anyhow::Ok(r.into_inner().header.map_or(0, |h| h.revision))
        };
        if let Ok(Ok(rev)) = tokio::time::timeout(Duration::from_secs(3), put).await {
            acked.lock().expect("acked lock").insert(key, rev);
        }
    }
}

/// Member id, leader id, revision and raft index of the member at `url`.
async fn status(url: &str) -> anyhow::Result<(u64, u64, i64, u64)> {
    let mut c = MaintenanceClient::connect(url.to_string()).await?;
    let s = c.status(StatusRequest {}).await?.into_inner();
    let h = s.header.unwrap_or_default();
    Ok((h.member_id, s.leader, h.revision, s.raft_index))
}

async fn leader_index(m: &Masters) -> Option<usize> {
    for (i, s) in m.specs.iter().enumerate() {
        if let Ok(Ok((me, leader, ..))) =
            tokio::time::timeout(Duration::from_secs(2), status(&s.client_url())).await
            && me == leader
        {
            return Some(i);
        }
    }
    None
}

fn acked_len(a: &Acked) -> usize {
    a.lock().expect("acked lock").len()
}

async fn until_more(acked: &Acked, more: usize) {
    let target = acked_len(acked) + more;
    let deadline = tokio::time::Instant::now() + Duration::from_mins(1);
    while acked_len(acked) < target {
        assert!(
            tokio::time::Instant::now() < deadline,
            "writes stalled at {} (wanted {target})",
            acked_len(acked)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn snapshots_built(m: &Masters, i: usize) -> usize {
    std::fs::read_to_string(m.dir.join(format!("m{i}.log")))
        .unwrap_or_default()
        .matches("built snapshot")
        .count()
}

/// The highest raft log index member `i` has purged up to, from its log.
fn purged_upto(m: &Masters, i: usize) -> u64 {
    std::fs::read_to_string(m.dir.join(format!("m{i}.log")))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split("purged raft log up to ").nth(1)?.trim().parse().ok())
        .max()
        .unwrap_or(0)
}

/// Waits until each of `members` has purged its raft log up to `index`. A leader postpones a
/// purge while a replication request (to the killed member, say) covers the entries.
fn until_purged(m: &Masters, members: &[usize], index: u64) {
    tokio::task::block_in_place(|| {
        wait::until("live members purge their logs", Duration::from_mins(1), || {
            Ok(members.iter().all(|i| purged_upto(m, *i) >= index))
        })
    })
    .expect("members purge their logs past the killed member's");
}

/// Waits until each of `members` has built `more` snapshots beyond `since` (its count then).
fn until_snapshots(m: &Masters, members: &[usize], since: &[usize], more: usize) {
    tokio::task::block_in_place(|| {
        wait::until("snapshots on the live members", Duration::from_mins(1), || {
            Ok(members.iter().all(|i| snapshots_built(m, *i) >= since[*i] + more))
        })
    })
    .expect("members keep building snapshots");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_writes_survive_kill_9_of_members() {
    let tag = unique_tag();
    // Snapshots every 10 entries, keeping 5 behind them: members build snapshots while they
    // are killed, and a restarted member is too far behind for the leader's log, so it
    // receives a snapshot.
    let flags = ["--snapshot-count", "10", "--snapshot-catchup-entries", "5"];
    let mut masters =
        tokio::task::block_in_place(|| Masters::start_with_store_flags(&tag, 3, &flags))
            .expect("cluster starts");
    let urls: Vec<String> =
        masters.specs.iter().map(skiff_e2e::masters::MemberSpec::client_url).collect();
    let acked: Acked = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..8)
        .map(|w| tokio::spawn(writer(w, urls.clone(), acked.clone(), stop.clone())))
        .collect();

    for round in 0..4 {
        until_more(&acked, 40).await;
        let victim = if round % 2 == 0 {
            leader_index(&masters).await.unwrap_or(0)
        } else {
            (round + 1) % 3
        };
        let built: Vec<usize> = (0..3).map(|i| snapshots_built(&masters, i)).collect();
        masters.kill9(victim);
        // Two members keep accepting writes, and snapshot twice; once they have purged their
        // logs past every entry the victim can hold (the live members' index when it died,
        // plus entries that were in flight), it has to receive a snapshot when it is back.
        let live: Vec<usize> = (0..3).filter(|i| *i != victim).collect();
        let mut index = 0;
        for i in &live {
            if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_secs(2), status(&urls[*i])).await
            {
                index = index.max(s.3);
            }
        }
        until_more(&acked, 40).await;
        until_snapshots(&masters, &live, &built, 2);
        until_purged(&masters, &live, index + 20);
        masters.restart(victim).expect("restart");
        tokio::task::block_in_place(|| masters.wait_ready()).expect("members ready after restart");
    }
    until_more(&acked, 20).await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.expect("writer");
    }

    // All members converge on the same revision...
    let top = *acked.lock().expect("acked lock").values().max().expect("some writes");
    tokio::task::block_in_place(|| {
        let rt = tokio::runtime::Handle::current();
        wait::until("members converge", Duration::from_mins(1), || {
            let revs: Vec<i64> =
                urls.iter().map(|u| rt.block_on(status(u)).map_or(0, |s| s.2)).collect();
            Ok(revs.iter().all(|r| *r >= top && *r == revs[0]))
        })
    })
    .expect("convergence");
    // ...and each holds every acknowledged write at its acknowledged revision.
    // Each restarted member was behind its leader's purged log: snapshots went over the wire.
    let installed: usize = (0..3)
        .map(|i| {
            std::fs::read_to_string(masters.dir.join(format!("m{i}.log")))
                .unwrap_or_default()
                .matches("installed snapshot")
                .count()
        })
        .sum();
    assert!(installed >= 4, "{installed} snapshots installed in 4 restarts");
    let acked = acked.lock().expect("acked lock").clone();
    for u in &urls {
        let mut c = KvClient::connect(u.clone()).await.expect("connect");
        let r = c
            .range(RangeRequest {
                key: b"/k9/".to_vec(),
                range_end: b"/k90".to_vec(),
                serializable: true,
                ..Default::default()
            })
            .await
            .expect("range")
            .into_inner();
        let have: BTreeMap<String, i64> = r
            .kvs
            .into_iter()
            .map(|kv| (String::from_utf8_lossy(&kv.key).into_owned(), kv.mod_revision))
            .collect();
        for (k, rev) in &acked {
            assert_eq!(have.get(k), Some(rev), "acked {k}@{rev} missing on {u}");
        }
    }
}
