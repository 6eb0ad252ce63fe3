//! The peer endpoint, over [`crate::raft::wire`]: raft messages into openraft, forwarded write
//! batches and read-index requests into the leader's local paths, membership admin requests.

use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::node::{AdminRequest, Store};
use crate::raft::network::Method;
use crate::raft::wire::{self, REPLY_ERR, REPLY_OK};
use crate::raft::{Proposal, TypeConfig};

/// Serves peers on `listener` until `shutdown` resolves; open connections close with it.
pub async fn serve(store: Store, listener: TcpListener, shutdown: impl Future<Output = ()>) {
    let mut conns = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    conns.spawn(serve_conn(store.clone(), stream));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a peer connection");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
        }
        while conns.try_join_next().is_some() {}
    }
}

/// Reads requests and runs each in its own task (a forwarded write waits for its commit while
/// appends keep flowing); replies go out through one writer task in completion order.
async fn serve_conn(store: Store, stream: TcpStream) {
    let peer = stream.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    if let Err(e) = wire::configure(&stream) {
        tracing::warn!(%peer, error = %e, "setting peer socket options");
    }
    let (mut r, w) = stream.into_split();
    let (tx, rx) = mpsc::unbounded_channel();
    let mut handlers = JoinSet::new();
    handlers.spawn(async move {
        let _ = wire::write_queued(rx, w, |_| {}).await;
    });
    loop {
        let frame = match wire::read_frame(&mut r).await {
            Ok(Some(f)) => f,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(%peer, error = %e, "bad peer connection, closing it");
                return;
            }
        };
        let Some(method) = Method::from_code(frame.kind) else {
            tracing::warn!(%peer, kind = frame.kind, "unknown peer request, closing the connection");
            return;
        };
        let (store, tx) = (store.clone(), tx.clone());
        handlers.spawn(async move {
            let _ = tx.send(handle(&store, frame.id, method, &frame.body).await);
        });
        while handlers.try_join_next().is_some() {}
    }
}

/// Runs one request; returns the reply frame.
async fn handle(store: &Store, id: u64, method: Method, body: &[u8]) -> Vec<u8> {
    let raft = store.raft();
    let reply = match method {
        Method::AppendEntries => {
            run(id, body, |r: AppendEntriesRequest<TypeConfig>| raft.append_entries(r)).await
        }
        Method::Vote => run(id, body, |r: VoteRequest<u64>| raft.vote(r)).await,
        Method::InstallSnapshot => {
            run(id, body, |r: InstallSnapshotRequest<TypeConfig>| raft.install_snapshot(r)).await
        }
        Method::Forward => run(id, body, |p: Proposal| store.forwarded(p)).await,
        Method::ReadIndex => run(id, body, |(): ()| store.read_index_local()).await,
        Method::Admin => run(id, body, |a: AdminRequest| store.admin_local(a)).await,
    };
    reply.unwrap_or_else(|msg| {
        wire::encode_raw(id, REPLY_ERR, msg.as_bytes()).expect("an error message fits in a frame")
    })
}

/// Decodes the request, runs `f` on it and encodes its reply (the bincode reply types are the
/// ones [`crate::raft::network::Peers::call`] callers decode).
async fn run<Req: DeserializeOwned, Resp: Serialize, F: Future<Output = Resp>>(
    id: u64,
    body: &[u8],
    f: impl FnOnce(Req) -> F,
) -> Result<Vec<u8>, String> {
    let req = bincode::deserialize(body).map_err(|e| format!("undecodable peer request: {e}"))?;
    wire::encode_frame(id, REPLY_OK, &f(req).await).map_err(|e| e.to_string())
}
