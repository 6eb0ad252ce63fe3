//! Raft glue: openraft 0.9 (storage-v2) type configuration, the log store and state machine
//! on RocksDB, and the transport between replicas.

pub mod log_store;
pub mod network;
pub mod state_machine;
pub mod wire;

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::types::{WriteOp, WriteResult};

/// One raft entry's payload: a batch of client writes, proposed together so that many clients
/// share one log append, one WAL sync and one state-machine write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    pub ops: Vec<WriteOp>,
}

impl fmt::Display for Proposal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "proposal of {} ops", self.ops.len())
    }
}

/// The results of a [`Proposal`], one per op.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ProposalResult {
    pub results: Vec<WriteResult>,
}

/// A cluster member as stored in the raft membership config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Member {
    pub name: String,
    /// URL other replicas reach this member's raft service at (`http://host:port`).
    pub peer_url: String,
    /// URL clients reach the etcd API at (may be empty when unknown).
    pub client_url: String,
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.name, self.peer_url)
    }
}

openraft::declare_raft_types!(
    /// Skiff's raft types.
    pub TypeConfig:
        D = Proposal,
        R = ProposalResult,
        NodeId = u64,
        Node = Member,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = tokio::fs::File,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type LogId = openraft::LogId<u64>;
pub type StorageError = openraft::StorageError<u64>;

/// A member's id: FNV-1a of its name, so ids are stable across restarts and `member add`
/// needs no coordination (etcd also derives ids from member data). Never 0.
pub fn member_id(name: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h.max(1)
}

pub(crate) fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    bincode::serialize(v).expect("serializing plain in-memory data cannot fail")
}
