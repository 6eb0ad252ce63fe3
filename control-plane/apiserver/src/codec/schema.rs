//! The protobuf field table (`k8s-protobuf-schema.txt`): field numbers → JSON names and types.

use std::collections::HashMap;
use std::sync::LazyLock;

/// The table embedded in the binary; parsed once on first use.
const SCHEMA_TEXT: &str = include_str!("k8s-protobuf-schema.txt");

/// The type of one field value (the element type for repeated fields).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FieldType {
    String,
    Bool,
    Int32,
    Int64,
    Double,
    Bytes,
    /// A message, by its schema name (`core.v1.PodSpec`, or a special one such as `meta.v1.Time`).
    Message(String),
    /// `map<string, V>`: repeated entry messages `{key = 1, value = 2}`.
    Map(Box<FieldType>),
}

#[derive(Debug, Clone)]
pub(crate) struct Field {
    /// The JSON name; `None` for an embedded (`json:",inline"`) message.
    pub json: Option<String>,
    pub ty: FieldType,
    pub repeated: bool,
    /// Emit the zero value (a Go pointer or a field without `omitempty`).
    pub keep_zero: bool,
}

#[derive(Debug, Default)]
pub(crate) struct Message {
    pub fields: HashMap<u32, Field>,
}

#[derive(Debug, Default)]
pub(crate) struct Schema {
    pub messages: HashMap<String, Message>,
    /// Kinds accepted at the top of an envelope: `core.v1.Namespace`, `apps.v1.Deployment`, ...
    pub roots: Vec<String>,
}

/// Messages the decoder handles in code rather than through the table.
pub(crate) const SPECIAL_MESSAGES: &[&str] = &[
    "meta.v1.Time",
    "meta.v1.MicroTime",
    "meta.v1.FieldsV1",
    "intstr.IntOrString",
    "resource.Quantity",
    "runtime.RawExtension",
];

pub(crate) fn is_special(name: &str) -> bool {
    SPECIAL_MESSAGES.contains(&name) || name.ends_with(".ExtraValue")
}

/// The parsed table. The text is a constant compiled into the binary and a unit test parses it,
/// so a parse failure here is a build defect, not an input error.
pub(crate) static SCHEMA: LazyLock<Schema> = LazyLock::new(|| {
    #[expect(
        clippy::expect_used,
        reason = "the schema is a compile-time constant checked by unit tests"
    )]
    parse(SCHEMA_TEXT).expect("embedded protobuf schema parses")
});

impl Schema {
    /// The schema message for `apiVersion` + `kind`, if that kind is a declared root.
    pub(crate) fn root_for(&self, api_version: &str, kind: &str) -> Option<&str> {
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
        let label = GROUP_LABELS.iter().find(|(g, _)| *g == group).map(|(_, l)| *l)?;
        let find = |label: &str| {
            let want = format!("{label}.{version}.{kind}");
            self.roots.iter().find(|r| **r == want).map(String::as_str)
        };
        // meta/v1 kinds (DeleteOptions) are also sent as plain `v1`.
        find(label).or_else(|| if group.is_empty() { find("meta") } else { None })
    }
}

/// API group → the label its messages carry in the schema (`rbac.authorization.k8s.io` →
/// `rbac`, as in upstream's `k8s.io.api.rbac.v1` proto packages).
const GROUP_LABELS: &[(&str, &str)] = &[
    ("", "core"),
    ("apps", "apps"),
    ("batch", "batch"),
    ("policy", "policy"),
    ("autoscaling", "autoscaling"),
    ("rbac.authorization.k8s.io", "rbac"),
    ("networking.k8s.io", "networking"),
    ("discovery.k8s.io", "discovery"),
    ("coordination.k8s.io", "coordination"),
    ("events.k8s.io", "events"),
    ("scheduling.k8s.io", "scheduling"),
    ("authorization.k8s.io", "authorization"),
    ("authentication.k8s.io", "authentication"),
    ("meta.k8s.io", "meta"),
];

/// The `apiVersion` of a schema root (`rbac.v1.Role` → `rbac.authorization.k8s.io/v1`).
#[cfg(test)]
pub(crate) fn api_version_of(root: &str) -> String {
    let mut parts = root.split('.');
    let label = parts.next().unwrap_or("");
    let version = parts.next().unwrap_or("");
    let group = GROUP_LABELS.iter().find(|(_, l)| *l == label).map_or("", |(g, _)| *g);
    if group.is_empty() || label == "meta" {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    }
}

fn parse_type(text: &str) -> Result<FieldType, String> {
    Ok(match text {
        "string" => FieldType::String,
        "bool" => FieldType::Bool,
        "int32" => FieldType::Int32,
        "int64" => FieldType::Int64,
        "double" => FieldType::Double,
        "bytes" => FieldType::Bytes,
        _ => {
            if let Some(inner) = text.strip_prefix("map<").and_then(|t| t.strip_suffix('>')) {
                let (key, value) =
                    inner.split_once(',').ok_or_else(|| format!("bad map type {text}"))?;
                if key.trim() != "string" {
                    return Err(format!("only string map keys are supported: {text}"));
                }
                FieldType::Map(Box::new(parse_type(value.trim())?))
            } else if text.contains('.') {
                FieldType::Message(text.to_owned())
            } else {
                return Err(format!("unknown type {text}"));
            }
        }
    })
}

pub(crate) fn parse(text: &str) -> Result<Schema, String> {
    let mut schema = Schema::default();
    let mut current: Option<String> = None;
    for (index, line) in text.lines().enumerate() {
        let lineno = index + 1;
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let words: Vec<&str> = trimmed.split_whitespace().collect();
        match words.as_slice() {
            ["root", name] => {
                if schema.roots.iter().any(|r| r == name) {
                    return Err(format!("line {lineno}: root {name} declared twice"));
                }
                schema.roots.push((*name).to_owned());
            }
            ["message", name] => {
                if schema.messages.contains_key(*name) {
                    return Err(format!("line {lineno}: message {name} declared twice"));
                }
                schema.messages.insert((*name).to_owned(), Message::default());
                current = Some((*name).to_owned());
            }
            [number, json, ty, rest @ ..] => {
                let message = current
                    .as_ref()
                    .and_then(|m| schema.messages.get_mut(m))
                    .ok_or_else(|| format!("line {lineno}: field outside a message"))?;
                let number: u32 = number
                    .parse()
                    .map_err(|_| format!("line {lineno}: bad field number {number}"))?;
                let (ty, repeated) = match ty.strip_suffix("[]") {
                    Some(t) => (t, true),
                    None => (*ty, false),
                };
                let keep_zero = match rest {
                    [] => false,
                    ["keep"] => true,
                    _ => return Err(format!("line {lineno}: unexpected {rest:?}")),
                };
                let field = Field {
                    json: (*json != "-").then(|| (*json).to_owned()),
                    ty: parse_type(ty).map_err(|e| format!("line {lineno}: {e}"))?,
                    repeated,
                    keep_zero,
                };
                if message.fields.insert(number, field).is_some() {
                    return Err(format!("line {lineno}: field {number} declared twice"));
                }
            }
            _ => return Err(format!("line {lineno}: cannot parse {trimmed:?}")),
        }
    }
    check_references(&schema)?;
    Ok(schema)
}

/// Every message a field or root names must be declared or special.
fn check_references(schema: &Schema) -> Result<(), String> {
    let known = |name: &str| is_special(name) || schema.messages.contains_key(name);
    for root in &schema.roots {
        if !schema.messages.contains_key(root) {
            return Err(format!("root {root} has no message"));
        }
    }
    for (name, message) in &schema.messages {
        for (number, field) in &message.fields {
            let mut ty = &field.ty;
            while let FieldType::Map(value) = ty {
                ty = value;
            }
            if let FieldType::Message(target) = ty {
                if !known(target) {
                    return Err(format!("{name} field {number} names unknown message {target}"));
                }
                if field.json.is_none() && (field.repeated || is_special(target)) {
                    return Err(format!("{name} field {number}: only plain messages inline"));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_schema_parses_and_is_closed() {
        let schema = parse(SCHEMA_TEXT).unwrap();
        assert!(schema.roots.len() > 30);
        assert_eq!(schema.root_for("apps/v1", "Deployment"), Some("apps.v1.Deployment"));
        assert_eq!(schema.root_for("v1", "Namespace"), Some("core.v1.Namespace"));
        assert_eq!(
            schema.root_for("rbac.authorization.k8s.io/v1", "ClusterRole"),
            Some("rbac.v1.ClusterRole")
        );
        assert_eq!(schema.root_for("v1", "ObjectMeta"), None);
        assert_eq!(schema.root_for("apps.example.com/v1", "Deployment"), None);
        assert_eq!(schema.root_for("v1", "DeleteOptions"), Some("meta.v1.DeleteOptions"));
        for root in &schema.roots {
            let kind = root.rsplit('.').next().unwrap();
            assert_eq!(schema.root_for(&api_version_of(root), kind), Some(root.as_str()));
        }
        let spec = &schema.messages["apps.v1.DeploymentSpec"].fields[&1];
        assert_eq!(spec.json.as_deref(), Some("replicas"));
        assert!(spec.keep_zero);
    }

    #[test]
    fn rejects_dangling_reference() {
        let err = parse("message a.v1.X\n  1 y a.v1.Missing\n").unwrap_err();
        assert!(err.contains("unknown message a.v1.Missing"), "{err}");
    }
}
