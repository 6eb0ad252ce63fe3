//! Errors of the store: per-request errors with etcd's meaning, and component errors.

use serde::{Deserialize, Serialize};

/// A request failed; the store itself is fine. Messages follow etcd's wording where etcd
/// clients look at them (`etcdserver: mvcc: required revision has been compacted`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum KvError {
    #[error("mvcc: required revision has been compacted")]
    Compacted { compact_revision: i64 },
    #[error("mvcc: required revision is a future revision")]
    FutureRevision,
    #[error("request is too large: {size} bytes, limit is {limit} bytes")]
    RequestTooLarge { size: usize, limit: usize },
    #[error("invalid request: {0}")]
    InvalidArgument(String),
    #[error("no leader")]
    NoLeader,
    #[error("leader changed, the outcome of the request is unknown")]
    LeaderChanged,
    #[error("timed out waiting for the request to commit")]
    Timeout,
    #[error("storage failure: {0}")]
    Storage(String),
    #[error("store is shutting down")]
    Stopped,
}

/// The storage engine failed (RocksDB, encoding); the replica should not continue.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("rocksdb at {path}: {source}")]
    Open { path: String, source: rocksdb::Error },
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    #[error("decode {what}: {source}")]
    Decode { what: &'static str, source: bincode::Error },
    #[error("corrupt store: {0}")]
    Corrupt(String),
    #[error("io {path}: {source}")]
    Io { path: String, source: std::io::Error },
}

impl From<StoreError> for KvError {
    fn from(e: StoreError) -> Self {
        KvError::Storage(e.to_string())
    }
}
