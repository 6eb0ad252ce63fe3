//! Skiff's own `.proto` files and their generated code (types, tonic clients and servers).
//!
//! - [`etcdserverpb`] and [`mvccpb`]: the etcd v3 API subset Skiff's store serves (KV, Watch,
//!   Cluster, Maintenance), with etcd's package, service, message names and field numbers so
//!   the real `etcdctl` works against it. The API server is a client of the same services.
//!
//! The replica-to-replica transport is not gRPC: see `skiff_store::raft::wire`.

#![allow(clippy::pedantic, clippy::doc_markdown, unused_qualifications, reason = "generated code")]

/// etcd's `mvccpb` package: `KeyValue` and watch `Event`.
pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}

/// etcd's `etcdserverpb` package: requests, responses, and the KV, Watch, Cluster and
/// Maintenance services.
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::etcdserverpb::{Compare, PutRequest, compare};

    /// Field numbers are the wire contract with etcdctl: spot-check them against bytes etcd's
    /// own encoding produces (tag = field number << 3 | wire type).
    #[test]
    fn field_numbers_match_etcd() {
        let put = PutRequest {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            prev_kv: true,
            ..Default::default()
        };
        assert_eq!(put.encode_to_vec(), [0x0a, 1, b'k', 0x12, 1, b'v', 0x20, 1]);

        let cmp = Compare {
            key: b"k".to_vec(),
            range_end: b"l".to_vec(),
            target_union: Some(compare::TargetUnion::ModRevision(5)),
            ..Default::default()
        };
        // key = 3, mod_revision = 6, range_end = 64 (a two-byte tag: 64 << 3 | 2 = 0x202).
        assert_eq!(cmp.encode_to_vec(), [0x1a, 1, b'k', 0x30, 5, 0x82, 0x04, 1, b'l']);
    }
}
