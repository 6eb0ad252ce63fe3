//! The raft transport, client side: openraft's `RaftNetwork` over our peer wire protocol
//! ([`super::wire`]), with bincode payloads. [`NetControl`] lets tests cut links (partitions) at the
//! sender, for raft messages and for forwarded client requests alike.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;
use tokio::sync::{mpsc, oneshot};

use super::log_store::Durable;
use super::{Member, TypeConfig, wire};

/// How long connecting to a peer may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Most bytes of requests queued on one peer connection (one larger request still goes alone).
pub const MAX_QUEUED_BYTES: usize = 64 << 20;

/// Links this replica refuses to use; empty outside tests.
#[derive(Clone, Default, Debug)]
pub struct NetControl {
    blocked: Arc<RwLock<HashSet<u64>>>,
}

impl NetControl {
    pub fn block(&self, peer: u64) {
        self.blocked.write().unwrap_or_else(std::sync::PoisonError::into_inner).insert(peer);
    }

    pub fn unblock_all(&self) {
        self.blocked.write().unwrap_or_else(std::sync::PoisonError::into_inner).clear();
    }

    pub fn is_blocked(&self, peer: u64) -> bool {
        self.blocked.read().unwrap_or_else(std::sync::PoisonError::into_inner).contains(&peer)
    }
}

/// Why a call to a peer failed.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("peer {0} unreachable: {1}")]
    Unreachable(u64, String),
    /// Sent, but no answer in time: the peer is reachable but slow (or the request is large),
    /// and the request may still take effect there.
    #[error("peer {0}: no answer after {1:?}")]
    TimedOut(u64, Duration),
    /// Sent (or queued to send), then the connection failed before the answer: the request
    /// may have taken effect there.
    #[error("peer {0}: connection lost before the answer: {1}")]
    Lost(u64, String),
    #[error("peer {0}: {1}")]
    Failed(u64, String),
}

/// Connections to peers by URL, shared by raft and request forwarding.
#[derive(Clone, Default)]
pub struct Peers {
    conns: Arc<Mutex<HashMap<String, Arc<Conn>>>>,
    pub control: NetControl,
}

/// One connection to a peer: a writer task sends queued request frames (several per write when
/// they queue up), a reader task hands each reply to the caller waiting for its id. Callers never
/// write to the socket themselves, so a caller that gives up cannot leave half a frame behind.
struct Conn {
    frames: mpsc::UnboundedSender<Vec<u8>>,
    /// Bytes queued for the writer and not yet handed to the socket.
    queued: AtomicUsize,
    waiting: Mutex<Waiting>,
    next_id: AtomicU64,
}

#[derive(Default)]
struct Waiting {
    replies: HashMap<u64, oneshot::Sender<Reply>>,
    /// Set when the connection failed: no reply will come.
    closed: bool,
}

type Reply = Result<Vec<u8>, PeerError>;

impl Conn {
    fn waiting(&self) -> std::sync::MutexGuard<'_, Waiting> {
        self.waiting.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Fails every call still waiting (their requests may have arrived) and every later one.
    fn close(&self, peer: u64, why: &str) {
        let mut w = self.waiting();
        w.closed = true;
        for (_, tx) in w.replies.drain() {
            let _ = tx.send(Err(PeerError::Lost(peer, why.to_string())));
        }
    }

    /// Runs until the connection fails or is dropped (then the writer's end closes the socket,
    /// the peer closes its side, and this read ends).
    async fn read_replies(conn: Weak<Self>, peer: u64, mut r: OwnedReadHalf) {
        let why = loop {
            match wire::read_frame(&mut r).await {
                Ok(Some(f)) => {
                    let Some(conn) = conn.upgrade() else { return };
                    let tx = conn.waiting().replies.remove(&f.id);
                    let reply = match f.kind {
                        wire::REPLY_OK => Ok(f.body),
                        _ => Err(PeerError::Failed(peer, String::from_utf8_lossy(&f.body).into())),
                    };
                    if let Some(tx) = tx {
                        let _ = tx.send(reply);
                    }
                }
                Ok(None) => break "connection closed by peer".to_string(),
                Err(e) => break format!("connection failed: {e}"),
            }
        };
        if let Some(conn) = conn.upgrade() {
            conn.close(peer, &why);
        }
    }
}

impl Peers {
    pub fn new(control: NetControl) -> Self {
        Self { conns: Arc::default(), control }
    }

    /// The open connection to `url`, or a new one.
    async fn conn(&self, id: u64, url: &str) -> Result<Arc<Conn>, PeerError> {
        let lock = || self.conns.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(c) = lock().get(url)
            && !c.waiting().closed
        {
            return Ok(c.clone());
        }
        let addr = wire::peer_addr(url).map_err(|e| PeerError::Failed(id, e))?;
        let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(PeerError::Unreachable(id, format!("connect {addr}: {e}"))),
            Err(_) => return Err(PeerError::Unreachable(id, format!("connect {addr}: timed out"))),
        };
        wire::configure(&stream).map_err(|e| PeerError::Unreachable(id, e.to_string()))?;
        let (r, w) = stream.into_split();
        let (tx, rx) = mpsc::unbounded_channel();
        let conn = Arc::new(Conn {
            frames: tx,
            queued: AtomicUsize::new(0),
            waiting: Mutex::default(),
            next_id: AtomicU64::new(1),
        });
        let weak = Arc::downgrade(&conn);
        tokio::spawn(async move {
            let written = |n| {
                if let Some(c) = weak.upgrade() {
                    c.queued.fetch_sub(n, Ordering::Relaxed);
                }
            };
            if let Err(e) = wire::write_queued(rx, w, written).await
                && let Some(c) = weak.upgrade()
            {
                c.close(id, &format!("send: {e}"));
            }
        });
        tokio::spawn(Conn::read_replies(Arc::downgrade(&conn), id, r));
        // Two callers may have connected at once; both connections work, the last one stays.
        lock().insert(url.to_string(), conn.clone());
        Ok(conn)
    }

    /// Calls `method` on peer `id` at `url` with a bincode request; decodes the bincode reply.
    pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        id: u64,
        url: &str,
        method: Method,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, PeerError> {
        if self.control.is_blocked(id) {
            return Err(PeerError::Unreachable(id, "link cut".into()));
        }
        let conn = self.conn(id, url).await?;
        let rid = conn.next_id.fetch_add(1, Ordering::Relaxed);
        let frame = wire::encode_frame(rid, method.code(), req)
            .map_err(|e| PeerError::Failed(id, e.to_string()))?;
        let (tx, rx) = oneshot::channel();
        {
            let mut w = conn.waiting();
            if w.closed {
                return Err(PeerError::Unreachable(id, "connection closed".into()));
            }
            w.replies.insert(rid, tx);
        }
        // A peer that stops reading (but whose kernel still acknowledges) would otherwise let
        // frames pile up here without bound.
        let queued = conn.queued.load(Ordering::Relaxed);
        if queued > 0 && queued + frame.len() > MAX_QUEUED_BYTES {
            conn.waiting().replies.remove(&rid);
            return Err(PeerError::Unreachable(
                id,
                format!("peer is not reading: {} MiB already queued", queued >> 20),
            ));
        }
        conn.queued.fetch_add(frame.len(), Ordering::Relaxed);
        if conn.frames.send(frame).is_err() {
            conn.close(id, "connection closed");
        }
        let body = match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(r)) => r?,
            Ok(Err(_)) => return Err(PeerError::Lost(id, "connection closed".into())),
            Err(_) => {
                conn.waiting().replies.remove(&rid);
                return Err(PeerError::TimedOut(id, timeout));
            }
        };
        bincode::deserialize(&body).map_err(|e| PeerError::Failed(id, format!("decode reply: {e}")))
    }
}

/// Requests a replica serves to its peers.
#[derive(Debug, Clone, Copy)]
pub enum Method {
    AppendEntries,
    Vote,
    InstallSnapshot,
    Forward,
    ReadIndex,
    Admin,
}

/// openraft's network factory.
#[derive(Clone)]
pub struct Network {
    pub peers: Peers,
    /// How far this replica's log is on disk: caps the commit index sent to followers.
    pub durable: Durable,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: u64, node: &Member) -> PeerClient {
        PeerClient {
            target,
            url: node.peer_url.clone(),
            peers: self.peers.clone(),
            durable: self.durable.clone(),
        }
    }
}

/// openraft's connection to one peer.
pub struct PeerClient {
    target: u64,
    url: String,
    peers: Peers,
    durable: Durable,
}

type RpcErr<E> = RPCError<u64, Member, RaftError<u64, E>>;

impl PeerClient {
    async fn rpc<
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    >(
        &self,
        method: Method,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RpcErr<E>> {
        let r: Result<Resp, RaftError<u64, E>> =
            self.peers.call(self.target, &self.url, method, req, option.hard_ttl()).await.map_err(
                |e| match e {
                    PeerError::Unreachable(..) | PeerError::Lost(..) => {
                        RPCError::Unreachable(Unreachable::new(&e))
                    }
                    // Not `Unreachable`: openraft backs off from an unreachable peer (100 ms
                    // here) before sending it anything, which turned one slow append under load
                    // into a replication stall and second-long client latencies.
                    PeerError::TimedOut(..) | PeerError::Failed(..) => {
                        RPCError::Network(NetworkError::new(&e))
                    }
                },
            )?;
        r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        mut rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RpcErr<openraft::error::Infallible>> {
        // openraft counts the leader's copy of an entry towards its commit before the leader
        // has synced it (see `log_store`); a follower learns only a commit that is on disk.
        rpc.leader_commit = self.durable.cap_commit(rpc.leader_commit);
        self.rpc(Method::AppendEntries, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<u64>, RpcErr<InstallSnapshotError>> {
        self.rpc(Method::InstallSnapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RpcErr<openraft::error::Infallible>> {
        self.rpc(Method::Vote, &rpc, &option).await
    }

    fn backoff(&self) -> openraft::network::Backoff {
        openraft::network::Backoff::new(std::iter::repeat(Duration::from_millis(100)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A peer that reads a request and then drops the connection may have acted on it: the
    /// caller learns the outcome is unknown, not that the peer was unreachable.
    #[tokio::test]
    async fn a_connection_lost_after_the_request_is_an_unknown_outcome() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let peer = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let frame = wire::read_frame(&mut stream).await.unwrap();
            assert!(frame.is_some());
        });
        let peers = Peers::default();
        let r: Result<(), PeerError> =
            peers.call(9, &url, Method::Forward, &7u32, Duration::from_secs(30)).await;
        assert!(matches!(r, Err(PeerError::Lost(9, _))), "{r:?}");
        peer.await.unwrap();
    }

    /// A peer whose kernel accepts data but whose process never reads: requests stop being
    /// queued once `MAX_QUEUED_BYTES` wait, and calls fail at once instead of growing memory.
    #[tokio::test]
    async fn a_peer_that_never_reads_gets_refused_not_buffered() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        // Accepts, then holds the connection without ever reading until aborted.
        let hold = tokio::spawn(async move {
            let (_stream, _) = listener.accept().await.unwrap();
            std::future::pending::<()>().await;
        });
        let peers = Peers::default();
        let big = vec![7u8; 8 << 20];
        let mut refused = None;
        for attempt in 0..40 {
            let r: Result<(), PeerError> =
                peers.call(9, &url, Method::Forward, &big, Duration::from_millis(50)).await;
            match r {
                Err(PeerError::TimedOut(..)) => {}
                Err(PeerError::Unreachable(_, msg)) if msg.contains("not reading") => {
                    refused = Some(attempt);
                    break;
                }
                other => panic!("attempt {attempt}: {other:?}"),
            }
        }
        assert!(refused.is_some(), "never refused");
        let queued = {
            let conns = peers.conns.lock().unwrap();
            conns.get(&url).unwrap().queued.load(Ordering::Relaxed)
        };
        assert!(queued <= MAX_QUEUED_BYTES, "{queued} bytes queued");
        hold.abort();
    }
}
