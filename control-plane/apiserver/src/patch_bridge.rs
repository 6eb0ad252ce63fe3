//! The seam between the HTTP layer and the patch engines: picks the engine from the PATCH
//! `Content-Type` and maps engine errors onto `Status` codes. JSON patch and merge patch use the
//! `json-patch` crate; strategic merge patch and server-side apply are answered with 415 until
//! the `patch` module provides them.

use serde_json::Value;
use skiff_api::Resource;

use crate::registry::WriteCtx;
use crate::status::ApiError;

/// The four PATCH media types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchKind {
    Json,
    Merge,
    Strategic,
    Apply,
}

impl PatchKind {
    pub fn from_content_type(ct: &str) -> Result<Self, ApiError> {
        match crate::codec::media_type(ct).as_str() {
            "application/json-patch+json" => Ok(Self::Json),
            "application/merge-patch+json" => Ok(Self::Merge),
            "application/strategic-merge-patch+json" => Ok(Self::Strategic),
            "application/apply-patch+yaml" | "application/apply-patch+cbor" => Ok(Self::Apply),
            other => Err(ApiError::new(
                415,
                "UnsupportedMediaType",
                format!(
                    "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json (got {other:?})"
                ),
            )),
        }
    }
}

fn parse_json(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))
}

/// Applies a patch body to `current`, returning the desired object.
pub fn apply_patch(
    res: &Resource,
    kind: PatchKind,
    current: &Value,
    body: &[u8],
    ctx: &WriteCtx,
    force: bool,
) -> Result<Value, ApiError> {
    let _ = (ctx, force);
    let name = current.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("");
    match kind {
        PatchKind::Merge => {
            let patch = parse_json(body)?;
            if !patch.is_object() {
                return Err(ApiError::bad_request("a merge patch must be a JSON object"));
            }
            let mut out = current.clone();
            json_patch::merge(&mut out, &patch);
            Ok(out)
        }
        PatchKind::Json => {
            let ops: json_patch::Patch = serde_json::from_slice(body).map_err(|e| {
                ApiError::bad_request(format!(
                    "the server rejected our request due to an error in our request: {e}"
                ))
            })?;
            let mut out = current.clone();
            json_patch::patch(&mut out, &ops).map_err(|e| match e.kind {
                json_patch::PatchErrorKind::TestFailed => ApiError::invalid(
                    res,
                    name,
                    &[skiff_api::validate::Cause {
                        reason: "FieldValueInvalid",
                        message: format!("the test operation failed: {e}"),
                        field: String::new(),
                    }],
                ),
                _ => ApiError::new(
                    422,
                    "Invalid",
                    format!("the server rejected our request due to an error in our request: {e}"),
                ),
            })?;
            Ok(out)
        }
        PatchKind::Strategic | PatchKind::Apply => Err(ApiError::new(
            415,
            "UnsupportedMediaType",
            "strategic merge patch and server-side apply are not supported by this server yet",
        )),
    }
}

/// Hook for recording the writer on an update (managedFields); `old` is `None` on create.
pub fn record_update(old: Option<&Value>, new: Value, ctx: &WriteCtx) -> Value {
    let _ = (old, ctx);
    new
}
