//! The HTTP(S) API server: authentication, the generic registry over the store, the watch
//! cache, patch engines, discovery and OpenAPI.
//!
//! Empty until the API server lands (issue: Kubernetes-compatible API server).
