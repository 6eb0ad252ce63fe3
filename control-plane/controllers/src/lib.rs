//! Controllers (one module each: deployments, replicasets, endpoints, ...) and Lease-based
//! leader election.
//!
//! Empty until the controllers issue is filed and taken.
