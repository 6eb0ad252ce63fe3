//! Kubernetes object model for Skiff: the resource table (kind, group, scope, short names, Table
//! columns, subresources), label and field selectors, quantities, defaulting, validation and
//! Table rows. Objects are `serde_json::Value` in Kubernetes JSON form. No IO.
//!
//! Adding a resource means adding a [`resource::Resource`] entry to [`resource::RESOURCES`];
//! the API server serves every entry through one generic registry.

pub mod defaults;
pub mod meta;
pub mod quantity;
pub mod resource;
pub mod selector;
pub mod table;
pub mod validate;

pub use resource::{RESOURCES, Resource, Subresource};
