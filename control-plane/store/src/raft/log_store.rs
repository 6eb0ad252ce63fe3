//! The raft log on RocksDB. Appends are written to RocksDB at once (so replication can read
//! them) and acknowledged to openraft only after a WAL sync: a dedicated syncer thread syncs
//! once for every append that arrived while the previous sync ran (group commit), so many
//! client batches share one fsync without delaying the raft core.

#![expect(clippy::result_large_err, reason = "openraft's StorageError is what the traits return")]

use std::fmt::Debug;
use std::ops::RangeBounds;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{LogState, OptionalSend, RaftLogReader, StorageIOError, Vote};
use rocksdb::{DB, Direction, IteratorMode, WriteBatch, WriteOptions};

use super::{LogId, StorageError, TypeConfig, encode};
use crate::db::{CF_LOG, CF_RAFT, cf};
use crate::metrics::Metrics;

type Entry = openraft::Entry<TypeConfig>;

const KEY_VOTE: &[u8] = b"vote";
const KEY_PURGED: &[u8] = b"last_purged";
const KEY_COMMITTED: &[u8] = b"committed";

fn index_key(i: u64) -> [u8; 8] {
    i.to_be_bytes()
}

fn read_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::read_logs(&e).into()
}

fn write_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_logs(&e).into()
}

/// Callbacks waiting for the next WAL sync.
#[derive(Default)]
struct SyncQueue {
    waiting: Vec<LogFlushed<TypeConfig>>,
    stop: bool,
}

struct Syncer {
    queue: Mutex<SyncQueue>,
    wake: Condvar,
}

impl Syncer {
    fn start(db: Arc<DB>, metrics: Metrics) -> Arc<Self> {
        let s = Arc::new(Self { queue: Mutex::new(SyncQueue::default()), wake: Condvar::new() });
        let me = s.clone();
        std::thread::Builder::new()
            .name("skiff-wal-sync".into())
            .spawn(move || me.run(&db, &metrics))
            .expect("spawning the WAL sync thread");
        s
    }

    fn run(&self, db: &DB, metrics: &Metrics) {
        loop {
            let batch = {
                let mut q = self.queue.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                while q.waiting.is_empty() && !q.stop {
                    q = self.wake.wait(q).unwrap_or_else(std::sync::PoisonError::into_inner);
                }
                if q.waiting.is_empty() && q.stop {
                    return;
                }
                std::mem::take(&mut q.waiting)
            };
            let t = Instant::now();
            let res = db.flush_wal(true);
            metrics.fsync_seconds.observe(t.elapsed().as_secs_f64());
            for cb in batch {
                cb.log_io_completed(match &res {
                    Ok(()) => Ok(()),
                    Err(e) => Err(std::io::Error::other(e.to_string())),
                });
            }
        }
    }

    fn push(&self, cb: LogFlushed<TypeConfig>) {
        let mut q = self.queue.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        q.waiting.push(cb);
        self.wake.notify_one();
    }
}

/// Stops the syncer thread when the last log store handle goes away.
struct SyncerHandle(Arc<Syncer>);

impl Drop for SyncerHandle {
    fn drop(&mut self) {
        let mut q = self.0.queue.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        q.stop = true;
        self.0.wake.notify_one();
    }
}

/// How often the commit index is recorded (see `save_committed`).
const SAVE_COMMITTED_EVERY: Duration = Duration::from_millis(100);

/// The raft log and vote, in the `log` and `raft` column families.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<DB>,
    syncer: Arc<SyncerHandle>,
    /// When the commit index was last recorded.
    committed_saved: Arc<Mutex<Option<Instant>>>,
}

impl LogStore {
    pub fn new(db: Arc<DB>, metrics: Metrics) -> Self {
        let syncer = Syncer::start(db.clone(), metrics);
        Self { db, syncer: Arc::new(SyncerHandle(syncer)), committed_saved: Arc::default() }
    }

    fn get_meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &[u8],
    ) -> Result<Option<T>, StorageError> {
        match self.db.get_cf(cf(&self.db, CF_RAFT), key).map_err(read_err)? {
            Some(b) => Ok(Some(bincode::deserialize(&b).map_err(read_err)?)),
            None => Ok(None),
        }
    }

    fn put_meta_synced<T: serde::Serialize>(&self, key: &[u8], v: &T) -> Result<(), StorageError> {
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        let mut b = WriteBatch::default();
        b.put_cf(cf(&self.db, CF_RAFT), key, encode(v));
        self.db.write_opt(b, &opts).map_err(write_err)
    }

    fn last_log_id(&self) -> Result<Option<LogId>, StorageError> {
        let mut it = self.db.iterator_cf(cf(&self.db, CF_LOG), IteratorMode::End);
        match it.next() {
            Some(item) => {
                let (_, v) = item.map_err(read_err)?;
                let e: Entry = bincode::deserialize(&v).map_err(read_err)?;
                Ok(Some(e.log_id))
            }
            None => Ok(None),
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        use std::ops::Bound;
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => *i + 1,
            Bound::Unbounded => 0,
        };
        let mut out = Vec::new();
        let key = index_key(start);
        for item in
            self.db.iterator_cf(cf(&self.db, CF_LOG), IteratorMode::From(&key, Direction::Forward))
        {
            let (k, v) = item.map_err(read_err)?;
            let idx =
                u64::from_be_bytes(k.as_ref().try_into().map_err(|_| read_err(std::fmt::Error))?);
            if !range.contains(&idx) {
                break;
            }
            out.push(bincode::deserialize(&v).map_err(read_err)?);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged: Option<LogId> = self.get_meta(KEY_PURGED)?;
        let last = self.last_log_id()?.or(last_purged);
        Ok(LogState { last_purged_log_id: last_purged, last_log_id: last })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), StorageError> {
        self.put_meta_synced(KEY_VOTE, vote)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StorageError> {
        self.get_meta(KEY_VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // A hint for restarts (apply up to it before hearing from a leader), so neither synced
        // nor written on every commit: any committed id is correct, an older one only means
        // re-deriving the rest. Written per commit it cost as much as the log append itself.
        {
            let mut last =
                self.committed_saved.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if last.is_some_and(|t| t.elapsed() < SAVE_COMMITTED_EVERY) {
                return Ok(());
            }
            *last = Some(Instant::now());
        }
        self.db.put_cf(cf(&self.db, CF_RAFT), KEY_COMMITTED, encode(&committed)).map_err(write_err)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.get_meta::<Option<LogId>>(KEY_COMMITTED)?.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let log = cf(&self.db, CF_LOG);
        let mut b = WriteBatch::default();
        for e in entries {
            b.put_cf(log, index_key(e.log_id.index), encode(&e));
        }
        // Durable only after the syncer's flush_wal(true); openraft waits for the callback.
        self.db.write(b).map_err(write_err)?;
        self.syncer.0.push(callback);
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.db
            .delete_range_cf(cf(&self.db, CF_LOG), index_key(log_id.index), index_key(u64::MAX))
            .map_err(write_err)?;
        self.db.delete_cf(cf(&self.db, CF_LOG), index_key(u64::MAX)).map_err(write_err)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Record the purge point first: a crash between the two leaves extra entries, never a
        // hole that get_log_state cannot explain.
        self.put_meta_synced(KEY_PURGED, &log_id)?;
        self.db
            .delete_range_cf(cf(&self.db, CF_LOG), index_key(0), index_key(log_id.index + 1))
            .map_err(write_err)?;
        tracing::info!("purged raft log up to {}", log_id.index);
        Ok(())
    }
}
