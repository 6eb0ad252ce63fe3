//! The replicated store: raft log and state machine on RocksDB, MVCC revisions, watch,
//! compaction, snapshots and membership. The only crate that touches RocksDB.

pub mod db;
pub mod error;
pub mod mvcc;
pub mod types;

pub use error::{KvError, StoreError};
pub use mvcc::Mvcc;
