//! A member whose disk fills up: writes fail (they never hang and are never acknowledged
//! without being stored), and once there is space again the restarted member serves every
//! acknowledged write. The data dir is a small tmpfs mounted for the test (privileged).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use skiff_e2e::masters::Masters;
use skiff_e2e::{privileged, unique_tag};
use skiff_proto::etcdserverpb::kv_client::KvClient;
use skiff_proto::etcdserverpb::{PutRequest, RangeRequest};

const VALUE_BYTES: usize = 100_000;

/// A tmpfs mounted on a directory for the test's lifetime.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Self {
        std::fs::create_dir_all(dir).expect("create the mount point");
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .expect("run mount");
        assert!(st.success(), "mounting a tmpfs on {}", dir.display());
        Self { dir: dir.to_path_buf() }
    }

    fn resize(&self, size: &str) {
        let st = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.dir)
            .status()
            .expect("run mount");
        assert!(st.success(), "resizing the tmpfs on {}", self.dir.display());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        let _ = std::fs::remove_dir(&self.dir);
    }
}

async fn put(url: &str, key: &str) -> anyhow::Result<()> {
    let mut c = KvClient::connect(url.to_string()).await?;
    c.put(PutRequest {
        key: key.as_bytes().to_vec(),
        value: vec![b'x'; VALUE_BYTES],
        ..Default::default()
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_whose_disk_fills_refuses_writes_and_keeps_every_acked_one() {
    let test = "a_member_whose_disk_fills_refuses_writes_and_keeps_every_acked_one";
    if !privileged::privileged(test) {
        return;
    }
    let tag = unique_tag();
    // Where `Masters` keeps its members' data dirs and logs.
    let fs = Tmpfs::mount(&std::env::temp_dir().join(format!("skiff-test-{tag}-masters")), "24m");
    let mut masters = tokio::task::block_in_place(|| Masters::start(&tag, 1)).expect("start");
    let url = masters.specs[0].client_url();

    let mut acked = Vec::new();
    let mut refused = None;
    for i in 0..1000 {
        let key = format!("/full/{i:04}");
        match tokio::time::timeout(Duration::from_secs(10), put(&url, &key)).await {
            Ok(Ok(())) => acked.push(key),
            Ok(Err(e)) => {
                refused = Some(e.to_string());
                break;
            }
            Err(elapsed) => panic!("put {i} hung on a full disk: {elapsed}"),
        }
    }
    let refused = refused.expect("24 MiB never filled up");
    assert!(acked.len() > 20, "only {} writes before {refused}", acked.len());
    eprintln!("{} writes acknowledged, then: {refused}", acked.len());
    // Whatever the member did then (RocksDB's build here aborts it), it gets room and a restart.
    masters.kill9(0);
    fs.resize("128m");
    masters.restart(0).expect("restart");
    tokio::task::block_in_place(|| masters.wait_ready()).expect("member ready with space again");

    // ~10 MB of values in one answer.
    let mut c =
        KvClient::connect(url.clone()).await.expect("connect").max_decoding_message_size(64 << 20);
    let r = c
        .range(RangeRequest {
            key: b"/full/".to_vec(),
            range_end: b"/full0".to_vec(),
            ..Default::default()
        })
        .await
        .expect("range")
        .into_inner();
    let have: std::collections::BTreeMap<String, usize> = r
        .kvs
        .into_iter()
        .map(|kv| (String::from_utf8_lossy(&kv.key).into_owned(), kv.value.len()))
        .collect();
    for k in &acked {
        assert_eq!(have.get(k), Some(&VALUE_BYTES), "acked {k} lost after the disk filled");
    }
    put(&url, "/full/after").await.expect("writes work again");
}
