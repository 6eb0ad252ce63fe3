//! The raft transport, client side: openraft's `RaftNetwork` over the `skiff.raft.Raft` gRPC
//! service, with bincode payloads. [`NetControl`] lets tests cut links (partitions) at the
//! sender, for raft messages and for forwarded client requests alike.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
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
use skiff_proto::raft::Payload;
use skiff_proto::raft::raft_client::RaftClient;
use tonic::transport::{Channel, Endpoint};

use super::{Member, TypeConfig, encode};

/// Largest raft message accepted or sent (entries are batches of writes up to 1.5 MiB each).
pub const MAX_MESSAGE_BYTES: usize = 256 << 20;

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
    #[error("peer {0}: {1}")]
    Failed(u64, String),
}

/// gRPC channels to peers by URL, shared by raft and request forwarding.
#[derive(Clone, Default)]
pub struct Peers {
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    pub control: NetControl,
}

impl Peers {
    pub fn new(control: NetControl) -> Self {
        Self { channels: Arc::default(), control }
    }

    pub fn client(&self, url: &str) -> Result<RaftClient<Channel>, String> {
        let mut map = self.channels.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let ch = if let Some(c) = map.get(url) {
            c.clone()
        } else {
            let c = Endpoint::from_shared(url.to_string())
                .map_err(|e| format!("bad peer url {url}: {e}"))?
                .tcp_nodelay(true)
                // Entries are batches of writes: large windows keep big appends from stalling
                // on HTTP/2 flow control.
                .initial_stream_window_size(Some(8 << 20))
                .initial_connection_window_size(Some(16 << 20))
                .connect_timeout(Duration::from_secs(1))
                .http2_keep_alive_interval(Duration::from_secs(10))
                .connect_lazy();
            map.insert(url.to_string(), c.clone());
            c
        };
        Ok(RaftClient::new(ch)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES))
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
        let mut c = self.client(url).map_err(|e| PeerError::Failed(id, e))?;
        let p = tonic::Request::new(Payload { data: encode(req) });
        let fut = async {
            match method {
                Method::AppendEntries => c.append_entries(p).await,
                Method::Vote => c.vote(p).await,
                Method::InstallSnapshot => c.install_snapshot(p).await,
                Method::Forward => c.forward(p).await,
                Method::ReadIndex => c.read_index(p).await,
                Method::Admin => c.admin(p).await,
            }
        };
        let resp = match tokio::time::timeout(timeout, fut).await {
            Err(_) => return Err(PeerError::TimedOut(id, timeout)),
            Ok(Err(s)) if s.code() == tonic::Code::Unavailable => {
                return Err(PeerError::Unreachable(id, s.message().to_string()));
            }
            Ok(Err(s)) => return Err(PeerError::Failed(id, s.to_string())),
            Ok(Ok(r)) => r.into_inner(),
        };
        bincode::deserialize(&resp.data)
            .map_err(|e| PeerError::Failed(id, format!("decode reply: {e}")))
    }
}

/// RPCs of the `skiff.raft.Raft` service.
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
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: u64, node: &Member) -> PeerClient {
        PeerClient { target, url: node.peer_url.clone(), peers: self.peers.clone() }
    }
}

/// openraft's connection to one peer.
pub struct PeerClient {
    target: u64,
    url: String,
    peers: Peers,
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
                    PeerError::Unreachable(..) => RPCError::Unreachable(Unreachable::new(&e)),
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
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RpcErr<openraft::error::Infallible>> {
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
