//! The audit log: one JSON line per mutating request (audit.k8s.io/v1 `Event` shape, level
//! Metadata) with user, verb, object reference and response code.

use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use serde_json::{Value, json};

/// An append-only audit log file.
pub struct AuditLog {
    file: Mutex<std::fs::File>,
}

/// What one audit line records.
pub struct AuditEntry<'a> {
    pub verb: &'a str,
    pub uri: &'a str,
    pub user: &'a str,
    pub groups: &'a [String],
    pub group: &'a str,
    pub version: &'a str,
    pub resource: &'a str,
    pub subresource: &'a str,
    pub namespace: &'a str,
    pub name: &'a str,
    pub code: u16,
    pub received: &'a str,
    pub completed: &'a str,
    pub user_agent: &'a str,
}

impl AuditLog {
    pub fn open(path: &Path) -> std::io::Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Self { file: Mutex::new(file) })
    }

    pub fn record(&self, e: &AuditEntry<'_>) {
        let mut object_ref =
            json!({"resource": e.resource, "apiGroup": e.group, "apiVersion": e.version});
        for (k, v) in [("namespace", e.namespace), ("name", e.name), ("subresource", e.subresource)]
        {
            if !v.is_empty() {
                object_ref[k] = Value::from(v);
            }
        }
        let line = json!({
            "kind": "Event",
            "apiVersion": "audit.k8s.io/v1",
            "level": "Metadata",
            "auditID": uuid::Uuid::new_v4().to_string(),
            "stage": "ResponseComplete",
            "requestURI": e.uri,
            "verb": e.verb,
            "user": {"username": e.user, "groups": e.groups},
            "userAgent": e.user_agent,
            "objectRef": object_ref,
            "responseStatus": {"metadata": {}, "code": e.code},
            "requestReceivedTimestamp": e.received,
            "stageTimestamp": e.completed,
        });
        let mut f = self.file.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Err(err) = writeln!(f, "{line}") {
            tracing::warn!(error = %err, "audit log write failed");
        }
    }
}
