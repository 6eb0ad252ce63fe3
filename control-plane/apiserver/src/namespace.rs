//! Namespace lifecycle and bootstrap objects: a loop that empties Terminating namespaces and
//! then removes them, and the objects every cluster starts with (`default`, `kube-system`,
//! `kube-public`, `kube-node-lease`, the `kubernetes` Service).

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use skiff_api::{RESOURCES, meta, resource};

use crate::http::Server;
use crate::registry::{DeleteOpts, WriteCtx};
use crate::status::ApiError;

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0))
}

/// Creates the bootstrap namespaces and the `kubernetes` Service (idempotent; every master
/// runs it).
pub async fn bootstrap(server: &Server) -> Result<(), ApiError> {
    let reg = &server.registry;
    let ns_res = resource::find("", "v1", "namespaces")
        .ok_or_else(|| ApiError::internal("no namespaces"))?;
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        reg.ensure(ns_res, "", json!({"metadata": {"name": ns}}), now()).await?;
    }
    let svc =
        resource::find("", "v1", "services").ok_or_else(|| ApiError::internal("no services"))?;
    let ip = reg.ranges.first_ip().to_string();
    reg.ensure(
        svc,
        "default",
        json!({"metadata": {"name": "kubernetes", "labels": {"component": "apiserver", "provider": "kubernetes"}},
               "spec": {"clusterIP": ip, "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": 6443}], "sessionAffinity": "None", "type": "ClusterIP"}}),
        now(),
    )
    .await?;
    // The first service IP is reserved for this Service; make sure the key exists even when
    // the Service pre-dated allocation keys.
    Ok(())
}

/// Deletes the content of Terminating namespaces, then the namespaces. Runs until shutdown;
/// idempotent across masters (every write is guarded by resourceVersion).
pub async fn finalizer_loop(server: Arc<Server>) {
    let Some(ns_res) = resource::find("", "v1", "namespaces") else { return };
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            () = server.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        for ns in server.registry.cache.all(ns_res) {
            if ns.pointer("/metadata/deletionTimestamp").is_none_or(Value::is_null) {
                continue;
            }
            let name = meta::name(&ns).to_owned();
            if let Err(e) = finalize(&server, &name).await
                && e.code != 404
                && e.code != 409
            {
                tracing::warn!(namespace = %name, error = %e.message, "namespace finalization failed");
            }
        }
    }
}

async fn finalize(server: &Server, ns: &str) -> Result<(), ApiError> {
    let reg = &server.registry;
    let ctx = WriteCtx {
        user: "system:serviceaccount:kube-system:namespace-controller".to_owned(),
        manager: "namespace-controller".to_owned(),
        now: now(),
        ..Default::default()
    };
    let mut remaining = 0usize;
    for res in RESOURCES.iter().filter(|r| r.namespaced) {
        let (items, _) = reg.cache.snapshot(res, &res.list_prefix(Some(ns)), None);
        for (_, obj) in items {
            remaining += 1;
            if obj.pointer("/metadata/deletionTimestamp").is_some_and(|d| !d.is_null()) {
                continue;
            }
            match reg.delete(res, ns, meta::name(&obj), &DeleteOpts::default(), &ctx).await {
                Ok(_) => {}
                Err(e) if e.code == 404 || e.code == 409 => {}
                Err(e) => return Err(e),
            }
        }
    }
    if remaining > 0 {
        return Ok(());
    }
    let ns_res = resource::find("", "v1", "namespaces")
        .ok_or_else(|| ApiError::internal("no namespaces"))?;
    // Empty: drop the `kubernetes` finalizer; the write that empties all finalizers deletes it.
    reg.guaranteed_update(
        ns_res,
        "",
        ns,
        &ctx,
        None,
        |old| {
            let mut n = old.clone();
            n["spec"]["finalizers"] = json!([]);
            Ok(n)
        },
        true,
    )
    .await?;
    Ok(())
}
