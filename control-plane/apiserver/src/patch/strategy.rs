//! Where lists merge and by which keys: the hand-maintained table of upstream's
//! `patchStrategy`/`patchMergeKey` (strategic merge patch) and `listType`/`listMapKeys`
//! (server-side apply) tags, and navigation through an object's types using the codec's schema.

use crate::codec::schema::{FieldType, SCHEMA, Schema, is_special};

/// How a list merges under a strategic merge patch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SmpList {
    /// `patchStrategy:"merge"` + `patchMergeKey`: elements merge by this key.
    MergeByKey(&'static str),
    /// `patchStrategy:"merge"` on a list of scalars: union.
    MergePrimitives,
    /// No strategy: the patch replaces the list.
    Replace,
}

/// How a list is owned and merged under server-side apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SsaList {
    /// `listType: map` with these `listMapKeys`.
    Map(&'static [&'static str]),
    /// `listType: set` (scalars, each element owned on its own).
    Set,
    /// `listType: atomic` (the default): owned and replaced as a whole.
    Atomic,
}

struct ListRule {
    message: &'static str,
    field: &'static str,
    smp: SmpList,
    ssa: SsaList,
}

const fn rule(message: &'static str, field: &'static str, smp: SmpList, ssa: SsaList) -> ListRule {
    ListRule { message, field, smp, ssa }
}

use SmpList::{MergeByKey, MergePrimitives};
use SsaList::{Map, Set};

const NAME: SmpList = MergeByKey("name");
const BY_NAME: SsaList = Map(&["name"]);
const BY_TYPE: SsaList = Map(&["type"]);

/// The built-in kinds' keyed and set lists; every other list is atomic (`Replace`/`Atomic`).
/// Source: the struct tags in upstream `k8s.io/api` (API level 1.33).
const LIST_RULES: &[ListRule] = &[
    rule("meta.v1.ObjectMeta", "finalizers", MergePrimitives, Set),
    rule("meta.v1.ObjectMeta", "ownerReferences", MergeByKey("uid"), Map(&["uid"])),
    rule("core.v1.PodSpec", "containers", NAME, BY_NAME),
    rule("core.v1.PodSpec", "initContainers", NAME, BY_NAME),
    rule("core.v1.PodSpec", "ephemeralContainers", NAME, BY_NAME),
    rule("core.v1.PodSpec", "volumes", NAME, BY_NAME),
    rule("core.v1.PodSpec", "imagePullSecrets", NAME, BY_NAME),
    rule("core.v1.PodSpec", "hostAliases", MergeByKey("ip"), Map(&["ip"])),
    rule(
        "core.v1.PodSpec",
        "topologySpreadConstraints",
        MergeByKey("topologyKey"),
        Map(&["topologyKey", "whenUnsatisfiable"]),
    ),
    rule("core.v1.PodSpec", "resourceClaims", NAME, BY_NAME),
    rule("core.v1.PodSpec", "schedulingGates", NAME, BY_NAME),
    rule(
        "core.v1.Container",
        "ports",
        MergeByKey("containerPort"),
        Map(&["containerPort", "protocol"]),
    ),
    rule("core.v1.Container", "env", NAME, BY_NAME),
    rule("core.v1.Container", "volumeMounts", MergeByKey("mountPath"), Map(&["mountPath"])),
    rule("core.v1.Container", "volumeDevices", MergeByKey("devicePath"), Map(&["devicePath"])),
    rule(
        "core.v1.EphemeralContainerCommon",
        "ports",
        MergeByKey("containerPort"),
        Map(&["containerPort", "protocol"]),
    ),
    rule("core.v1.EphemeralContainerCommon", "env", NAME, BY_NAME),
    rule(
        "core.v1.EphemeralContainerCommon",
        "volumeMounts",
        MergeByKey("mountPath"),
        Map(&["mountPath"]),
    ),
    rule(
        "core.v1.EphemeralContainerCommon",
        "volumeDevices",
        MergeByKey("devicePath"),
        Map(&["devicePath"]),
    ),
    rule("core.v1.ResourceRequirements", "claims", NAME, BY_NAME),
    rule("core.v1.ServiceSpec", "ports", MergeByKey("port"), Map(&["port", "protocol"])),
    rule("core.v1.ServiceAccount", "secrets", NAME, BY_NAME),
    rule("core.v1.NodeSpec", "podCIDRs", MergePrimitives, Set),
    rule("core.v1.NodeStatus", "addresses", MergeByKey("type"), BY_TYPE),
    rule("core.v1.PodStatus", "podIPs", MergeByKey("ip"), Map(&["ip"])),
    rule("core.v1.PodStatus", "hostIPs", MergeByKey("ip"), Map(&["ip"])),
];

/// Structs upstream marks `+structType=atomic`: owned and replaced as a whole by server-side
/// apply.
const ATOMIC_STRUCTS: &[&str] = &["meta.v1.LabelSelector", "core.v1.ObjectReference"];

/// Which list rule applies to `field` of `message` (the message that declares the field).
pub(crate) fn list_rule(message: &str, field: &str) -> (SmpList, SsaList) {
    if let Some(r) = LIST_RULES.iter().find(|r| r.message == message && r.field == field) {
        return (r.smp, r.ssa);
    }
    // Every `status.conditions` of the built-in kinds merges by `type`.
    if field == "conditions" && message.ends_with("Status") {
        return (MergeByKey("type"), BY_TYPE);
    }
    (SmpList::Replace, SsaList::Atomic)
}

/// A position in an object's type tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Node {
    /// A message from the schema.
    Message(&'static str),
    /// The values of a `map<string, V>` field.
    MapOf(&'static FieldType),
    /// No type information: maps merge key by key, lists are atomic.
    Unknown,
}

/// What a field of a message is, after resolving embedded (inline) messages.
pub(crate) struct FieldInfo {
    /// The message that declares the field (for the list-rule table).
    pub owner: &'static str,
    pub ty: &'static FieldType,
    pub repeated: bool,
}

impl Node {
    /// The root node of a kind, if the schema knows it.
    pub(crate) fn for_kind(api_version: &str, kind: &str) -> Option<Node> {
        SCHEMA.root_for(api_version, kind).map(Node::Message)
    }

    /// Root node of an object from its own `apiVersion`/`kind` (Unknown if absent).
    pub(crate) fn for_object(object: &serde_json::Value) -> Node {
        let api_version =
            object.get("apiVersion").and_then(serde_json::Value::as_str).unwrap_or("");
        let kind = object.get("kind").and_then(serde_json::Value::as_str).unwrap_or("");
        Node::for_kind(api_version, kind).unwrap_or(Node::Unknown)
    }

    fn schema() -> &'static Schema {
        &SCHEMA
    }

    /// The field `name` of this node, when it is a message field.
    pub(crate) fn field(self, name: &str) -> Option<FieldInfo> {
        let Node::Message(message) = self else {
            return None;
        };
        find_field(Self::schema(), message, name, 0)
    }

    /// The node of the value under `key` (a field, or a map entry).
    pub(crate) fn child(self, key: &str) -> Node {
        match self {
            Node::MapOf(ty) => type_node(ty),
            Node::Message(_) => match self.field(key) {
                Some(info) => {
                    if let FieldType::Map(value) = info.ty {
                        Node::MapOf(value)
                    } else {
                        type_node(info.ty)
                    }
                }
                None => Node::Unknown,
            },
            Node::Unknown => Node::Unknown,
        }
    }

    /// Whether this node is a struct server-side apply treats as one value.
    pub(crate) fn is_atomic(self) -> bool {
        matches!(self, Node::Message(name) if ATOMIC_STRUCTS.contains(&name))
    }

    /// The list rules of the list under `key` and the node of its elements.
    pub(crate) fn list(self, key: &str) -> (SmpList, SsaList, Node) {
        match self.field(key) {
            Some(info) if info.repeated => {
                let (smp, ssa) = list_rule(info.owner, key);
                (smp, ssa, type_node(info.ty))
            }
            _ => (SmpList::Replace, SsaList::Atomic, Node::Unknown),
        }
    }
}

fn type_node(ty: &'static FieldType) -> Node {
    match ty {
        FieldType::Message(name) if !is_special(name) => Node::Message(name.as_str()),
        FieldType::Map(value) => Node::MapOf(value),
        _ => Node::Unknown,
    }
}

fn find_field(
    schema: &'static Schema,
    message: &'static str,
    name: &str,
    depth: usize,
) -> Option<FieldInfo> {
    let (owner, msg) = schema.messages.get_key_value(message)?;
    for field in msg.fields.values() {
        if field.json.as_deref() == Some(name) {
            return Some(FieldInfo {
                owner: owner.as_str(),
                ty: &field.ty,
                repeated: field.repeated,
            });
        }
    }
    if depth > 4 {
        return None;
    }
    msg.fields.values().find_map(|field| match (&field.json, &field.ty) {
        (None, FieldType::Message(inner)) => find_field(schema, inner, name, depth + 1),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn navigates_deployment_to_container_ports() {
        let root = Node::for_kind("apps/v1", "Deployment").unwrap();
        let pod = root.child("spec").child("template").child("spec");
        assert_eq!(pod, Node::Message("core.v1.PodSpec"));
        let (smp, ssa, container) = pod.list("containers");
        assert_eq!(smp, MergeByKey("name"));
        assert_eq!(ssa, Map(&["name"]));
        let (smp, ssa, _) = container.list("ports");
        assert_eq!(smp, MergeByKey("containerPort"));
        assert_eq!(ssa, Map(&["containerPort", "protocol"]));
        assert_eq!(pod.list("tolerations").0, SmpList::Replace);
        // An inline field: Volume embeds VolumeSource.
        let (_, _, volume) = pod.list("volumes");
        assert_eq!(volume.child("configMap"), Node::Message("core.v1.ConfigMapVolumeSource"));
        let status = root.child("status");
        assert_eq!(status.list("conditions").0, MergeByKey("type"));
        let meta = root.child("metadata");
        assert_eq!(meta.list("finalizers").0, MergePrimitives);
        assert_eq!(meta.child("labels").child("app"), Node::Unknown);
        assert!(Node::for_kind("example.com/v1", "Widget").is_none());
    }
}
