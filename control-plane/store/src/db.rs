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
    let cfs = ALL_CFS.iter().map(|name| ColumnFamilyDescriptor::new(*name, cf_options(name)));
    let db = DB::open_cf_descriptors(&opts, dir, cfs)
        .map_err(|source| StoreError::Open { path: dir.display().to_string(), source })?;
    Ok(Arc::new(db))
}

/// Column-family options. They must be given per family: the database-wide `Options` only
/// shape the unused `default` family. MVCC data is compressed with LZ4 (Kubernetes objects
/// compress well; LZ4 costs less CPU than RocksDB's default Snappy); log entries live only
/// until the next snapshot purges them and raft/meta hold a few small keys, so those are
/// stored uncompressed.
fn cf_options(name: &str) -> Options {
    let mut o = Options::default();
    o.set_write_buffer_size(64 << 20);
    o.set_compression_type(if name == CF_KV {
        rocksdb::DBCompressionType::Lz4
    } else {
        rocksdb::DBCompressionType::None
    });
    o
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The options RocksDB recorded for each family, from the newest `OPTIONS-*` file it wrote.
    fn recorded_compression(dir: &Path) -> Vec<(String, String)> {
        let newest = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("OPTIONS-"))
            .max()
            .expect("RocksDB writes an OPTIONS file at open");
        let text = std::fs::read_to_string(newest).unwrap();
        let mut family = String::new();
        let mut found = Vec::new();
        for line in text.lines().map(str::trim) {
            if let Some(name) = line.strip_prefix("[CFOptions \"") {
                family = name.trim_end_matches("\"]").to_string();
            } else if let Some(kind) = line.strip_prefix("compression=") {
                found.push((family.clone(), kind.to_string()));
            }
        }
        found
    }

    #[test]
    fn column_families_get_their_own_options() {
        let dir = tempfile::Builder::new().prefix("skiff-test-db").tempdir().unwrap();
        let db = open(dir.path()).unwrap();
        drop(db);
        let found = recorded_compression(dir.path());
        for (family, want) in [
            (CF_KV, "kLZ4Compression"),
            (CF_LOG, "kNoCompression"),
            (CF_RAFT, "kNoCompression"),
            (CF_META, "kNoCompression"),
        ] {
            assert!(
                found.iter().any(|(f, k)| f == family && k == want),
                "{family} should use {want}; RocksDB recorded {found:?}"
            );
        }
    }
}
