//! `--auto-compaction-retention`: the leader compacts old history on its own, every member
//! answers reads below the compacted revision with etcd's "compacted" error, and current data
//! stays readable.

use std::time::Duration;

use skiff_e2e::masters::Masters;
use skiff_e2e::{unique_tag, wait};
use skiff_proto::etcdserverpb::kv_client::KvClient;
use skiff_proto::etcdserverpb::{PutRequest, RangeRequest};

async fn put(url: &str, key: &str, value: &str) -> anyhow::Result<i64> {
    let mut c = KvClient::connect(url.to_string()).await?;
    let r = c
        .put(PutRequest {
            key: key.as_bytes().to_vec(),
            value: value.as_bytes().to_vec(),
            ..Default::default()
        })
        .await?;
    Ok(r.into_inner().header.map_or(0, |h| h.revision))
}

/// `Ok(value)` of `key` at `revision` (0: latest) on the member at `url`, served locally.
async fn get_at(url: &str, key: &str, revision: i64) -> Result<Vec<u8>, tonic::Status> {
    let mut c = KvClient::connect(url.to_string())
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let r = c
        .range(RangeRequest {
            key: key.as_bytes().to_vec(),
            revision,
            serializable: true,
            ..Default::default()
        })
        .await?
        .into_inner();
    Ok(r.kvs.into_iter().next().map(|kv| kv.value).unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_history_is_compacted_on_every_member_and_current_data_stays() {
    let tag = unique_tag();
    let flags = ["--auto-compaction-retention", "1s"];
    let masters = tokio::task::block_in_place(|| Masters::start_with_store_flags(&tag, 3, &flags))
        .expect("cluster starts");
    let urls: Vec<String> =
        masters.specs.iter().map(skiff_e2e::masters::MemberSpec::client_url).collect();
    let first = put(&urls[0], "/c/a", "1").await.expect("put");
    put(&urls[1], "/c/a", "2").await.expect("put");
    let rt = tokio::runtime::Handle::current();
    // Writes keep coming, as they do in a cluster; the compactor passes `first` within a few
    // periods.
    let mut n = 0;
    tokio::task::block_in_place(|| {
        wait::until("the first write's revision is compacted", Duration::from_secs(30), || {
            n += 1;
            rt.block_on(put(&urls[n % 3], "/c/tick", &n.to_string()))?;
            Ok(urls.iter().all(|u| {
                rt.block_on(get_at(u, "/c/a", first))
                    .is_err_and(|s| s.message().contains("required revision has been compacted"))
            }))
        })
    })
    .expect("auto-compaction");
    for u in &urls {
        assert_eq!(get_at(u, "/c/a", 0).await.expect("latest value"), b"2");
    }
}
