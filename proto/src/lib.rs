//! Skiff's own `.proto` files and their generated code: the raft transport between store
//! replicas and the etcd v3 API subset (KV, Watch, Maintenance, Cluster) that `etcdctl` speaks.
//!
//! Empty until the replicated store lands (issue: replicated store).
