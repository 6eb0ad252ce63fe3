//! The etcd v3 gRPC API subset (KV, Watch, Cluster, Maintenance) over a [`Store`], so
//! `etcdctl` and the API server talk to Skiff exactly as to etcd.
//!
//! Conversions between `etcdserverpb` and the store's types live here; errors carry etcd's
//! messages (`etcdserver: mvcc: required revision has been compacted`, ...), which etcd
//! clients match on.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::Stream;
use skiff_proto::etcdserverpb as pb;
use skiff_proto::mvccpb;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::error::{KvError, StoreError};
use crate::node::{AdminRequest, AdminResponse, MemberInfo, Store};
use crate::types::{
    Compare, CompareResult, CompareTarget, DeleteRangeRequest, Event, EventKind, KeyRange,
    KeyValue, PutRequest, RangeRequest, RangeResponse, TxnOp, TxnOpResponse, TxnRequest,
    TxnResponse, WriteOp, WriteResult,
};
use crate::watch::WatchSpec;

/// gRPC messages up to this size are decoded, so oversized requests reach the store's own
/// 1.5 MiB check and get etcd's "request is too large" error rather than a transport error.
pub const MAX_GRPC_MESSAGE: usize = 8 << 20;
/// How often an idle watch with `progress_notify` gets a progress notification.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(5);
/// Snapshot stream chunk.
const SNAPSHOT_CHUNK: usize = 1 << 20;
/// Cluster id in response headers: stable for every Skiff cluster.
const CLUSTER_ID: u64 = 0x736b_6966_665f_6964;

/// Maps a store error to the gRPC status etcd returns for it.
pub fn status(e: &KvError) -> Status {
    match e {
        KvError::Compacted { .. } => {
            Status::out_of_range("etcdserver: mvcc: required revision has been compacted")
        }
        KvError::FutureRevision => {
            Status::out_of_range("etcdserver: mvcc: required revision is a future revision")
        }
        KvError::RequestTooLarge { .. } => {
            Status::invalid_argument("etcdserver: request is too large")
        }
        KvError::InvalidArgument(m) => Status::invalid_argument(format!("etcdserver: {m}")),
        KvError::NoLeader => Status::unavailable("etcdserver: no leader"),
        KvError::LeaderChanged => Status::unavailable("etcdserver: leader changed"),
        KvError::Timeout => Status::unavailable("etcdserver: request timed out"),
        KvError::Stopped => Status::unavailable("etcdserver: server stopped"),
        KvError::Storage(m) => Status::internal(format!("etcdserver: {m}")),
    }
}

fn kv_to_pb(kv: KeyValue) -> mvccpb::KeyValue {
    mvccpb::KeyValue {
        key: kv.key,
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        value: kv.value,
        lease: kv.lease,
    }
}

fn event_to_pb(e: Event) -> mvccpb::Event {
    mvccpb::Event {
        r#type: match e.kind {
            EventKind::Put => mvccpb::event::EventType::Put as i32,
            EventKind::Delete => mvccpb::event::EventType::Delete as i32,
        },
        kv: Some(kv_to_pb(e.kv)),
        prev_kv: e.prev_kv.map(kv_to_pb),
    }
}

fn require_key(key: &[u8], range_end: &[u8]) -> Result<(), KvError> {
    if key.is_empty() && range_end.is_empty() {
        return Err(KvError::InvalidArgument("key is not provided".into()));
    }
    Ok(())
}

/// Sorting and filtering etcd applies on top of a plain range.
struct RangeExtras {
    sort_order: pb::range_request::SortOrder,
    sort_target: pb::range_request::SortTarget,
    limit: i64,
    min_mod: i64,
    max_mod: i64,
    min_create: i64,
    max_create: i64,
}

impl RangeExtras {
    fn needed(&self) -> bool {
        use pb::range_request::{SortOrder, SortTarget};
        let plain_sort = self.sort_order == SortOrder::None
            || (self.sort_order == SortOrder::Ascend && self.sort_target == SortTarget::Key);
        !plain_sort
            || self.min_mod > 0
            || self.max_mod > 0
            || self.min_create > 0
            || self.max_create > 0
    }

    fn apply(&self, mut r: RangeResponse) -> RangeResponse {
        use pb::range_request::{SortOrder, SortTarget};
        r.kvs.retain(|kv| {
            (self.min_mod <= 0 || kv.mod_revision >= self.min_mod)
                && (self.max_mod <= 0 || kv.mod_revision <= self.max_mod)
                && (self.min_create <= 0 || kv.create_revision >= self.min_create)
                && (self.max_create <= 0 || kv.create_revision <= self.max_create)
        });
        if self.sort_order != SortOrder::None {
            match self.sort_target {
                SortTarget::Key => {}
                SortTarget::Version => r.kvs.sort_by_key(|kv| kv.version),
                SortTarget::Create => r.kvs.sort_by_key(|kv| kv.create_revision),
                SortTarget::Mod => r.kvs.sort_by_key(|kv| kv.mod_revision),
                SortTarget::Value => r.kvs.sort_by(|a, b| a.value.cmp(&b.value)),
            }
            if self.sort_order == SortOrder::Descend {
                r.kvs.reverse();
            }
        }
        if self.min_mod > 0 || self.max_mod > 0 || self.min_create > 0 || self.max_create > 0 {
            r.count = i64::try_from(r.kvs.len()).unwrap_or(i64::MAX);
        }
        let limit = usize::try_from(self.limit).unwrap_or(0);
        if limit > 0 && r.kvs.len() > limit {
            r.kvs.truncate(limit);
            r.more = true;
        }
        r
    }
}

fn range_from_pb(r: pb::RangeRequest) -> Result<(RangeRequest, bool, RangeExtras), KvError> {
    require_key(&r.key, &r.range_end)?;
    let extras = RangeExtras {
        sort_order: pb::range_request::SortOrder::try_from(r.sort_order).map_err(|_| {
            KvError::InvalidArgument(format!("invalid sort order {}", r.sort_order))
        })?,
        sort_target: pb::range_request::SortTarget::try_from(r.sort_target).map_err(|_| {
            KvError::InvalidArgument(format!("invalid sort target {}", r.sort_target))
        })?,
        limit: r.limit,
        min_mod: r.min_mod_revision,
        max_mod: r.max_mod_revision,
        min_create: r.min_create_revision,
        max_create: r.max_create_revision,
    };
    if r.limit < 0 {
        return Err(KvError::InvalidArgument("limit must not be negative".into()));
    }
    let req = RangeRequest {
        range: KeyRange { key: r.key, range_end: r.range_end },
        limit: if extras.needed() { 0 } else { r.limit },
        revision: r.revision,
        keys_only: r.keys_only,
        count_only: r.count_only,
    };
    Ok((req, !r.serializable, extras))
}

fn put_from_pb(p: pb::PutRequest) -> Result<PutRequest, KvError> {
    require_key(&p.key, &[])?;
    Ok(PutRequest {
        key: p.key,
        value: p.value,
        lease: p.lease,
        prev_kv: p.prev_kv,
        ignore_value: p.ignore_value,
        ignore_lease: p.ignore_lease,
    })
}

fn delete_from_pb(d: pb::DeleteRangeRequest) -> Result<DeleteRangeRequest, KvError> {
    require_key(&d.key, &d.range_end)?;
    Ok(DeleteRangeRequest {
        range: KeyRange { key: d.key, range_end: d.range_end },
        prev_kv: d.prev_kv,
    })
}

fn compare_from_pb(c: pb::Compare) -> Result<Compare, KvError> {
    use pb::compare::{CompareResult as R, CompareTarget as T, TargetUnion as U};
    let result = match R::try_from(c.result) {
        Ok(R::Equal) => CompareResult::Equal,
        Ok(R::Greater) => CompareResult::Greater,
        Ok(R::Less) => CompareResult::Less,
        Ok(R::NotEqual) => CompareResult::NotEqual,
        Err(_) => {
            return Err(KvError::InvalidArgument(format!("invalid compare result {}", c.result)));
        }
    };
    let int = |u: &Option<U>| match u {
        Some(U::Version(v) | U::CreateRevision(v) | U::ModRevision(v) | U::Lease(v)) => *v,
        _ => 0,
    };
    let target = match T::try_from(c.target) {
        Ok(T::Version) => CompareTarget::Version(int(&c.target_union)),
        Ok(T::Create) => CompareTarget::Create(int(&c.target_union)),
        Ok(T::Mod) => CompareTarget::Mod(int(&c.target_union)),
        Ok(T::Lease) => CompareTarget::Lease(int(&c.target_union)),
        Ok(T::Value) => CompareTarget::Value(match c.target_union {
            Some(U::Value(v)) => v,
            _ => Vec::new(),
        }),
        Err(_) => {
            return Err(KvError::InvalidArgument(format!("invalid compare target {}", c.target)));
        }
    };
    require_key(&c.key, &c.range_end)?;
    Ok(Compare { range: KeyRange { key: c.key, range_end: c.range_end }, result, target })
}

fn txn_from_pb(t: pb::TxnRequest) -> Result<TxnRequest, KvError> {
    fn ops(v: Vec<pb::RequestOp>) -> Result<Vec<TxnOp>, KvError> {
        v.into_iter()
            .map(|op| match op.request {
                Some(pb::request_op::Request::RequestRange(r)) => {
                    let (req, _, extras) = range_from_pb(r)?;
                    if extras.needed() {
                        return Err(KvError::InvalidArgument(
                            "sorted or filtered ranges inside a txn are not supported".into(),
                        ));
                    }
                    Ok(TxnOp::Range(req))
                }
                Some(pb::request_op::Request::RequestPut(p)) => Ok(TxnOp::Put(put_from_pb(p)?)),
                Some(pb::request_op::Request::RequestDeleteRange(d)) => {
                    Ok(TxnOp::DeleteRange(delete_from_pb(d)?))
                }
                Some(pb::request_op::Request::RequestTxn(t)) => Ok(TxnOp::Txn(txn_from_pb(t)?)),
                None => Err(KvError::InvalidArgument("empty request op in txn".into())),
            })
            .collect()
    }
    Ok(TxnRequest {
        compare: t.compare.into_iter().map(compare_from_pb).collect::<Result<_, _>>()?,
        success: ops(t.success)?,
        failure: ops(t.failure)?,
    })
}

/// Serves the etcd services for one replica.
#[derive(Clone)]
pub struct EtcdService {
    store: Store,
}

impl EtcdService {
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    #[expect(
        clippy::unnecessary_wraps,
        reason = "every etcd response holds its header as an Option"
    )]
    fn header(&self, revision: i64) -> Option<pb::ResponseHeader> {
        Some(pb::ResponseHeader {
            cluster_id: CLUSTER_ID,
            member_id: self.store.id(),
            revision,
            raft_term: self.store.raft().metrics().borrow().current_term,
        })
    }

    fn range_to_pb(&self, r: RangeResponse) -> pb::RangeResponse {
        pb::RangeResponse {
            header: self.header(r.revision),
            kvs: r.kvs.into_iter().map(kv_to_pb).collect(),
            more: r.more,
            count: r.count,
        }
    }

    fn txn_to_pb(&self, t: TxnResponse) -> pb::TxnResponse {
        pb::TxnResponse {
            header: self.header(t.revision),
            succeeded: t.succeeded,
            responses: t
                .responses
                .into_iter()
                .map(|r| pb::ResponseOp {
                    response: Some(match r {
                        TxnOpResponse::Range(g) => {
                            pb::response_op::Response::ResponseRange(self.range_to_pb(g))
                        }
                        TxnOpResponse::Put(p) => {
                            pb::response_op::Response::ResponsePut(pb::PutResponse {
                                header: self.header(p.revision),
                                prev_kv: p.prev_kv.map(kv_to_pb),
                            })
                        }
                        TxnOpResponse::DeleteRange(d) => {
                            pb::response_op::Response::ResponseDeleteRange(
                                pb::DeleteRangeResponse {
                                    header: self.header(d.revision),
                                    deleted: d.deleted,
                                    prev_kvs: d.prev_kvs.into_iter().map(kv_to_pb).collect(),
                                },
                            )
                        }
                        TxnOpResponse::Txn(t) => {
                            pb::response_op::Response::ResponseTxn(self.txn_to_pb(t))
                        }
                    }),
                })
                .collect(),
        }
    }

    fn member_to_pb(m: &MemberInfo) -> pb::Member {
        pb::Member {
            id: m.id,
            name: m.member.name.clone(),
            peer_ur_ls: vec![m.member.peer_url.clone()],
            client_ur_ls: if m.member.client_url.is_empty() {
                Vec::new()
            } else {
                vec![m.member.client_url.clone()]
            },
            is_learner: m.is_learner,
        }
    }

    async fn write(&self, op: WriteOp) -> Result<WriteResult, Status> {
        self.store.write(op).await.map_err(|e| status(&e))
    }

    pub fn kv_server(&self) -> pb::kv_server::KvServer<Self> {
        pb::kv_server::KvServer::new(self.clone()).max_decoding_message_size(MAX_GRPC_MESSAGE)
    }

    pub fn watch_server(&self) -> pb::watch_server::WatchServer<Self> {
        pb::watch_server::WatchServer::new(self.clone())
    }

    pub fn cluster_server(&self) -> pb::cluster_server::ClusterServer<Self> {
        pb::cluster_server::ClusterServer::new(self.clone())
    }

    pub fn maintenance_server(&self) -> pb::maintenance_server::MaintenanceServer<Self> {
        pb::maintenance_server::MaintenanceServer::new(self.clone())
    }
}

#[tonic::async_trait]
impl pb::kv_server::Kv for EtcdService {
    async fn range(
        &self,
        req: Request<pb::RangeRequest>,
    ) -> Result<Response<pb::RangeResponse>, Status> {
        let (r, linearizable, extras) = range_from_pb(req.into_inner()).map_err(|e| status(&e))?;
        let mut resp = self.store.range(&r, linearizable).await.map_err(|e| status(&e))?;
        if extras.needed() {
            resp = extras.apply(resp);
        }
        Ok(Response::new(self.range_to_pb(resp)))
    }

    async fn put(&self, req: Request<pb::PutRequest>) -> Result<Response<pb::PutResponse>, Status> {
        let p = put_from_pb(req.into_inner()).map_err(|e| status(&e))?;
        match self.write(WriteOp::Put(p)).await? {
            WriteResult::Put(r) => Ok(Response::new(pb::PutResponse {
                header: self.header(r.revision),
                prev_kv: r.prev_kv.map(kv_to_pb),
            })),
            other => Err(Status::internal(format!("unexpected result {other:?}"))),
        }
    }

    async fn delete_range(
        &self,
        req: Request<pb::DeleteRangeRequest>,
    ) -> Result<Response<pb::DeleteRangeResponse>, Status> {
        let d = delete_from_pb(req.into_inner()).map_err(|e| status(&e))?;
        match self.write(WriteOp::DeleteRange(d)).await? {
            WriteResult::DeleteRange(r) => Ok(Response::new(pb::DeleteRangeResponse {
                header: self.header(r.revision),
                deleted: r.deleted,
                prev_kvs: r.prev_kvs.into_iter().map(kv_to_pb).collect(),
            })),
            other => Err(Status::internal(format!("unexpected result {other:?}"))),
        }
    }

    async fn txn(&self, req: Request<pb::TxnRequest>) -> Result<Response<pb::TxnResponse>, Status> {
        let t = txn_from_pb(req.into_inner()).map_err(|e| status(&e))?;
        match self.write(WriteOp::Txn(t)).await? {
            WriteResult::Txn(r) => Ok(Response::new(self.txn_to_pb(r))),
            other => Err(Status::internal(format!("unexpected result {other:?}"))),
        }
    }

    async fn compact(
        &self,
        req: Request<pb::CompactionRequest>,
    ) -> Result<Response<pb::CompactionResponse>, Status> {
        let c = req.into_inner();
        match self.write(WriteOp::Compact(c.revision)).await? {
            WriteResult::Compact { revision } => {
                Ok(Response::new(pb::CompactionResponse { header: self.header(revision) }))
            }
            other => Err(Status::internal(format!("unexpected result {other:?}"))),
        }
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchResponse, Status>> + Send>>;

/// A watcher's task and the revision it has delivered up to.
type RunningWatch = (tokio::task::JoinHandle<()>, Arc<AtomicI64>);

/// Per-stream state: running watchers, their progress, and the outgoing queue.
struct WatchSession {
    svc: EtcdService,
    out: mpsc::Sender<Result<pb::WatchResponse, Status>>,
    watchers: Mutex<HashMap<i64, RunningWatch>>,
    next_id: AtomicI64,
}

impl WatchSession {
    async fn send(&self, r: pb::WatchResponse) -> bool {
        self.out.send(Ok(r)).await.is_ok()
    }

    #[expect(
        clippy::too_many_lines,
        reason = "one linear protocol sequence: validate, create, stream"
    )]
    async fn create(self: &Arc<Self>, c: pb::WatchCreateRequest) {
        let id =
            if c.watch_id > 0 { c.watch_id } else { self.next_id.fetch_add(1, Ordering::Relaxed) };
        let current = self.svc.store.mvcc().revision();
        let taken = self
            .watchers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains_key(&id);
        if taken || (c.key.is_empty() && c.range_end.is_empty()) {
            let reason = if taken { "watch id already in use" } else { "key is not provided" };
            let _ = self
                .send(pb::WatchResponse {
                    header: self.svc.header(current),
                    watch_id: id,
                    created: true,
                    canceled: true,
                    cancel_reason: format!("etcdserver: {reason}"),
                    ..Default::default()
                })
                .await;
            return;
        }
        let spec = WatchSpec {
            range: KeyRange { key: c.key, range_end: c.range_end },
            start_revision: c.start_revision,
            prev_kv: c.prev_kv,
            no_put: c.filters.contains(&(pb::watch_create_request::FilterType::Noput as i32)),
            no_delete: c.filters.contains(&(pb::watch_create_request::FilterType::Nodelete as i32)),
        };
        let created = pb::WatchResponse {
            header: self.svc.header(current),
            watch_id: id,
            created: true,
            ..Default::default()
        };
        let mut watcher = match self.svc.store.watch(spec) {
            Ok(w) => w,
            Err(KvError::Compacted { compact_revision }) => {
                let _ = self.send(created).await;
                let _ = self
                    .send(pb::WatchResponse {
                        header: self.svc.header(current),
                        watch_id: id,
                        canceled: true,
                        compact_revision,
                        cancel_reason: "etcdserver: mvcc: required revision has been compacted"
                            .into(),
                        ..Default::default()
                    })
                    .await;
                return;
            }
            Err(e) => {
                let _ = self
                    .send(pb::WatchResponse {
                        header: self.svc.header(current),
                        watch_id: id,
                        created: true,
                        canceled: true,
                        cancel_reason: status(&e).message().to_string(),
                        ..Default::default()
                    })
                    .await;
                return;
            }
        };
        if !self.send(created).await {
            return;
        }
        let progress = Arc::new(AtomicI64::new(watcher.progress_revision()));
        let me = self.clone();
        let prog = progress.clone();
        let notify = c.progress_notify;
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(PROGRESS_INTERVAL);
            tick.reset();
            loop {
                let resp = tokio::select! {
                    r = watcher.next() => match r {
                        Ok(events) => {
                            let rev = events.last().map_or(0, |e| e.kv.mod_revision);
                            tick.reset();
                            pb::WatchResponse {
                                header: me.svc.header(rev.max(watcher.progress_revision())),
                                watch_id: id,
                                events: events.into_iter().map(event_to_pb).collect(),
                                ..Default::default()
                            }
                        }
                        Err(KvError::Compacted { compact_revision }) => pb::WatchResponse {
                            header: me.svc.header(watcher.progress_revision()),
                            watch_id: id,
                            canceled: true,
                            compact_revision,
                            cancel_reason: "etcdserver: mvcc: required revision has been compacted".into(),
                            ..Default::default()
                        },
                        Err(e) => pb::WatchResponse {
                            header: me.svc.header(watcher.progress_revision()),
                            watch_id: id,
                            canceled: true,
                            cancel_reason: status(&e).message().to_string(),
                            ..Default::default()
                        },
                    },
                    _ = tick.tick(), if notify => pb::WatchResponse {
                        header: me.svc.header(watcher.progress_revision()),
                        watch_id: id,
                        ..Default::default()
                    },
                };
                let done = resp.canceled;
                if !me.send(resp).await {
                    return;
                }
                prog.store(watcher.progress_revision(), Ordering::Release);
                if done {
                    return;
                }
            }
        });
        self.watchers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(id, (task, progress));
    }

    async fn cancel(&self, id: i64) {
        let w = self.watchers.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&id);
        if let Some((task, _)) = w {
            task.abort();
        }
        let current = self.svc.store.mvcc().revision();
        let _ = self
            .send(pb::WatchResponse {
                header: self.svc.header(current),
                watch_id: id,
                canceled: true,
                ..Default::default()
            })
            .await;
    }

    /// A progress notification for the whole stream: the revision every watcher on it has
    /// delivered up to, so a client never skips an event it has not seen yet.
    async fn progress(&self) {
        let min = {
            let w = self.watchers.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            w.values().map(|(_, p)| p.load(Ordering::Acquire)).min()
        };
        let rev = min.unwrap_or_else(|| self.svc.store.mvcc().revision());
        let _ = self
            .send(pb::WatchResponse {
                header: self.svc.header(rev),
                watch_id: -1,
                ..Default::default()
            })
            .await;
    }

    fn stop(&self) {
        for (_, (t, _)) in
            self.watchers.lock().unwrap_or_else(std::sync::PoisonError::into_inner).drain()
        {
            t.abort();
        }
    }
}

#[tonic::async_trait]
impl pb::watch_server::Watch for EtcdService {
    type WatchStream = WatchStream;

    async fn watch(
        &self,
        req: Request<Streaming<pb::WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let mut input = req.into_inner();
        let (tx, rx) = mpsc::channel(256);
        let session = Arc::new(WatchSession {
            svc: self.clone(),
            out: tx,
            watchers: Mutex::new(HashMap::new()),
            next_id: AtomicI64::new(1),
        });
        tokio::spawn(async move {
            while let Some(msg) = input.next().await {
                let Ok(msg) = msg else { break };
                match msg.request_union {
                    Some(pb::watch_request::RequestUnion::CreateRequest(c)) => {
                        session.create(c).await;
                    }
                    Some(pb::watch_request::RequestUnion::CancelRequest(c)) => {
                        session.cancel(c.watch_id).await;
                    }
                    Some(pb::watch_request::RequestUnion::ProgressRequest(_)) => {
                        session.progress().await;
                    }
                    None => {}
                }
            }
            session.stop();
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

#[tonic::async_trait]
impl pb::cluster_server::Cluster for EtcdService {
    async fn member_add(
        &self,
        _: Request<pb::MemberAddRequest>,
    ) -> Result<Response<pb::MemberAddResponse>, Status> {
        Err(Status::unimplemented(
            "skiff members have names that the etcd MemberAdd call cannot carry; use `skiff-master member add NAME PEER_URL`",
        ))
    }

    async fn member_remove(
        &self,
        req: Request<pb::MemberRemoveRequest>,
    ) -> Result<Response<pb::MemberRemoveResponse>, Status> {
        let id = req.into_inner().id;
        let AdminResponse::Members(ms) =
            self.store.admin(AdminRequest::Remove { id }).await.map_err(|e| status(&e))?;
        Ok(Response::new(pb::MemberRemoveResponse {
            header: self.header(self.store.mvcc().revision()),
            members: ms.iter().map(Self::member_to_pb).collect(),
        }))
    }

    async fn member_list(
        &self,
        _: Request<pb::MemberListRequest>,
    ) -> Result<Response<pb::MemberListResponse>, Status> {
        Ok(Response::new(pb::MemberListResponse {
            header: self.header(self.store.mvcc().revision()),
            members: self.store.members().iter().map(Self::member_to_pb).collect(),
        }))
    }
}

type SnapshotStream = Pin<Box<dyn Stream<Item = Result<pb::SnapshotResponse, Status>> + Send>>;

#[tonic::async_trait]
impl pb::maintenance_server::Maintenance for EtcdService {
    type SnapshotStream = SnapshotStream;

    async fn status(
        &self,
        _: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let s = self.store.status();
        let is_learner = self.store.members().iter().any(|m| m.id == s.id && m.is_learner);
        let db = i64::try_from(s.db_size).unwrap_or(i64::MAX);
        Ok(Response::new(pb::StatusResponse {
            header: self.header(s.revision),
            // The etcd API level Skiff implements; etcdctl prints it.
            version: "3.4.0".into(),
            db_size: db,
            leader: s.leader.unwrap_or(0),
            raft_index: s.raft_index,
            raft_term: s.term,
            raft_applied_index: s.applied_index,
            errors: if s.leader.is_none() {
                vec!["etcdserver: no leader".into()]
            } else {
                Vec::new()
            },
            db_size_in_use: db,
            is_learner,
        }))
    }

    async fn snapshot(
        &self,
        _: Request<pb::SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        let mvcc = self.store.mvcc().clone();
        let dir = self.store.config().data_dir.clone();
        let internal = |e: &dyn std::fmt::Display| Status::internal(e.to_string());
        // The backup goes through a file without a name (O_TMPFILE) on the data dir's disk, so
        // a large store is never held in memory, the dump does not hold up a runtime worker and
        // nothing is left behind, whatever happens.
        let (file, revision) = tokio::task::spawn_blocking(move || {
            use std::os::unix::fs::OpenOptionsExt;
            let mut file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .mode(0o600)
                .custom_flags(libc::O_TMPFILE)
                .open(&dir)
                .map_err(|source| StoreError::Io { path: dir.display().to_string(), source })?;
            let revision = crate::backup::write(&mvcc, &mut file)?;
            Ok::<_, StoreError>((file, revision))
        })
        .await
        .map_err(|e| internal(&e))?
        .map_err(|e| internal(&e))?;
        let header = self.header(revision);
        let total = file.metadata().map_err(|e| internal(&e))?.len();
        let (tx, rx) = mpsc::channel(2);
        tokio::task::spawn_blocking(move || {
            use std::io::Read;
            let mut file = file;
            let mut sent = 0u64;
            while sent < total {
                let mut blob = vec![0; SNAPSHOT_CHUNK];
                let chunk = match file.read(&mut blob) {
                    Ok(0) => Err(Status::internal("backup file ended early")),
                    Ok(n) => {
                        blob.truncate(n);
                        sent += n as u64;
                        Ok(pb::SnapshotResponse { header, remaining_bytes: total - sent, blob })
                    }
                    Err(e) => Err(internal(&e)),
                };
                let failed = chunk.is_err();
                if tx.blocking_send(chunk).is_err() || failed {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
