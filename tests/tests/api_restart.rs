//! Restarting a master mid-watch: a kube-rs watcher on member 0 keeps its resourceVersion while
//! member 0 is killed (SIGKILL) and restarted, objects are created through member 1 meanwhile,
//! and after the restart the watcher resumes from its version (no re-list) and sees every
//! event.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Result, ensure};
use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::PostParams;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use serde_json::json;
use skiff_e2e::api::Cluster;
use skiff_e2e::{unique_tag, wait};

async fn client(path: &std::path::Path) -> Result<Client> {
    let config = kube::Config::from_custom_kubeconfig(
        Kubeconfig::read_from(path)?,
        &KubeConfigOptions::default(),
    )
    .await?;
    Ok(Client::try_from(config)?)
}

#[derive(Default)]
struct Seen {
    names: BTreeSet<String>,
    /// `Init` events: 1 for the first list; more would mean the watcher had to re-list.
    lists: usize,
}

fn cm(name: &str) -> Result<ConfigMap> {
    Ok(serde_json::from_value(json!({"metadata": {"name": name, "labels": {"suite": "restart"}}}))?)
}

#[test]
fn watch_resumes_across_master_restart() -> Result<()> {
    let tag = unique_tag();
    let mut cluster = Cluster::start(&tag, skiff_apiserver::cache::HISTORY)?;
    let (kc0, kc1) = (cluster.kubeconfig(0)?, cluster.kubeconfig(1)?);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let seen = Arc::new(Mutex::new(Seen::default()));
    let writer: Api<ConfigMap> = rt.block_on(async {
        Ok::<_, anyhow::Error>(Api::namespaced(client(&kc1).await?, "default"))
    })?;

    let watched: Api<ConfigMap> = rt.block_on(async {
        Ok::<_, anyhow::Error>(Api::namespaced(client(&kc0).await?, "default"))
    })?;
    let sink = Arc::clone(&seen);
    let _task = rt.spawn(async move {
        let stream =
            watcher(watched, watcher::Config::default().labels("suite=restart")).default_backoff();
        let mut stream = std::pin::pin!(stream);
        while let Some(ev) = stream.next().await {
            let mut s = sink.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            match ev {
                Ok(watcher::Event::Init) => s.lists += 1,
                Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => {
                    s.names.insert(o.metadata.name.unwrap_or_default());
                }
                _ => {}
            }
        }
    });
    let count = |s: &Arc<Mutex<Seen>>| s.lock().map_or(0, |s| s.names.len());
    for i in 0..10 {
        rt.block_on(writer.create(&PostParams::default(), &cm(&format!("before-{i}"))?))?;
    }
    wait::until("watcher sees the first ten", Duration::from_secs(30), || Ok(count(&seen) == 10))?;

    // Kill member 0 and write through member 1 while it is down; then bring it back.
    if let Cluster::Masters(m) = &mut cluster {
        m.kill9(0);
    }
    for i in 0..10 {
        rt.block_on(writer.create(&PostParams::default(), &cm(&format!("during-{i}"))?))?;
    }
    cluster.restart(0)?;
    for i in 0..5 {
        rt.block_on(writer.create(&PostParams::default(), &cm(&format!("after-{i}"))?))?;
    }
    wait::until("watcher sees all 25 after the restart", Duration::from_mins(1), || {
        Ok(count(&seen) == 25)
    })?;
    let lists = seen.lock().map_or(0, |s| s.lists);
    ensure!(lists == 1, "the watcher re-listed {lists} times instead of resuming");
    rt.shutdown_timeout(Duration::from_secs(5));
    Ok(())
}
