//! Patch engines and field ownership; pure functions over `serde_json::Value`, no IO, time as a
//! parameter.
//!
//! - [`PatchType::from_content_type`] maps the PATCH `Content-Type` to an engine (415 otherwise).
//! - [`apply_patch`]`(patch_type, original, body)` runs JSON patch (RFC 6902), JSON merge patch
//!   (RFC 7386) or strategic merge patch (merge keys and directives; the kind comes from the
//!   original's `apiVersion`/`kind`, SMP on a kind the schema does not know is 415 as upstream
//!   answers for custom resources).
//! - [`server_side_apply`] merges an applied configuration (`application/apply-patch+yaml`) into
//!   the live object (or creates it), records `metadata.managedFields` (`FieldsV1`), reports
//!   conflicts as 409 with `FieldManagerConflict` causes unless forced, and removes fields the
//!   manager stopped applying.
//! - [`update_managed_fields`] records the manager of an ordinary create, update or patch.
//!
//! Errors ([`PatchError`]) carry the Kubernetes status: 400 `BadRequest` for malformed patches,
//! 422 `Invalid` for patches that do not apply (a failed JSON-patch `test`), 409 `Conflict`
//! with causes, 415 `UnsupportedMediaType`, 413 `RequestEntityTooLarge` (JSON-patch copies).

mod apply;
mod fieldset;
mod json;
#[cfg(test)]
mod kubectl_bodies;
#[cfg(test)]
mod laws;
mod managed;
mod strategic;
mod strategy;

use serde_json::Value;

pub use apply::{ApplyRequest, server_side_apply};
pub use fieldset::FieldSet;
pub use json::{json_patch, merge_patch, merge_patch_diff};
pub use managed::{Operation, update_managed_fields};
pub use strategic::strategic_merge_patch;

/// The four PATCH body types Kubernetes defines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    /// `application/json-patch+json` (RFC 6902).
    Json,
    /// `application/merge-patch+json` (RFC 7386).
    Merge,
    /// `application/strategic-merge-patch+json`.
    StrategicMerge,
    /// `application/apply-patch+yaml` (server-side apply).
    Apply,
}

impl PatchType {
    /// The engine for a PATCH `Content-Type` (parameters ignored); anything else is 415.
    pub fn from_content_type(content_type: &str) -> Result<PatchType, PatchError> {
        match crate::codec::media_type(content_type).as_str() {
            "application/json-patch+json" => Ok(PatchType::Json),
            "application/merge-patch+json" => Ok(PatchType::Merge),
            "application/strategic-merge-patch+json" => Ok(PatchType::StrategicMerge),
            "application/apply-patch+yaml" => Ok(PatchType::Apply),
            _ => Err(PatchError::UnsupportedMediaType(format!(
                "the body of the request was in an unknown format - accepted media types include: {}",
                PatchType::ALL.map(PatchType::content_type).join(", ")
            ))),
        }
    }

    pub const ALL: [PatchType; 4] =
        [PatchType::Json, PatchType::Merge, PatchType::StrategicMerge, PatchType::Apply];

    pub fn content_type(self) -> &'static str {
        match self {
            PatchType::Json => "application/json-patch+json",
            PatchType::Merge => "application/merge-patch+json",
            PatchType::StrategicMerge => "application/strategic-merge-patch+json",
            PatchType::Apply => "application/apply-patch+yaml",
        }
    }
}

/// One entry of a Kubernetes `Status.details.causes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusCause {
    pub reason: String,
    pub message: String,
    pub field: String,
}

/// Why a patch or apply failed, with the Kubernetes status it maps to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatchError {
    /// 400: the patch body is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// 422: the patch is well formed but cannot be applied to this object.
    #[error("{message}")]
    Invalid { message: String, causes: Vec<StatusCause> },
    /// 409: server-side apply conflicts with other managers' fields.
    #[error("{message}")]
    Conflict { message: String, causes: Vec<StatusCause> },
    /// 415: this patch type is not supported for this content type or kind.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// 413: applying the patch would grow the object past the request-size limit.
    #[error("{0}")]
    TooLarge(String),
}

impl PatchError {
    pub fn code(&self) -> u16 {
        match self {
            PatchError::BadRequest(_) => 400,
            PatchError::Invalid { .. } => 422,
            PatchError::Conflict { .. } => 409,
            PatchError::UnsupportedMediaType(_) => 415,
            PatchError::TooLarge(_) => 413,
        }
    }

    pub fn reason(&self) -> &'static str {
        match self {
            PatchError::BadRequest(_) => "BadRequest",
            PatchError::Invalid { .. } => "Invalid",
            PatchError::Conflict { .. } => "Conflict",
            PatchError::UnsupportedMediaType(_) => "UnsupportedMediaType",
            PatchError::TooLarge(_) => "RequestEntityTooLarge",
        }
    }

    /// `details.causes` of the Status (empty for 400 and 415).
    pub fn causes(&self) -> &[StatusCause] {
        match self {
            PatchError::Invalid { causes, .. } | PatchError::Conflict { causes, .. } => causes,
            _ => &[],
        }
    }

    pub(crate) fn invalid(message: impl Into<String>) -> PatchError {
        PatchError::Invalid { message: message.into(), causes: Vec::new() }
    }
}

pub(crate) fn bad(message: impl Into<String>) -> PatchError {
    PatchError::BadRequest(message.into())
}

/// Applies a JSON, merge or strategic merge patch body to `original` and returns the result.
/// Server-side apply needs a manager and `force`: use [`server_side_apply`]; passing
/// [`PatchType::Apply`] here is a 415.
pub fn apply_patch(
    patch_type: PatchType,
    original: &Value,
    body: &[u8],
) -> Result<Value, PatchError> {
    let patch: Value = serde_json::from_slice(body)
        .map_err(|e| bad(format!("invalid JSON in patch body: {e}")))?;
    match patch_type {
        PatchType::Json => json_patch(original, &patch),
        PatchType::Merge => {
            if !patch.is_object() {
                return Err(bad("a merge patch must be a JSON object"));
            }
            Ok(merge_patch(original, &patch))
        }
        PatchType::StrategicMerge => strategic_merge_patch(original, &patch),
        PatchType::Apply => Err(PatchError::UnsupportedMediaType(
            "apply patches go through server-side apply".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn content_types() {
        assert_eq!(
            PatchType::from_content_type("application/merge-patch+json; charset=utf-8"),
            Ok(PatchType::Merge)
        );
        for t in PatchType::ALL {
            assert_eq!(PatchType::from_content_type(t.content_type()), Ok(t));
        }
        let err = PatchType::from_content_type("application/json").unwrap_err();
        assert_eq!((err.code(), err.reason()), (415, "UnsupportedMediaType"));
    }

    #[test]
    fn dispatch_and_errors() {
        let original = json!({"apiVersion": "v1", "kind": "ConfigMap", "data": {"a": "1"}});
        let merged = apply_patch(PatchType::Merge, &original, br#"{"data":{"a":null,"b":"2"}}"#);
        assert_eq!(merged.unwrap()["data"], json!({"b": "2"}));
        let err = apply_patch(PatchType::Merge, &original, b"{").unwrap_err();
        assert_eq!(err.code(), 400);
        let err = apply_patch(PatchType::Merge, &original, b"[1]").unwrap_err();
        assert_eq!(err.code(), 400);
        let failed_test = br#"[{"op":"test","path":"/data/a","value":"2"}]"#;
        let err = apply_patch(PatchType::Json, &original, failed_test).unwrap_err();
        assert_eq!((err.code(), err.reason()), (422, "Invalid"));
    }
}
