//! The replicated store: raft log and state machine on RocksDB, MVCC revisions, watch,
//! compaction, snapshots and membership. The only crate that touches RocksDB.
//!
//! Empty until the replicated store lands (issue: replicated store).
