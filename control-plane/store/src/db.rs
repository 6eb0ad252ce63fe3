//! The one RocksDB a replica keeps: column families for the raft log, raft metadata and the
//! MVCC data, sharing one WAL so a single sync makes everything before it durable.

use std::path::Path;
use std::sync::Arc;

use rocksdb::{ColumnFamily, ColumnFamilyDescriptor, DB, Options};

use crate::error::StoreError;

/// Raft log entries keyed by big-endian index.
pub const CF_LOG: &str = "log";
/// Raft metadata: vote, last purged log id.
pub const CF_RAFT: &str = "raft";
/// MVCC records keyed by revision (see [`crate::mvcc::index::Rev::to_bytes`]).
pub const CF_KV: &str = "kv";
/// State-machine metadata: applied log id, membership, current and compacted revision.
pub const CF_META: &str = "meta";

const ALL_CFS: [&str; 4] = [CF_LOG, CF_RAFT, CF_KV, CF_META];

/// Opens (creating if needed) the replica database under `dir`.
pub fn open(dir: &Path) -> Result<Arc<DB>, StoreError> {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    opts.set_max_background_jobs(2);
    opts.set_write_buffer_size(64 << 20);
    opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
    let cfs = ALL_CFS.iter().map(|name| ColumnFamilyDescriptor::new(*name, Options::default()));
    let db = DB::open_cf_descriptors(&opts, dir, cfs)
        .map_err(|source| StoreError::Open { path: dir.display().to_string(), source })?;
    Ok(Arc::new(db))
}

/// The handle of a column family this module created.
pub fn cf<'a>(db: &'a DB, name: &str) -> &'a ColumnFamily {
    db.cf_handle(name).unwrap_or_else(|| panic!("column family {name} is created at open"))
}

/// Bytes of live SST files plus WAL: the on-disk size reported by status and metrics.
pub fn disk_size(db: &DB) -> u64 {
    let sst = db.property_int_value("rocksdb.total-sst-files-size").ok().flatten().unwrap_or(0);
    let mem = db.property_int_value("rocksdb.cur-size-all-mem-tables").ok().flatten().unwrap_or(0);
    sst + mem
}
