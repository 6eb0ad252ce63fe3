//! Skiff's own `.proto` files and their generated code: the raft transport between store
//! replicas and the etcd v3 API subset (KV, Watch, Maintenance, Cluster) that `etcdctl` speaks.

/// Raft transport between store replicas (`skiff/raft.proto`, package `skiff.raft`).
pub mod raft {
    #![allow(clippy::pedantic, unused_qualifications, missing_docs, reason = "generated code")]
    tonic::include_proto!("skiff.raft");
}
