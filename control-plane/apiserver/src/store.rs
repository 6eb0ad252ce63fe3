//! The API server's only path to data: an etcd v3 gRPC client (KV and Watch), as
//! kube-apiserver uses etcd. Keys are `/registry/<group>/<resource>/[<namespace>/]<name>`,
//! values JSON, resourceVersion = the key's mod revision; writes are transactions comparing on
//! mod/create revision, so concurrent writers through different masters cannot lose updates.

use std::time::Duration;

use skiff_proto::etcdserverpb::{
    Compare, DeleteRangeRequest, PutRequest, RangeRequest, RangeResponse, RequestOp, TxnRequest,
    WatchCreateRequest, WatchRequest, WatchResponse, compare, kv_client::KvClient, request_op,
    watch_client::WatchClient, watch_request,
};
use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint};

/// A failed store call.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("required revision has been compacted (compacted at {0})")]
    Compacted(i64),
    #[error("invalid store endpoint {0:?}: {1}")]
    Endpoint(String, String),
}

impl From<tonic::Status> for StoreError {
    fn from(s: tonic::Status) -> Self {
        if s.message().contains("compacted") {
            return Self::Compacted(0);
        }
        Self::Unavailable(format!("{}: {}", s.code(), s.message()))
    }
}

/// A stored value with its revisions.
#[derive(Clone, Debug)]
pub struct Stored {
    pub key: String,
    pub value: Vec<u8>,
    pub mod_revision: i64,
    pub create_revision: i64,
}

/// A transaction guard.
#[derive(Clone, Debug)]
pub enum Cmp {
    /// The key's mod revision equals this (0: the key is absent).
    ModRevision(String, i64),
    /// The key does not exist.
    Absent(String),
}

/// A transaction operation.
#[derive(Clone, Debug)]
pub enum Op {
    Put(String, Vec<u8>),
    Delete(String),
}

/// Client of an etcd v3 endpoint set (a Skiff store or etcd itself).
#[derive(Clone)]
pub struct Store {
    kv: KvClient<Channel>,
    watch: WatchClient<Channel>,
}

/// The end of a prefix range: the prefix with its last byte incremented.
pub fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn convert(kv: skiff_proto::mvccpb::KeyValue) -> Stored {
    Stored {
        key: String::from_utf8_lossy(&kv.key).into_owned(),
        value: kv.value,
        mod_revision: kv.mod_revision,
        create_revision: kv.create_revision,
    }
}

const RETRIES: u32 = 20;

impl Store {
    /// Connects lazily to `endpoints` (`http://127.0.0.1:2379`, …); requests are balanced
    /// across them and move on when one fails.
    pub fn connect(endpoints: &[String]) -> Result<Self, StoreError> {
        let mut eps = Vec::new();
        for e in endpoints {
            let url = if e.contains("://") { e.clone() } else { format!("http://{e}") };
            let ep = Endpoint::from_shared(url.clone())
                .map_err(|err| StoreError::Endpoint(url.clone(), err.to_string()))?
                .connect_timeout(Duration::from_secs(2))
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(10))
                .keep_alive_timeout(Duration::from_secs(5));
            eps.push(ep);
        }
        if eps.is_empty() {
            return Err(StoreError::Endpoint(String::new(), "no store endpoints".to_owned()));
        }
        let channel = Channel::balance_list(eps.into_iter());
        Ok(Self { kv: KvClient::new(channel.clone()), watch: WatchClient::new(channel) })
    }

    async fn retry<T, F, Fut>(&self, mut call: F) -> Result<T, StoreError>
    where
        F: FnMut(KvClient<Channel>) -> Fut,
        Fut: Future<Output = Result<T, tonic::Status>>,
    {
        let mut attempt = 0;
        loop {
            match call(self.kv.clone()).await {
                Ok(v) => return Ok(v),
                Err(s)
                    if attempt < RETRIES
                        && matches!(
                            s.code(),
                            tonic::Code::Unavailable
                                | tonic::Code::Unknown
                                | tonic::Code::Cancelled
                        ) =>
                {
                    attempt += 1;
                    tracing::debug!(error = %s, attempt, "store call failed; retrying");
                    tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt.min(5))))
                        .await;
                }
                Err(s) => return Err(s.into()),
            }
        }
    }

    /// One key at the latest revision; also returns the store revision.
    pub async fn get(&self, key: &str) -> Result<(Option<Stored>, i64), StoreError> {
        let req = RangeRequest { key: key.as_bytes().to_vec(), ..Default::default() };
        let resp = self.range_request(req).await?;
        let rev = resp.header.map_or(0, |h| h.revision);
        Ok((resp.kvs.into_iter().next().map(convert), rev))
    }

    /// Every key under `prefix` from `start` (inclusive; the prefix itself when `None`), at
    /// `revision` (0: latest); returns the items and the revision read.
    pub async fn range(
        &self,
        prefix: &str,
        start: Option<&str>,
        revision: i64,
    ) -> Result<(Vec<Stored>, i64), StoreError> {
        let req = RangeRequest {
            key: start.unwrap_or(prefix).as_bytes().to_vec(),
            range_end: prefix_end(prefix),
            revision,
            ..Default::default()
        };
        let resp = self.range_request(req).await?;
        let rev = resp.header.map_or(0, |h| h.revision);
        Ok((resp.kvs.into_iter().map(convert).collect(), rev))
    }

    /// One Range call, retried like every other request.
    async fn range_request(&self, req: RangeRequest) -> Result<RangeResponse, StoreError> {
        Ok(self
            .retry(|mut kv| {
                let req = req.clone();
                async move { kv.range(req).await }
            })
            .await?
            .into_inner())
    }

    /// The store's current revision (a linearizable read).
    pub async fn revision(&self) -> Result<i64, StoreError> {
        let req =
            RangeRequest { key: b"/registry/\0".to_vec(), count_only: true, ..Default::default() };
        let resp = self.range_request(req).await?;
        Ok(resp.header.map_or(0, |h| h.revision))
    }

    /// Runs `ops` if every guard holds. Returns whether it did, and the revision after it.
    pub async fn txn(&self, guards: &[Cmp], ops: &[Op]) -> Result<(bool, i64), StoreError> {
        let compare = guards
            .iter()
            .map(|g| match g {
                Cmp::ModRevision(k, rev) => Compare {
                    result: compare::CompareResult::Equal.into(),
                    target: compare::CompareTarget::Mod.into(),
                    key: k.as_bytes().to_vec(),
                    target_union: Some(compare::TargetUnion::ModRevision(*rev)),
                    ..Default::default()
                },
                Cmp::Absent(k) => Compare {
                    result: compare::CompareResult::Equal.into(),
                    target: compare::CompareTarget::Create.into(),
                    key: k.as_bytes().to_vec(),
                    target_union: Some(compare::TargetUnion::CreateRevision(0)),
                    ..Default::default()
                },
            })
            .collect();
        let success = ops
            .iter()
            .map(|o| RequestOp {
                request: Some(match o {
                    Op::Put(k, v) => request_op::Request::RequestPut(PutRequest {
                        key: k.as_bytes().to_vec(),
                        value: v.clone(),
                        ..Default::default()
                    }),
                    Op::Delete(k) => request_op::Request::RequestDeleteRange(DeleteRangeRequest {
                        key: k.as_bytes().to_vec(),
                        ..Default::default()
                    }),
                }),
            })
            .collect();
        let req = TxnRequest { compare, success, failure: Vec::new() };
        // A transaction is not retried after it may have reached the store: a retry could apply
        // it twice. Connection failures before sending are retried by `retry`'s Unavailable arm,
        // and the guards make a duplicate harmless (the second attempt fails its compare).
        let resp = self
            .retry(|mut kv| {
                let req = req.clone();
                async move { kv.txn(req).await }
            })
            .await?
            .into_inner();
        Ok((resp.succeeded, resp.header.map_or(0, |h| h.revision)))
    }

    /// Watches every key under `prefix` from `start_revision`, with previous values.
    pub async fn watch(
        &self,
        prefix: &str,
        start_revision: i64,
    ) -> Result<(tonic::Streaming<WatchResponse>, mpsc::Sender<WatchRequest>), StoreError> {
        let (tx, rx) = mpsc::channel(4);
        let create = WatchRequest {
            request_union: Some(watch_request::RequestUnion::CreateRequest(WatchCreateRequest {
                key: prefix.as_bytes().to_vec(),
                range_end: prefix_end(prefix),
                start_revision,
                prev_kv: true,
                progress_notify: true,
                ..Default::default()
            })),
        };
        tx.send(create)
            .await
            .map_err(|_| StoreError::Unavailable("watch request channel closed".to_owned()))?;
        let stream = self
            .watch
            .clone()
            .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?
            .into_inner();
        Ok((stream, tx))
    }
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end("/registry/"), b"/registry0");
        assert_eq!(prefix_end("a\u{7f}"), b"a\x80");
    }
}
