//! The seam between the HTTP layer and the patch engines (`crate::patch`): maps PATCH bodies to
//! the engine, engine errors to `Status` errors, and records field managers on writes.

use serde_json::{Value, json};
use skiff_api::Resource;

use crate::patch::{self, ApplyRequest, Operation, PatchError, PatchType};
use crate::registry::WriteCtx;
use crate::status::ApiError;

impl From<PatchError> for ApiError {
    fn from(e: PatchError) -> Self {
        let causes: Vec<Value> = e
            .causes()
            .iter()
            .map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field}))
            .collect();
        let mut err = ApiError::new(e.code(), e.reason(), e.to_string());
        if !causes.is_empty() {
            err.details = Some(json!({"causes": causes}));
        }
        err
    }
}

/// The engine for a PATCH `Content-Type`.
pub fn patch_type(content_type: &str) -> Result<PatchType, ApiError> {
    Ok(PatchType::from_content_type(content_type)?)
}

/// Applies a patch body to `current` (`None`: server-side apply creating the object), returning
/// the desired object. Apply records its own managedFields entry.
pub fn apply_patch(
    res: &Resource,
    kind: PatchType,
    current: Option<&Value>,
    body: &[u8],
    ctx: &WriteCtx,
    force: bool,
    subresource: Option<&str>,
) -> Result<Value, ApiError> {
    let out = match kind {
        PatchType::Apply => {
            let time = skiff_api::meta::format_rfc3339(ctx.now);
            let mut v = patch::server_side_apply(&ApplyRequest {
                live: current,
                body,
                manager: &ctx.manager,
                force,
                subresource,
                time: &time,
            })?;
            if current.is_none() {
                v["apiVersion"] = json!(res.api_version());
                v["kind"] = json!(res.kind);
            }
            v
        }
        other => patch::apply_patch(other, current.unwrap_or(&Value::Null), body)?,
    };
    Ok(out)
}

/// Records `ctx.manager` as owner of what a create (`old` = `None`), update or patch changed.
pub fn record_update(
    old: Option<&Value>,
    new: &mut Value,
    ctx: &WriteCtx,
    subresource: Option<&str>,
) -> Result<(), ApiError> {
    if !ctx.record_managed || ctx.manager.is_empty() {
        return Ok(());
    }
    let time = skiff_api::meta::format_rfc3339(ctx.now);
    patch::update_managed_fields(old, new, &ctx.manager, Operation::Update, subresource, &time)?;
    Ok(())
}
