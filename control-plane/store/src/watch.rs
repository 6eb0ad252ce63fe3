//! Watch: every applied batch is published once; each watcher replays history from its start
//! revision out of the MVCC store, then follows the live batches. A watcher tracks the next
//! revision it owes its client, so it never skips or repeats a revision, also when it falls
//! behind (it re-reads history) or when a snapshot replaces the data under it.
//!
//! The state machine records only the event detail current watchers need
//! ([`WatchHub::event_detail`]): none without watchers, no `prev_kv` unless a watcher asks for
//! it. A watcher that gets a batch with less detail than it needs reads those revisions from
//! history instead, so registering concurrently with an apply never loses anything.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{broadcast, watch};

use crate::error::KvError;
use crate::mvcc::{EventDetail, Mvcc};
use crate::types::{Event, EventKind, KeyRange};

/// Batches kept for slow watchers before they fall back to reading history.
const LIVE_CAPACITY: usize = 1024;
/// Events read from history per step of a catching-up watcher.
const HISTORY_STEP: usize = 1000;

/// The revisions `from..=to` and their events, as applied.
#[derive(Debug)]
pub struct Published {
    pub from: i64,
    pub to: i64,
    pub events: Vec<Event>,
    /// What `events` carry; with less than a watcher needs, it reads history instead.
    pub detail: EventDetail,
}

/// Fan-out of applied changes to watchers on this replica.
#[derive(Debug, Clone)]
pub struct WatchHub {
    tx: broadcast::Sender<Arc<Published>>,
    mvcc: Arc<Mvcc>,
    /// Live watchers that asked for `prev_kv`.
    prev_kv_watchers: Arc<AtomicUsize>,
    /// The last revision published: what this replica has applied. (A separate channel: a
    /// receiver of `tx` makes every batch record its events.)
    applied: Arc<watch::Sender<i64>>,
}

/// What a watcher wants.
#[derive(Debug, Clone, Default)]
pub struct WatchSpec {
    pub range: KeyRange,
    /// 0 = from the next revision.
    pub start_revision: i64,
    pub prev_kv: bool,
    pub no_put: bool,
    pub no_delete: bool,
}

impl WatchHub {
    pub fn new(mvcc: Arc<Mvcc>) -> Self {
        let (tx, _) = broadcast::channel(LIVE_CAPACITY);
        let applied = Arc::new(watch::Sender::new(mvcc.revision()));
        Self { tx, mvcc, prev_kv_watchers: Arc::default(), applied }
    }

    /// Waits until this replica has applied `revision`.
    pub async fn applied(&self, revision: i64) -> Result<(), KvError> {
        let mut rx = self.applied.subscribe();
        rx.wait_for(|r| *r >= revision).await.map(|_| ()).map_err(|_| KvError::Stopped)
    }

    /// The detail the next applied batch should record for the watchers registered now. The
    /// state machine asks while it holds the MVCC write lock (see [`Mvcc::writer_with`]).
    pub fn event_detail(&self) -> EventDetail {
        if self.prev_kv_watchers.load(Ordering::SeqCst) > 0 {
            EventDetail::WithPrevKv
        } else if self.tx.receiver_count() > 0 {
            EventDetail::Events
        } else {
            EventDetail::None
        }
    }

    /// Publishes the revisions `from..=to` (called by the state machine after each commit; an
    /// empty range with `from > to + 1` tells watchers to re-read history, e.g. after a
    /// snapshot was installed).
    pub fn publish(&self, from: i64, to: i64, events: Vec<Event>, detail: EventDetail) {
        // No receivers is fine: nobody watches.
        let _ = self.tx.send(Arc::new(Published { from, to, events, detail }));
        self.applied.send_if_modified(|r| {
            let newer = to > *r;
            if newer {
                *r = to;
            }
            newer
        });
    }

    pub fn watcher_count(&self) -> usize {
        self.tx.receiver_count()
    }

    /// Starts a watcher. `Compacted` if the start revision is no longer retained.
    pub fn watch(&self, spec: WatchSpec) -> Result<Watcher, KvError> {
        // Count and subscribe before reading the revision, so that every batch committed after
        // that read either carries the detail this watcher needs or is read from history.
        let prev_kv = spec.prev_kv.then(|| PrevKvGuard::new(&self.prev_kv_watchers));
        let rx = self.tx.subscribe();
        let current = self.mvcc.revision();
        let next = if spec.start_revision <= 0 { current + 1 } else { spec.start_revision };
        let compact = self.mvcc.compact_revision();
        if next <= compact {
            return Err(KvError::Compacted { compact_revision: compact });
        }
        Ok(Watcher { rx, mvcc: self.mvcc.clone(), spec, next, _prev_kv: prev_kv })
    }
}

/// Counts a live watcher that wants `prev_kv` for as long as it exists.
#[derive(Debug)]
struct PrevKvGuard(Arc<AtomicUsize>);

impl PrevKvGuard {
    fn new(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Self(count.clone())
    }
}

impl Drop for PrevKvGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One watcher's cursor.
#[derive(Debug)]
pub struct Watcher {
    rx: broadcast::Receiver<Arc<Published>>,
    mvcc: Arc<Mvcc>,
    spec: WatchSpec,
    next: i64,
    _prev_kv: Option<PrevKvGuard>,
}

impl Watcher {
    /// Every revision below this one has been delivered (what a progress notification reports).
    pub fn progress_revision(&self) -> i64 {
        self.next - 1
    }

    fn wanted(&self, e: &Event) -> bool {
        if !self.spec.range.contains(&e.kv.key) {
            return false;
        }
        match e.kind {
            EventKind::Put => !self.spec.no_put,
            EventKind::Delete => !self.spec.no_delete,
        }
    }

    fn select(&self, events: impl IntoIterator<Item = Event>) -> Vec<Event> {
        events
            .into_iter()
            .filter(|e| e.kv.mod_revision >= self.next && self.wanted(e))
            .map(|mut e| {
                if !self.spec.prev_kv {
                    e.prev_kv = None;
                }
                e
            })
            .collect()
    }

    /// The next non-empty group of matching events, in revision order. `Compacted` if the
    /// watcher fell behind a compaction; `Stopped` if the store shut down.
    pub async fn next(&mut self) -> Result<Vec<Event>, KvError> {
        loop {
            let current = self.mvcc.revision();
            if self.next <= current {
                let (events, upto) = self.mvcc.events(self.next, current, HISTORY_STEP)?;
                let out = self.select(events);
                self.next = upto + 1;
                if !out.is_empty() {
                    return Ok(out);
                }
                continue;
            }
            match self.rx.recv().await {
                Ok(p) => {
                    if p.to < self.next {
                        continue;
                    }
                    if p.from > self.next {
                        // A gap (snapshot installed): the loop re-reads history.
                        continue;
                    }
                    let needed = if self.spec.prev_kv {
                        EventDetail::WithPrevKv
                    } else {
                        EventDetail::Events
                    };
                    if p.detail < needed {
                        // Applied before this watcher was counted: the loop reads it from
                        // history.
                        continue;
                    }
                    let out = self.select(p.events.iter().cloned());
                    self.next = p.to + 1;
                    if !out.is_empty() {
                        return Ok(out);
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return Err(KvError::Stopped),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{PutRequest, WriteOp};

    fn put(m: &Mvcc, hub: &WatchHub, k: &str) {
        let mut w = m.writer_with(|| hub.event_detail());
        let from = w.revision() + 1;
        w.apply(WriteOp::Put(PutRequest {
            key: k.into(),
            value: b"v".to_vec(),
            ..Default::default()
        }))
        .unwrap();
        let detail = w.detail();
        let (to, events) = w.commit(None).unwrap();
        hub.publish(from, to, events, detail);
    }

    #[tokio::test]
    async fn history_then_live_without_gaps_or_duplicates() {
        let dir = tempfile::Builder::new().prefix("skiff-test-watch").tempdir().unwrap();
        let m = Arc::new(Mvcc::open(crate::db::open(dir.path()).unwrap()).unwrap());
        let hub = WatchHub::new(m.clone());
        for i in 0..5 {
            put(&m, &hub, &format!("/a/{i}"));
            put(&m, &hub, &format!("/b/{i}"));
        }
        let mut w = hub
            .watch(WatchSpec {
                range: KeyRange::prefix("/a/"),
                start_revision: 2,
                ..Default::default()
            })
            .unwrap();
        // More live writes than the channel keeps, to force a fall-back to history.
        for i in 5..(LIVE_CAPACITY + 50) {
            put(&m, &hub, &format!("/a/{i}"));
        }
        let mut seen = Vec::new();
        while seen.len() < LIVE_CAPACITY + 50 {
            for e in w.next().await.unwrap() {
                seen.push(e.kv.mod_revision);
            }
        }
        let mut sorted = seen.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted, seen, "in order, no duplicates");
        assert_eq!(seen[..5], [2, 4, 6, 8, 10]);
        assert_eq!(w.progress_revision(), m.revision());
    }

    /// Watchers registered while another thread applies batches (each asking the hub for the
    /// detail under the write lock, as the state machine does) see every revision from their
    /// start exactly once, with the events and `prev_kv` that history gives. Each watcher is
    /// dropped after its check, so the detail recorded keeps changing under registrations.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn watchers_registering_during_applies_miss_nothing() {
        let dir = tempfile::Builder::new().prefix("skiff-test-watch").tempdir().unwrap();
        let m = Arc::new(Mvcc::open(crate::db::open(dir.path()).unwrap()).unwrap());
        let hub = Arc::new(WatchHub::new(m.clone()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let (m, hub, stop) = (m.clone(), hub.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut i = 0usize;
                while !stop.load(Ordering::SeqCst) {
                    let mut w = m.writer_with(|| hub.event_detail());
                    let from = w.revision() + 1;
                    for j in 0..=(i % 3) {
                        w.apply(WriteOp::Put(PutRequest {
                            key: format!("/a/{}", (i + j) % 4).into_bytes(),
                            value: format!("{i}.{j}").into_bytes(),
                            ..Default::default()
                        }))
                        .unwrap();
                    }
                    let detail = w.detail();
                    let (to, events) = w.commit(None).unwrap();
                    hub.publish(from, to, events, detail);
                    i += 1;
                }
            })
        };
        for n in 0..200 {
            let prev_kv = n % 2 == 0;
            let start_revision = if n % 4 >= 2 { (m.revision() - 2).max(2) } else { 0 };
            let mut w = hub
                .watch(WatchSpec {
                    range: KeyRange::prefix("/a/"),
                    prev_kv,
                    start_revision,
                    ..Default::default()
                })
                .unwrap();
            let start = w.progress_revision() + 1;
            // Follow it at once, as the etcd service does; the writer never stops, so the
            // revisions up to start + 5 arrive.
            let got = tokio::spawn(async move {
                let mut got = Vec::new();
                while got.last().is_none_or(|e: &Event| e.kv.mod_revision < start + 5) {
                    got.extend(w.next().await.unwrap());
                }
                got
            })
            .await
            .unwrap();
            let end = got.last().map_or(start, |e: &Event| e.kv.mod_revision);
            let (history, _) = m.events(start, end, usize::MAX).unwrap();
            let want: Vec<Event> = history
                .into_iter()
                .map(|e| if prev_kv { e } else { Event { prev_kv: None, ..e } })
                .collect();
            assert_eq!(got, want, "watcher {n} from {start} (prev_kv {prev_kv})");
        }
        stop.store(true, Ordering::SeqCst);
        writer.join().unwrap();
    }

    /// A batch recorded with less detail than a watcher needs (it applied before the watcher
    /// was counted) reaches that watcher from history, `prev_kv` included.
    #[tokio::test]
    async fn batches_without_the_needed_detail_are_read_from_history() {
        let dir = tempfile::Builder::new().prefix("skiff-test-watch").tempdir().unwrap();
        let m = Arc::new(Mvcc::open(crate::db::open(dir.path()).unwrap()).unwrap());
        let hub = WatchHub::new(m.clone());
        assert_eq!(hub.event_detail(), EventDetail::None, "nobody watches");
        put(&m, &hub, "/a/1");
        let mut plain =
            hub.watch(WatchSpec { range: KeyRange::prefix("/a/"), ..Default::default() }).unwrap();
        assert_eq!(hub.event_detail(), EventDetail::Events);
        let mut with_prev = hub
            .watch(WatchSpec {
                range: KeyRange::prefix("/a/"),
                prev_kv: true,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(hub.event_detail(), EventDetail::WithPrevKv);
        for detail in [EventDetail::None, EventDetail::Events] {
            let mut w = m.writer_with(|| detail);
            let from = w.revision() + 1;
            w.apply(WriteOp::Put(PutRequest {
                key: "/a/1".into(),
                value: format!("{detail:?}").into_bytes(),
                ..Default::default()
            }))
            .unwrap();
            let (to, events) = w.commit(None).unwrap();
            assert_eq!(events.len(), usize::from(detail != EventDetail::None));
            hub.publish(from, to, events, detail);
        }
        let mut got = Vec::new();
        while got.len() < 2 {
            got.extend(with_prev.next().await.unwrap());
        }
        let prev: Vec<_> =
            got.iter().map(|e| e.prev_kv.as_ref().map(|p| p.value.clone())).collect();
        assert_eq!(prev, [Some(b"v".to_vec()), Some(b"None".to_vec())]);
        let mut got = Vec::new();
        while got.len() < 2 {
            got.extend(plain.next().await.unwrap());
        }
        let revs: Vec<_> = got.iter().map(|e| (e.kv.mod_revision, e.prev_kv.is_none())).collect();
        assert_eq!(revs, [(3, true), (4, true)]);
        drop(with_prev);
        assert_eq!(hub.event_detail(), EventDetail::Events);
    }
}
