//! The peer gRPC service (`skiff.raft.Raft`): raft messages into openraft, forwarded write
//! batches and read-index requests into the leader's local paths, membership admin requests.

use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use serde::Serialize;
use serde::de::DeserializeOwned;
use skiff_proto::raft::Payload;
use skiff_proto::raft::raft_server::{Raft as RaftRpc, RaftServer};
use tonic::{Request, Response, Status};

use crate::error::KvError;
use crate::node::{AdminRequest, AdminResponse, Store};
use crate::raft::network::MAX_MESSAGE_BYTES;
use crate::raft::{Proposal, TypeConfig, encode};
use crate::types::WriteResult;

/// Serves one replica's peer endpoint.
pub struct PeerService {
    store: Store,
}

impl PeerService {
    pub fn server(store: Store) -> RaftServer<Self> {
        RaftServer::new(Self { store })
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }
}

fn decode<T: DeserializeOwned>(req: Request<Payload>) -> Result<T, Status> {
    bincode::deserialize(&req.into_inner().data)
        .map_err(|e| Status::invalid_argument(format!("undecodable raft payload: {e}")))
}

#[expect(clippy::unnecessary_wraps, reason = "every handler returns this tonic result")]
fn reply<T: Serialize>(v: &T) -> Result<Response<Payload>, Status> {
    Ok(Response::new(Payload { data: encode(v) }))
}

#[tonic::async_trait]
impl RaftRpc for PeerService {
    async fn append_entries(&self, req: Request<Payload>) -> Result<Response<Payload>, Status> {
        let r: AppendEntriesRequest<TypeConfig> = decode(req)?;
        reply(&self.store.raft().append_entries(r).await)
    }

    async fn vote(&self, req: Request<Payload>) -> Result<Response<Payload>, Status> {
        let r: VoteRequest<u64> = decode(req)?;
        reply(&self.store.raft().vote(r).await)
    }

    async fn install_snapshot(&self, req: Request<Payload>) -> Result<Response<Payload>, Status> {
        let r: InstallSnapshotRequest<TypeConfig> = decode(req)?;
        reply(&self.store.raft().install_snapshot(r).await)
    }

    async fn forward(&self, req: Request<Payload>) -> Result<Response<Payload>, Status> {
        let p: Proposal = decode(req)?;
        let r: Vec<Result<WriteResult, KvError>> = self.store.forwarded(p).await;
        reply(&r)
    }

    async fn read_index(&self, req: Request<Payload>) -> Result<Response<Payload>, Status> {
        let (): () = decode(req)?;
        let r: Result<u64, KvError> = self.store.read_index_local().await;
        reply(&r)
    }

    async fn admin(&self, req: Request<Payload>) -> Result<Response<Payload>, Status> {
        let a: AdminRequest = decode(req)?;
        let r: Result<AdminResponse, KvError> = self.store.admin_local(a).await;
        reply(&r)
    }
}
