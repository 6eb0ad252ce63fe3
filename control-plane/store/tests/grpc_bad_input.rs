//! Malformed gRPC on the etcd KV service: an error status, no hang, no crash, no state change.

mod common;

use std::time::Duration;

use common::{Cluster, get, put, tuning};
use skiff_proto::etcdserverpb as pb;
use skiff_store::etcd::EtcdService;
use tonic::codegen::http::uri::PathAndQuery;

/// Looks like a `PutRequest` on the wire except that field 1 (`key`, length-delimited bytes)
/// is sent as a fixed64: a wire type the server's decoder must refuse.
#[derive(Clone, PartialEq, prost::Message)]
struct WrongWireType {
    #[prost(fixed64, tag = "1")]
    key: u64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_put_gets_an_error_status_and_changes_nothing() -> anyhow::Result<()> {
    let mut c = Cluster::start(1, tuning()).await?;
    c.leader(&[0]).await?;
    put(c.node(0), "/g/before", "1").await?;
    let before = c.node(0).status();

    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", l.local_addr()?);
    let svc = EtcdService::new(c.node(0).clone());
    let server = tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(svc.kv_server())
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l))
            .await;
    });
    let channel = tonic::transport::Endpoint::from_shared(url)?.connect().await?;

    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await?;
    let codec = tonic_prost::ProstCodec::<WrongWireType, pb::PutResponse>::default();
    let call = grpc.unary(
        tonic::Request::new(WrongWireType { key: 0x2f67_2f62_6164 }),
        PathAndQuery::from_static("/etcdserverpb.KV/Put"),
        codec,
    );
    let answer = tokio::time::timeout(Duration::from_secs(10), call).await?;
    let status = answer.expect_err("a malformed body must not be accepted");
    assert_ne!(status.code(), tonic::Code::Ok);
    assert_ne!(status.code(), tonic::Code::Unavailable, "the server answered: {status:?}");
    assert!(
        status.message().to_lowercase().contains("decode"),
        "the status says what was wrong: {status:?}"
    );

    // Nothing was written, and the member still serves reads and writes over the same service.
    assert_eq!(c.node(0).status().revision, before.revision);
    assert_eq!(c.node(0).status().raft_index, before.raft_index);
    let mut kv = pb::kv_client::KvClient::new(channel);
    let r = kv
        .range(pb::RangeRequest { key: b"/g/before".to_vec(), ..Default::default() })
        .await?
        .into_inner();
    assert_eq!(r.kvs.len(), 1);
    assert_eq!(r.header.map(|h| h.revision), Some(before.revision));
    let p = kv
        .put(pb::PutRequest {
            key: b"/g/after".to_vec(),
            value: b"2".to_vec(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(p.header.map(|h| h.revision), Some(before.revision + 1));
    assert_eq!(get(c.node(0), "/g/after", true).await?, Some(b"2".to_vec()));

    server.abort();
    c.shutdown().await;
    Ok(())
}
