//! Kubernetes object types (k8s-openapi re-exports), the resource table (kind, group, scope, short
//! names, Table columns, subresources), label and field selectors, quantities, validation and
//! defaulting. No IO.
//!
//! Empty until the API server lands (issue: Kubernetes-compatible API server).
