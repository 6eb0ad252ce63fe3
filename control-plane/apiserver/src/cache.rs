//! The watch cache: one in-memory copy per resource of everything under `/registry/`, kept
//! current by a single store watch, with a per-resource event history and broadcast channel.
//! Lists and watches are served from here, so the store is not hit per list.
//!
//! Every store revision under `/registry/` passes through the one watch, so a resource's
//! `rev` is the global revision the cache has caught up to: a list at that revision followed by
//! a watch from it is exact.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;
use skiff_api::{RESOURCES, Resource};
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

use crate::store::{Store, StoreError, Stored};

pub(crate) mod splice;

/// Events kept per resource for watches that resume from an older resourceVersion.
pub const HISTORY: usize = 20_000;
/// Events buffered per resource for live watchers before a slow one is cut off.
const BROADCAST: usize = 8192;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Added => "ADDED",
            Self::Modified => "MODIFIED",
            Self::Deleted => "DELETED",
        }
    }
}

/// One cached object: its JSON encoding (with `metadata.resourceVersion`) and its decoded
/// value, each produced at most once and only when first needed. An object that arrives from
/// the store is kept as the stored bytes with the resourceVersion spliced in (`from_stored`),
/// so lists and watch events copy bytes and the value is parsed only for selectors, Tables and
/// other readers of fields.
#[derive(Debug)]
pub struct CachedObject {
    /// `metadata.resourceVersion` as a revision (the store key's mod revision).
    rev: i64,
    json: OnceLock<Bytes>,
    value: OnceLock<Value>,
}

impl CachedObject {
    /// An object already decoded; `metadata.resourceVersion` must already be set to `rev`.
    pub fn new(value: Value) -> Self {
        let rev = value
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        Self { rev, json: OnceLock::new(), value: OnceLock::from(value) }
    }

    /// A stored value at mod revision `rev`; `None` when it does not decode as a JSON value
    /// (such a value is not an object of ours and is skipped, as before). The bytes are kept
    /// only when decoding them and encoding again would give the same JSON (no repeated keys).
    pub fn from_stored(stored: &[u8], rev: i64) -> Option<Self> {
        let repeats = splice::decodable(stored)?;
        if let Some(json) = (!repeats).then(|| splice::with_resource_version(stored, rev)).flatten()
        {
            return Some(Self { rev, json: OnceLock::from(json), value: OnceLock::new() });
        }
        let mut value: Value = serde_json::from_slice(stored).ok()?;
        set_rv(&mut value, rev);
        Some(Self { rev, json: OnceLock::new(), value: OnceLock::from(value) })
    }

    /// The revision this state of the object was written at.
    pub fn rev(&self) -> i64 {
        self.rev
    }

    /// The object as JSON bytes (one line, no surrounding whitespace).
    pub fn json(&self) -> &Bytes {
        self.json.get_or_init(|| {
            Bytes::from(serde_json::to_vec(self.value()).unwrap_or_else(|_| b"null".to_vec()))
        })
    }

    /// The decoded object.
    pub fn value(&self) -> &Value {
        self.value.get_or_init(|| {
            // `json` is set whenever `value` is not, and was validated when it was made.
            self.json.get().and_then(|b| serde_json::from_slice(b).ok()).unwrap_or(Value::Null)
        })
    }
}

impl std::ops::Deref for CachedObject {
    type Target = Value;

    fn deref(&self) -> &Value {
        self.value()
    }
}

/// One change of one object. `obj` carries the new state (the last state for deletions) with
/// `metadata.resourceVersion` set to `rev`.
#[derive(Debug)]
pub struct Event {
    pub rev: i64,
    pub ty: EventType,
    pub key: Arc<str>,
    pub obj: Arc<CachedObject>,
    pub prev: Option<Arc<CachedObject>>,
}

struct State {
    items: BTreeMap<Arc<str>, Arc<CachedObject>>,
    history: VecDeque<Arc<Event>>,
    /// Watches may resume from any revision >= floor.
    floor: i64,
    rev: i64,
    tx: broadcast::Sender<Arc<Event>>,
}

/// A cached object and its store key.
pub type Keyed = (Arc<str>, Arc<CachedObject>);

/// The resource version a watch asked for is older than the retained history.
#[derive(Debug)]
pub struct Expired {
    pub requested: i64,
    pub floor: i64,
}

/// The start of a watch: initial events, the live receiver, and the revision they cover.
pub type WatchStart = (Vec<Arc<Event>>, broadcast::Receiver<Arc<Event>>, i64);

/// The watch cache of every resource in the table.
pub struct Cache {
    history: usize,
    states: Vec<Mutex<State>>,
    by_prefix: HashMap<String, usize>,
    rev: watch::Sender<i64>,
}

/// Decodes a stored value into an object carrying its resourceVersion.
pub fn decode(kv: &Stored) -> Option<Value> {
    let mut v: Value = serde_json::from_slice(&kv.value).ok()?;
    set_rv(&mut v, kv.mod_revision);
    Some(v)
}

/// Sets `metadata.resourceVersion`.
pub fn set_rv(v: &mut Value, rev: i64) {
    if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("resourceVersion".to_owned(), Value::String(rev.to_string()));
    }
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Cache {
    /// A cache keeping `history` events per resource.
    pub fn new(history: usize) -> Arc<Self> {
        let states = RESOURCES
            .iter()
            .map(|_| {
                Mutex::new(State {
                    items: BTreeMap::new(),
                    history: VecDeque::new(),
                    floor: 0,
                    rev: 0,
                    tx: broadcast::channel(BROADCAST).0,
                })
            })
            .collect();
        let by_prefix = RESOURCES.iter().enumerate().map(|(i, r)| (r.prefix(), i)).collect();
        Arc::new(Self { history: history.max(1), states, by_prefix, rev: watch::channel(0).0 })
    }

    fn index(res: &Resource) -> usize {
        RESOURCES.iter().position(|r| std::ptr::eq(r, res)).unwrap_or(0)
    }

    fn index_of_key(&self, key: &str) -> Option<usize> {
        // /registry/<group>/<plural>/...
        let mut slashes = key.match_indices('/').map(|(i, _)| i);
        let end = slashes.nth(3)?;
        self.by_prefix.get(&key[..=end]).copied()
    }

    /// The revision the cache has caught up to.
    pub fn revision(&self) -> i64 {
        *self.rev.borrow()
    }

    /// Waits until the cache has seen `rev`; false on timeout.
    pub async fn wait_for(&self, rev: i64, timeout: Duration) -> bool {
        let mut rx = self.rev.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|r| *r >= rev)).await.is_ok_and(|r| r.is_ok())
    }

    /// Objects under `prefix` (sorted by key), starting after `after`, and the revision they
    /// are current at.
    pub fn snapshot(&self, res: &Resource, prefix: &str, after: Option<&str>) -> (Vec<Keyed>, i64) {
        let st = lock(&self.states[Self::index(res)]);
        let range = match after {
            Some(a) => {
                st.items.range::<str, _>((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded))
            }
            None => st
                .items
                .range::<str, _>((std::ops::Bound::Included(prefix), std::ops::Bound::Unbounded)),
        };
        let items = range
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (Arc::clone(k), Arc::clone(v)))
            .collect();
        (items, st.rev)
    }

    /// Current object at `key`, if cached.
    pub fn get(&self, res: &Resource, key: &str) -> Option<Arc<CachedObject>> {
        lock(&self.states[Self::index(res)]).items.get(key).cloned()
    }

    /// Every live object of `res` (for background loops such as namespace finalization).
    pub fn all(&self, res: &Resource) -> Vec<Arc<CachedObject>> {
        lock(&self.states[Self::index(res)]).items.values().cloned().collect()
    }

    /// The resource's current revision.
    pub fn resource_revision(&self, res: &Resource) -> i64 {
        lock(&self.states[Self::index(res)]).rev
    }

    /// Starts a watch: events after `from` (or synthetic ADDED events for every object when
    /// `from` is `None`), a receiver for live events, and the revision the initial part is
    /// current at. Live events at or below that revision must be skipped by the caller.
    pub fn watch(&self, res: &Resource, from: Option<i64>) -> Result<WatchStart, Expired> {
        let st = lock(&self.states[Self::index(res)]);
        let initial = match from {
            None => st
                .items
                .iter()
                .map(|(k, v)| {
                    Arc::new(Event {
                        rev: v.rev(),
                        ty: EventType::Added,
                        key: Arc::clone(k),
                        obj: Arc::clone(v),
                        prev: None,
                    })
                })
                .collect(),
            Some(x) if x < st.floor => return Err(Expired { requested: x, floor: st.floor }),
            Some(x) => st.history.iter().filter(|e| e.rev > x).cloned().collect(),
        };
        let upto = match from {
            Some(x) => st.rev.max(x),
            None => st.rev,
        };
        Ok((initial, st.tx.subscribe(), upto))
    }

    /// The resource's revision read under its lock (for bookmarks; see module docs).
    pub fn bookmark_revision(&self, res: &Resource) -> i64 {
        self.resource_revision(res)
    }

    fn apply(&self, ty_put: bool, kv: &Stored, prev: Option<&Stored>, rev: i64) {
        let Some(idx) = self.index_of_key(&kv.key) else { return };
        let mut st = lock(&self.states[idx]);
        let decoded =
            |kv: &Stored| CachedObject::from_stored(&kv.value, kv.mod_revision).map(Arc::new);
        let (ty, key, obj, prev_obj) = if ty_put {
            let Some(obj) = decoded(kv) else { return };
            let key: Arc<str> = Arc::from(kv.key.as_str());
            let old = st.items.insert(Arc::clone(&key), Arc::clone(&obj));
            let ty = if old.is_some() { EventType::Modified } else { EventType::Added };
            (ty, key, obj, old.or_else(|| prev.and_then(decoded)))
        } else {
            let (key, old) = match st.items.remove_entry(kv.key.as_str()) {
                Some((k, v)) => (k, v),
                None => match prev.and_then(decoded) {
                    Some(v) => (Arc::from(kv.key.as_str()), v),
                    None => return,
                },
            };
            let mut last = old.value().clone();
            set_rv(&mut last, rev);
            (EventType::Deleted, key, Arc::new(CachedObject::new(last)), Some(old))
        };
        let ev = Arc::new(Event { rev, ty, key, obj, prev: prev_obj });
        st.history.push_back(Arc::clone(&ev));
        while st.history.len() > self.history {
            if let Some(old) = st.history.pop_front() {
                st.floor = old.rev;
            }
        }
        st.rev = st.rev.max(rev);
        let _ = st.tx.send(ev);
    }

    fn advance(&self, rev: i64) {
        for s in &self.states {
            let mut st = lock(s);
            st.rev = st.rev.max(rev);
        }
        self.rev.send_if_modified(|r| {
            if rev > *r {
                *r = rev;
                true
            } else {
                false
            }
        });
    }

    /// Replaces the cache content with a full listing at `rev`, emitting the differences as
    /// events (after a compaction the cache could not follow).
    fn reload(&self, items: Vec<Stored>, rev: i64) {
        let mut fresh: HashMap<usize, BTreeMap<String, Stored>> = HashMap::new();
        for kv in items {
            if let Some(i) = self.index_of_key(&kv.key) {
                fresh.entry(i).or_default().insert(kv.key.clone(), kv);
            }
        }
        for (i, s) in self.states.iter().enumerate() {
            let new = fresh.remove(&i).unwrap_or_default();
            let gone: Vec<String> = lock(s)
                .items
                .keys()
                .filter(|k| !new.contains_key(&***k))
                .map(ToString::to_string)
                .collect();
            for k in gone {
                let stub =
                    Stored { key: k, value: Vec::new(), mod_revision: rev, create_revision: 0 };
                self.apply(false, &stub, None, rev);
            }
            for kv in new.values() {
                let unchanged =
                    lock(s).items.get(kv.key.as_str()).is_some_and(|v| v.rev() == kv.mod_revision);
                if !unchanged {
                    self.apply(true, kv, None, kv.mod_revision);
                }
            }
            let mut st = lock(s);
            if st.floor == 0 {
                st.floor = rev;
            }
        }
        self.advance(rev);
    }

    /// The first listing: at an older revision when the store still has it, so that the watch
    /// that follows replays up to `history` revisions into the event history. A restarted API
    /// server can then resume its clients' watches instead of answering 410.
    async fn initial_list(&self, store: &Store) -> Result<(Vec<Stored>, i64), StoreError> {
        if self.revision() == 0 {
            let current = store.revision().await?;
            let from =
                current.saturating_sub(i64::try_from(self.history).unwrap_or(i64::MAX)).max(1);
            if from < current {
                // The header carries the current revision; the listing is at `from`.
                match store.range("/registry/", None, from).await {
                    Ok((items, _)) => return Ok((items, from)),
                    Err(StoreError::Compacted(_)) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        store.range("/registry/", None, 0).await
    }

    /// Keeps the cache current until `stop`: list, then watch from the list revision; on a
    /// broken watch resume from the last revision, on compaction re-list.
    pub async fn run(self: Arc<Self>, store: Store, stop: CancellationToken) {
        let mut next: Option<i64> = None;
        loop {
            if stop.is_cancelled() {
                return;
            }
            let start = match next {
                Some(r) => r,
                None => match self.initial_list(&store).await {
                    Ok((items, rev)) => {
                        self.reload(items, rev);
                        rev
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "watch cache: initial list failed; retrying");
                        tokio::select! { () = stop.cancelled() => return, () = tokio::time::sleep(Duration::from_millis(500)) => {} }
                        continue;
                    }
                },
            };
            next = Some(start);
            let (mut stream, _keep) = match store.watch("/registry/", start + 1).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "watch cache: watch failed; retrying");
                    tokio::select! { () = stop.cancelled() => return, () = tokio::time::sleep(Duration::from_millis(500)) => {} }
                    continue;
                }
            };
            loop {
                let msg = tokio::select! {
                    () = stop.cancelled() => return,
                    m = stream.message() => m,
                };
                match msg {
                    Ok(Some(resp)) => {
                        if resp.compact_revision > 0 || resp.canceled {
                            tracing::warn!(compacted = resp.compact_revision, reason = %resp.cancel_reason, "watch cache: watch canceled; re-listing");
                            next = None;
                            break;
                        }
                        let mut last = next.unwrap_or(0);
                        let progress_only = resp.events.is_empty() && !resp.created;
                        for ev in resp.events {
                            let Some(kv) = ev.kv else { continue };
                            let rev = kv.mod_revision;
                            let kv = Stored {
                                key: String::from_utf8_lossy(&kv.key).into_owned(),
                                value: kv.value,
                                mod_revision: kv.mod_revision,
                                create_revision: kv.create_revision,
                            };
                            let prev = ev.prev_kv.map(|p| Stored {
                                key: String::from_utf8_lossy(&p.key).into_owned(),
                                value: p.value,
                                mod_revision: p.mod_revision,
                                create_revision: p.create_revision,
                            });
                            // mvccpb.Event.EventType: PUT = 0, DELETE = 1.
                            self.apply(ev.r#type == 0, &kv, prev.as_ref(), rev);
                            last = last.max(rev);
                        }
                        if let Some(h) = resp.header.filter(|_| progress_only) {
                            // A response without events is a progress notification: every
                            // event up to its header revision has been delivered.
                            last = last.max(h.revision);
                        }
                        next = Some(last);
                        self.advance(last);
                    }
                    Ok(None) => {
                        tracing::info!("watch cache: store watch ended; resuming");
                        break;
                    }
                    Err(e) => {
                        let err: StoreError = e.into();
                        tracing::warn!(error = %err, "watch cache: store watch failed; resuming");
                        if matches!(err, StoreError::Compacted(_)) {
                            next = None;
                        }
                        break;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_objects_serve_the_stored_bytes_with_their_resource_version() {
        let stored = br#"{"kind":"Pod","metadata":{"name":"p","labels":{"a":"b"}},"spec":{}}"#;
        let obj = CachedObject::from_stored(stored, 9).expect("json");
        assert_eq!(obj.rev(), 9);
        assert_eq!(
            obj.json().as_ref(),
            br#"{"kind":"Pod","metadata":{"name":"p","labels":{"a":"b"},"resourceVersion":"9"},"spec":{}}"#
        );
        assert_eq!(obj.pointer("/metadata/resourceVersion"), Some(&Value::from("9")));

        // A shape the splice declines is decoded and re-encoded instead.
        let pretty = b"{\n  \"metadata\": {\"name\": \"q\", \"resourceVersion\": \"1\"}\n}";
        let obj = CachedObject::from_stored(pretty, 10).expect("json");
        assert_eq!(obj.json().as_ref(), br#"{"metadata":{"name":"q","resourceVersion":"10"}}"#);

        assert!(CachedObject::from_stored(b"{not json", 11).is_none());
        assert_eq!(
            CachedObject::new(serde_json::json!({"metadata": {"resourceVersion": "12"}})).rev(),
            12
        );
    }

    /// `from_stored` must keep exactly the objects a decode keeps and serve what decoding,
    /// setting the resourceVersion and encoding again would serve.
    #[test]
    fn stored_bytes_are_served_only_as_a_decode_would_serve_them() {
        let deep = format!(r#"{{"metadata":{{}},"spec":{}{}}}"#, "[".repeat(200), "]".repeat(200));
        let cases: [&[u8]; 8] = [
            b"{\"metadata\":{\"name\":\"\xff\"}}",
            br#"{"metadata":{"name":"\ud800"}}"#,
            br#"{"metadata":{"name":"n"},"spec":{"n":1e400}}"#,
            deep.as_bytes(),
            br#"{"metadata":{"name":"n","labels":{"a":"1","a":"2"}},"spec":{"x":1,"x":2}}"#,
            br#"{"metadata":{"name":"n"},"spec":{"x":1,"\u0078":2}}"#,
            br#"{"spec":[{"k":1,"k":2}],"metadata":{"name":"n"}}"#,
            br#"{"metadata":{"name":"\ud83d\ude00"},"spec":{"x":1,"y":2}}"#,
        ];
        for stored in cases {
            let shown = String::from_utf8_lossy(stored);
            let decoded = serde_json::from_slice::<Value>(stored).ok().map(|mut v| {
                set_rv(&mut v, 5);
                v
            });
            let cached = CachedObject::from_stored(stored, 5);
            assert_eq!(cached.is_some(), decoded.is_some(), "{shown}");
            let (Some(cached), Some(decoded)) = (cached, decoded) else { continue };
            assert_eq!(cached.value(), &decoded, "{shown}");
            // Every object in the served bytes has each key once, as in the decoded value.
            let served = cached.json();
            assert_eq!(splice::decodable(served), Some(false), "{shown}");
            let reparsed: Value = serde_json::from_slice(served).expect("served bytes are JSON");
            assert_eq!(reparsed, decoded, "{shown}");
        }
    }
}
