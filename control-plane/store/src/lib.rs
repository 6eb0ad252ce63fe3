//! The replicated store: raft log and state machine on RocksDB, MVCC revisions, watch,
//! compaction, snapshots and membership. The only crate that touches RocksDB.

pub mod backup;
pub mod db;
pub mod error;
pub mod etcd;
pub mod lincheck;
pub mod metrics;
pub mod mvcc;
pub mod raft;
pub mod types;
pub mod watch;

pub use error::{KvError, StoreError};
pub use mvcc::Mvcc;
pub mod node;
pub mod service;

pub use node::{Store, StoreConfig};
