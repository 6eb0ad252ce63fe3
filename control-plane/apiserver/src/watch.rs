//! Watch streams: chunked, newline-delimited JSON events from the watch cache, with selector
//! transitions as ADDED/DELETED, bookmarks, `sendInitialEvents`, `timeoutSeconds`, and expired
//! resource versions reported in-stream as a 410 ERROR event (§6.2 of the reference).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, header};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use rand::Rng;
use serde_json::{Value, json};
use skiff_api::Resource;
use tokio::sync::{broadcast, mpsc};

use crate::cache::{CachedObject, Event, EventType};
use crate::codec::ResponseFormat;
use crate::http::{Body, Query, Server, render_object, to_table};
use crate::registry::ListOpts;
use crate::status::ApiError;

/// How often an idle watch with `allowWatchBookmarks` gets a BOOKMARK.
pub const BOOKMARK_EVERY: Duration = Duration::from_secs(20);

/// One open watch of a user; released on drop.
pub struct WatchSlot {
    server: Arc<Server>,
    user: String,
}

impl WatchSlot {
    pub fn new(server: Arc<Server>, user: String) -> Self {
        server.metrics.watches.inc();
        Self { server, user }
    }
}

impl Drop for WatchSlot {
    fn drop(&mut self) {
        self.server.metrics.watches.dec();
        let mut w = self.server.watches.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = w.get_mut(&self.user) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                w.remove(&self.user);
            }
        }
    }
}

struct Stream {
    res: &'static Resource,
    prefix: String,
    opts: ListOpts,
    fmt: ResponseFormat,
    include: String,
    tx: mpsc::Sender<Result<Frame<Bytes>, std::io::Error>>,
    last_rev: i64,
    first: bool,
}

impl Stream {
    fn matches(&self, key: &str, obj: &CachedObject) -> bool {
        // Without selectors the object is not looked into (nor decoded).
        key.starts_with(&self.prefix)
            && (self.opts.labels.0.is_empty() || self.opts.labels.matches_object(obj))
            && (self.opts.fields.0.is_empty() || self.opts.fields.matches(obj))
    }

    fn render(&mut self, obj: &Value) -> Value {
        match self.fmt {
            ResponseFormat::Table => {
                let rv = obj.pointer("/metadata/resourceVersion").cloned().unwrap_or(Value::Null);
                let t = to_table(
                    self.res,
                    &[obj],
                    &json!({"resourceVersion": rv}),
                    &self.include,
                    self.first,
                );
                self.first = false;
                t
            }
            other => render_object(self.res, obj, other, &self.include),
        }
    }

    async fn send(&mut self, ty: &str, obj: Value) -> bool {
        let mut line = serde_json::to_vec(&json!({"type": ty, "object": obj})).unwrap_or_default();
        line.push(b'\n');
        self.tx.send(Ok(Frame::data(Bytes::from(line)))).await.is_ok()
    }

    /// Delivers one cache event, translating selector transitions.
    async fn event(&mut self, ev: &Event, live: bool) -> bool {
        if live && ev.rev <= self.last_rev {
            return true;
        }
        let now_match = self.matches(&ev.key, &ev.obj);
        let was_match = ev.prev.as_ref().is_some_and(|p| self.matches(&ev.key, p));
        let ty = match ev.ty {
            EventType::Modified if now_match && was_match => "MODIFIED",
            EventType::Added | EventType::Modified if now_match => "ADDED",
            EventType::Modified | EventType::Deleted if was_match || now_match => "DELETED",
            _ => {
                self.last_rev = self.last_rev.max(ev.rev);
                return true;
            }
        };
        self.last_rev = self.last_rev.max(ev.rev);
        if self.fmt == ResponseFormat::Json || self.fmt == ResponseFormat::Yaml {
            // The common case: splice the shared serialization into the event line.
            let obj = ev.obj.json();
            let mut event_line = Vec::with_capacity(obj.len() + 32);
            event_line.extend_from_slice(b"{\"type\":\"");
            event_line.extend_from_slice(ty.as_bytes());
            event_line.extend_from_slice(b"\",\"object\":");
            event_line.extend_from_slice(obj);
            event_line.extend_from_slice(b"}\n");
            return self.tx.send(Ok(Frame::data(Bytes::from(event_line)))).await.is_ok();
        }
        let obj = self.render(&ev.obj);
        self.send(ty, obj).await
    }

    async fn bookmark(&mut self, rev: i64, initial_end: bool) -> bool {
        let mut m = json!({"resourceVersion": rev.to_string()});
        if initial_end {
            m["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        let obj =
            json!({"kind": self.res.kind, "apiVersion": self.res.api_version(), "metadata": m});
        self.send("BOOKMARK", obj).await
    }
}

/// Starts a watch response.
pub fn serve(
    server: &Arc<Server>,
    res: &'static Resource,
    namespace: Option<&str>,
    opts: ListOpts,
    q: &Query,
    fmt: ResponseFormat,
    slot: WatchSlot,
) -> Result<Response<Body>, ApiError> {
    let send_initial = q.flag("sendInitialEvents");
    let bookmarks = q.flag("allowWatchBookmarks");
    let timeout = match q.get("timeoutSeconds").and_then(|t| t.parse::<u64>().ok()) {
        Some(t) if t > 0 => Duration::from_secs(t),
        _ => Duration::from_secs(rand::rng().random_range(1800..3600)),
    };
    let rv = match q.get("resourceVersion") {
        None | Some("" | "0") => None,
        Some(r) => Some(
            r.parse::<i64>()
                .map_err(|_| ApiError::bad_request(format!("invalid resource version {r:?}")))?,
        ),
    };
    let from = if send_initial { None } else { rv };
    let include = q.get("includeObject").unwrap_or("Metadata").to_owned();
    let (tx, rx) = mpsc::channel(256);
    let prefix = res.list_prefix(namespace);
    let cache = Arc::clone(&server.registry.cache);
    let shutdown = server.shutdown.clone();
    tokio::spawn(async move {
        let _slot = slot;
        let mut st = Stream { res, prefix, opts, fmt, include, tx, last_rev: 0, first: true };
        // A watch from a revision the cache has not reached yet waits for it (briefly).
        if let Some(r) = from {
            let _ = cache.wait_for(r, Duration::from_secs(3)).await;
        }
        let (initial, mut live, upto) = match cache.watch(res, from) {
            Ok(w) => w,
            Err(expired) => {
                let status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": format!("too old resource version: {} ({})", expired.requested, expired.floor), "reason": "Expired", "code": 410});
                let _ = st.send("ERROR", status).await;
                return;
            }
        };
        for ev in &initial {
            if !st.event(ev, false).await {
                return;
            }
        }
        st.last_rev = st.last_rev.max(upto);
        if send_initial && !st.bookmark(upto, true).await {
            return;
        }
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut tick = tokio::time::interval(BOOKMARK_EVERY);
        tick.tick().await;
        loop {
            tokio::select! {
                () = &mut deadline => return,
                () = shutdown.cancelled() => return,
                () = st.tx.closed() => return,
                _ = tick.tick(), if bookmarks => {
                    // Read the revision first, then drain: every event at or below it is then
                    // already delivered, so a client resuming from the bookmark misses nothing.
                    let rev = cache.bookmark_revision(res);
                    loop {
                        match live.try_recv() {
                            Ok(ev) => if !st.event(&ev, true).await { return },
                            Err(broadcast::error::TryRecvError::Empty) => break,
                            Err(_) => return,
                        }
                    }
                    let rev = rev.max(st.last_rev);
                    st.last_rev = rev;
                    if !st.bookmark(rev, false).await {
                        return;
                    }
                }
                ev = live.recv() => match ev {
                    Ok(ev) => if !st.event(&ev, true).await { return },
                    // A watcher that fell behind is closed; it resumes from its last revision.
                    Err(_) => return,
                },
            }
        }
    });
    let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx)).boxed();
    let mut r = Response::new(body);
    let ct = match fmt {
        ResponseFormat::Table => fmt.content_type(),
        _ => "application/json",
    };
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache, private"));
    Ok(r)
}
