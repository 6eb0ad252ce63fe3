//! Linearizability of concurrent client histories under partitions and a leader kill, checked
//! with our Wing–Gong/Porcupine-style checker, over several seeded runs.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Cluster, tuning};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use skiff_store::Store;
use skiff_store::lincheck::{self, Input, Operation, Output};
use skiff_store::types::{
    Compare, CompareResult, CompareTarget, KeyRange, PutRequest, RangeRequest, TxnOp, TxnRequest,
    WriteOp, WriteResult,
};
use tokio::sync::Mutex;

/// Register keys (put/get) `/lin/r*`, and compare-and-set keys `/lin/c*` used by two clients
/// only: writes of unknown outcome make the search exponential, and on CAS keys they cannot be
/// pruned (see `lincheck::prune`).
const KEYS: u64 = 4;
const CLIENTS: usize = 6;
const CAS_CLIENTS: usize = 2;
const RUN: Duration = Duration::from_secs(2);

/// Stores clients may use (killed nodes are removed).
type Targets = Arc<std::sync::RwLock<Vec<Store>>>;

async fn client(
    id: usize,
    seed: u64,
    targets: Targets,
    base: Instant,
    stop: Arc<AtomicBool>,
) -> Vec<Operation> {
    let mut rng = StdRng::seed_from_u64(seed ^ (id as u64 * 0x9e37_79b9));
    let mut history = Vec::new();
    let mut n = 0u64;
    let now = |b: Instant| u64::try_from(b.elapsed().as_nanos()).unwrap_or(u64::MAX);
    while !stop.load(Ordering::Relaxed) {
        let store = {
            let t = targets.read().expect("targets lock");
            t[rng.random_range(0..t.len())].clone()
        };
        let cas_client = id < CAS_CLIENTS;
        let key =
            format!("/lin/{}{}", if cas_client { 'c' } else { 'r' }, rng.random_range(0..KEYS))
                .into_bytes();
        n += 1;
        let value = format!("c{id}-{n}").into_bytes();
        let choice = if cas_client { rng.random_range(4..10) } else { rng.random_range(0..8) };
        let call = now(base);
        let (input, output, done) = if choice < 4 {
            let r = store
                .write(WriteOp::Put(PutRequest {
                    key: key.clone(),
                    value: value.clone(),
                    ..Default::default()
                }))
                .await;
            (Input::Put(value), if r.is_ok() { Output::Ok } else { Output::Unknown }, r.is_ok())
        } else if choice < 8 {
            let r = store
                .range(
                    &RangeRequest { range: KeyRange::single(key.clone()), ..Default::default() },
                    true,
                )
                .await;
            match r {
                Ok(r) => {
                    (Input::Get, Output::Value(r.kvs.into_iter().next().map(|kv| kv.value)), true)
                }
                Err(_) => (Input::Get, Output::Unknown, false),
            }
        } else {
            // Compare-and-set against the value this client last might have seen: absent or
            // a random earlier value of its own.
            let expect = if rng.random_bool(0.5) {
                None
            } else {
                Some(format!("c{id}-{}", rng.random_range(1..=n)).into_bytes())
            };
            let compare = Compare {
                range: KeyRange::single(key.clone()),
                result: CompareResult::Equal,
                target: match &expect {
                    None => CompareTarget::Version(0),
                    Some(v) => CompareTarget::Value(v.clone()),
                },
            };
            let txn = TxnRequest {
                compare: vec![compare],
                success: vec![TxnOp::Put(PutRequest {
                    key: key.clone(),
                    value: value.clone(),
                    ..Default::default()
                })],
                failure: vec![],
            };
            match store.write(WriteOp::Txn(txn)).await {
                Ok(WriteResult::Txn(t)) => {
                    (Input::Cas { expect, new: value }, Output::Swapped(t.succeeded), true)
                }
                _ => (Input::Cas { expect, new: value }, Output::Unknown, false),
            }
        };
        history.push(Operation {
            client: id,
            key,
            input,
            output,
            call,
            ret: done.then(|| now(base)),
        });
        if !done {
            // Back off like a real client: failures come fast while the leader is unknown, and
            // every write of unknown outcome widens the checker's search.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    history
}

async fn run_seed(seed: u64) -> anyhow::Result<usize> {
    let mut t = tuning();
    t.request_timeout = Duration::from_secs(1);
    let cluster = Arc::new(Mutex::new(Cluster::start(3, t).await?));
    {
        let c = cluster.lock().await;
        c.leader(&[0, 1, 2]).await?;
    }
    let targets: Targets = {
        let c = cluster.lock().await;
        Arc::new(std::sync::RwLock::new((0..3).map(|i| c.node(i).clone()).collect()))
    };
    eprintln!("seed {seed}: cluster up");
    let base = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| tokio::spawn(client(i, seed, targets.clone(), base, stop.clone())))
        .collect();

    // The nemesis: isolate a random node (often the leader) for a while, heal, repeat; in odd
    // seeds also kill the leader once.
    let mut rng = StdRng::seed_from_u64(seed);
    let mut killed = false;
    while base.elapsed() < RUN {
        tokio::time::sleep(Duration::from_millis(rng.random_range(100..400))).await;
        let mut c = cluster.lock().await;
        let alive = c.alive();
        let leader = alive
            .iter()
            .copied()
            .find(|i| c.node(*i).raft().metrics().borrow().current_leader == Some(c.id(*i)));
        match rng.random_range(0..4) {
            0 | 1 => {
                let victim = if rng.random_bool(0.6) {
                    leader.unwrap_or(alive[0])
                } else {
                    alive[rng.random_range(0..alive.len())]
                };
                let rest: Vec<usize> = alive.iter().copied().filter(|i| *i != victim).collect();
                c.partition(&[victim], &rest);
            }
            2 if seed % 2 == 1 && !killed && base.elapsed() > RUN / 3 => {
                if let Some(l) = leader {
                    killed = true;
                    c.heal();
                    let id = c.node(l).id();
                    targets.write().expect("targets lock").retain(|s| s.id() != id);
                    c.kill(l).await;
                }
            }
            _ => c.heal(),
        }
    }
    cluster.lock().await.heal();
    stop.store(true, Ordering::Relaxed);
    let mut history = Vec::new();
    for t in clients {
        history.extend(t.await?);
    }
    cluster.lock().await.shutdown().await;
    eprintln!("seed {seed}: {} operations recorded, checking", history.len());
    let completed = history.iter().filter(|o| o.ret.is_some()).count();
    if let Err(v) = lincheck::check(&history) {
        anyhow::bail!(
            "seed {seed}: history of {} is not linearizable ({} ops)",
            String::from_utf8_lossy(&v.key),
            v.operations
        );
    }
    Ok(completed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn histories_under_partitions_and_leader_kills_are_linearizable() -> anyhow::Result<()> {
    let mut completed = 0;
    for seed in 1..=6 {
        completed += run_seed(seed).await?;
    }
    // The runs did real work, not just fail every request.
    assert!(completed > 200, "only {completed} operations completed");
    Ok(())
}
