//! The raft state machine: applies committed batches to the MVCC store in one RocksDB write
//! per `apply` call, publishes their events to watchers, and builds/installs snapshots of all
//! MVCC data (retained history included, so watchers on a replica that installed a snapshot
//! can still start from any retained revision).

#![expect(clippy::result_large_err, reason = "openraft's StorageError is what the traits return")]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    EntryPayload, OptionalSend, RaftSnapshotBuilder, SnapshotMeta, StorageIOError, StoredMembership,
};
use serde::{Deserialize, Serialize};

use super::log_store::Durable;
use super::{LogId, Member, ProposalResult, StorageError, TypeConfig, encode};
use crate::metrics::Metrics;
use crate::mvcc::{EventDetail, Mvcc};
use crate::watch::WatchHub;

type Entry = openraft::Entry<TypeConfig>;
type Meta = SnapshotMeta<u64, Member>;

/// The current snapshot's meta and the name of its data file (written last, atomically).
const SNAPSHOT_META: &str = "raft-snapshot.meta";
/// Before data files: meta and data in one file. Converted at open.
const OLD_SNAPSHOT_FILE: &str = "raft-snapshot.bin";
/// Data files are `snapshot-*.data`; `*.part` while being written or received.
const DATA_PREFIX: &str = "snapshot-";

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

/// What `SNAPSHOT_META` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SavedSnapshot {
    meta: Meta,
    /// File name (in the data dir) of the snapshot data: `bincode(MvccDump)` layout.
    data: String,
}

/// The single-file snapshot of earlier versions.
#[derive(Deserialize)]
struct OldSnapshotFile {
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
    /// The file a snapshot from the leader is being received into.
    receiving: Option<PathBuf>,
    /// How far the raft log is on disk here: nothing beyond it is applied.
    durable: Durable,
}

impl StateMachine {
    pub fn new(
        mvcc: Arc<Mvcc>,
        hub: WatchHub,
        metrics: Metrics,
        dir: PathBuf,
        durable: Durable,
    ) -> Result<Self, StorageError> {
        let state = AppliedState::decode(&mvcc.applied())?;
        let files = Arc::new(SnapshotFiles::open(dir)?);
        durable.set_applied(state.last_applied.map_or(0, |l| l.index));
        Ok(Self { mvcc, hub, metrics, state, files, receiving: None, durable })
    }
}

/// The snapshot files of a replica and what their writers share. A snapshot is a data file
/// plus `SNAPSHOT_META` naming it; data is streamed into a `.part` file, synced and renamed,
/// and only then does the meta (replaced atomically) point at it, so a crash at any step
/// leaves the previous snapshot intact.
struct SnapshotFiles {
    dir: PathBuf,
    /// The last log id of the snapshot on disk; also the lock its writers (and readers) take.
    saved: Mutex<Option<LogId>>,
    /// Snapshots built by this process, numbering their ids.
    built: AtomicU64,
    /// Makes data file names unique: this process's start time and a counter.
    started: u128,
    files: AtomicU64,
}

impl SnapshotFiles {
    /// Reads the current snapshot's meta, converts an old single-file snapshot and removes data
    /// files nothing points at (left by a crash or an abandoned transfer).
    fn open(dir: PathBuf) -> Result<Self, StorageError> {
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let files = Self {
            dir,
            saved: Mutex::new(None),
            built: AtomicU64::new(0),
            started,
            files: AtomicU64::new(0),
        };
        let old = files.dir.join(OLD_SNAPSHOT_FILE);
        if files.current()?.is_none() && old.exists() {
            let bytes = std::fs::read(&old).map_err(|e| snap_read_err(None, &e))?;
            let f: OldSnapshotFile =
                bincode::deserialize(&bytes).map_err(|e| snap_read_err(None, &e))?;
            let (path, mut file) = files.new_part()?;
            let write = |e| snap_write_err(&f.meta, &e);
            std::io::Write::write_all(&mut file, &f.data).map_err(write)?;
            file.sync_all().map_err(write)?;
            files.save(&f.meta, &path)?;
        }
        if old.exists() {
            std::fs::remove_file(&old).map_err(|e| snap_read_err(None, &e))?;
        }
        let current = files.current()?;
        *files.saved.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
            current.as_ref().and_then(|c| c.meta.last_log_id);
        files.remove_unused(current.as_ref().map(|c| c.data.as_str()), true);
        Ok(files)
    }

    /// The current snapshot, if any.
    fn current(&self) -> Result<Option<SavedSnapshot>, StorageError> {
        match std::fs::read(self.dir.join(SNAPSHOT_META)) {
            Ok(b) => bincode::deserialize(&b).map(Some).map_err(|e| snap_read_err(None, &e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(snap_read_err(None, &e)),
        }
    }

    /// Opens the current snapshot for reading.
    fn open_current(&self) -> Result<Option<(Meta, std::fs::File)>, StorageError> {
        let _writers = self.saved.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(c) = self.current()? else { return Ok(None) };
        let f = std::fs::File::open(self.dir.join(&c.data))
            .map_err(|e| snap_read_err(Some(&c.meta), &e))?;
        Ok(Some((c.meta, f)))
    }

    /// A new, empty data file to stream a snapshot into.
    fn new_part(&self) -> Result<(PathBuf, std::fs::File), StorageError> {
        let n = self.files.fetch_add(1, Ordering::Relaxed);
        let path = self.dir.join(format!("{DATA_PREFIX}{}-{n}.part", self.started));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| snap_read_err(None, &e))?;
        Ok((path, file))
    }

    /// Makes the synced `part` the current snapshot. A build (on its own thread) and an
    /// install can finish at the same time: writers take turns, and one that would replace a
    /// newer snapshot removes its file instead.
    fn save(&self, meta: &Meta, part: &Path) -> Result<(), StorageError> {
        let mut saved = self.saved.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let err = |e: std::io::Error| snap_write_err(meta, &e);
        if saved.is_some() && meta.last_log_id < *saved {
            tracing::info!(snapshot = %meta.snapshot_id, "a newer snapshot is on disk; not replacing it");
            return std::fs::remove_file(part).map_err(err);
        }
        let data = part.with_extension("data");
        std::fs::rename(part, &data).map_err(err)?;
        let name = data.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let record = SavedSnapshot { meta: meta.clone(), data: name };
        let path = self.dir.join(SNAPSHOT_META);
        let tmp = path.with_extension("tmp");
        {
            let mut f = std::fs::File::create(&tmp).map_err(err)?;
            std::io::Write::write_all(&mut f, &encode(&record)).map_err(err)?;
            f.sync_all().map_err(err)?;
        }
        std::fs::rename(&tmp, &path).map_err(err)?;
        std::fs::File::open(&self.dir).and_then(|d| d.sync_all()).map_err(err)?;
        *saved = meta.last_log_id;
        self.remove_unused(Some(&record.data), false);
        Ok(())
    }

    /// Removes data files other than `keep` (and, at open, unfinished `.part` files; later a
    /// `.part` may be a transfer in progress). Open readers keep their file until they close it.
    fn remove_unused(&self, keep: Option<&str>, parts_too: bool) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let ext = Path::new(&name).extension().and_then(|x| x.to_str());
            let unused = name.starts_with(DATA_PREFIX)
                && Some(name.as_str()) != keep
                && (ext == Some("data") || (parts_too && ext == Some("part")));
            if unused && let Err(err) = std::fs::remove_file(e.path()) {
                tracing::warn!(file = %name, error = %err, "removing an old snapshot file");
            }
        }
    }
}

/// Streams the MVCC data into a new snapshot file: blocking work, run on a thread of its own.
/// The dump reads a RocksDB snapshot, so applies go on meanwhile.
fn build_snapshot_blocking(
    mvcc: &Mvcc,
    files: &SnapshotFiles,
) -> Result<Snapshot<TypeConfig>, StorageError> {
    let (part, mut file) = files.new_part()?;
    let built = write_snapshot(mvcc, files, &part, &mut file);
    if built.is_err() {
        let _ = std::fs::remove_file(&part);
    }
    let meta = built?;
    Ok(Snapshot { meta, snapshot: Box::new(tokio::fs::File::from_std(file)) })
}

/// Dumps into `file` (at `part`), saves it as the current snapshot and rewinds `file` so it can
/// be read back (it stays readable if a newer snapshot replaced it meanwhile).
fn write_snapshot(
    mvcc: &Mvcc,
    files: &SnapshotFiles,
    part: &Path,
    file: &mut std::fs::File,
) -> Result<Meta, StorageError> {
    use std::io::{Seek, Write};
    let mut w = std::io::BufWriter::new(&*file);
    let dump = mvcc.dump_into(&mut w, true).map_err(sm_err)?;
    w.flush().map_err(sm_err)?;
    drop(w);
    file.sync_all().map_err(sm_err)?;
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
    files.save(&meta, part)?;
    file.rewind().map_err(sm_err)?;
    tracing::info!(snapshot = %meta.snapshot_id, records = dump.records, revision = dump.revision, "built snapshot");
    Ok(meta)
}

fn snap_read_err(meta: Option<&Meta>, e: &(impl std::error::Error + 'static)) -> StorageError {
    StorageIOError::read_snapshot(meta.map(Meta::signature), e).into()
}

fn snap_write_err(meta: &Meta, e: &(impl std::error::Error + 'static)) -> StorageError {
    StorageIOError::write_snapshot(Some(meta.signature()), e).into()
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
        let entries: Vec<Entry> = entries.into_iter().collect();
        // The leader acknowledges its own appends before they are synced (see `log_store`),
        // so openraft may commit an entry that is not on the leader's disk yet.
        if let Some(last) = entries.last() {
            self.durable.wait_for(last.log_id.index).await?;
        }
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
        self.durable.set_applied(self.state.last_applied.map_or(0, |l| l.index));
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
            receiving: None,
            durable: self.durable.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, StorageError> {
        // A transfer that was abandoned for a newer one leaves its file behind.
        if let Some(old) = self.receiving.take() {
            let _ = std::fs::remove_file(old);
        }
        let (path, file) = self.files.new_part()?;
        self.receiving = Some(path);
        Ok(Box::new(tokio::fs::File::from_std(file)))
    }

    async fn install_snapshot(
        &mut self,
        meta: &Meta,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError> {
        let part = self.receiving.take().ok_or_else(|| {
            snap_read_err(Some(meta), &std::io::Error::other("no snapshot was being received"))
        })?;
        let installed = self.install_received(meta, *snapshot, &part).await;
        if installed.is_err() {
            let _ = std::fs::remove_file(&part);
            // openraft stops on the error; a purge waiting for the install must too.
            self.durable.applying_failed();
        }
        installed
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        Ok(self.files.open_current()?.map(|(meta, file)| Snapshot {
            meta,
            snapshot: Box::new(tokio::fs::File::from_std(file)),
        }))
    }
}

impl StateMachine {
    /// Reads the snapshot received into `part` into the store and makes it the current one.
    async fn install_received(
        &mut self,
        meta: &Meta,
        mut snapshot: tokio::fs::File,
        part: &Path,
    ) -> Result<(), StorageError> {
        use std::io::Seek;
        use tokio::io::AsyncWriteExt;
        let err = |e: std::io::Error| snap_read_err(Some(meta), &e);
        // Completes writes still in flight (and reports their errors).
        snapshot.flush().await.map_err(err)?;
        let mut file = snapshot.into_std().await;
        file.sync_all().map_err(err)?;
        file.rewind().map_err(err)?;
        let state = AppliedState {
            last_applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
        };
        // Reading a large snapshot takes a while: off the runtime, so this member's other
        // tasks (heartbeats, client reads) keep a worker thread.
        let (mvcc, applied) = (self.mvcc.clone(), encode(&state));
        let revision = tokio::task::spawn_blocking(move || {
            mvcc.restore_from(&mut std::io::BufReader::new(&file), applied)
        })
        .await
        .map_err(|e| err(std::io::Error::other(e.to_string())))?
        .map_err(|e| snap_read_err(Some(meta), &e))?;
        // The meta naming this snapshot must not be on disk before the state it describes:
        // openraft refuses any snapshot not newer than the current one.
        self.mvcc.db().flush_wal(true).map_err(sm_err)?;
        self.files.save(meta, part)?;
        self.state = state;
        self.durable.set_applied(meta.last_log_id.map_or(0, |l| l.index));
        // Watchers re-read history: the data under them was replaced.
        self.hub.publish(revision + 2, revision, Vec::new(), EventDetail::None);
        tracing::info!(snapshot = %meta.snapshot_id, revision, "installed snapshot");
        Ok(())
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

    fn part_with(files: &SnapshotFiles, bytes: &[u8]) -> PathBuf {
        let (path, mut f) = files.new_part().unwrap();
        std::io::Write::write_all(&mut f, bytes).unwrap();
        path
    }

    fn current_data(files: &SnapshotFiles) -> (String, Vec<u8>) {
        let (meta, mut f) = files.open_current().unwrap().expect("a current snapshot");
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut f, &mut data).unwrap();
        (meta.snapshot_id, data)
    }

    fn snapshot_files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(DATA_PREFIX))
            .collect();
        names.sort();
        names
    }

    #[test]
    fn an_older_snapshot_never_replaces_a_newer_one() {
        let dir = tempfile::Builder::new().prefix("skiff-test-snap").tempdir().unwrap();
        let files = SnapshotFiles::open(dir.path().to_path_buf()).unwrap();
        let started_old = part_with(&files, b"old");
        files.save(&meta(20), &part_with(&files, b"new")).unwrap();
        // A build that started before an install and finished after it.
        files.save(&meta(10), &started_old).unwrap();
        assert_eq!(current_data(&files), ("1-20".into(), b"new".to_vec()));
        files.save(&meta(30), &part_with(&files, b"newer")).unwrap();
        assert_eq!(current_data(&files), ("1-30".into(), b"newer".to_vec()));
        assert_eq!(snapshot_files(dir.path()).len(), 1, "{:?}", snapshot_files(dir.path()));
    }

    #[test]
    fn a_reader_keeps_its_snapshot_when_a_newer_one_lands() {
        let dir = tempfile::Builder::new().prefix("skiff-test-snap").tempdir().unwrap();
        let files = SnapshotFiles::open(dir.path().to_path_buf()).unwrap();
        files.save(&meta(20), &part_with(&files, b"first")).unwrap();
        let (_, mut sending) = files.open_current().unwrap().unwrap();
        files.save(&meta(30), &part_with(&files, b"second")).unwrap();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut sending, &mut data).unwrap();
        assert_eq!(data, b"first");
    }

    #[test]
    fn open_converts_an_old_snapshot_and_removes_leftovers() {
        let dir = tempfile::Builder::new().prefix("skiff-test-snap").tempdir().unwrap();
        // The old layout: bincode of the meta followed by the data as a byte string.
        let old = bincode::serialize(&(meta(7), b"dump".to_vec())).unwrap();
        std::fs::write(dir.path().join(OLD_SNAPSHOT_FILE), old).unwrap();
        // A crash mid-build and a transfer that never finished.
        std::fs::write(dir.path().join(format!("{DATA_PREFIX}1-0.part")), b"x").unwrap();
        std::fs::write(dir.path().join(format!("{DATA_PREFIX}1-1.data")), b"y").unwrap();
        let files = SnapshotFiles::open(dir.path().to_path_buf()).unwrap();
        assert_eq!(current_data(&files), ("1-7".into(), b"dump".to_vec()));
        assert!(!dir.path().join(OLD_SNAPSHOT_FILE).exists());
        assert_eq!(snapshot_files(dir.path()).len(), 1, "{:?}", snapshot_files(dir.path()));
        // Reopening finds the same snapshot.
        drop(files);
        let files = SnapshotFiles::open(dir.path().to_path_buf()).unwrap();
        assert_eq!(current_data(&files), ("1-7".into(), b"dump".to_vec()));
        assert_eq!(*files.saved.lock().unwrap(), meta(7).last_log_id);
    }
}
