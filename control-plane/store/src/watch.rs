//! Watch: every applied batch is published once; each watcher replays history from its start
//! revision out of the MVCC store, then follows the live batches. A watcher tracks the next
//! revision it owes its client, so it never skips or repeats a revision, also when it falls
//! behind (it re-reads history) or when a snapshot replaces the data under it.

use std::sync::Arc;

use tokio::sync::broadcast;

use crate::error::KvError;
use crate::mvcc::Mvcc;
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
}

/// Fan-out of applied changes to watchers on this replica.
#[derive(Debug, Clone)]
pub struct WatchHub {
    tx: broadcast::Sender<Arc<Published>>,
    mvcc: Arc<Mvcc>,
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
        Self { tx, mvcc }
    }

    /// Publishes the revisions `from..=to` (called by the state machine after each commit; an
    /// empty range with `from > to + 1` tells watchers to re-read history, e.g. after a
    /// snapshot was installed).
    pub fn publish(&self, from: i64, to: i64, events: Vec<Event>) {
        // No receivers is fine: nobody watches.
        let _ = self.tx.send(Arc::new(Published { from, to, events }));
    }

    pub fn watcher_count(&self) -> usize {
        self.tx.receiver_count()
    }

    /// Starts a watcher. `Compacted` if the start revision is no longer retained.
    pub fn watch(&self, spec: WatchSpec) -> Result<Watcher, KvError> {
        // Subscribe before reading the revision, so nothing published after it is missed.
        let rx = self.tx.subscribe();
        let current = self.mvcc.revision();
        let next = if spec.start_revision <= 0 { current + 1 } else { spec.start_revision };
        let compact = self.mvcc.compact_revision();
        if next <= compact {
            return Err(KvError::Compacted { compact_revision: compact });
        }
        Ok(Watcher { rx, mvcc: self.mvcc.clone(), spec, next })
    }
}

/// One watcher's cursor.
#[derive(Debug)]
pub struct Watcher {
    rx: broadcast::Receiver<Arc<Published>>,
    mvcc: Arc<Mvcc>,
    spec: WatchSpec,
    next: i64,
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
        let mut w = m.writer();
        let from = w.revision() + 1;
        w.apply(&WriteOp::Put(PutRequest {
            key: k.into(),
            value: b"v".to_vec(),
            ..Default::default()
        }))
        .unwrap();
        let (to, events) = w.commit(None).unwrap();
        hub.publish(from, to, events);
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
}
