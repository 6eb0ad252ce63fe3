//! Backup files (`skiff-master snapshot save|restore`, etcd `Maintenance.Snapshot`): a
//! consistent MVCC dump with a magic header and a SHA-256 trailer, so a truncated or altered
//! file is refused before anything is written.
//!
//! Layout: `MAGIC | u64 BE payload length | bincode(MvccDump) | zero padding to a multiple of
//! 512 bytes | SHA-256 of everything before`. The padding mirrors etcd's bolt snapshot (pages
//! plus a 32-byte hash), which `etcdctl snapshot save` checks for (`size % 512 == 32`).

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::error::StoreError;
#[cfg(test)]
use crate::mvcc::MvccDump;
use crate::mvcc::{Mvcc, read_dump};

const MAGIC: &[u8] = b"SKIFF-BACKUP-1\n";

/// Why a backup file was refused.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("not a skiff backup (bad magic header)")]
    BadMagic,
    #[error("backup is truncated or corrupt: sha256 mismatch")]
    HashMismatch,
    #[error("backup content does not decode: {0}")]
    Decode(String),
    #[error("data dir {0} is not empty; restore needs a fresh directory")]
    NotEmpty(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Serializes a dump (its raft applied state is dropped: a backup is data, not membership).
/// The in-memory reference for [`write`].
#[cfg(test)]
pub fn encode(dump: &MvccDump) -> Vec<u8> {
    let mut d = dump.clone();
    d.applied = Vec::new();
    let payload = bincode::serialize(&d).expect("serializing an in-memory dump cannot fail");
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&(payload.len() as u64).to_be_bytes());
    out.extend(payload);
    out.resize(out.len().div_ceil(512) * 512, 0);
    let hash = Sha256::digest(&out);
    out.extend_from_slice(&hash);
    out
}

/// Writes a backup of `mvcc` into the empty `file` (the bytes [`encode`] makes of its dump),
/// streaming the records instead of holding them: the file is written, its payload length
/// filled in, then read back once for the hash. Returns the backup's revision.
pub fn write(mvcc: &Mvcc, file: &mut File) -> Result<i64, StoreError> {
    use std::io::Write;
    let io = |source| StoreError::Io { path: "backup".into(), source };
    let mut w = std::io::BufWriter::new(&*file);
    w.write_all(MAGIC).map_err(io)?;
    w.write_all(&[0; 8]).map_err(io)?;
    let dump = mvcc.dump_into(&mut w, false)?;
    let end = w.stream_position().map_err(io)?;
    let header = (MAGIC.len() + 8) as u64;
    w.seek(SeekFrom::Start(MAGIC.len() as u64)).map_err(io)?;
    w.write_all(&(end - header).to_be_bytes()).map_err(io)?;
    w.seek(SeekFrom::Start(end)).map_err(io)?;
    let padding = end.div_ceil(512) * 512 - end;
    w.write_all(&vec![0; usize::try_from(padding).unwrap_or(0)]).map_err(io)?;
    w.flush().map_err(io)?;
    drop(w);
    let hash = sha256_of(file, end + padding).map_err(io)?;
    file.write_all(&hash.finalize()).map_err(io)?;
    file.rewind().map_err(io)?;
    Ok(dump.revision)
}

/// SHA-256 of the first `len` bytes of `file`, read once from its start.
fn sha256_of(file: &mut File, len: u64) -> std::io::Result<Sha256> {
    file.rewind()?;
    let mut hash = Sha256::new();
    let mut buf = vec![0; 1 << 20];
    let mut left = len;
    while left > 0 {
        let want = usize::try_from(left.min(buf.len() as u64)).unwrap_or(buf.len());
        file.read_exact(&mut buf[..want])?;
        hash.update(&buf[..want]);
        left -= want as u64;
    }
    Ok(hash)
}

/// A backup file whose magic header, size and SHA-256 trailer check out. Checking reads the
/// file once; nothing of it is held in memory.
pub struct Checked {
    file: File,
    payload_len: u64,
    /// Size of the file.
    pub bytes: u64,
    /// Hex SHA-256 of the whole file (what `snapshot save` prints).
    pub sha256: String,
}

impl Checked {
    pub fn open(path: &Path) -> Result<Self, BackupError> {
        let io = |source| StoreError::Io { path: path.display().to_string(), source };
        let mut file = File::open(path).map_err(io)?;
        let bytes = file.metadata().map_err(io)?.len();
        let mut magic = vec![0; MAGIC.len()];
        if file.read_exact(&mut magic).is_err() || magic != MAGIC {
            return Err(BackupError::BadMagic);
        }
        let header = (MAGIC.len() + 8) as u64;
        if bytes < header + 32 || bytes % 512 != 32 {
            return Err(BackupError::HashMismatch);
        }
        let body = sha256_of(&mut file, bytes - 32).map_err(io)?;
        let mut trailer = [0u8; 32];
        file.read_exact(&mut trailer).map_err(io)?;
        let mut whole = body.clone();
        whole.update(trailer);
        if body.finalize().as_slice() != trailer {
            return Err(BackupError::HashMismatch);
        }
        file.seek(SeekFrom::Start(MAGIC.len() as u64)).map_err(io)?;
        let mut len = [0u8; 8];
        file.read_exact(&mut len).map_err(io)?;
        let payload_len = u64::from_be_bytes(len);
        if payload_len > bytes - header - 32 {
            return Err(BackupError::Decode(format!(
                "payload length {payload_len} exceeds the file"
            )));
        }
        let sha256 = whole.finalize().iter().fold(String::with_capacity(64), |mut s, b| {
            use std::fmt::Write;
            let _ = write!(s, "{b:02x}");
            s
        });
        Ok(Self { file, payload_len, bytes, sha256 })
    }

    /// The payload (`bincode(MvccDump)`), from its start.
    fn payload(&mut self) -> Result<impl Read + '_, BackupError> {
        let at = (MAGIC.len() + 8) as u64;
        self.file
            .seek(SeekFrom::Start(at))
            .map_err(|source| StoreError::Io { path: "backup".into(), source })?;
        Ok(BufReader::new(&self.file).take(self.payload_len))
    }

    /// The backup's revision and how many key versions it holds, deletions not counted
    /// (etcd's `snapshot status` counts its stored revisions the same way). Decodes every
    /// record and keeps none.
    pub fn summary(&mut self) -> Result<(i64, usize), BackupError> {
        let mut versions = 0;
        let (revision, _) =
            read_dump(&mut self.payload()?, |_, r| versions += usize::from(!r.tombstone))
                .map_err(|e| BackupError::Decode(e.to_string()))?;
        Ok((revision, versions))
    }
}

/// Creates a new replica data dir holding the data of the backup at `backup`; the member then
/// starts with `--initial-cluster` as a new cluster and serves the same keys at the same
/// revisions. Returns the backup's revision.
pub fn restore_into(data_dir: &Path, backup: &Path) -> Result<i64, BackupError> {
    let mut checked = Checked::open(backup)?;
    let io = |source| StoreError::Io { path: data_dir.display().to_string(), source };
    // Anything already there (a store, or an old member's snapshot files, which the new
    // member would take for its own) is refused.
    let empty = match std::fs::read_dir(data_dir) {
        Ok(mut entries) => entries.next().is_none(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
        Err(e) => return Err(io(e).into()),
    };
    if !empty {
        return Err(BackupError::NotEmpty(data_dir.display().to_string()));
    }
    std::fs::create_dir_all(data_dir).map_err(io)?;
    // Built aside and renamed into place: a restore cut short leaves no `db` a member would
    // start from.
    let partial = data_dir.join("db.restoring");
    let restored = (|| {
        let db = crate::db::open(&partial)?;
        let mvcc = Mvcc::open(db.clone())?;
        let revision = mvcc.restore_from(&mut checked.payload()?, Vec::new())?;
        db.flush_wal(true).map_err(StoreError::from)?;
        Ok::<_, BackupError>(revision)
    })();
    match restored {
        Ok(revision) => {
            std::fs::rename(&partial, data_dir.join("db")).map_err(io)?;
            File::open(data_dir).and_then(|d| d.sync_all()).map_err(io)?;
            Ok(revision)
        }
        Err(e) => {
            // A payload that passed the hash yet does not decode: leave no half-made store.
            let _ = std::fs::remove_dir_all(&partial);
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mvcc::Record;
    use crate::mvcc::index::Rev;

    fn dump() -> MvccDump {
        MvccDump {
            revision: 3,
            compact_revision: 0,
            records: vec![(
                Rev::new(2, 0),
                Record {
                    key: b"k".to_vec(),
                    value: b"v".to_vec(),
                    create_revision: 2,
                    version: 1,
                    lease: 0,
                    tombstone: false,
                },
            )],
            applied: vec![1, 2, 3],
        }
    }

    fn file_with(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    #[test]
    fn round_trip_and_corruption_is_refused() {
        let dir = tempfile::Builder::new().prefix("skiff-test-backup").tempdir().unwrap();
        let bytes = encode(&dump());
        assert_eq!(bytes.len() % 512, 32, "etcdctl's checksum layout");
        let mut ok = Checked::open(&file_with(dir.path(), "ok", &bytes)).unwrap();
        assert_eq!(ok.summary().unwrap(), (3, 1));
        assert_eq!(ok.bytes, bytes.len() as u64);
        assert_eq!(ok.sha256, format!("{:x}", Sha256::digest(&bytes)));
        let mut bad = bytes.clone();
        let mid = bad.len() / 2;
        bad[mid] ^= 1;
        let open = |name, b: &[u8]| Checked::open(&file_with(dir.path(), name, b)).map(|_| ());
        assert!(matches!(open("bad", &bad), Err(BackupError::HashMismatch)));
        assert!(matches!(open("cut", &bytes[..bytes.len() - 5]), Err(BackupError::HashMismatch)));
        assert!(matches!(open("hello", b"hello"), Err(BackupError::BadMagic)));
        assert!(matches!(open("empty", b""), Err(BackupError::BadMagic)));
    }

    #[test]
    fn streamed_backup_matches_the_in_memory_encoding() {
        let dir = tempfile::Builder::new().prefix("skiff-test-backup").tempdir().unwrap();
        let mvcc = Mvcc::open(crate::db::open(&dir.path().join("db")).unwrap()).unwrap();
        let mut w = mvcc.writer();
        for i in 0..300 {
            w.apply(crate::types::WriteOp::Put(crate::types::PutRequest {
                key: format!("k{}", i % 50).into_bytes(),
                value: vec![b'v'; 700],
                ..Default::default()
            }))
            .unwrap();
        }
        w.commit(Some(b"raft state".to_vec())).unwrap();
        let mut file = tempfile::tempfile_in(dir.path()).unwrap();
        assert_eq!(write(&mvcc, &mut file).unwrap(), 301);
        let mut streamed = Vec::new();
        file.read_to_end(&mut streamed).unwrap();
        // The in-memory encoding drops the applied state: a backup carries no raft state.
        assert_eq!(streamed, encode(&mvcc.dump().unwrap()));
        let mut checked = Checked::open(&file_with(dir.path(), "b", &streamed)).unwrap();
        assert_eq!(checked.summary().unwrap(), (301, 300));
    }

    #[test]
    fn a_payload_that_passes_the_hash_but_does_not_decode_leaves_no_store() {
        let dir = tempfile::Builder::new().prefix("skiff-test-backup").tempdir().unwrap();
        let mut bytes = MAGIC.to_vec();
        let payload = [7u8; 40];
        bytes.extend_from_slice(&(payload.len() as u64).to_be_bytes());
        bytes.extend_from_slice(&payload);
        bytes.resize(bytes.len().div_ceil(512) * 512, 0);
        let hash = Sha256::digest(&bytes);
        bytes.extend_from_slice(&hash);
        let garbage = file_with(dir.path(), "garbage", &bytes);
        assert!(matches!(Checked::open(&garbage).unwrap().summary(), Err(BackupError::Decode(_))));
        let data = dir.path().join("data");
        assert!(matches!(restore_into(&data, &garbage), Err(BackupError::Store(_))));
        assert!(!data.join("db").exists());
        // The dir is usable for a good backup afterwards.
        let good = file_with(dir.path(), "good", &encode(&dump()));
        assert_eq!(restore_into(&data, &good).unwrap(), 3);
    }

    #[test]
    fn restore_needs_a_fresh_dir_and_keeps_revisions() {
        let dir = tempfile::Builder::new().prefix("skiff-test-backup").tempdir().unwrap();
        let good = file_with(dir.path(), "good", &encode(&dump()));
        let data = dir.path().join("data");
        restore_into(&data, &good).unwrap();
        assert!(matches!(restore_into(&data, &good), Err(BackupError::NotEmpty(_))));
        assert!(!data.join("db.restoring").exists());
        let m = Mvcc::open(crate::db::open(&data.join("db")).unwrap()).unwrap();
        assert_eq!(m.revision(), 3);
        // Any file at all: e.g. an old member's snapshot, left after its `db` was removed.
        let stale = dir.path().join("stale");
        std::fs::create_dir(&stale).unwrap();
        std::fs::write(stale.join("raft-snapshot.meta"), b"old").unwrap();
        assert!(matches!(restore_into(&stale, &good), Err(BackupError::NotEmpty(_))));
        assert_eq!(std::fs::read(stale.join("raft-snapshot.meta")).unwrap(), b"old");
    }
}
