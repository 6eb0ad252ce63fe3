//! Kubernetes `Status` errors: every failed request is answered with one, with the upstream
//! code, reason and message shapes (§4 of the API reference).

use serde_json::{Value, json};
use skiff_api::Resource;
use skiff_api::validate::Cause;

/// A request failure, rendered as a `Status` object.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
    /// Seconds for a `Retry-After` header (429).
    pub retry_after: Option<u32>,
}

fn details(res: &Resource, name: &str) -> Value {
    json!({"name": name, "group": res.group, "kind": res.plural})
}

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self { code, reason, message: message.into(), details: None, retry_after: None }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    pub fn not_found_path() -> Self {
        Self::new(404, "NotFound", "the server could not find the requested resource")
    }

    pub fn not_found(res: &Resource, name: &str) -> Self {
        Self {
            details: Some(details(res, name)),
            ..Self::new(404, "NotFound", format!("{} \"{name}\" not found", res.qualified()))
        }
    }

    pub fn namespace_not_found(ns: &str) -> Self {
        Self {
            details: Some(json!({"name": ns, "kind": "namespaces"})),
            ..Self::new(404, "NotFound", format!("namespaces \"{ns}\" not found"))
        }
    }

    pub fn already_exists(res: &Resource, name: &str) -> Self {
        Self {
            details: Some(details(res, name)),
            ..Self::new(
                409,
                "AlreadyExists",
                format!("{} \"{name}\" already exists", res.qualified()),
            )
        }
    }

    pub fn conflict(res: &Resource, name: &str, why: &str) -> Self {
        Self {
            details: Some(details(res, name)),
            ..Self::new(
                409,
                "Conflict",
                format!("Operation cannot be fulfilled on {} \"{name}\": {why}", res.qualified()),
            )
        }
    }

    pub fn modified(res: &Resource, name: &str) -> Self {
        Self::conflict(
            res,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }

    pub fn invalid(res: &Resource, name: &str, causes: &[Cause]) -> Self {
        let summary: Vec<String> =
            causes.iter().map(|c| format!("{}: {}", c.field, c.message)).collect();
        let message = if summary.len() == 1 {
            summary[0].clone()
        } else {
            format!("[{}]", summary.join(", "))
        };
        let group_kind = if res.group.is_empty() {
            res.kind.to_owned()
        } else {
            format!("{}.{}", res.kind, res.group)
        };
        let causes: Vec<Value> = causes
            .iter()
            .map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field}))
            .collect();
        Self {
            details: Some(
                json!({"name": name, "group": res.group, "kind": res.kind, "causes": causes}),
            ),
            ..Self::new(422, "Invalid", format!("{group_kind} \"{name}\" is invalid: {message}"))
        }
    }

    pub fn method_not_allowed() -> Self {
        Self::new(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        )
    }

    pub fn internal(message: impl std::fmt::Display) -> Self {
        Self::new(500, "InternalError", format!("Internal error occurred: {message}"))
    }

    pub fn unavailable(message: impl std::fmt::Display) -> Self {
        Self::new(503, "ServiceUnavailable", message.to_string())
    }

    pub fn expired(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(403, "Forbidden", message)
    }

    /// The `Status` object.
    pub fn to_status(&self) -> Value {
        let mut s = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": self.message, "reason": self.reason, "code": self.code});
        if let Some(d) = &self.details {
            s["details"] = d.clone();
        }
        s
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        match e {
            crate::store::StoreError::Compacted(_) => {
                Self::expired("The provided resource version has been compacted")
            }
            other => Self::unavailable(other),
        }
    }
}

impl From<crate::codec::DecodeError> for ApiError {
    fn from(e: crate::codec::DecodeError) -> Self {
        Self::new(e.code(), e.reason(), e.to_string())
    }
}

/// A `Status` of success (deletes that removed the object at once, bindings).
pub fn success(res: &Resource, name: &str, uid: Option<&str>, code: Option<u16>) -> Value {
    let mut d = details(res, name);
    if let Some(uid) = uid {
        d["uid"] = Value::from(uid);
    }
    let mut s = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": d});
    if let Some(c) = code {
        s["code"] = Value::from(c);
    }
    s
}
