//! A store replica: raft + MVCC + watch, with the client-facing operations the etcd service
//! (and in-process users) call.
//!
//! Writes are grouped: a proposer task drains every request waiting in its queue into one raft
//! entry (up to [`MAX_BATCH_OPS`] / [`MAX_BATCH_BYTES`]), with a few entries in flight so the
//! next batch forms while the previous one replicates. On a follower the batch is forwarded to
//! the leader in one RPC, where it joins the leader's queue. Linearizable reads are grouped the same way: one read-index round
//! (a quorum heartbeat on the leader) serves every read that arrived before it started.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::{ChangeMembers, Config, SnapshotPolicy};
use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::error::{KvError, StoreError};
use crate::metrics::Metrics;
use crate::mvcc::Mvcc;
use crate::raft::log_store::{Durable, LogStore, SyncControl};
use crate::raft::network::{Method, NetControl, Network, PeerError, Peers};
use crate::raft::state_machine::StateMachine;
use crate::raft::{Member, Proposal, ProposalResult, Raft, member_id};
use crate::types::{MAX_REQUEST_BYTES, RangeRequest, RangeResponse, WriteOp, WriteResult};
use crate::watch::{WatchHub, WatchSpec, Watcher};

/// Most client writes in one raft entry.
pub const MAX_BATCH_OPS: usize = 512;
/// Most payload bytes in one raft entry (a single larger write still goes alone).
pub const MAX_BATCH_BYTES: usize = 4 << 20;
/// Raft entries (or forwarded batches) a replica has in flight at once. Few, so that writes
/// arriving meanwhile form one large next batch: measured, 4 in flight gave ~3 writes per entry
/// and one WAL sync each at 16 clients.
const MAX_INFLIGHT_BATCHES: usize = 2;
/// Queue of writes waiting to be batched.
const PROPOSAL_QUEUE: usize = 8192;
const READ_QUEUE: usize = 8192;
/// How long one snapshot chunk may take to reach a follower and be written there.
const SNAPSHOT_CHUNK_TIMEOUT_MS: u64 = 10_000;

/// Raft timing and snapshot policy.
#[derive(Debug, Clone)]
pub struct RaftTuning {
    pub heartbeat_ms: u64,
    pub election_min_ms: u64,
    pub election_max_ms: u64,
    /// Build a snapshot (and purge the log) after this many entries.
    pub snapshot_every: u64,
    /// Log entries kept behind a snapshot for slow followers.
    pub keep_logs: u64,
    /// How long a write or linearizable read may wait for commit before failing.
    pub request_timeout: Duration,
}

impl Default for RaftTuning {
    fn default() -> Self {
        Self {
            heartbeat_ms: 100,
            election_min_ms: 1000,
            election_max_ms: 2000,
            snapshot_every: 10_000,
            keep_logs: 1000,
            request_timeout: Duration::from_secs(5),
        }
    }
}

/// How to start a replica.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub name: String,
    pub data_dir: PathBuf,
    /// This member's raft URL as peers reach it.
    pub peer_url: String,
    /// This member's etcd API URL (for member list; may be empty).
    pub client_url: String,
    /// Members of a new cluster (name + peer URL). The first one initializes raft.
    pub initial_cluster: Vec<Member>,
    /// Join an existing cluster (`member add` first) instead of bootstrapping.
    pub join_existing: bool,
    pub tuning: RaftTuning,
    /// How much MVCC history to keep: the leader compacts, once per this period, to the
    /// revision that was current one period before (etcd's periodic auto-compaction; the
    /// Kubernetes API server has etcd compacted every 5 minutes the same way). `None` keeps
    /// all history.
    pub auto_compaction: Option<Duration>,
    /// Links to cut (tests only; empty otherwise).
    pub net: NetControl,
    /// Holds WAL syncs (tests only).
    pub sync: SyncControl,
}

/// A cluster member as reported by `member list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    pub id: u64,
    pub member: Member,
    pub is_learner: bool,
    pub is_leader: bool,
}

/// Membership operations, run on the leader.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum AdminRequest {
    List,
    Add(Member),
    Remove {
        id: u64,
    },
    /// Records a member's own peer and client URLs (sent by the member after it starts).
    Update(Member),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum AdminResponse {
    Members(Vec<MemberInfo>),
}

/// Replica status (etcd `endpoint status`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub id: u64,
    pub leader: Option<u64>,
    pub term: u64,
    pub raft_index: u64,
    pub applied_index: u64,
    pub revision: i64,
    pub compact_revision: i64,
    pub db_size: u64,
}

struct PendingWrite {
    op: WriteOp,
    size: usize,
    tx: oneshot::Sender<Result<WriteResult, KvError>>,
}

struct Inner {
    id: u64,
    config: StoreConfig,
    raft: Raft,
    mvcc: Arc<Mvcc>,
    hub: WatchHub,
    metrics: Metrics,
    peers: Peers,
    writes: mpsc::Sender<PendingWrite>,
    reads: mpsc::Sender<oneshot::Sender<Result<(), KvError>>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

/// A store replica. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl Store {
    /// Opens the replica's RocksDB, starts raft and, for a new cluster, bootstraps it from the
    /// first member of `initial_cluster`. The caller serves [`Store::serve_peers`] on the peer
    /// URL.
    pub async fn open(config: StoreConfig) -> Result<Self, StoreError> {
        std::fs::create_dir_all(&config.data_dir).map_err(|source| StoreError::Io {
            path: config.data_dir.display().to_string(),
            source,
        })?;
        let db = crate::db::open(&config.data_dir.join("db"))?;
        let metrics = Metrics::new();
        let mvcc = Arc::new(Mvcc::open(db.clone())?);
        let hub = WatchHub::new(mvcc.clone());
        let id = member_id(&config.name);
        let log = LogStore::new(db.clone(), metrics.clone(), id, config.sync.clone())
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let durable = log.durable();
        let sm = StateMachine::new(
            mvcc.clone(),
            hub.clone(),
            metrics.clone(),
            config.data_dir.clone(),
            durable.clone(),
        )
        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let peers = Peers::new(config.net.clone());
        let t = &config.tuning;
        let raft_config = Config {
            cluster_name: "skiff".into(),
            heartbeat_interval: t.heartbeat_ms,
            election_timeout_min: t.election_min_ms,
            election_timeout_max: t.election_max_ms,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(t.snapshot_every),
            max_in_snapshot_log_to_keep: t.keep_logs,
            max_payload_entries: 64,
            snapshot_max_chunk_size: 1 << 20,
            // Per-chunk RPC timeout. openraft's 200 ms default is shorter than a 1 MiB chunk
            // takes to encode, send and write on a loaded 2-core machine; a timed-out chunk is
            // resent, so under load the transfer could make no progress at all.
            install_snapshot_timeout: SNAPSHOT_CHUNK_TIMEOUT_MS,
            ..Config::default()
        }
        .validate()
        .map_err(|e| StoreError::Corrupt(format!("raft config: {e}")))?;
        let network = Network { peers: peers.clone(), durable: durable.clone() };
        let raft = Raft::new(id, Arc::new(raft_config), network, log, sm)
            .await
            .map_err(|e| StoreError::Corrupt(format!("starting raft: {e}")))?;
        let (wtx, wrx) = mpsc::channel(PROPOSAL_QUEUE);
        let (rtx, rrx) = mpsc::channel(READ_QUEUE);
        let store = Self {
            inner: Arc::new(Inner {
                id,
                config,
                raft,
                mvcc,
                hub,
                metrics,
                peers,
                writes: wtx,
                reads: rtx,
                tasks: Mutex::new(Vec::new()),
            }),
        };
        let mut tasks = vec![
            tokio::spawn(proposer(Arc::downgrade(&store.inner), wrx)),
            tokio::spawn(read_batcher(Arc::downgrade(&store.inner), rrx)),
            tokio::spawn(watch_metrics(Arc::downgrade(&store.inner))),
            tokio::spawn(publish_self(store.clone())),
            tokio::spawn(resend_capped_commits(Arc::downgrade(&store.inner), durable)),
        ];
        if let Some(period) = store.inner.config.auto_compaction {
            tasks.push(tokio::spawn(compactor(Arc::downgrade(&store.inner), period)));
        }
        store.inner.tasks.lock().unwrap_or_else(std::sync::PoisonError::into_inner).extend(tasks);
        store.bootstrap().await?;
        Ok(store)
    }

    async fn bootstrap(&self) -> Result<(), StoreError> {
        let c = &self.inner.config;
        if c.join_existing {
            return Ok(());
        }
        let first = c.initial_cluster.first().map(|m| m.name.as_str());
        if first != Some(c.name.as_str()) {
            return Ok(());
        }
        let initialized = self
            .inner
            .raft
            .is_initialized()
            .await
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        if initialized {
            return Ok(());
        }
        let mut members = BTreeMap::new();
        for m in &c.initial_cluster {
            let mut m = m.clone();
            if m.name == c.name {
                m.client_url.clone_from(&c.client_url);
            }
            members.insert(member_id(&m.name), m);
        }
        tracing::info!(members = members.len(), "initializing a new cluster");
        if let Err(e) = self.inner.raft.initialize(members).await {
            // Another start already initialized it: fine.
            tracing::info!(error = %e, "raft initialize skipped");
        }
        Ok(())
    }

    pub fn id(&self) -> u64 {
        self.inner.id
    }

    pub fn name(&self) -> &str {
        &self.inner.config.name
    }

    pub fn config(&self) -> &StoreConfig {
        &self.inner.config
    }

    pub fn raft(&self) -> &Raft {
        &self.inner.raft
    }

    pub fn mvcc(&self) -> &Arc<Mvcc> {
        &self.inner.mvcc
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Serves peers (raft, forwarded requests, membership admin) on `listener`, bound to this
    /// replica's peer URL, until `shutdown` resolves.
    pub async fn serve_peers(
        &self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()>,
    ) {
        crate::service::serve(self.clone(), listener, shutdown).await;
    }

    /// Applies one write through raft (batched with concurrent writes; forwarded to the leader
    /// from a follower) and returns its result.
    pub async fn write(&self, op: WriteOp) -> Result<WriteResult, KvError> {
        let size = op.payload_size();
        if size > MAX_REQUEST_BYTES {
            return Err(KvError::RequestTooLarge { size, limit: MAX_REQUEST_BYTES });
        }
        let (tx, rx) = oneshot::channel();
        self.inner
            .writes
            .send(PendingWrite { op, size, tx })
            .await
            .map_err(|_| KvError::Stopped)?;
        rx.await.map_err(|_| KvError::Stopped)?
    }

    /// Reads a range: linearizable (read index through the leader) or serializable (local).
    pub async fn range(
        &self,
        req: &RangeRequest,
        linearizable: bool,
    ) -> Result<RangeResponse, KvError> {
        if linearizable {
            self.read_barrier().await?;
        }
        self.inner.mvcc.range(req)
    }

    /// Waits until this replica has applied everything committed before the call.
    pub async fn read_barrier(&self) -> Result<(), KvError> {
        let (tx, rx) = oneshot::channel();
        self.inner.reads.send(tx).await.map_err(|_| KvError::Stopped)?;
        rx.await.map_err(|_| KvError::Stopped)?
    }

    pub fn watch(&self, spec: WatchSpec) -> Result<Watcher, KvError> {
        self.inner.hub.watch(spec)
    }

    pub fn status(&self) -> Status {
        let m = self.inner.raft.metrics().borrow().clone();
        Status {
            id: self.inner.id,
            leader: m.current_leader,
            term: m.current_term,
            raft_index: m.last_log_index.unwrap_or(0),
            applied_index: m.last_applied.map_or(0, |l| l.index),
            revision: self.inner.mvcc.revision(),
            compact_revision: self.inner.mvcc.compact_revision(),
            db_size: crate::db::disk_size(self.inner.mvcc.db()),
        }
    }

    /// Members from this replica's view of the membership config.
    pub fn members(&self) -> Vec<MemberInfo> {
        let m = self.inner.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        membership
            .nodes()
            .map(|(id, node)| {
                let mut member = node.clone();
                if *id == self.inner.id && member.client_url.is_empty() {
                    member.client_url.clone_from(&self.inner.config.client_url);
                }
                MemberInfo {
                    id: *id,
                    member,
                    is_learner: !voters.contains(id),
                    is_leader: m.current_leader == Some(*id),
                }
            })
            .collect()
    }

    /// Runs a membership request on the leader (forwarding if needed).
    pub async fn admin(&self, req: AdminRequest) -> Result<AdminResponse, KvError> {
        let leader = self.inner.wait_leader().await?;
        if leader == self.inner.id {
            return self.admin_local(req).await;
        }
        let url = self.inner.peer_url(leader).ok_or(KvError::NoLeader)?;
        let r: Result<AdminResponse, KvError> = self
            .inner
            .peers
            .call(leader, &url, Method::Admin, &req, Duration::from_mins(1))
            .await
            .map_err(peer_err)?;
        r
    }

    pub(crate) async fn admin_local(&self, req: AdminRequest) -> Result<AdminResponse, KvError> {
        let raft = &self.inner.raft;
        let fail = |e: RaftError<u64, ClientWriteError<u64, Member>>| match e {
            RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => KvError::LeaderChanged,
            other => KvError::InvalidArgument(other.to_string()),
        };
        match req {
            AdminRequest::List => {}
            AdminRequest::Add(m) => {
                let id = member_id(&m.name);
                if self.members().iter().any(|x| x.id == id) {
                    return Err(KvError::InvalidArgument(format!(
                        "member {} already exists",
                        m.name
                    )));
                }
                raft.add_learner(id, m, true).await.map_err(fail)?;
                raft.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
                    .await
                    .map_err(fail)?;
            }
            AdminRequest::Update(m) => {
                let id = member_id(&m.name);
                let known = self.members().into_iter().find(|x| x.id == id);
                if known.as_ref().is_some_and(|k| k.member != m) {
                    raft.change_membership(
                        ChangeMembers::SetNodes(BTreeMap::from([(id, m)])),
                        true,
                    )
                    .await
                    .map_err(fail)?;
                }
            }
            AdminRequest::Remove { id } => {
                if !self.members().iter().any(|x| x.id == id) {
                    return Err(KvError::InvalidArgument(format!("member {id:x} not found")));
                }
                raft.change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), false)
                    .await
                    .map_err(fail)?;
            }
        }
        Ok(AdminResponse::Members(self.members()))
    }

    /// A batch forwarded by a follower: its writes join this replica's queue, so they share
    /// the next raft entry with local writes and other followers' batches. (Proposing each
    /// forwarded batch as its own entry at once was measured too: 3x the entries, one leader WAL
    /// sync each, and slower at 64 clients; see docs/store.md.)
    pub(crate) async fn forwarded(&self, p: Proposal) -> Vec<Result<WriteResult, KvError>> {
        futures::future::join_all(p.ops.into_iter().map(|op| self.write(op))).await
    }

    pub(crate) async fn read_index_local(&self) -> Result<u64, KvError> {
        self.inner.read_index_local().await
    }

    /// Stops raft and the background tasks.
    pub async fn shutdown(&self) {
        let _ = self.inner.raft.shutdown().await;
        for t in
            self.inner.tasks.lock().unwrap_or_else(std::sync::PoisonError::into_inner).drain(..)
        {
            t.abort();
        }
    }
}

fn peer_err(e: PeerError) -> KvError {
    match e {
        PeerError::Unreachable(..) => KvError::NoLeader,
        // Sent: it may apply, so not "no leader" (which tells clients a retry is safe).
        PeerError::TimedOut(..) | PeerError::Lost(..) => KvError::Timeout,
        PeerError::Failed(_, m) => KvError::Storage(m),
    }
}

impl Inner {
    fn peer_url(&self, id: u64) -> Option<String> {
        let m = self.raft.metrics().borrow().membership_config.clone();
        m.membership().get_node(&id).map(|n| n.peer_url.clone())
    }

    /// The current leader, waiting up to an election's worth of time for one. A leader other
    /// than this replica counts only once its peer URL is known here: a member that has just
    /// joined learns the leader from its first `AppendEntries` before it has applied the
    /// membership naming the leader's address, and forwarding must not fail in that gap.
    async fn wait_leader(&self) -> Result<u64, KvError> {
        let mut rx = self.raft.metrics();
        let wait = Duration::from_millis(self.config.tuning.election_max_ms * 2);
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let known = {
                let m = rx.borrow_and_update();
                m.current_leader.filter(|l| {
                    *l == self.id || m.membership_config.membership().get_node(l).is_some()
                })
            };
            if let Some(l) = known {
                return Ok(l);
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(KvError::Stopped),
                Err(_) => return Err(KvError::NoLeader),
            }
        }
    }

    /// Proposes a batch here if this replica leads, else forwards it to the leader, whose
    /// proposer merges it with its own queue. One result per op.
    async fn propose(&self, p: Proposal) -> Result<Vec<Result<WriteResult, KvError>>, KvError> {
        let leader = self.wait_leader().await?;
        if leader == self.id {
            let n = p.ops.len();
            let r = self.propose_local(p).await?;
            if r.results.len() != n {
                return Err(KvError::Storage(format!(
                    "{} results for {n} writes",
                    r.results.len()
                )));
            }
            return Ok(r
                .results
                .into_iter()
                .map(|res| match res {
                    WriteResult::Error(e) => Err(e),
                    ok => Ok(ok),
                })
                .collect());
        }
        let url = self.peer_url(leader).ok_or(KvError::NoLeader)?;
        let t = std::time::Instant::now();
        let r: Vec<Result<WriteResult, KvError>> = self
            .peers
            .call(leader, &url, Method::Forward, &p, self.config.tuning.request_timeout)
            .await
            .inspect(|_| self.metrics.forward_seconds.observe(t.elapsed().as_secs_f64()))
            // A timeout is `KvError::Timeout`: sent but unanswered, it may or may not apply.
            .map_err(peer_err)?;
        // As etcd, a member answers a write once it has applied it itself: a serializable
        // read or a watch from "now" on the member the client asked sees its own write.
        let applied = r.iter().filter_map(|x| x.as_ref().ok()?.revision()).max();
        if let Some(rev) = applied {
            tokio::time::timeout(self.config.tuning.request_timeout, self.hub.applied(rev))
                .await
                .map_err(|_| KvError::Timeout)??;
        }
        Ok(r)
    }

    async fn propose_local(&self, p: Proposal) -> Result<ProposalResult, KvError> {
        self.metrics.proposal_batches.inc();
        let n = p.ops.len() as u64;
        let t = std::time::Instant::now();
        let res = match tokio::time::timeout(
            self.config.tuning.request_timeout,
            self.raft.client_write(p),
        )
        .await
        {
            Err(_) => Err(KvError::Timeout),
            Ok(Ok(resp)) => Ok(resp.data),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => {
                Err(KvError::LeaderChanged)
            }
            Ok(Err(RaftError::Fatal(e))) => Err(KvError::Storage(e.to_string())),
            Ok(Err(e)) => Err(KvError::Storage(e.to_string())),
        };
        if res.is_err() {
            self.metrics.proposals_failed.inc_by(n);
        } else {
            self.metrics.commit_seconds.observe(t.elapsed().as_secs_f64());
        }
        res
    }

    async fn read_index_local(&self) -> Result<u64, KvError> {
        match tokio::time::timeout(
            self.config.tuning.request_timeout,
            self.raft.ensure_linearizable(),
        )
        .await
        {
            Err(_) => Err(KvError::Timeout),
            Ok(Ok(log_id)) => Ok(log_id.map_or(0, |l| l.index)),
            Ok(Err(RaftError::APIError(_))) => Err(KvError::LeaderChanged),
            Ok(Err(e)) => Err(KvError::Storage(e.to_string())),
        }
    }

    async fn read_round(&self) -> Result<(), KvError> {
        let leader = self.wait_leader().await?;
        let index = if leader == self.id {
            self.read_index_local().await?
        } else {
            let url = self.peer_url(leader).ok_or(KvError::NoLeader)?;
            let r: Result<u64, KvError> = self
                .peers
                .call(leader, &url, Method::ReadIndex, &(), self.config.tuning.request_timeout)
                .await
                .map_err(peer_err)?;
            r?
        };
        self.raft
            .wait(Some(self.config.tuning.request_timeout))
            .applied_index_at_least(Some(index), "read index")
            .await
            .map_err(|_| KvError::Timeout)?;
        Ok(())
    }
}

async fn proposer(inner: std::sync::Weak<Inner>, mut rx: mpsc::Receiver<PendingWrite>) {
    let slots = Arc::new(Semaphore::new(MAX_INFLIGHT_BATCHES));
    loop {
        // Take a slot first: while every slot is busy, writes queue up and form the next batch.
        let Ok(permit) = slots.clone().acquire_owned().await else { return };
        let Some(first) = rx.recv().await else { return };
        let mut bytes = first.size;
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH_OPS && bytes < MAX_BATCH_BYTES {
            match rx.try_recv() {
                Ok(p) => {
                    bytes += p.size;
                    batch.push(p);
                }
                Err(_) => break,
            }
        }
        let Some(inner) = inner.upgrade() else { return };
        tokio::spawn(async move {
            let _permit = permit;
            let (ops, txs): (Vec<_>, Vec<_>) = batch.into_iter().map(|p| (p.op, p.tx)).unzip();
            match inner.propose(Proposal { ops }).await {
                Ok(r) if r.len() == txs.len() => {
                    for (tx, res) in txs.into_iter().zip(r) {
                        let _ = tx.send(res);
                    }
                }
                Ok(r) => {
                    let e =
                        KvError::Storage(format!("{} results for {} writes", r.len(), txs.len()));
                    for tx in txs {
                        let _ = tx.send(Err(e.clone()));
                    }
                }
                Err(e) => {
                    for tx in txs {
                        let _ = tx.send(Err(e.clone()));
                    }
                }
            }
        });
    }
}

/// Followers learn a commit index only once it is on the leader's disk (see `log_store`). When
/// one was held back and no later entry will carry it, this sends it as soon as the leader's
/// sync catches up, instead of with the next periodic heartbeat.
async fn resend_capped_commits(inner: std::sync::Weak<Inner>, durable: Durable) {
    let mut marks = durable.subscribe();
    while marks.changed().await.is_ok() {
        if durable.take_capped_when_idle() {
            let Some(inner) = inner.upgrade() else { return };
            if inner.raft.trigger().heartbeat().await.is_err() {
                return;
            }
        }
    }
}

async fn read_batcher(
    inner: std::sync::Weak<Inner>,
    mut rx: mpsc::Receiver<oneshot::Sender<Result<(), KvError>>>,
) {
    while let Some(first) = rx.recv().await {
        let mut waiting = vec![first];
        while let Ok(w) = rx.try_recv() {
            waiting.push(w);
        }
        let Some(inner) = inner.upgrade() else { return };
        // Every waiter arrived before this round started, so the round's read index covers it.
        let r = inner.read_round().await;
        for w in waiting {
            let _ = w.send(r.clone());
        }
    }
}

/// Makes sure the membership records this member's current URLs (the bootstrapping member only
/// knows the others' peer URLs), retrying until it is recorded.
async fn publish_self(store: Store) {
    let c = store.config();
    let me = Member {
        name: c.name.clone(),
        peer_url: c.peer_url.clone(),
        client_url: c.client_url.clone(),
    };
    loop {
        let recorded = store
            .inner
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .get_node(&store.inner.id)
            .cloned();
        if recorded.as_ref() == Some(&me) {
            return;
        }
        if recorded.is_some()
            && let Err(e) = store.admin(AdminRequest::Update(me.clone())).await
        {
            tracing::debug!(error = %e, "recording this member's URLs failed; retrying");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Auto-compaction (see [`StoreConfig::auto_compaction`]). Only the leader compacts; a member
/// that is not the leader forgets what it saw, so a new leader waits a full period first.
async fn compactor(inner: std::sync::Weak<Inner>, period: Duration) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seen: Option<i64> = None;
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        if inner.raft.metrics().borrow().current_leader != Some(inner.id) {
            seen = None;
            continue;
        }
        if let Some(rev) = seen.filter(|r| *r > inner.mvcc.compact_revision()) {
            let store = Store { inner: inner.clone() };
            match store.write(WriteOp::Compact(rev)).await {
                Ok(WriteResult::Error(e)) | Err(e) => {
                    tracing::warn!(revision = rev, error = %e, "auto-compaction failed");
                }
                Ok(_) => tracing::info!(revision = rev, "auto-compacted history"),
            }
        }
        seen = Some(inner.mvcc.revision());
    }
}

async fn watch_metrics(inner: std::sync::Weak<Inner>) {
    let Some(mut rx) = inner.upgrade().map(|i| i.raft.metrics()) else { return };
    let mut leader = None;
    loop {
        {
            let Some(i) = inner.upgrade() else { return };
            let m = rx.borrow_and_update().clone();
            if m.current_leader != leader {
                if m.current_leader.is_some() {
                    i.metrics.leader_changes.inc();
                }
                leader = m.current_leader;
            }
            i.metrics.has_leader.set(i64::from(m.current_leader.is_some()));
            i.metrics.is_leader.set(i64::from(m.current_leader == Some(i.id)));
            let lag =
                m.last_log_index.unwrap_or(0).saturating_sub(m.last_applied.map_or(0, |l| l.index));
            i.metrics.apply_lag.set(i64::try_from(lag).unwrap_or(i64::MAX));
            i.metrics.revision.set(i.mvcc.revision());
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}
