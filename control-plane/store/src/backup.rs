//! Backup files (`skiff-master snapshot save|restore`, etcd `Maintenance.Snapshot`): a
//! consistent MVCC dump with a magic header and a SHA-256 trailer, so a truncated or altered
//! file is refused before anything is written.
//!
//! Layout: `MAGIC | u64 BE payload length | bincode(MvccDump) | zero padding to a multiple of
//! 512 bytes | SHA-256 of everything before`. The padding mirrors etcd's bolt snapshot (pages
//! plus a 32-byte hash), which `etcdctl snapshot save` checks for (`size % 512 == 32`).

use std::path::Path;

use sha2::{Digest, Sha256};

use crate::error::StoreError;
use crate::mvcc::{Mvcc, MvccDump};

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
    #[error("data dir {0} already holds a store; restore needs a fresh directory")]
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
pub fn write(mvcc: &Mvcc, file: &mut std::fs::File) -> Result<i64, StoreError> {
    use std::io::{Read, Seek, SeekFrom, Write};
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
    file.rewind().map_err(io)?;
    let mut hash = Sha256::new();
    let mut buf = vec![0; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
    }
    file.write_all(&hash.finalize()).map_err(io)?;
    file.rewind().map_err(io)?;
    Ok(dump.revision)
}

/// Hex SHA-256 of a whole backup file (what `snapshot save` prints).
pub fn file_hash(bytes: &[u8]) -> String {
    use std::fmt::Write;
    Sha256::digest(bytes).iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Checks the header and trailer; returns the payload (`bincode(MvccDump)`).
fn verify(bytes: &[u8]) -> Result<&[u8], BackupError> {
    if !bytes.starts_with(MAGIC) {
        return Err(BackupError::BadMagic);
    }
    if bytes.len() < MAGIC.len() + 8 + 32 || bytes.len() % 512 != 32 {
        return Err(BackupError::HashMismatch);
    }
    let (body, trailer) = bytes.split_at(bytes.len() - 32);
    if Sha256::digest(body).as_slice() != trailer {
        return Err(BackupError::HashMismatch);
    }
    let rest = &body[MAGIC.len()..];
    let len = u64::from_be_bytes(rest[..8].try_into().map_err(|_| BackupError::HashMismatch)?);
    usize::try_from(len)
        .ok()
        .and_then(|n| rest.get(8..8 + n))
        .ok_or_else(|| BackupError::Decode(format!("payload length {len} exceeds the file")))
}

/// Checks the header and trailer and decodes the dump.
pub fn decode(bytes: &[u8]) -> Result<MvccDump, BackupError> {
    bincode::deserialize(verify(bytes)?).map_err(|e| BackupError::Decode(e.to_string()))
}

/// Creates a new replica data dir holding the backup's data; the member then starts with
/// `--initial-cluster` as a new cluster and serves the same keys at the same revisions.
/// Returns the backup's revision.
pub fn restore_into(data_dir: &Path, bytes: &[u8]) -> Result<i64, BackupError> {
    let mut payload = verify(bytes)?;
    let db_dir = data_dir.join("db");
    if db_dir.exists() {
        return Err(BackupError::NotEmpty(data_dir.display().to_string()));
    }
    std::fs::create_dir_all(data_dir)
        .map_err(|source| StoreError::Io { path: data_dir.display().to_string(), source })?;
    let restored = (|| {
        let db = crate::db::open(&db_dir)?;
        let revision = Mvcc::open(db.clone())?.restore_from(&mut payload, Vec::new())?;
        db.flush_wal(true)?;
        Ok::<_, StoreError>(revision)
    })();
    if restored.is_err() {
        // A payload that passed the hash yet does not decode: leave no half-made store.
        let _ = std::fs::remove_dir_all(&db_dir);
    }
    Ok(restored?)
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

    #[test]
    fn round_trip_and_corruption_is_refused() {
        let bytes = encode(&dump());
        assert_eq!(bytes.len() % 512, 32, "etcdctl's checksum layout");
        let back = decode(&bytes).unwrap();
        assert_eq!(back.records, dump().records);
        assert!(back.applied.is_empty());
        let mut bad = bytes.clone();
        let mid = bad.len() / 2;
        bad[mid] ^= 1;
        assert!(matches!(decode(&bad), Err(BackupError::HashMismatch)));
        assert!(matches!(decode(&bytes[..bytes.len() - 5]), Err(BackupError::HashMismatch)));
        assert!(matches!(decode(b"hello"), Err(BackupError::BadMagic)));
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
        std::io::Read::read_to_end(&mut file, &mut streamed).unwrap();
        assert_eq!(streamed, encode(&mvcc.dump().unwrap()));
        let back = decode(&streamed).unwrap();
        assert!(back.applied.is_empty(), "a backup carries no raft state");
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
        assert!(matches!(restore_into(dir.path(), &bytes), Err(BackupError::Store(_))));
        assert!(!dir.path().join("db").exists());
        // The dir is usable for a good backup afterwards.
        assert_eq!(restore_into(dir.path(), &encode(&dump())).unwrap(), 3);
    }

    #[test]
    fn restore_needs_a_fresh_dir_and_keeps_revisions() {
        let dir = tempfile::Builder::new().prefix("skiff-test-backup").tempdir().unwrap();
        let bytes = encode(&dump());
        restore_into(dir.path(), &bytes).unwrap();
        assert!(matches!(restore_into(dir.path(), &bytes), Err(BackupError::NotEmpty(_))));
        let m = Mvcc::open(crate::db::open(&dir.path().join("db")).unwrap()).unwrap();
        assert_eq!(m.revision(), 3);
    }
}
