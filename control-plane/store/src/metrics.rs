//! Prometheus metrics of a store replica. The handles are cheap clones of shared atomics;
//! [`Metrics::encode`] renders the text exposition format with gauges refreshed at scrape.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Metric handles, registered in one registry.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    pub leader_changes: Counter,
    pub proposals_committed: Counter,
    pub proposals_failed: Counter,
    pub proposal_batches: Counter,
    pub apply_lag: Gauge,
    pub has_leader: Gauge,
    pub is_leader: Gauge,
    pub db_size_bytes: Gauge,
    pub revision: Gauge,
    pub fsync_seconds: Histogram,
    pub apply_seconds: Histogram,
    pub commit_seconds: Histogram,
    pub forward_seconds: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut r = Registry::with_prefix("skiff_store");
        let leader_changes = Counter::<u64, AtomicU64>::default();
        let proposals_committed = Counter::<u64, AtomicU64>::default();
        let proposals_failed = Counter::<u64, AtomicU64>::default();
        let proposal_batches = Counter::<u64, AtomicU64>::default();
        let apply_lag = Gauge::default();
        let has_leader = Gauge::default();
        let is_leader = Gauge::default();
        let db_size_bytes = Gauge::default();
        let revision = Gauge::default();
        let fsync_seconds = Histogram::new(exponential_buckets(0.000_05, 2.0, 18));
        let apply_seconds = Histogram::new(exponential_buckets(0.000_01, 2.0, 18));
        let commit_seconds = Histogram::new(exponential_buckets(0.000_05, 2.0, 18));
        let forward_seconds = Histogram::new(exponential_buckets(0.000_05, 2.0, 18));
        r.register("leader_changes", "Leader changes seen by this replica", leader_changes.clone());
        r.register(
            "proposals_committed",
            "Client writes committed and applied",
            proposals_committed.clone(),
        );
        r.register(
            "proposals_failed",
            "Client writes that failed (no leader, leader change, timeout)",
            proposals_failed.clone(),
        );
        r.register(
            "proposal_batches",
            "Raft entries proposed by this replica (each a batch of writes)",
            proposal_batches.clone(),
        );
        r.register(
            "apply_lag_entries",
            "Log entries appended but not yet applied",
            apply_lag.clone(),
        );
        r.register("has_leader", "1 if this replica knows a leader", has_leader.clone());
        r.register("is_leader", "1 if this replica is the leader", is_leader.clone());
        r.register("db_size_bytes", "RocksDB SST plus memtable bytes", db_size_bytes.clone());
        r.register("revision", "Current MVCC revision", revision.clone());
        r.register(
            "wal_fsync_seconds",
            "Latency of WAL syncs (one per group of appends)",
            fsync_seconds.clone(),
        );
        r.register(
            "apply_seconds",
            "Latency of applying one batch of entries",
            apply_seconds.clone(),
        );
        r.register(
            "commit_seconds",
            "Latency of one raft entry on the leader, from proposal to applied",
            commit_seconds.clone(),
        );
        r.register(
            "forward_seconds",
            "Latency of forwarding one batch of writes to the leader, until its answer",
            forward_seconds.clone(),
        );
        Self {
            registry: Arc::new(r),
            leader_changes,
            proposals_committed,
            proposals_failed,
            proposal_batches,
            apply_lag,
            has_leader,
            is_leader,
            db_size_bytes,
            revision,
            fsync_seconds,
            apply_seconds,
            commit_seconds,
            forward_seconds,
        }
    }

    /// The text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}
