//! The raft state machine: applies committed batches to the MVCC store in one RocksDB write
//! per `apply` call, publishes their events to watchers, and builds/installs snapshots of all
//! MVCC data (retained history included, so watchers on a replica that installed a snapshot
//! can still start from any retained revision).

#![expect(clippy::result_large_err, reason = "openraft's StorageError is what the traits return")]

use std::io::Cursor;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    EntryPayload, OptionalSend, RaftSnapshotBuilder, SnapshotMeta, StorageIOError, StoredMembership,
};
use serde::{Deserialize, Serialize};

use super::{LogId, Member, ProposalResult, StorageError, TypeConfig, encode};
use crate::metrics::Metrics;
use crate::mvcc::{EventDetail, Mvcc, MvccDump};
use crate::watch::WatchHub;

type Entry = openraft::Entry<TypeConfig>;
type Meta = SnapshotMeta<u64, Member>;

const SNAPSHOT_FILE: &str = "raft-snapshot.bin";

/// What the state machine records next to the MVCC data, atomically with it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AppliedState {
    pub last_applied: Option<LogId>,
    pub membership: StoredMembership<u64, Member>,
}

impl AppliedState {
    pub fn decode(b: &[u8]) -> Result<Self, StorageError> {
        if b.is_empty() {
            return Ok(Self::default());
        }
        bincode::deserialize(b).map_err(|e| StorageIOError::read_state_machine(&e).into())
    }
}

/// A snapshot on disk: openraft's meta and the MVCC dump it describes.
#[derive(Debug, Serialize, Deserialize)]
struct SnapshotFile {
    meta: Meta,
    #[serde(with = "crate::types::bytes")]
    data: Vec<u8>,
}

/// The state machine handed to openraft.
pub struct StateMachine {
    mvcc: Arc<Mvcc>,
    hub: WatchHub,
    metrics: Metrics,
    state: AppliedState,
    /// Shared with the snapshot builders openraft asks for.
    files: Arc<SnapshotFiles>,
}

impl StateMachine {
    pub fn new(
        mvcc: Arc<Mvcc>,
        hub: WatchHub,
        metrics: Metrics,
        dir: PathBuf,
    ) -> Result<Self, StorageError> {
        let state = AppliedState::decode(&mvcc.applied())?;
        let files =
            Arc::new(SnapshotFiles { dir, saved: Mutex::new(None), built: AtomicU64::new(0) });
        Ok(Self { mvcc, hub, metrics, state, files })
    }
}

/// The snapshot file of a replica and what its writers share.
struct SnapshotFiles {
    dir: PathBuf,
    /// The last log id of the snapshot file on disk; also the lock its writers take.
    saved: Mutex<Option<LogId>>,
    /// Snapshots built by this process, numbering their ids.
    built: AtomicU64,
}

impl SnapshotFiles {
    fn path(&self) -> PathBuf {
        self.dir.join(SNAPSHOT_FILE)
    }

    /// Writes the snapshot file (atomically: temp file, sync, rename) and hands `data` back. A
    /// build (on its own thread) and an install can finish at the same time: writers take
    /// turns, and one that would replace a newer snapshot leaves the file alone.
    fn save(&self, meta: &Meta, data: Vec<u8>) -> Result<Vec<u8>, StorageError> {
        let mut saved = self.saved.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if saved.is_some() && meta.last_log_id < *saved {
            tracing::info!(snapshot = %meta.snapshot_id, "a newer snapshot is on disk; not replacing it");
            return Ok(data);
        }
        let file = SnapshotFile { meta: meta.clone(), data };
        let path = self.path();
        let tmp = path.with_extension("tmp");
        let err = |e: std::io::Error| -> StorageError {
            StorageIOError::write_snapshot(Some(meta.signature()), &e).into()
        };
        {
            use std::io::Write;
            // Serialized straight into the file: the data can be tens of MB, no second copy.
            let mut w = std::io::BufWriter::new(std::fs::File::create(&tmp).map_err(err)?);
            bincode::serialize_into(&mut w, &file).map_err(|e| err(std::io::Error::other(e)))?;
            w.flush().map_err(err)?;
            w.get_ref().sync_all().map_err(err)?;
        }
        std::fs::rename(&tmp, &path).map_err(err)?;
        *saved = meta.last_log_id;
        Ok(file.data)
    }
}

/// Dumps the MVCC data and writes the snapshot file: blocking work, run on a thread of its own.
/// The dump reads a RocksDB snapshot, so applies go on meanwhile.
fn build_snapshot_blocking(
    mvcc: &Mvcc,
    files: &SnapshotFiles,
) -> Result<Snapshot<TypeConfig>, StorageError> {
    let dump = mvcc.dump().map_err(sm_err)?;
    // openraft purges the log up to this snapshot: make the state it reflects durable.
    mvcc.db().flush_wal(true).map_err(sm_err)?;
    let applied = AppliedState::decode(&dump.applied)?;
    let built = files.built.fetch_add(1, Ordering::Relaxed) + 1;
    let snapshot_id = format!(
        "{}-{}-{built}",
        applied.last_applied.as_ref().map_or(0, |l| l.leader_id.term),
        applied.last_applied.as_ref().map_or(0, |l| l.index),
    );
    let meta = Meta {
        last_log_id: applied.last_applied,
        last_membership: applied.membership,
        snapshot_id,
    };
    let data = files.save(&meta, encode(&dump))?;
    tracing::info!(snapshot = %meta.snapshot_id, bytes = data.len(), revision = dump.revision, "built snapshot");
    Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(data)) })
}

fn sm_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_state_machine(&e).into()
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let (mvcc, files) = (self.mvcc.clone(), self.files.clone());
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("skiff-snapshot".into())
            .spawn(move || {
                background_priority();
                let _ = tx.send(build_snapshot_blocking(&mvcc, &files));
            })
            .map_err(sm_err)?;
        rx.await.map_err(|_| sm_err(std::io::Error::other("the snapshot thread panicked")))?
    }
}

/// Gives the calling thread the lowest CPU priority (nice 19; on Linux nice is per thread), so
/// a snapshot build takes whatever CPU the write path leaves. Built at normal priority, a
/// snapshot landing in a 256-client benchmark phase doubled its p99 and cost ~15% throughput.
#[expect(unsafe_code, reason = "setpriority has no safe wrapper in std or nix")]
fn background_priority() {
    // SAFETY: gettid and setpriority take and return plain integers and touch no memory of ours.
    let r = unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, libc::id_t::try_from(tid).unwrap_or(0), 19)
    };
    if r != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "lowering the snapshot thread's priority");
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId>, StoredMembership<u64, Member>), StorageError> {
        Ok((self.state.last_applied, self.state.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<ProposalResult>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let t = Instant::now();
        let hub = &self.hub;
        let mut w = self.mvcc.writer_with(|| hub.event_detail());
        let from = w.revision() + 1;
        let mut out = Vec::new();
        let mut ops = 0u64;
        for e in entries {
            self.state.last_applied = Some(e.log_id);
            match e.payload {
                EntryPayload::Blank => out.push(ProposalResult::default()),
                EntryPayload::Normal(p) => {
                    let mut results = Vec::with_capacity(p.ops.len());
                    for op in p.ops {
                        results.push(w.apply(op).map_err(sm_err)?);
                    }
                    ops += results.len() as u64;
                    out.push(ProposalResult { results });
                }
                EntryPayload::Membership(m) => {
                    self.state.membership = StoredMembership::new(Some(e.log_id), m);
                    out.push(ProposalResult::default());
                }
            }
        }
        let detail = w.detail();
        let (to, events) = w.commit(Some(encode(&self.state))).map_err(sm_err)?;
        self.hub.publish(from, to, events, detail);
        self.metrics.proposals_committed.inc_by(ops);
        self.metrics.apply_seconds.observe(t.elapsed().as_secs_f64());
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        Self {
            mvcc: self.mvcc.clone(),
            hub: self.hub.clone(),
            metrics: self.metrics.clone(),
            state: self.state.clone(),
            files: self.files.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &Meta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        let mut dump: MvccDump = bincode::deserialize(&data).map_err(|e| {
            StorageError::from(StorageIOError::read_snapshot(Some(meta.signature()), &e))
        })?;
        let state = AppliedState {
            last_applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
        };
        dump.applied = encode(&state);
        self.mvcc.restore(&dump).map_err(sm_err)?;
        self.files.save(meta, data)?;
        self.state = state;
        // Watchers re-read history: the data under them was replaced.
        self.hub.publish(dump.revision + 2, dump.revision, Vec::new(), EventDetail::None);
        tracing::info!(snapshot = %meta.snapshot_id, revision = dump.revision, "installed snapshot");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let bytes = match std::fs::read(self.files.path()) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StorageIOError::read_snapshot(None, &e).into()),
        };
        let f: SnapshotFile = bincode::deserialize(&bytes)
            .map_err(|e| StorageError::from(StorageIOError::read_snapshot(None, &e)))?;
        Ok(Some(Snapshot { meta: f.meta, snapshot: Box::new(Cursor::new(f.data)) }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(index: u64) -> Meta {
        Meta {
            last_log_id: Some(LogId::new(openraft::CommittedLeaderId::new(1, 1), index)),
            last_membership: StoredMembership::default(),
            snapshot_id: format!("1-{index}"),
        }
    }

    fn on_disk(files: &SnapshotFiles) -> SnapshotFile {
        bincode::deserialize(&std::fs::read(files.path()).unwrap()).unwrap()
    }

    #[test]
    fn an_older_snapshot_never_replaces_a_newer_one() {
        let dir = tempfile::Builder::new().prefix("skiff-test-snap").tempdir().unwrap();
        let files = SnapshotFiles {
            dir: dir.path().to_path_buf(),
            saved: Mutex::default(),
            built: AtomicU64::default(),
        };
        files.save(&meta(20), b"new".to_vec()).unwrap();
        // A build that started before an install and finished after it.
        let back = files.save(&meta(10), b"old".to_vec()).unwrap();
        assert_eq!(back, b"old");
        let f = on_disk(&files);
        assert_eq!((f.meta.snapshot_id.as_str(), f.data.as_slice()), ("1-20", &b"new"[..]));
        files.save(&meta(30), b"newer".to_vec()).unwrap();
        assert_eq!(on_disk(&files).data, b"newer");
    }
}
