//! In-process store clusters for integration tests: real RocksDB in temp dirs, real gRPC on
//! loopback, links cut with `NetControl`.

#![allow(dead_code, reason = "each test binary uses a different part of the harness")]

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use skiff_store::node::RaftTuning;
use skiff_store::raft::log_store::SyncControl;
use skiff_store::raft::network::NetControl;
use skiff_store::raft::{Member, member_id};
use skiff_store::types::{KeyRange, PutRequest, RangeRequest, WriteOp, WriteResult};
use skiff_store::{KvError, Store, StoreConfig};
use tokio::task::JoinHandle;

pub struct Node {
    pub store: Store,
    pub net: NetControl,
    pub sync: SyncControl,
    server: JoinHandle<()>,
}

impl Node {
    /// Opens `member`'s replica in `data_dir` and serves its peer API on `listener`.
    async fn open(
        member: &Member,
        initial_cluster: &[Member],
        join_existing: bool,
        tuning: RaftTuning,
        data_dir: std::path::PathBuf,
        listener: tokio::net::TcpListener,
    ) -> Result<Self> {
        let net = NetControl::default();
        let sync = SyncControl::default();
        let store = Store::open(StoreConfig {
            name: member.name.clone(),
            data_dir,
            peer_url: member.peer_url.clone(),
            client_url: String::new(),
            initial_cluster: initial_cluster.to_vec(),
            join_existing,
            tuning,
            auto_compaction: None,
            net: net.clone(),
            sync: sync.clone(),
        })
        .await?;
        let server = tokio::spawn({
            let store = store.clone();
            async move { store.serve_peers(listener, std::future::pending()).await }
        });
        Ok(Self { store, net, sync, server })
    }
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub members: Vec<Member>,
    pub nodes: Vec<Option<Node>>,
}

pub fn tuning() -> RaftTuning {
    RaftTuning {
        heartbeat_ms: 100,
        election_min_ms: 500,
        election_max_ms: 1000,
        snapshot_every: 10_000,
        keep_logs: 1000,
        request_timeout: Duration::from_secs(3),
    }
}

impl Cluster {
    pub async fn start(n: usize, tuning: RaftTuning) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("skiff-test-cluster").tempdir()?;
        let mut listeners = Vec::new();
        let mut members = Vec::new();
        for i in 0..n {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            members.push(Member {
                name: format!("n{i}"),
                peer_url: format!("http://{}", l.local_addr()?),
                client_url: String::new(),
            });
            listeners.push(l);
        }
        let mut nodes = Vec::new();
        for (i, l) in listeners.into_iter().enumerate() {
            let data_dir = dir.path().join(&members[i].name);
            let node =
                Node::open(&members[i], &members, false, tuning.clone(), data_dir, l).await?;
            nodes.push(Some(node));
        }
        Ok(Self { dir, members, nodes })
    }

    /// Starts a new, empty replica named `name` that joins the existing cluster once a member
    /// adds it; returns its index. It is not a member until `AdminRequest::Add` commits.
    pub async fn start_joiner(&mut self, name: &str, tuning: RaftTuning) -> Result<usize> {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let member = Member {
            name: name.into(),
            peer_url: format!("http://{}", l.local_addr()?),
            client_url: String::new(),
        };
        self.members.push(member.clone());
        let data_dir = self.dir.path().join(&member.name);
        let node = Node::open(&member, &self.members, true, tuning, data_dir, l).await?;
        self.nodes.push(Some(node));
        Ok(self.nodes.len() - 1)
    }

    pub fn id(&self, i: usize) -> u64 {
        member_id(&self.members[i].name)
    }

    pub fn node(&self, i: usize) -> &Store {
        &self.nodes[i].as_ref().expect("node is alive").store
    }

    pub fn alive(&self) -> Vec<usize> {
        (0..self.nodes.len()).filter(|i| self.nodes[*i].is_some()).collect()
    }

    /// Waits until every live node not in `except` agrees on one leader among them.
    pub async fn leader(&self, among: &[usize]) -> Result<usize> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let leaders: Vec<Option<u64>> =
                among.iter().map(|i| self.node(*i).status().leader).collect();
            if let Some(Some(l)) = leaders.first()
                && leaders.iter().all(|x| *x == Some(*l))
                && let Some(i) = among.iter().find(|i| self.id(**i) == *l)
            {
                return Ok(*i);
            }
            if Instant::now() > deadline {
                bail!("no agreed leader among {among:?}: {leaders:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Cuts every link between the two groups, in both directions.
    pub fn partition(&self, a: &[usize], b: &[usize]) {
        for x in a {
            for y in b {
                if let Some(n) = &self.nodes[*x] {
                    n.net.block(self.id(*y));
                }
                if let Some(n) = &self.nodes[*y] {
                    n.net.block(self.id(*x));
                }
            }
        }
    }

    pub fn heal(&self) {
        for n in self.nodes.iter().flatten() {
            n.net.unblock_all();
        }
    }

    /// Stops node `i` (raft, server) and cuts it off from the others.
    pub async fn kill(&mut self, i: usize) {
        let others: Vec<usize> = self.alive().into_iter().filter(|x| *x != i).collect();
        self.partition(&[i], &others);
        if let Some(n) = self.nodes[i].take() {
            n.store.shutdown().await;
            n.server.abort();
        }
    }

    /// Starts killed node `i` again on its data dir and peer address.
    pub async fn restart(&mut self, i: usize, tuning: RaftTuning) -> Result<()> {
        assert!(self.nodes[i].is_none(), "node {i} is running");
        let member = self.members[i].clone();
        let addr = member.peer_url.trim_start_matches("http://").to_string();
        let data_dir = self.dir.path().join(&member.name);
        // The killed replica's tasks and threads drop their listener and database handles
        // shortly after its shutdown returns; until then the port is taken and RocksDB's lock
        // refuses a second open.
        let deadline = Instant::now() + Duration::from_secs(10);
        let node = loop {
            let opened = match tokio::net::TcpListener::bind(&addr).await {
                Ok(l) => {
                    Node::open(&member, &self.members, false, tuning.clone(), data_dir.clone(), l)
                        .await
                }
                Err(e) => Err(e.into()),
            };
            match opened {
                Ok(node) => break node,
                Err(e) if Instant::now() < deadline => {
                    let msg = e.to_string();
                    if !msg.contains("LOCK") && !msg.contains("in use") {
                        return Err(e);
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => return Err(e),
            }
        };
        self.nodes[i] = Some(node);
        // `kill` cut the links to it.
        for n in self.nodes.iter().flatten() {
            n.net.unblock_all();
        }
        Ok(())
    }

    pub async fn shutdown(&mut self) {
        for i in self.alive() {
            self.kill(i).await;
        }
    }
}

pub async fn put(s: &Store, k: &str, v: &str) -> Result<i64, KvError> {
    match s
        .write(WriteOp::Put(PutRequest { key: k.into(), value: v.into(), ..Default::default() }))
        .await?
    {
        WriteResult::Put(p) => Ok(p.revision),
        other => Err(KvError::Storage(format!("unexpected {other:?}"))),
    }
}

pub async fn get(s: &Store, k: &str, linearizable: bool) -> Result<Option<Vec<u8>>, KvError> {
    let r = s
        .range(&RangeRequest { range: KeyRange::single(k), ..Default::default() }, linearizable)
        .await?;
    Ok(r.kvs.into_iter().next().map(|kv| kv.value))
}

/// Polls `check` until it is true or `timeout` passes.
pub async fn until(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while !check() {
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}
