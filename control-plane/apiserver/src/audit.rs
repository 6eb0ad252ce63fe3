//! The audit log: one JSON line per mutating request (audit.k8s.io/v1 `Event` shape, level
//! Metadata) with user, verb, object reference and response code.

use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use serde::Serialize;

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

    /// Appends one line. The line is encoded first and written with a single `write` call
    /// (the file is opened for append), so concurrent requests never interleave and a request
    /// costs one syscall rather than one per JSON token.
    pub fn record(&self, e: &AuditEntry<'_>) {
        let mut id = uuid::Uuid::encode_buffer();
        let event = Event {
            kind: "Event",
            api_version: "audit.k8s.io/v1",
            level: "Metadata",
            audit_id: uuid::Uuid::new_v4().hyphenated().encode_lower(&mut id),
            stage: "ResponseComplete",
            request_uri: e.uri,
            verb: e.verb,
            user: UserInfo { username: e.user, groups: e.groups },
            user_agent: e.user_agent,
            object_ref: ObjectRef {
                resource: e.resource,
                namespace: Some(e.namespace).filter(|s| !s.is_empty()),
                name: Some(e.name).filter(|s| !s.is_empty()),
                api_group: e.group,
                api_version: e.version,
                subresource: Some(e.subresource).filter(|s| !s.is_empty()),
            },
            response_status: ResponseStatus { metadata: Empty {}, code: e.code },
            request_received_timestamp: e.received,
            stage_timestamp: e.completed,
        };
        let mut line = Vec::with_capacity(512);
        if let Err(err) = serde_json::to_writer(&mut line, &event) {
            tracing::warn!(error = %err, "audit event encoding failed");
            return;
        }
        line.push(b'\n');
        let mut f = self.file.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Err(err) = f.write_all(&line) {
            tracing::warn!(error = %err, "audit log write failed");
        }
    }
}

/// The audit.k8s.io/v1 `Event` fields written at level Metadata.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Event<'a> {
    kind: &'static str,
    api_version: &'static str,
    level: &'static str,
    #[serde(rename = "auditID")]
    audit_id: &'a str,
    stage: &'static str,
    #[serde(rename = "requestURI")]
    request_uri: &'a str,
    verb: &'a str,
    user: UserInfo<'a>,
    user_agent: &'a str,
    object_ref: ObjectRef<'a>,
    response_status: ResponseStatus,
    request_received_timestamp: &'a str,
    stage_timestamp: &'a str,
}

#[derive(Serialize)]
struct UserInfo<'a> {
    username: &'a str,
    groups: &'a [String],
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ObjectRef<'a> {
    resource: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    namespace: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    api_group: &'a str,
    api_version: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    subresource: Option<&'a str>,
}

#[derive(Serialize)]
struct ResponseStatus {
    metadata: Empty,
    code: u16,
}

#[derive(Serialize)]
struct Empty {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_event() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.log");
        let log = AuditLog::open(&path).expect("open");
        let groups = vec!["system:masters".to_owned()];
        let entry = AuditEntry {
            verb: "create",
            uri: "/api/v1/namespaces/default/pods",
            user: "kubernetes-admin",
            groups: &groups,
            group: "",
            version: "v1",
            resource: "pods",
            subresource: "",
            namespace: "default",
            name: "",
            code: 201,
            received: "2026-01-01T00:00:00Z",
            completed: "2026-01-01T00:00:01Z",
            user_agent: "kubectl/v1.33.0",
        };
        log.record(&entry);
        log.record(&AuditEntry { verb: "delete", name: "web", code: 200, ..entry });
        let text = std::fs::read_to_string(&path).expect("read");
        let lines: Vec<serde_json::Value> =
            text.lines().map(|l| serde_json::from_str(l).expect("json line")).collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["kind"], "Event");
        assert_eq!(lines[0]["apiVersion"], "audit.k8s.io/v1");
        assert_eq!(lines[0]["verb"], "create");
        assert_eq!(lines[0]["user"]["groups"][0], "system:masters");
        assert_eq!(
            lines[0]["objectRef"],
            serde_json::json!({"resource": "pods", "namespace": "default", "apiGroup": "", "apiVersion": "v1"})
        );
        assert_eq!(lines[0]["responseStatus"], serde_json::json!({"metadata": {}, "code": 201}));
        assert_eq!(lines[1]["objectRef"]["name"], "web");
        assert_eq!(lines[0]["auditID"].as_str().map(str::len), Some(36));
        assert_eq!(lines[0]["requestURI"], "/api/v1/namespaces/default/pods");
    }
}
