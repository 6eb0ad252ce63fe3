//! The raft log on RocksDB. Appends are written to RocksDB at once (so replication can read
//! them) and made durable by a dedicated syncer thread, which syncs once for every append that
//! arrived while the previous sync ran (group commit), so many client batches share one fsync.
//!
//! A follower's append is acknowledged to openraft only after that sync: its reply to the
//! leader promises the entries are on disk. The leader's own appends are acknowledged at once
//! and synced in parallel with replication (Raft dissertation, 10.2.1): openraft 0.9 blocks
//! its core until an append is acknowledged, so waiting for the leader's sync there delayed
//! sending the entries to followers by a whole sync. openraft then counts the leader's copy
//! towards a commit before it is durable, so nothing may act on that commit until the leader's
//! sync has caught up: the [`Durable`] mark gates the state machine's apply and caps the commit
//! index sent to followers. A commit anything acts on is then on a majority's disks: on the
//! leader's, and on the followers whose acknowledgements made it.

#![expect(clippy::result_large_err, reason = "openraft's StorageError is what the traits return")]

use std::fmt::Debug;
use std::ops::RangeBounds;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{LogState, OptionalSend, RaftLogReader, StorageIOError, Vote};
use rocksdb::{DB, Direction, IteratorMode, WriteBatch, WriteOptions};
use tokio::sync::watch;

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

/// How far this replica's log is on disk: every entry up to `upto` (inclusive) is synced.
#[derive(Debug, Clone)]
pub struct DurableMark {
    pub upto: Option<LogId>,
    /// Set when a sync failed: entries the leader acknowledged early may never be durable,
    /// and `upto` no longer moves.
    pub failed: Option<String>,
}

/// The [`DurableMark`], shared by the log store (which moves it), the state machine (which
/// applies nothing beyond it) and the transport (which sends followers no commit beyond it).
#[derive(Clone)]
pub struct Durable {
    mark: watch::Sender<DurableMark>,
    /// Set when a commit index sent to a follower was capped: followers then need another
    /// message once the mark moves (see [`Durable::take_capped_when_idle`]).
    capped: Arc<AtomicBool>,
    /// The index of the last entry written to the log (synced or not).
    written: Arc<AtomicU64>,
    /// How far the state machine's writes reach, a snapshot install included (durable with
    /// the next WAL sync, as everything before it in the shared WAL). openraft 0.9 purges the
    /// log up to a received snapshot while the state machine is still installing it; the
    /// purge waits for this, so a crash meanwhile leaves the old log and state, not a hole.
    applied: Arc<watch::Sender<Applied>>,
}

/// The state machine's progress, as the log store sees it.
#[derive(Debug, Clone, Copy, Default)]
struct Applied {
    index: u64,
    /// The state machine failed (e.g. installing a snapshot): it will not reach any index.
    failed: bool,
}

impl Durable {
    fn new(upto: Option<LogId>) -> Self {
        Self {
            mark: watch::Sender::new(DurableMark { upto, failed: None }),
            capped: Arc::default(),
            written: Arc::default(),
            applied: Arc::default(),
        }
    }

    /// The state machine has written everything up to `index`.
    pub fn set_applied(&self, index: u64) {
        self.applied.send_if_modified(|a| {
            let newer = index > a.index;
            if newer {
                a.index = index;
            }
            newer
        });
    }

    /// The state machine failed: waits for its progress end in an error.
    pub fn applying_failed(&self) {
        self.applied.send_modify(|a| a.failed = true);
    }

    /// Waits until the state machine has written everything up to `index`.
    async fn wait_applied(&self, index: u64) -> Result<(), StorageError> {
        let a = *self
            .applied
            .subscribe()
            .wait_for(|a| a.failed || a.index >= index)
            .await
            .map_err(|_| write_err(std::io::Error::other("state machine closed")))?;
        if a.index >= index {
            Ok(())
        } else {
            Err(write_err(std::io::Error::other("the state machine failed")))
        }
    }

    #[cfg(test)]
    fn get(&self) -> DurableMark {
        self.mark.borrow().clone()
    }

    /// Why a sync failed, if one did.
    fn failure(&self) -> Option<String> {
        self.mark.borrow().failed.clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<DurableMark> {
        self.mark.subscribe()
    }

    /// Waits until the entry at `index` is on disk here.
    pub async fn wait_for(&self, index: u64) -> Result<(), StorageError> {
        let mut rx = self.mark.subscribe();
        let m = rx
            .wait_for(|m| m.failed.is_some() || m.upto.is_some_and(|u| u.index >= index))
            .await
            .map_err(|_| write_err(std::io::Error::other("log store closed")))?;
        match &m.failed {
            Some(e) => Err(write_err(std::io::Error::other(e.clone()))),
            None => Ok(()),
        }
    }

    /// `committed` capped to what is on disk here: the commit index a follower may act on.
    pub fn cap_commit(&self, committed: Option<LogId>) -> Option<LogId> {
        let upto = self.mark.borrow().upto;
        let capped = match (committed, upto) {
            (Some(c), Some(u)) if c.index > u.index => Some(u),
            (Some(_), None) => None,
            (c, _) => return c,
        };
        self.capped.store(true, Ordering::SeqCst);
        // The mark may have moved, and its watcher looked for a capped commit, between the
        // read above and the store: wake the watcher again so the commit is not left waiting
        // for the next periodic heartbeat.
        if self.mark.borrow().upto != upto {
            self.mark.send_modify(|_| {});
        }
        capped
    }

    /// Whether a commit index was capped and the mark has since caught up with every entry
    /// written: followers then need a message carrying the commit. While entries are still
    /// being synced, the ones after them will carry it (a heartbeat would take their place in
    /// openraft's one-request-at-a-time replication).
    pub fn take_capped_when_idle(&self) -> bool {
        let synced = self.mark.borrow().upto.map_or(0, |u| u.index);
        synced >= self.written.load(Ordering::Relaxed) && self.capped.swap(false, Ordering::SeqCst)
    }

    fn set_written(&self, last: Option<LogId>) {
        self.written.store(last.map_or(0, |l| l.index), Ordering::Relaxed);
    }

    /// Moves the mark up to `to`; never after a failed sync.
    fn advance(&self, to: Option<LogId>) {
        self.mark.send_if_modified(|m| {
            let newer = match (m.upto, to) {
                _ if m.failed.is_some() => false,
                (_, None) => false,
                (None, Some(_)) => true,
                (Some(a), Some(b)) => b.index > a.index,
            };
            if newer {
                m.upto = to;
            }
            newer
        });
    }

    /// After a truncation: nothing at or after `index` is known to be on disk.
    fn truncated(&self, index: u64, before: Option<LogId>) {
        self.mark.send_if_modified(|m| {
            let cut = m.upto.is_some_and(|u| u.index >= index);
            if cut {
                m.upto = before;
            }
            cut
        });
    }

    fn fail(&self, why: String) {
        self.mark.send_modify(|m| m.failed = Some(why));
    }
}

/// Lets tests hold a replica's WAL syncs (its log then stays written but not durable) or fail
/// them; no effect otherwise.
#[derive(Clone, Default, Debug)]
pub struct SyncControl {
    held: Arc<(Mutex<bool>, Condvar)>,
    fail: Arc<Mutex<Option<String>>>,
}

impl SyncControl {
    /// Makes the next syncs fail with `why` (`None`: succeed again).
    pub fn fail_syncs(&self, why: Option<&str>) {
        *self.fail.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
            why.map(str::to_owned);
    }

    fn injected_failure(&self) -> Option<String> {
        self.fail.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    pub fn hold(&self) {
        *self.held.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = true;
    }

    pub fn release(&self) {
        *self.held.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = false;
        self.held.1.notify_all();
    }

    fn wait_released(&self) {
        let mut held = self.held.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        while *held {
            held = self.held.1.wait(held).unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }
}

/// What waits for the next WAL sync.
#[derive(Default)]
struct SyncQueue {
    /// Followers' appends, acknowledged after the sync.
    waiting: Vec<LogFlushed<TypeConfig>>,
    /// The leader's appends were acknowledged already but still need a sync.
    unsynced: bool,
    /// The last entry written to RocksDB.
    written: Option<LogId>,
    /// Counts truncations: a sync that began before one says nothing about the entries
    /// written after it.
    truncations: u64,
    stop: bool,
}

struct Syncer {
    queue: Mutex<SyncQueue>,
    wake: Condvar,
    durable: Durable,
    control: SyncControl,
}

impl Syncer {
    fn start(db: Arc<DB>, metrics: Metrics, durable: Durable, control: SyncControl) -> Arc<Self> {
        let s = Arc::new(Self {
            queue: Mutex::new(SyncQueue::default()),
            wake: Condvar::new(),
            durable,
            control,
        });
        let me = s.clone();
        std::thread::Builder::new()
            .name("skiff-wal-sync".into())
            .spawn(move || me.run(&db, &metrics))
            .expect("spawning the WAL sync thread");
        s
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, SyncQueue> {
        self.queue.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn run(&self, db: &DB, metrics: &Metrics) {
        loop {
            let (batch, written, truncations) = {
                let mut q = self.queue();
                while q.waiting.is_empty() && !q.unsynced && !q.stop {
                    q = self.wake.wait(q).unwrap_or_else(std::sync::PoisonError::into_inner);
                }
                if q.waiting.is_empty() && !q.unsynced && q.stop {
                    return;
                }
                q.unsynced = false;
                // Everything written before the sync starts is durable after it.
                (std::mem::take(&mut q.waiting), q.written, q.truncations)
            };
            self.control.wait_released();
            // A failure sticks: after one, a later sync can succeed without the pages the
            // failed one lost, so nothing written since is known to be on disk.
            let res = if let Some(why) = self.durable.failure() {
                Err(why)
            } else {
                let t = Instant::now();
                let res = self
                    .control
                    .injected_failure()
                    .map_or_else(|| db.flush_wal(true).map_err(|e| e.to_string()), Err);
                metrics.fsync_seconds.observe(t.elapsed().as_secs_f64());
                if let Err(e) = &res {
                    tracing::error!(error = %e, "syncing the raft log failed");
                    self.durable.fail(e.clone());
                }
                res
            };
            if res.is_ok() {
                let mut q = self.queue();
                if q.truncations == truncations {
                    self.durable.advance(written);
                } else {
                    // The log was cut meanwhile: sync again rather than work out which of
                    // the entries this sync covered are still there.
                    q.unsynced = true;
                }
            }
            for cb in batch {
                cb.log_io_completed(res.clone().map_err(std::io::Error::other));
            }
        }
    }

    /// The last entry written is now `last`: for the next sync, and for the mark's readers.
    fn set_written(&self, q: &mut SyncQueue, last: Option<LogId>) {
        q.written = last;
        self.durable.set_written(last);
    }

    /// Records entries written up to `last`; `cb` is acknowledged after the next sync, or was
    /// already (`None`: the leader's own append).
    fn push(&self, last: Option<LogId>, cb: Option<LogFlushed<TypeConfig>>) {
        let mut q = self.queue();
        if last.is_some() {
            self.set_written(&mut q, last);
        }
        match cb {
            Some(cb) => q.waiting.push(cb),
            None => q.unsynced = true,
        }
        self.wake.notify_one();
    }
}

/// Stops the syncer thread when the last log store handle goes away.
struct SyncerHandle(Arc<Syncer>);

impl Drop for SyncerHandle {
    fn drop(&mut self) {
        let mut q = self.0.queue();
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
    /// This replica's raft id.
    id: u64,
    /// The vote last saved: whether this replica leads, and in which term.
    vote: Arc<Mutex<Option<Vote<u64>>>>,
}

impl LogStore {
    /// Opens the log of replica `id` in `db`; the log on disk is synced first, so the
    /// [`Durable`] mark starts at its last entry.
    pub fn new(
        db: Arc<DB>,
        metrics: Metrics,
        id: u64,
        control: SyncControl,
    ) -> Result<Self, StorageError> {
        db.flush_wal(true).map_err(write_err)?;
        let syncer = Syncer::start(db.clone(), metrics, Durable::new(None), control);
        let store = Self {
            db,
            syncer: Arc::new(SyncerHandle(syncer)),
            committed_saved: Arc::default(),
            id,
            vote: Arc::default(),
        };
        let last = store.last_log_id()?;
        let syncer = &store.syncer.0;
        syncer.durable.advance(last);
        syncer.set_written(&mut syncer.queue(), last);
        let mut vote: Option<Vote<u64>> = store.get_meta(KEY_VOTE)?;
        // openraft restarts a replica whose saved vote is its own and committed as the leader
        // of that term, appending at once. The leader's appends were acknowledged before they
        // were synced, so a crash may have lost entries that followers hold under the same
        // log ids, and the restarted leader would reuse those ids for other entries (a
        // follower takes an entry whose id it has as a match). Saving the vote uncommitted
        // makes the replica win an election for a new term first, as an etcd member does.
        if let Some(v) = vote.filter(|v| v.is_committed() && v.leader_id().voted_for() == Some(id))
        {
            let v = Vote::new(v.leader_id().get_term(), id);
            store.put_meta_synced(KEY_VOTE, &v)?;
            vote = Some(v);
        }
        *store.vote.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = vote;
        Ok(store)
    }

    pub fn durable(&self) -> Durable {
        self.syncer.0.durable.clone()
    }

    /// The term this replica leads, if it does (its own vote, committed by a quorum).
    fn leading_term(&self) -> Option<u64> {
        let vote = self.vote.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        vote.as_ref()
            .filter(|v| v.is_committed() && v.leader_id().voted_for() == Some(self.id))
            .map(|v| v.leader_id().get_term())
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
        // Entries up to the purge point may outlive it for a moment (see `purge`).
        let last = self.last_log_id()?.max(last_purged);
        Ok(LogState { last_purged_log_id: last_purged, last_log_id: last })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), StorageError> {
        self.put_meta_synced(KEY_VOTE, vote)?;
        *self.vote.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(*vote);
        Ok(())
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
        let leading = self.leading_term();
        let mut own = leading.is_some();
        let mut last = None;
        let mut b = WriteBatch::default();
        for e in entries {
            // Entries of the term this replica leads were proposed here, not received.
            own &= Some(e.log_id.leader_id.term) == leading;
            last = Some(e.log_id);
            b.put_cf(log, index_key(e.log_id.index), encode(&e));
        }
        // Durable only after the syncer's flush_wal(true). A follower acknowledges then; the
        // leader now (see the module comment: the Durable mark guards what it then commits).
        self.db.write(b).map_err(write_err)?;
        if own {
            callback.log_io_completed(Ok(()));
            self.syncer.0.push(last, None);
        } else {
            self.syncer.0.push(last, Some(callback));
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.db
            .delete_range_cf(cf(&self.db, CF_LOG), index_key(log_id.index), index_key(u64::MAX))
            .map_err(write_err)?;
        self.db.delete_cf(cf(&self.db, CF_LOG), index_key(u64::MAX)).map_err(write_err)?;
        // The entries after the cut are gone, synced or not; the mark falls back to the entry
        // before it (or to nothing when that one was purged: a lower mark only waits longer).
        let before = match log_id.index.checked_sub(1) {
            Some(i) => self.try_get_log_entries(i..=i).await?.pop().map(|e| e.log_id),
            None => None,
        };
        let syncer = &self.syncer.0;
        let mut q = syncer.queue();
        q.truncations += 1;
        if q.written.is_some_and(|w| w.index >= log_id.index) {
            syncer.set_written(&mut q, before);
        }
        syncer.durable.truncated(log_id.index, before);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Never past what the state machine holds: after a received snapshot, openraft purges
        // while the install still runs. The synced write below then also makes the state
        // machine's writes durable (one WAL).
        self.durable().wait_applied(log_id.index).await?;
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

#[cfg(test)]
mod tests {
    use openraft::CommittedLeaderId;

    use super::*;

    fn id(term: u64, index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(term, 0), index)
    }

    #[test]
    fn the_mark_only_moves_forward_except_when_the_log_is_cut() {
        let d = Durable::new(Some(id(1, 5)));
        d.advance(Some(id(1, 3)));
        d.advance(None);
        assert_eq!(d.get().upto, Some(id(1, 5)));
        d.advance(Some(id(2, 9)));
        assert_eq!(d.get().upto, Some(id(2, 9)));
        // A cut after the mark changes nothing; one at or before it lowers it.
        d.truncated(10, Some(id(2, 9)));
        assert_eq!(d.get().upto, Some(id(2, 9)));
        d.truncated(7, Some(id(2, 6)));
        assert_eq!(d.get().upto, Some(id(2, 6)));
    }

    #[test]
    fn followers_learn_no_commit_beyond_the_mark() {
        let d = Durable::new(Some(id(1, 5)));
        d.set_written(Some(id(1, 5)));
        assert_eq!(d.cap_commit(Some(id(1, 4))), Some(id(1, 4)));
        assert_eq!(d.cap_commit(None), None);
        assert!(!d.take_capped_when_idle());
        assert_eq!(d.cap_commit(Some(id(1, 8))), Some(id(1, 5)));
        // Entries 6..=8 are written but not synced: the next of them carries the commit.
        d.set_written(Some(id(1, 8)));
        assert!(!d.take_capped_when_idle());
        d.advance(Some(id(1, 8)));
        assert!(d.take_capped_when_idle());
        assert!(!d.take_capped_when_idle());
        let empty = Durable::new(None);
        assert_eq!(empty.cap_commit(Some(id(1, 1))), None);
        assert!(empty.take_capped_when_idle());
    }

    #[tokio::test]
    async fn waiting_ends_when_the_mark_passes_or_the_sync_fails() {
        let d = Durable::new(Some(id(1, 5)));
        d.wait_for(5).await.unwrap();
        let waiter = tokio::spawn({
            let d = d.clone();
            async move { d.wait_for(7).await }
        });
        d.advance(Some(id(1, 6)));
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        d.advance(Some(id(1, 7)));
        waiter.await.unwrap().unwrap();
        let failing = tokio::spawn({
            let d = d.clone();
            async move { d.wait_for(8).await }
        });
        d.fail("disk gone".into());
        assert!(failing.await.unwrap().is_err());
        d.advance(Some(id(1, 9)));
        assert_eq!(d.get().upto, Some(id(1, 7)));
    }

    fn open(control: SyncControl) -> (tempfile::TempDir, Arc<DB>, LogStore) {
        let dir = tempfile::Builder::new().prefix("skiff-test-log").tempdir().unwrap();
        let db = crate::db::open(dir.path()).unwrap();
        let store = LogStore::new(db.clone(), Metrics::new(), 1, control).unwrap();
        (dir, db, store)
    }

    /// Writes blank entries 1..=last of term 1, as `append` would, without syncing them.
    fn write_entries(db: &DB, last: u64) {
        for i in 1..=last {
            let e = Entry { log_id: id(1, i), payload: openraft::EntryPayload::Blank };
            db.put_cf(cf(db, CF_LOG), index_key(i), encode(&e)).unwrap();
        }
    }

    #[tokio::test]
    async fn the_log_is_purged_only_up_to_what_the_state_machine_holds() {
        let (_dir, db, store) = open(SyncControl::default());
        write_entries(&db, 5);
        let d = store.durable();
        d.set_applied(2);
        // As after a received snapshot: openraft purges while the install still runs.
        let purge = tokio::spawn({
            let mut store = store.clone();
            async move { store.purge(id(1, 4)).await }
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        while d.applied.receiver_count() == 0 {
            assert!(Instant::now() < deadline, "the purge did not wait for the state machine");
            tokio::task::yield_now().await;
        }
        assert!(!purge.is_finished());
        let mut reader = store.clone();
        assert_eq!(reader.get_log_state().await.unwrap().last_purged_log_id, None);
        assert_eq!(reader.try_get_log_entries(1..=1).await.unwrap().len(), 1);
        d.set_applied(4);
        purge.await.unwrap().unwrap();
        let state = reader.get_log_state().await.unwrap();
        assert_eq!((state.last_purged_log_id, state.last_log_id), (Some(id(1, 4)), Some(id(1, 5))));
        // A state machine that failed never gets there: the purge fails instead of hanging.
        let mut waiting = store.clone();
        let purge = tokio::spawn(async move { waiting.purge(id(1, 5)).await });
        d.applying_failed();
        assert!(purge.await.unwrap().is_err());
    }

    #[tokio::test]
    async fn a_purge_point_past_the_last_entry_is_the_last_log_id() {
        let (_dir, db, mut store) = open(SyncControl::default());
        write_entries(&db, 3);
        // A crash between recording the purge point and deleting the entries.
        store.put_meta_synced(KEY_PURGED, &id(1, 9)).unwrap();
        let state = store.get_log_state().await.unwrap();
        assert_eq!(state.last_log_id, Some(id(1, 9)));
    }

    #[tokio::test]
    async fn a_restarted_leader_must_win_a_new_term_before_it_appends() {
        let (_dir, db, mut store) = open(SyncControl::default());
        store.save_vote(&Vote::new_committed(3, 1)).await.unwrap();
        assert_eq!(store.leading_term(), Some(3));
        let mut restarted =
            LogStore::new(db.clone(), Metrics::new(), 1, SyncControl::default()).unwrap();
        assert_eq!(restarted.read_vote().await.unwrap(), Some(Vote::new(3, 1)));
        assert_eq!(restarted.leading_term(), None);
        // Another replica's leadership survives a restart: this one follows it.
        restarted.save_vote(&Vote::new_committed(4, 2)).await.unwrap();
        let mut again = LogStore::new(db, Metrics::new(), 1, SyncControl::default()).unwrap();
        assert_eq!(again.read_vote().await.unwrap(), Some(Vote::new_committed(4, 2)));
    }

    #[tokio::test]
    async fn nothing_becomes_durable_after_a_failed_sync() {
        let control = SyncControl::default();
        let (_dir, _db, store) = open(control.clone());
        let (syncer, d) = (&store.syncer.0, store.durable());
        syncer.push(Some(id(1, 1)), None);
        d.wait_for(1).await.unwrap();
        control.fail_syncs(Some("injected EIO"));
        syncer.push(Some(id(1, 2)), None);
        assert!(d.wait_for(2).await.is_err());
        // Syncs work again, but the failed one may have lost pages: the mark stays.
        control.fail_syncs(None);
        syncer.push(Some(id(1, 3)), None);
        assert!(d.wait_for(3).await.is_err());
        assert_eq!(d.get().upto, Some(id(1, 1)));
        assert_eq!(d.cap_commit(Some(id(1, 3))), Some(id(1, 1)));
    }

    #[tokio::test]
    async fn a_sync_overtaken_by_a_cut_is_followed_by_another() {
        let control = SyncControl::default();
        let (_dir, db, mut store) = open(control.clone());
        write_entries(&db, 5);
        control.hold();
        store.syncer.0.push(Some(id(1, 5)), None);
        // The syncer takes the entries up to 5 for its (held) sync...
        let deadline = Instant::now() + Duration::from_secs(10);
        while store.syncer.0.queue().unsynced {
            assert!(Instant::now() < deadline, "the syncer never took the entries");
            std::thread::yield_now();
        }
        // ...then the log is cut after 3: that sync no longer says which entries are on disk,
        // but 1..=3 were written before it and must become durable without another append.
        store.truncate(id(1, 4)).await.unwrap();
        control.release();
        tokio::time::timeout(Duration::from_secs(10), store.durable().wait_for(3))
            .await
            .expect("entries before the cut never became durable")
            .unwrap();
        assert_eq!(store.durable().get().upto, Some(id(1, 3)));
    }
}
