//! kube-rs 5 against the API server of one of three `skiff-master` processes: typed `Api` CRUD with k8s-openapi's strict types,
//! optimistic concurrency, every patch type, `watcher` (list+watch and streaming lists) and a
//! small `Controller`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::controller::Action;
use kube::runtime::{Controller, WatchStreamExt, watcher};
use kube::{Api, Client};
use serde_json::json;
use skiff_e2e::api::Cluster;
use skiff_e2e::unique_tag;

async fn client(kubeconfig: &std::path::Path) -> Result<Client> {
    let kc = Kubeconfig::read_from(kubeconfig)?;
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(config)?)
}

fn cm(name: &str, value: &str) -> ConfigMap {
    serde_json::from_value(
        json!({"metadata": {"name": name, "labels": {"suite": "kube-rs"}}, "data": {"k": value}}),
    )
    .unwrap_or_default()
}

async fn until<F, Fut>(what: &str, mut f: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if f().await.unwrap_or(false) {
            return Ok(());
        }
        ensure!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn kube_rs_api_watcher_controller() -> Result<()> {
    let tag = unique_tag();
    let cluster = Cluster::start(&tag, skiff_apiserver::cache::HISTORY)?;
    let kubeconfig = cluster.kubeconfig(2)?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(suite(&kubeconfig))
}

#[expect(clippy::too_many_lines, reason = "one client scenario, step by step")]
async fn suite(kubeconfig: &std::path::Path) -> Result<()> {
    let client = client(kubeconfig).await?;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");

    // CRUD with strict types; resourceVersion preconditions.
    let created = cms.create(&PostParams::default(), &cm("a", "1")).await?;
    ensure!(created.metadata.uid.is_some() && created.metadata.resource_version.is_some());
    let err = cms
        .create(&PostParams::default(), &cm("a", "1"))
        .await
        .err()
        .context("duplicate create")?;
    ensure!(
        matches!(&err, kube::Error::Api(s) if s.code == 409 && s.reason == "AlreadyExists"),
        "{err}"
    );
    let mut stale = created.clone();
    let mut fresh = created.clone();
    fresh.data = Some([("k".to_owned(), "2".to_owned())].into());
    cms.replace("a", &PostParams::default(), &fresh).await?;
    stale.data = Some([("k".to_owned(), "3".to_owned())].into());
    let err =
        cms.replace("a", &PostParams::default(), &stale).await.err().context("stale replace")?;
    ensure!(
        matches!(&err, kube::Error::Api(s) if s.code == 409 && s.reason == "Conflict"),
        "{err}"
    );

    // Patch types.
    cms.patch("a", &PatchParams::default(), &Patch::Merge(json!({"data": {"m": "merge"}}))).await?;
    cms.patch(
        "a",
        &PatchParams::default(),
        &Patch::Strategic(json!({"metadata": {"labels": {"s": "smp"}}})),
    )
    .await?;
    let applied = cms
        .patch("b", &PatchParams::apply("kube-rs-test"), &Patch::Apply(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "b"}, "data": {"x": "y"}})))
        .await?;
    ensure!(
        applied
            .metadata
            .managed_fields
            .as_ref()
            .is_some_and(|m| m.iter().any(|f| f.manager.as_deref() == Some("kube-rs-test"))),
        "{applied:?}"
    );
    let a = cms.get("a").await?;
    let data = a.data.unwrap_or_default();
    ensure!(data.get("m").map(String::as_str) == Some("merge"), "{data:?}");
    ensure!(a.metadata.labels.unwrap_or_default().get("s").map(String::as_str) == Some("smp"));

    // Lists with selectors and paging.
    for i in 0..5 {
        cms.create(&PostParams::default(), &cm(&format!("page-{i}"), "p")).await?;
    }
    let page = cms.list(&ListParams::default().labels("suite=kube-rs").limit(2)).await?;
    ensure!(page.items.len() == 2 && page.metadata.continue_.is_some(), "{:?}", page.metadata);
    let all = cms.list(&ListParams::default().labels("suite=kube-rs")).await?;
    ensure!(all.items.len() == 6, "{}", all.items.len());

    // Typed Deployment: server defaults deserialize into k8s-openapi's types.
    let deploys: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let d: Deployment = serde_json::from_value(
        json!({"metadata":{"name":"web"},"spec":{"selector":{"matchLabels":{"app":"web"}},"template":{"metadata":{"labels":{"app":"web"}},"spec":{"containers":[{"name":"nginx","image":"nginx:1.25","resources":{"limits":{"cpu":1}}}]}}}}),
    )?;
    let d = deploys.create(&PostParams::default(), &d).await?;
    let spec = d.spec.context("spec")?;
    ensure!(spec.replicas == Some(1) && spec.revision_history_limit == Some(10), "{spec:?}");
    let web_scale = deploys.get_scale("web").await?;
    ensure!(web_scale.spec.and_then(|s| s.replicas) == Some(1));
    deploys
        .patch_status(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"replicas": 1, "observedGeneration": 1}})),
        )
        .await?;
    ensure!(deploys.get_status("web").await?.status.and_then(|s| s.observed_generation) == Some(1));

    // watcher: list+watch, then live events.
    let watched = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let seen = Arc::clone(&watched);
    let stream =
        watcher(cms.clone(), watcher::Config::default().labels("suite=kube-rs")).applied_objects();
    let task = tokio::spawn(async move {
        let mut s = std::pin::pin!(stream);
        while let Ok(Some(o)) = s.try_next().await {
            if let Some(n) = o.metadata.name {
                seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(n);
            }
        }
    });
    cms.create(&PostParams::default(), &cm("live", "1")).await?;
    until("watcher sees existing and new objects", || {
        let w = Arc::clone(&watched);
        async move {
            let w = w.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            Ok(w.iter().any(|n| n == "a") && w.iter().any(|n| n == "live"))
        }
    })
    .await?;
    task.abort();

    // Streaming lists: sendInitialEvents, then the initial-events-end bookmark.
    let mut stream =
        std::pin::pin!(watcher(cms.clone(), watcher::Config::default().streaming_lists()));
    let mut init_applies = 0;
    loop {
        match tokio::time::timeout(Duration::from_secs(30), stream.try_next()).await?? {
            Some(watcher::Event::InitApply(_)) => init_applies += 1,
            Some(watcher::Event::InitDone) => break,
            Some(_) => {}
            None => anyhow::bail!("streaming list ended"),
        }
    }
    ensure!(init_applies >= 8, "{init_applies}");

    // A small Controller: annotates every labelled ConfigMap it reconciles.
    let ctrl_api = cms.clone();
    let controller =
        Controller::new(cms.clone(), watcher::Config::default().labels("suite=kube-rs"))
            .run(
                |obj: Arc<ConfigMap>, api: Arc<Api<ConfigMap>>| async move {
                    let name = obj.metadata.name.clone().unwrap_or_default();
                    if obj.metadata.annotations.as_ref().and_then(|a| a.get("reconciled")).is_none()
                    {
                        api.patch(
                            &name,
                            &PatchParams::default(),
                            &Patch::Merge(
                                json!({"metadata": {"annotations": {"reconciled": "true"}}}),
                            ),
                        )
                        .await?;
                    }
                    Ok::<_, kube::Error>(Action::await_change())
                },
                |_obj, _err, _ctx| Action::requeue(Duration::from_millis(200)),
                Arc::new(ctrl_api),
            )
            .for_each(|_| async {});
    let handle = tokio::spawn(controller);
    until("controller reconciles every object", || {
        let cms = cms.clone();
        async move {
            let l = cms.list(&ListParams::default().labels("suite=kube-rs")).await?;
            Ok(l.items.iter().all(|c| {
                c.metadata.annotations.as_ref().is_some_and(|a| a.contains_key("reconciled"))
            }))
        }
    })
    .await?;
    handle.abort();

    // Delete: Status for configmaps, the object (with deletion state) for pods.
    let del = cms.delete("a", &DeleteParams::default()).await?;
    ensure!(del.is_right(), "configmap delete returns a Status");
    let pods: Api<Pod> = Api::namespaced(client, "default");
    let pod: Pod = serde_json::from_value(
        json!({"metadata":{"name":"p"},"spec":{"containers":[{"name":"c","image":"busybox"}]}}),
    )?;
    pods.create(&PostParams::default(), &pod).await?;
    let del = pods.delete("p", &DeleteParams::default()).await?;
    ensure!(del.is_left(), "pod delete returns the pod");
    ensure!(pods.get_opt("p").await?.is_none());
    Ok(())
}
