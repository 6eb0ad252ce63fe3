//! Wiring of a control-plane member and the `skiff-master` subcommands' logic.
//!
//! `run` starts a store replica: the raft peer service on `--listen-peer`, the etcd v3 API on
//! `--listen-client` (plain HTTP/2), and `/metrics` + `/health` on `--listen-metrics`. The
//! API server, scheduler and controllers will be wired here too; [`RunConfig`] is the one flag
//! struct they extend.

pub mod config;
pub mod ctl;
mod http;

use std::future::Future;
use std::sync::Arc;

use skiff_store::etcd::EtcdService;
use skiff_store::{Store, StoreConfig};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tonic::transport::server::TcpIncoming;

pub use config::{ConfigError, RunConfig};

/// Why a member could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("listen on {addr}: {source}")]
    Listen { addr: std::net::SocketAddr, source: std::io::Error },
    #[error("store: {0}")]
    Store(#[from] skiff_store::StoreError),
    #[error("{what} server: {source}")]
    Serve { what: &'static str, source: tonic::transport::Error },
    #[error("--api-listen needs --pki-dir (create one with `skiff-master init`)")]
    MissingPki,
    #[error("api server: {0}")]
    Api(#[from] skiff_apiserver::ServeError),
}

/// The API server of this member, connected to `endpoints` (the local store by default).
async fn start_api(
    config: &RunConfig,
    listen: std::net::SocketAddr,
) -> Result<skiff_apiserver::Running, RunError> {
    let pki = config.pki_dir.as_ref().ok_or(RunError::MissingPki)?;
    let files = skiff_apiserver::pki::PkiFiles::in_dir(pki);
    let store_endpoints = if config.api_store_endpoints.is_empty() {
        vec![config.client_url()]
    } else {
        config.api_store_endpoints.clone()
    };
    let api = skiff_apiserver::Config {
        listen,
        store_endpoints,
        tls_cert: files.serving_cert,
        tls_key: files.serving_key,
        client_ca: files.ca_cert,
        token_file: config.token_file.clone(),
        audit_log: config.audit_log.clone(),
        service_cidr: config.service_cidr.clone(),
        node_port_range: config.node_port_range.clone(),
        advertise: listen.to_string(),
        limits: skiff_apiserver::http::Limits {
            watch_history: config.api_watch_history,
            max_inflight: config.api_max_inflight,
            ..skiff_apiserver::http::Limits::default()
        },
    };
    let running = skiff_apiserver::start(api, tokio_util::sync::CancellationToken::new()).await?;
    tracing::info!(addr = %running.addr, "api server listening");
    Ok(running)
}

/// Accepted connections with `TCP_NODELAY` (small RPCs must not wait for Nagle).
fn incoming(l: TcpListener) -> TcpIncoming {
    TcpIncoming::from(l).with_nodelay(Some(true))
}

async fn bind(addr: std::net::SocketAddr) -> Result<TcpListener, RunError> {
    TcpListener::bind(addr).await.map_err(|source| RunError::Listen { addr, source })
}

/// Runs a member until `shutdown` resolves, then stops its servers and the store replica.
pub async fn run(config: RunConfig, shutdown: impl Future<Output = ()>) -> Result<(), RunError> {
    let store_config: StoreConfig = config.store_config()?;
    // Listen before starting raft, so peers (and the first election) can reach us at once.
    let peer_listener = bind(config.listen_peer).await?;
    let client_listener = bind(config.listen_client).await?;
    let metrics_listener = match config.listen_metrics {
        Some(a) => Some(bind(a).await?),
        None => None,
    };
    let store = Store::open(store_config).await?;
    tracing::info!(name = %config.name, id = format_args!("{:x}", store.id()), peer = %config.listen_peer,
        client = %config.listen_client, "store replica started");

    let stop = Arc::new(Notify::new());
    let stopped = |n: Arc<Notify>| async move { n.notified().await };
    let peer_task = tokio::spawn({
        let (store, stop) = (store.clone(), stop.clone());
        async move { store.serve_peers(peer_listener, stopped(stop)).await }
    });
    let etcd = EtcdService::new(store.clone());
    let client_server = tonic::transport::Server::builder()
        .add_service(etcd.kv_server())
        .add_service(etcd.watch_server())
        .add_service(etcd.cluster_server())
        .add_service(etcd.maintenance_server())
        .serve_with_incoming_shutdown(incoming(client_listener), stopped(stop.clone()));
    let client_task = tokio::spawn(client_server);
    let http_task =
        metrics_listener.map(|l| tokio::spawn(http::serve(l, store.clone(), stop.clone())));

    let api = match config.api_listen {
        Some(listen) => Some(start_api(&config, listen).await?),
        None => None,
    };

    shutdown.await;
    tracing::info!("shutting down");
    if let Some(api) = api {
        api.shutdown().await;
    }
    stop.notify_waiters();
    store.shutdown().await;
    let grace = std::time::Duration::from_secs(5);
    if tokio::time::timeout(grace, peer_task).await.is_err() {
        tracing::warn!(what = "peer", "server did not stop within the grace period");
    }
    match tokio::time::timeout(grace, client_task).await {
        Ok(Ok(Err(source))) => return Err(RunError::Serve { what: "client", source }),
        Ok(_) => {}
        Err(_) => tracing::warn!(what = "client", "server did not stop within the grace period"),
    }
    if let Some(t) = http_task {
        t.abort();
    }
    Ok(())
}
