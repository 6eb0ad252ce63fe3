//! `metadata.managedFields`: the field set of an object, the fields a write changed, and the
//! per-manager entries every create, update and patch records.

use serde_json::{Map, Value};

use super::fieldset::FieldSet;
use super::strategy::{Node, SsaList};
use super::{PatchError, bad};

/// The `operation` of a managedFields entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Operation {
    Apply,
    Update,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Apply => "Apply",
            Operation::Update => "Update",
        }
    }
}

/// One managedFields entry.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Entry {
    pub manager: String,
    pub operation: Operation,
    pub api_version: String,
    pub time: Option<String>,
    pub subresource: Option<String>,
    pub set: FieldSet,
}

impl Entry {
    pub(crate) fn is(
        &self,
        manager: &str,
        operation: Operation,
        subresource: Option<&str>,
    ) -> bool {
        self.manager == manager
            && self.operation == operation
            && self.subresource.as_deref() == subresource
    }

    fn to_json(&self) -> Value {
        let mut map = Map::new();
        map.insert("manager".into(), Value::from(self.manager.clone()));
        map.insert("operation".into(), Value::from(self.operation.as_str()));
        map.insert("apiVersion".into(), Value::from(self.api_version.clone()));
        if let Some(time) = &self.time {
            map.insert("time".into(), Value::from(time.clone()));
        }
        map.insert("fieldsType".into(), Value::from("FieldsV1"));
        map.insert("fieldsV1".into(), self.set.to_fields_v1());
        if let Some(sub) = &self.subresource {
            map.insert("subresource".into(), Value::from(sub.clone()));
        }
        Value::Object(map)
    }

    fn from_json(value: &Value) -> Option<Entry> {
        let operation = match value.get("operation")?.as_str()? {
            "Apply" => Operation::Apply,
            "Update" => Operation::Update,
            _ => return None,
        };
        let set = match value.get("fieldsV1") {
            Some(fields) => FieldSet::from_fields_v1(fields).ok()?,
            None => FieldSet::new(),
        };
        Some(Entry {
            manager: value.get("manager")?.as_str()?.to_owned(),
            operation,
            api_version: value.get("apiVersion").and_then(Value::as_str).unwrap_or("").to_owned(),
            time: value.get("time").and_then(Value::as_str).map(str::to_owned),
            subresource: value
                .get("subresource")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_owned),
            set,
        })
    }
}

/// The entries of a stored object; malformed entries are dropped (upstream resets them too).
pub(crate) fn read_entries(object: &Value) -> Vec<Entry> {
    object
        .pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .map(|entries| entries.iter().filter_map(Entry::from_json).collect())
        .unwrap_or_default()
}

/// The managedFields a write itself sets, as upstream honours them: a non-empty list whose
/// entries all parse replaces the stored ones (kubectl's client-side → server-side apply
/// migration patches them this way); `[{}]` clears them. An absent, empty or malformed list means
/// "keep the stored ones" (`None`), so clients that do not know managedFields cannot drop them.
pub(crate) fn requested_entries(object: &Value) -> Option<Vec<Entry>> {
    let list = object.pointer("/metadata/managedFields")?.as_array()?;
    if list.len() == 1 && list[0].as_object().is_some_and(Map::is_empty) {
        return Some(Vec::new());
    }
    if list.is_empty() {
        return None;
    }
    list.iter().map(Entry::from_json).collect()
}

/// Writes `entries` (empty ones dropped; Apply entries first, then by time) into `object`.
pub(crate) fn write_entries(object: &mut Value, mut entries: Vec<Entry>) {
    entries.retain(|e| !e.set.is_empty());
    entries.sort_by(|a, b| {
        (a.operation, &a.time, &a.manager).cmp(&(b.operation, &b.time, &b.manager))
    });
    let Some(metadata) = object
        .as_object_mut()
        .map(|o| o.entry("metadata").or_insert_with(|| Value::Object(Map::new())))
        .and_then(Value::as_object_mut)
    else {
        return;
    };
    if entries.is_empty() {
        metadata.remove("managedFields");
    } else {
        metadata.insert(
            "managedFields".into(),
            Value::Array(entries.iter().map(Entry::to_json).collect()),
        );
    }
}

/// Metadata that identifies the object or that the server sets; never owned by a manager (as
/// upstream's field manager strips them).
const SERVER_METADATA: &[&str] = &[
    "name",
    "namespace",
    "managedFields",
    "resourceVersion",
    "uid",
    "creationTimestamp",
    "generation",
    "selfLink",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
];

/// The part of an object whose fields are owned: without `apiVersion`, `kind` and server-set
/// metadata; a write to the main resource does not own `status`, a write to `status` owns only
/// `status`.
pub(crate) fn tracked(object: &Value, subresource: Option<&str>) -> Map<String, Value> {
    let Value::Object(map) = object else {
        return Map::new();
    };
    let mut out = map.clone();
    out.remove("apiVersion");
    out.remove("kind");
    match subresource {
        Some("status") => out.retain(|k, _| k == "status"),
        _ => {
            out.remove("status");
        }
    }
    if let Some(Value::Object(metadata)) = out.get_mut("metadata") {
        for key in SERVER_METADATA {
            metadata.remove(*key);
        }
        if metadata.is_empty() {
            out.remove("metadata");
        }
    }
    out
}

/// `set_of_map(&tracked(object, subresource), node)` without copying the object.
pub(crate) fn tracked_set(object: &Value, subresource: Option<&str>, node: Node) -> FieldSet {
    let Value::Object(map) = object else {
        return FieldSet::new();
    };
    let mut set = FieldSet::new();
    for (key, value) in map {
        let owned = match subresource {
            Some("status") => key == "status",
            _ => key != "status" && key != "apiVersion" && key != "kind",
        };
        if !owned {
            continue;
        }
        match value {
            Value::Object(metadata) if key == "metadata" => {
                let kept: Map<String, Value> = metadata
                    .iter()
                    .filter(|(k, _)| !SERVER_METADATA.contains(&k.as_str()))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                if !kept.is_empty() {
                    set.insert_child(
                        "f:metadata".to_owned(),
                        set_of_field(node, key, &Value::Object(kept)),
                    );
                }
            }
            _ => set.insert_child(format!("f:{key}"), set_of_field(node, key, value)),
        }
    }
    set
}

/// The key element (`k:{"name":"nginx"}`) of a keyed-list element, keys in sorted order; `None`
/// if the element lacks a key (the list is then treated as atomic).
pub(crate) fn key_element(item: &Value, keys: &[&str]) -> Option<String> {
    let object = item.as_object()?;
    let mut sorted: Vec<&str> = keys.to_vec();
    sorted.sort_unstable();
    let mut parts = Vec::new();
    for key in sorted {
        match object.get(key) {
            Some(value) if !value.is_null() => {
                parts.push(format!("{}:{}", Value::from(key), serde_json::to_string(value).ok()?));
            }
            // `protocol` defaults to TCP upstream, so an omitted one keys as TCP.
            _ if key == "protocol" => parts.push(r#""protocol":"TCP""#.to_owned()),
            _ => return None,
        }
    }
    Some(format!("k:{{{}}}", parts.join(",")))
}

pub(crate) fn value_element(item: &Value) -> String {
    format!("v:{}", serde_json::to_string(item).unwrap_or_default())
}

/// Whether every element of a keyed list has its keys (else the list is owned atomically).
fn keyed(items: &[Value], keys: &[&str]) -> bool {
    items.iter().all(|i| key_element(i, keys).is_some())
}

/// The field set of an object's fields (`map` is the object or struct at `node`).
pub(crate) fn set_of_map(map: &Map<String, Value>, node: Node) -> FieldSet {
    let mut set = FieldSet::new();
    for (key, value) in map {
        set.insert_child(format!("f:{key}"), set_of_field(node, key, value));
    }
    set
}

/// The field set of the value of field `key` of `parent`.
pub(crate) fn set_of_field(parent: Node, key: &str, value: &Value) -> FieldSet {
    match value {
        Value::Object(map) if !map.is_empty() && !parent.child(key).is_atomic() => {
            set_of_map(map, parent.child(key))
        }
        Value::Array(items) if !items.is_empty() => {
            let (_, ssa, element) = parent.list(key);
            match ssa {
                SsaList::Map(keys) if keyed(items, keys) => {
                    let mut set = FieldSet::new();
                    for item in items {
                        if let (Some(k), Some(map)) = (key_element(item, keys), item.as_object()) {
                            let mut child = set_of_map(map, element);
                            child.set_member(true);
                            set.insert_child(k, child);
                        }
                    }
                    set
                }
                SsaList::Set if items.iter().all(|i| !i.is_object() && !i.is_array()) => {
                    let mut set = FieldSet::new();
                    for item in items {
                        set.insert_child(value_element(item), FieldSet::leaf());
                    }
                    set
                }
                _ => FieldSet::leaf(),
            }
        }
        _ => FieldSet::leaf(),
    }
}

/// The fields a write changed or added (`changed`, paths in `new`) and removed (`removed`, paths
/// in `old`).
pub(crate) fn diff_maps(
    old: &Map<String, Value>,
    new: &Map<String, Value>,
    node: Node,
) -> (FieldSet, FieldSet) {
    let mut changed = FieldSet::new();
    let mut removed = FieldSet::new();
    for (key, new_value) in new {
        let element = format!("f:{key}");
        match old.get(key) {
            None => changed.insert_child(element, set_of_field(node, key, new_value)),
            Some(old_value) if old_value == new_value => {}
            Some(old_value) => {
                let (c, r) = diff_field(node, key, old_value, new_value);
                changed.insert_child(element.clone(), c);
                removed.insert_child(element, r);
            }
        }
    }
    for (key, old_value) in old {
        if !new.contains_key(key) {
            removed.insert_child(format!("f:{key}"), set_of_field(node, key, old_value));
        }
    }
    (changed, removed)
}

fn diff_field(parent: Node, key: &str, old: &Value, new: &Value) -> (FieldSet, FieldSet) {
    match (old, new) {
        (Value::Object(a), Value::Object(b))
            if !a.is_empty() && !b.is_empty() && !parent.child(key).is_atomic() =>
        {
            diff_maps(a, b, parent.child(key))
        }
        (Value::Array(a), Value::Array(b)) if !a.is_empty() && !b.is_empty() => {
            let (_, ssa, element) = parent.list(key);
            match ssa {
                SsaList::Map(keys) if keyed(a, keys) && keyed(b, keys) => {
                    diff_keyed(a, b, keys, element)
                }
                SsaList::Set => {
                    let mut changed = FieldSet::new();
                    let mut removed = FieldSet::new();
                    for item in b.iter().filter(|i| !a.contains(i)) {
                        changed.insert_child(value_element(item), FieldSet::leaf());
                    }
                    for item in a.iter().filter(|i| !b.contains(i)) {
                        removed.insert_child(value_element(item), FieldSet::leaf());
                    }
                    (changed, removed)
                }
                _ => (FieldSet::leaf(), FieldSet::new()),
            }
        }
        _ => {
            let changed = set_of_field(parent, key, new);
            let removed = set_of_field(parent, key, old).difference(&changed);
            (changed, removed)
        }
    }
}

fn diff_keyed(a: &[Value], b: &[Value], keys: &[&str], element: Node) -> (FieldSet, FieldSet) {
    let mut changed = FieldSet::new();
    let mut removed = FieldSet::new();
    let index = |items: &[Value]| -> Vec<(String, Map<String, Value>)> {
        items.iter().filter_map(|i| Some((key_element(i, keys)?, i.as_object()?.clone()))).collect()
    };
    let (old, new) = (index(a), index(b));
    for (k, new_item) in &new {
        match old.iter().find(|(ok, _)| ok == k) {
            None => {
                let mut child = set_of_map(new_item, element);
                child.set_member(true);
                changed.insert_child(k.clone(), child);
            }
            Some((_, old_item)) if old_item == new_item => {}
            Some((_, old_item)) => {
                let (c, r) = diff_maps(old_item, new_item, element);
                changed.insert_child(k.clone(), c);
                removed.insert_child(k.clone(), r);
            }
        }
    }
    for (k, old_item) in &old {
        if !new.iter().any(|(nk, _)| nk == k) {
            let mut child = set_of_map(old_item, element);
            child.set_member(true);
            removed.insert_child(k.clone(), child);
        }
    }
    (changed, removed)
}

/// Records `manager` as the owner of the fields a create (`old` = `None`), update or patch
/// changed, writing `new.metadata.managedFields`. Entries come from `old`, unless `new` carries a
/// valid non-empty list of its own (a client editing managedFields; `[{}]` clears them), as
/// upstream does; other managers lose the fields this write changed or
/// removed; an entry left empty is dropped; an entry whose set did not change keeps its time.
/// `subresource` is `None` for the main resource (then `status` is not owned) or e.g.
/// `Some("status")` (then only `status` is). With [`Operation::Apply`] the manager's entry becomes
/// exactly the field set of `new` (server-side apply itself goes through
/// [`super::server_side_apply`]).
pub fn update_managed_fields(
    old: Option<&Value>,
    new: &mut Value,
    manager: &str,
    operation: Operation,
    subresource: Option<&str>,
    time: &str,
) -> Result<(), PatchError> {
    if manager.is_empty() {
        return Err(bad("fieldManager must not be empty"));
    }
    if manager.len() > 128 {
        return Err(bad("fieldManager is longer than 128 characters"));
    }
    if !new.is_object() {
        return Err(bad("the object is not a JSON object"));
    }
    let node = Node::for_object(new);
    let (changed, removed) = match old {
        Some(old) => diff_maps(&tracked(old, subresource), &tracked(new, subresource), node),
        None => (tracked_set(new, subresource, node), FieldSet::new()),
    };
    let mut entries = match requested_entries(new) {
        Some(entries) => entries,
        None => old.map(read_entries).unwrap_or_default(),
    };
    let api_version = new.get("apiVersion").and_then(Value::as_str).unwrap_or("").to_owned();
    for entry in &mut entries {
        if !entry.is(manager, operation, subresource) {
            entry.set = entry.set.difference(&changed).difference(&removed);
        }
    }
    let position = entries.iter().position(|e| e.is(manager, operation, subresource));
    let before = position.map(|i| entries[i].set.clone()).unwrap_or_default();
    let after = match (operation, position) {
        (Operation::Apply, _) => tracked_set(new, subresource, node),
        // A manager's first write (every create): its set is just what the write changed.
        (Operation::Update, None) if removed.is_empty() => changed,
        (Operation::Update, _) => {
            let mut s = before.clone();
            s.union_with(&changed);
            s.difference(&removed)
        }
    };
    if after != before || position.is_none() {
        let entry = Entry {
            manager: manager.to_owned(),
            operation,
            api_version,
            time: Some(time.to_owned()),
            subresource: subresource.map(str::to_owned),
            set: after,
        };
        match position {
            Some(i) => entries[i] = entry,
            None => entries.push(entry),
        }
    }
    write_entries(new, entries);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const T1: &str = "2026-01-01T00:00:00Z";
    const T2: &str = "2026-01-02T00:00:00Z";

    #[test]
    fn tracked_set_matches_the_set_of_the_tracked_copy() {
        let objects = [
            json!({"apiVersion":"v1","kind":"Pod","metadata":{"name":"p","namespace":"d","uid":"u","labels":{"a":"b"}},
                "spec":{"containers":[{"name":"c","image":"i","ports":[{"containerPort":80}]}]},"status":{"phase":"Pending"}}),
            json!({"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"c","resourceVersion":"3"},"data":{"k":"v"}}),
            json!({"kind":"X","metadata":"not an object","spec":{}}),
            json!({"metadata":{"name":"only-server-fields","generation":1},"status":{"x":[1,2]}}),
            json!([1, 2]),
        ];
        for object in &objects {
            let node = Node::for_object(object);
            for sub in [None, Some("status"), Some("scale")] {
                assert_eq!(
                    tracked_set(object, sub, node),
                    set_of_map(&tracked(object, sub), node),
                    "{object} {sub:?}"
                );
            }
        }
    }

    #[test]
    fn create_then_update_transfers_ownership() {
        let mut created = json!({"apiVersion":"apps/v1","kind":"Deployment",
            "metadata":{"name":"web","labels":{"app":"web"},"uid":"u","resourceVersion":"5"},
            "spec":{"replicas":1,"template":{"spec":{"containers":[{"name":"nginx","image":"nginx"}]}}},
            "status":{"replicas":0}});
        update_managed_fields(None, &mut created, "kubectl-create", Operation::Update, None, T1)
            .unwrap();
        expect_test::expect![[r#"[{"apiVersion":"apps/v1","fieldsType":"FieldsV1","fieldsV1":{"f:metadata":{"f:labels":{"f:app":{}}},"f:spec":{"f:replicas":{},"f:template":{"f:spec":{"f:containers":{"k:{\"name\":\"nginx\"}":{".":{},"f:image":{},"f:name":{}}}}}}},"manager":"kubectl-create","operation":"Update","time":"2026-01-01T00:00:00Z"}]"#]]
            .assert_eq(&created["metadata"]["managedFields"].to_string());

        let mut scaled = created.clone();
        scaled["spec"]["replicas"] = json!(5);
        update_managed_fields(
            Some(&created),
            &mut scaled,
            "kubectl-scale",
            Operation::Update,
            None,
            T2,
        )
        .unwrap();
        expect_test::expect![[r#"[{"apiVersion":"apps/v1","fieldsType":"FieldsV1","fieldsV1":{"f:metadata":{"f:labels":{"f:app":{}}},"f:spec":{"f:template":{"f:spec":{"f:containers":{"k:{\"name\":\"nginx\"}":{".":{},"f:image":{},"f:name":{}}}}}}},"manager":"kubectl-create","operation":"Update","time":"2026-01-01T00:00:00Z"},{"apiVersion":"apps/v1","fieldsType":"FieldsV1","fieldsV1":{"f:spec":{"f:replicas":{}}},"manager":"kubectl-scale","operation":"Update","time":"2026-01-02T00:00:00Z"}]"#]]
            .assert_eq(&scaled["metadata"]["managedFields"].to_string());

        // A no-op write by a new manager records nothing; status writes own only status.
        let mut same = scaled.clone();
        update_managed_fields(Some(&scaled), &mut same, "idle", Operation::Update, None, T2)
            .unwrap();
        assert_eq!(same, scaled);
        let mut status = scaled.clone();
        status["status"]["replicas"] = json!(5);
        update_managed_fields(
            Some(&scaled),
            &mut status,
            "ctrl",
            Operation::Update,
            Some("status"),
            T2,
        )
        .unwrap();
        let entries = status["metadata"]["managedFields"].as_array().unwrap();
        let ctrl = entries.iter().find(|e| e["manager"] == "ctrl").unwrap();
        assert_eq!(ctrl["fieldsV1"], json!({"f:status":{"f:replicas":{}}}));
        assert_eq!(ctrl["subresource"], "status");
    }

    #[test]
    fn removed_fields_leave_every_entry() {
        let mut a = json!({"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"c"},"data":{"x":"1","y":"2"}});
        update_managed_fields(None, &mut a, "one", Operation::Update, None, T1).unwrap();
        let mut b = a.clone();
        b["data"].as_object_mut().unwrap().remove("x");
        update_managed_fields(Some(&a), &mut b, "two", Operation::Update, None, T2).unwrap();
        let entries = b["metadata"]["managedFields"].as_array().unwrap();
        assert_eq!(entries.len(), 1, "{entries:?}");
        assert_eq!(entries[0]["fieldsV1"], json!({"f:data":{"f:y":{}}}));
        assert!(update_managed_fields(None, &mut b, "", Operation::Update, None, T1).is_err());
    }

    #[test]
    fn clients_may_rewrite_or_clear_managed_fields() {
        let mut live = json!({"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"web"},
            "spec":{"replicas":1,"paused":false}});
        update_managed_fields(
            None,
            &mut live,
            "kubectl-client-side-apply",
            Operation::Update,
            None,
            T1,
        )
        .unwrap();
        // kubectl's client-side -> server-side apply migration renames the manager with a JSON
        // patch of managedFields; the write itself changes nothing else.
        let mut migrated = live.clone();
        migrated["metadata"]["managedFields"][0]["manager"] = json!("kubectl");
        migrated["metadata"]["managedFields"][0]["operation"] = json!("Apply");
        update_managed_fields(Some(&live), &mut migrated, "kubectl", Operation::Update, None, T2)
            .unwrap();
        let entries = migrated["metadata"]["managedFields"].as_array().unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(
            (entries[0]["manager"].as_str(), entries[0]["operation"].as_str()),
            (Some("kubectl"), Some("Apply"))
        );
        // Now a server-side apply by `kubectl` owns replicas: no conflict.
        let body = br#"{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"web"},"spec":{"replicas":3,"paused":false}}"#;
        let applied = crate::patch::server_side_apply(&crate::patch::ApplyRequest {
            live: Some(&migrated),
            body,
            manager: "kubectl",
            force: false,
            subresource: None,
            time: T2,
        })
        .unwrap();
        assert_eq!(applied["spec"]["replicas"], json!(3));
        // A PUT of the object as read keeps the entries; malformed or empty lists are ignored;
        // `[{}]` clears them.
        for (sent, expected) in [
            (live["metadata"]["managedFields"].clone(), 1),
            (json!([{"manager": 5}]), 1),
            (json!([]), 1),
            (json!([{}]), 0),
        ] {
            let mut put = live.clone();
            put["metadata"]["managedFields"] = sent.clone();
            update_managed_fields(Some(&live), &mut put, "x", Operation::Update, None, T2).unwrap();
            let n = put["metadata"]["managedFields"].as_array().map_or(0, Vec::len);
            assert_eq!(n, expected, "{sent}");
        }
    }

    #[test]
    fn keys_and_sets() {
        let port = json!({"containerPort": 80, "protocol": "TCP", "name": "http"});
        assert_eq!(
            key_element(&port, &["containerPort", "protocol"]).unwrap(),
            r#"k:{"containerPort":80,"protocol":"TCP"}"#
        );
        assert_eq!(key_element(&json!({"x":1}), &["name"]), None);
        let meta = Node::for_kind("v1", "ConfigMap").unwrap().child("metadata");
        let set = set_of_field(meta, "finalizers", &json!(["a", "b"]));
        assert_eq!(set.to_fields_v1(), json!({"v:\"a\"":{}, "v:\"b\"":{}}));
    }
}
