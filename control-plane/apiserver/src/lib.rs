//! The Kubernetes-compatible API server: HTTPS (HTTP/1.1 and HTTP/2 by ALPN) with x509 and
//! token authentication, a generic registry driven by `skiff_api`'s resource table, a watch
//! cache fed by the store's watch, discovery, OpenAPI, Tables, audit and metrics.
//!
//! The store is reached only through its etcd v3 gRPC API ([`store::Store`]), as
//! kube-apiserver uses etcd; [`start`] wires everything for one member.
//!
//! - `codec`: request-body decoding (JSON, YAML, Kubernetes protobuf) and `Accept` negotiation.
//! - `patch_bridge`: the PATCH engines behind one call.

pub mod alloc;
pub mod audit;
pub mod auth;
pub mod cache;
pub mod codec;
pub mod discovery;
pub mod http;
pub mod metrics;
pub mod namespace;
pub mod openapi;
pub mod patch;
pub mod patch_bridge;
pub mod pki;
pub mod registry;
pub mod status;
pub mod store;
pub mod tls;
pub mod watch;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Everything one API server needs.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    /// etcd v3 endpoints (a Skiff store or etcd).
    pub store_endpoints: Vec<String>,
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    pub client_ca: PathBuf,
    pub token_file: Option<PathBuf>,
    pub audit_log: Option<PathBuf>,
    pub service_cidr: String,
    pub node_port_range: String,
    /// The address clients reach this server at (discovery's `serverAddressByClientCIDRs`).
    pub advertise: String,
    pub limits: http::Limits,
}

/// Starting the server failed.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error(transparent)]
    Tokens(#[from] auth::TokenFileError),
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error(transparent)]
    Ranges(#[from] alloc::RangeError),
    #[error("listening on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error("opening audit log {path}: {source}")]
    Audit { path: String, source: std::io::Error },
}

/// A running API server.
pub struct Running {
    pub addr: SocketAddr,
    pub server: Arc<http::Server>,
    tasks: TaskTracker,
}

impl Running {
    /// Stops accepting, ends watches, and waits (bounded) for requests in flight.
    pub async fn shutdown(self) {
        self.server.shutdown.cancel();
        self.tasks.close();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.tasks.wait()).await;
    }
}

/// Starts an API server: connects to the store, starts the watch cache, bootstraps default
/// objects, and serves HTTPS on `config.listen`.
#[expect(clippy::too_many_lines, reason = "the wiring of one member reads best top to bottom")]
pub async fn start(config: Config, shutdown: CancellationToken) -> Result<Running, ServeError> {
    let tls = tls::server_config(&config.tls_cert, &config.tls_key, &config.client_ca)?;
    let tokens = match &config.token_file {
        Some(p) => auth::Tokens::load(p)?,
        None => auth::Tokens::default(),
    };
    let audit = match &config.audit_log {
        Some(p) => Some(
            audit::AuditLog::open(p)
                .map_err(|source| ServeError::Audit { path: p.display().to_string(), source })?,
        ),
        None => None,
    };
    let ranges = alloc::Ranges::parse(&config.service_cidr, &config.node_port_range)?;
    let store = store::Store::connect(&config.store_endpoints)?;
    let cache = cache::Cache::new(config.limits.watch_history);
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServeError::Listen { addr: config.listen, source })?;
    let addr = listener
        .local_addr()
        .map_err(|source| ServeError::Listen { addr: config.listen, source })?;
    let server = Arc::new(http::Server {
        registry: registry::Registry { store: store.clone(), cache: Arc::clone(&cache), ranges },
        tokens,
        audit,
        metrics: metrics::Metrics::new(),
        inflight: tokio::sync::Semaphore::new(config.limits.max_inflight),
        watches: std::sync::Mutex::new(std::collections::HashMap::new()),
        limits: config.limits.clone(),
        server_address: config.advertise.clone(),
        shutdown: shutdown.clone(),
        ready: AtomicBool::new(false),
    });
    let tasks = TaskTracker::new();
    tasks.spawn(Arc::clone(&cache).run(store, shutdown.clone()));
    {
        let server = Arc::clone(&server);
        tasks.spawn(async move {
            // Ready once the cache has caught up with the store and the defaults exist.
            loop {
                if server.shutdown.is_cancelled() {
                    return;
                }
                let synced = match server.registry.store.revision().await {
                    Ok(rev) => server.registry.cache.wait_for(rev, Duration::from_secs(2)).await,
                    Err(_) => false,
                };
                if synced {
                    match namespace::bootstrap(&server).await {
                        Ok(()) => break,
                        Err(e) => tracing::warn!(error = %e.message, "bootstrap objects: retrying"),
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            server.ready.store(true, Ordering::Relaxed);
            tracing::info!("apiserver ready");
            namespace::finalizer_loop(server).await;
        });
    }
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    {
        let server = Arc::clone(&server);
        let tracker = tasks.clone();
        tasks.spawn(async move {
            loop {
                let (tcp, peer) = tokio::select! {
                    () = server.shutdown.cancelled() => return,
                    r = listener.accept() => match r {
                        Ok(x) => x,
                        Err(e) => {
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                };
                let _ = tcp.set_nodelay(true);
                let acceptor = acceptor.clone();
                let server = Arc::clone(&server);
                tracker.spawn(async move {
                    let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                        Ok(Ok(t)) => t,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "tls handshake failed");
                            return;
                        }
                        Err(_) => return,
                    };
                    let cert = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| Arc::new(c.to_vec()));
                    let shutdown = server.shutdown.clone();
                    let svc = hyper::service::service_fn(move |req| {
                        let server = Arc::clone(&server);
                        let cert = cert.clone();
                        async move { Ok::<_, std::convert::Infallible>(server.handle(req, cert).await) }
                    });
                    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    let conn = builder.serve_connection(TokioIo::new(tls), svc);
                    tokio::pin!(conn);
                    tokio::select! {
                        r = conn.as_mut() => if let Err(e) = r { tracing::debug!(%peer, error = %e, "connection ended"); },
                        () = shutdown.cancelled() => {
                            conn.as_mut().graceful_shutdown();
                            let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
                        }
                    }
                });
            }
        });
    }
    Ok(Running { addr, server, tasks })
}
