//! The watch cache: one in-memory copy per resource of everything under `/registry/`, kept
//! current by a single store watch, with a per-resource event history and broadcast channel.
//! Lists and watches are served from here, so the store is not hit per list.
//!
//! Every store revision under `/registry/` passes through the one watch, so a resource's
//! `rev` is the global revision the cache has caught up to: a list at that revision followed by
//! a watch from it is exact.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::Value;
use skiff_api::{RESOURCES, Resource};
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

use crate::store::{Store, StoreError, Stored};

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

/// One change of one object. `obj` carries the new state (the last state for deletions) with
/// `metadata.resourceVersion` set to `rev`.
#[derive(Debug)]
pub struct Event {
    pub rev: i64,
    pub ty: EventType,
    pub key: String,
    pub obj: Arc<Value>,
    pub prev: Option<Arc<Value>>,
}

struct State {
    items: BTreeMap<String, Arc<Value>>,
    history: VecDeque<Arc<Event>>,
    /// Watches may resume from any revision >= floor.
    floor: i64,
    rev: i64,
    tx: broadcast::Sender<Arc<Event>>,
}

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
    pub fn snapshot(
        &self,
        res: &Resource,
        prefix: &str,
        after: Option<&str>,
    ) -> (Vec<(String, Arc<Value>)>, i64) {
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
            .map(|(k, v)| (k.clone(), Arc::clone(v)))
            .collect();
        (items, st.rev)
    }

    /// Current object at `key`, if cached.
    pub fn get(&self, res: &Resource, key: &str) -> Option<Arc<Value>> {
        lock(&self.states[Self::index(res)]).items.get(key).cloned()
    }

    /// Every live object of `res` (for background loops such as namespace finalization).
    pub fn all(&self, res: &Resource) -> Vec<Arc<Value>> {
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
                    let rev = v
                        .pointer("/metadata/resourceVersion")
                        .and_then(Value::as_str)
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(0);
                    Arc::new(Event {
                        rev,
                        ty: EventType::Added,
                        key: k.clone(),
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
        let (ty, obj, prev_obj) = if ty_put {
            let Some(obj) = decode(kv) else { return };
            let obj = Arc::new(obj);
            let old = st.items.insert(kv.key.clone(), Arc::clone(&obj));
            let ty = if old.is_some() { EventType::Modified } else { EventType::Added };
            (ty, obj, old.or_else(|| prev.and_then(decode).map(Arc::new)))
        } else {
            let old = st.items.remove(&kv.key).or_else(|| prev.and_then(decode).map(Arc::new));
            let Some(old) = old else { return };
            let mut last = (*old).clone();
            set_rv(&mut last, rev);
            (EventType::Deleted, Arc::new(last), Some(old))
        };
        let ev = Arc::new(Event { rev, ty, key: kv.key.clone(), obj, prev: prev_obj });
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
            let gone: Vec<String> =
                lock(s).items.keys().filter(|k| !new.contains_key(*k)).cloned().collect();
            for k in gone {
                let stub =
                    Stored { key: k, value: Vec::new(), mod_revision: rev, create_revision: 0 };
                self.apply(false, &stub, None, rev);
            }
            for kv in new.values() {
                let unchanged = lock(s)
                    .items
                    .get(&kv.key)
                    .and_then(|v| {
                        v.pointer("/metadata/resourceVersion")
                            .and_then(Value::as_str)
                            .map(|r| r == kv.mod_revision.to_string())
                    })
                    .unwrap_or(false);
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
