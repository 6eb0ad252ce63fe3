//! The HTTP(S) API server: authentication, the generic registry over the store, the watch
//! cache, patch engines, discovery and OpenAPI.
//!
//! Landed so far: `codec` (request-body decoding: JSON, YAML, Kubernetes protobuf; `Accept`
//! negotiation) and `patch` (JSON patch, merge patch, strategic merge patch, server-side apply
//! with managedFields). Both are pure: no IO, no clocks (time is a parameter).

pub mod codec;
pub mod patch;
