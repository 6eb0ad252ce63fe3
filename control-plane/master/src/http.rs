//! `/metrics` (Prometheus text) and `/health` (fails without a leader or when a linearizable
//! read cannot complete) over HTTP/1.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use skiff_store::Store;
use tokio::net::TcpListener;
use tokio::sync::Notify;

async fn handle(store: Store, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let (code, body) = match req.uri().path() {
        "/metrics" => {
            let m = store.metrics();
            m.db_size_bytes.set(
                i64::try_from(skiff_store::db::disk_size(store.mvcc().db())).unwrap_or(i64::MAX),
            );
            m.revision.set(store.mvcc().revision());
            (StatusCode::OK, m.encode())
        }
        "/health" => {
            if store.status().leader.is_none() {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "{\"health\":\"false\",\"reason\":\"no leader\"}\n".to_string(),
                )
            } else {
                match tokio::time::timeout(Duration::from_secs(2), store.read_barrier()).await {
                    Ok(Ok(())) => (StatusCode::OK, "{\"health\":\"true\"}\n".to_string()),
                    Ok(Err(e)) => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("{{\"health\":\"false\",\"reason\":\"{e}\"}}\n"),
                    ),
                    Err(_) => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "{\"health\":\"false\",\"reason\":\"linearizable read timed out\"}\n"
                            .to_string(),
                    ),
                }
            }
        }
        _ => (StatusCode::NOT_FOUND, "not found\n".to_string()),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = code;
    Ok(resp)
}

pub(crate) async fn serve(listener: TcpListener, store: Store, stop: Arc<Notify>) {
    loop {
        let conn = tokio::select! {
            c = listener.accept() => c,
            () = stop.notified() => return,
        };
        let Ok((stream, _)) = conn else { continue };
        let store = store.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| handle(store.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
