//! Server-side apply: merge an applied configuration into the live object by list-map keys,
//! record the manager's `Apply` entry, detect conflicts with other managers, and remove fields the
//! manager applied before but omits now.

use serde_json::{Map, Value};

use super::fieldset::{FieldSet, format_path};
use super::managed::{
    Entry, Operation, diff_maps, key_element, read_entries, set_of_map, tracked, value_element,
    write_entries,
};
use super::strategy::{Node, SsaList};
use super::{PatchError, StatusCause, bad};

/// One `application/apply-patch+yaml` request.
#[derive(Debug, Clone, Copy)]
pub struct ApplyRequest<'a> {
    /// The stored object, or `None` when the apply creates it.
    pub live: Option<&'a Value>,
    /// The request body: JSON (what every client sends) or YAML.
    pub body: &'a [u8],
    /// `fieldManager` (required).
    pub manager: &'a str,
    /// `force=true`: take conflicting fields from their owners instead of failing.
    pub force: bool,
    /// `None` for the main resource, `Some("status")` for the status subresource.
    pub subresource: Option<&'a str>,
    /// RFC 3339 time recorded in the manager's entry.
    pub time: &'a str,
}

/// Applies a configuration. Returns the new object (with `metadata.managedFields`), which the
/// caller then defaults, validates and stores (201 if `live` was `None`).
pub fn server_side_apply(request: &ApplyRequest<'_>) -> Result<Value, PatchError> {
    let ApplyRequest { live, body, manager, force, subresource, time } = *request;
    if manager.is_empty() {
        return Err(bad(
            "PATCH, application/apply-patch+yaml requests require fieldManager to be set",
        ));
    }
    let config = parse_config(body, live)?;
    let api_version = config["apiVersion"].as_str().unwrap_or("").to_owned();
    let node = Node::for_object(&config);
    let config_tracked = tracked(&config, subresource);
    reject_duplicate_keys(&config_tracked, node, "")?;
    let config_set = set_of_map(&config_tracked, node);

    let Some(live) = live else {
        let mut object = config.clone();
        if subresource.is_none()
            && let Some(map) = object.as_object_mut()
        {
            map.remove("status");
        }
        let entry = Entry {
            manager: manager.to_owned(),
            operation: Operation::Apply,
            api_version,
            time: Some(time.to_owned()),
            subresource: subresource.map(str::to_owned),
            set: config_set,
        };
        write_entries(&mut object, vec![entry]);
        return Ok(object);
    };

    // Merge only the owned part of the configuration into the live object.
    let mut merged = live.clone();
    if let Some(map) = merged.as_object_mut()
        && let Some(Value::Object(metadata)) = map.get_mut("metadata")
    {
        metadata.remove("managedFields");
    }
    if let (Some(target), Some(source)) = (merged.as_object_mut(), config.as_object()) {
        let mut source = source.clone();
        source.retain(|k, _| config_tracked.contains_key(k) || k == "metadata");
        if let Some(Value::Object(metadata)) = source.get_mut("metadata") {
            let owned = config_tracked.get("metadata").and_then(Value::as_object);
            metadata.retain(|k, _| owned.is_some_and(|o| o.contains_key(k)));
        }
        merge_map(target, &source, node);
    }

    let (changed, removed) =
        diff_maps(&tracked(live, subresource), &tracked(&merged, subresource), node);
    let touched = {
        let mut t = changed.clone();
        t.union_with(&removed);
        t
    };
    let mut entries = read_entries(live);
    take_or_refuse_conflicts(&mut entries, &touched, manager, force, subresource)?;

    // Fields this manager applied before and omits now, unless someone else still owns them.
    let previous = entries
        .iter()
        .find(|e| e.is(manager, Operation::Apply, subresource))
        .map(|e| e.set.clone())
        .unwrap_or_default();
    let mut others = FieldSet::new();
    for entry in entries.iter().filter(|e| !e.is(manager, Operation::Apply, subresource)) {
        others.union_with(&entry.set);
    }
    let stale = previous.difference(&config_set);
    // An element stays while anyone, this manager's new configuration included, owns something
    // at or under it (an empty map applied before, now applied with keys, keeps its keys).
    let mut keep = others.clone();
    keep.union_with(&config_set);
    remove_unowned(&mut merged, &stale, &keep);

    for entry in &mut entries {
        if !entry.is(manager, Operation::Apply, subresource) {
            entry.set = entry.set.difference(&removed);
        }
    }
    let mine = Entry {
        manager: manager.to_owned(),
        operation: Operation::Apply,
        api_version,
        time: Some(time.to_owned()),
        subresource: subresource.map(str::to_owned),
        set: config_set,
    };
    match entries.iter().position(|e| e.is(manager, Operation::Apply, subresource)) {
        Some(i) => {
            let unchanged = entries[i].set == mine.set && touched.is_empty() && stale.is_empty();
            if !unchanged {
                entries[i] = mine;
            }
        }
        None => entries.push(mine),
    }
    write_entries(&mut merged, entries);
    Ok(merged)
}

/// Fails with 409 if another manager owns a field this apply changes; with `force`, takes those
/// fields from their owners instead.
fn take_or_refuse_conflicts(
    entries: &mut [Entry],
    touched: &FieldSet,
    manager: &str,
    force: bool,
    subresource: Option<&str>,
) -> Result<(), PatchError> {
    let mut causes = Vec::new();
    for entry in entries.iter_mut() {
        if entry.is(manager, Operation::Apply, subresource) {
            continue;
        }
        let conflict = entry.set.intersection(touched);
        if conflict.is_empty() {
            continue;
        }
        if force {
            entry.set = entry.set.difference(&conflict);
        } else {
            for path in conflict.paths() {
                causes.push(StatusCause {
                    reason: "FieldManagerConflict".into(),
                    message: format!(
                        "conflict with {:?} using {}",
                        entry.manager, entry.api_version
                    ),
                    field: format_path(&path),
                });
            }
        }
    }
    if causes.is_empty() { Ok(()) } else { Err(conflict_error(causes)) }
}

/// An applied keyed list may not name an element twice (upstream refuses it too).
fn reject_duplicate_keys(
    map: &Map<String, Value>,
    node: Node,
    path: &str,
) -> Result<(), PatchError> {
    for (key, value) in map {
        let here = format!("{path}.{key}");
        match value {
            Value::Object(inner) => reject_duplicate_keys(inner, node.child(key), &here)?,
            Value::Array(items) => {
                let (_, ssa, element) = node.list(key);
                let mut seen = Vec::new();
                for item in items {
                    if let SsaList::Map(keys) = ssa
                        && let Some(k) = key_element(item, keys)
                    {
                        if seen.contains(&k) {
                            return Err(bad(format!(
                                "{here}: duplicate entries for key {}",
                                format_path(&[k])
                            )));
                        }
                        seen.push(k);
                    }
                    if let Value::Object(inner) = item {
                        reject_duplicate_keys(inner, element, &here)?;
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Parses and checks the applied configuration (JSON first, then YAML).
fn parse_config(body: &[u8], live: Option<&Value>) -> Result<Value, PatchError> {
    let config = crate::codec::decode_yaml(body).map_err(|e| bad(e.to_string()))?;
    let Value::Object(mut config) = config else {
        return Err(bad("an applied configuration must be an object"));
    };
    strip_nulls(&mut config);
    for field in ["apiVersion", "kind"] {
        if !config.get(field).is_some_and(Value::is_string) {
            return Err(bad(format!("{field} must be set in an applied configuration")));
        }
    }
    if config.get("metadata").and_then(|m| m.get("managedFields")).is_some() {
        return Err(bad("metadata.managedFields must be nil in an applied configuration"));
    }
    if let Some(live) = live {
        for field in ["apiVersion", "kind"] {
            if live.get(field) != config.get(field) {
                return Err(bad(format!(
                    "the applied {field} {} does not match the object's {}",
                    config[field],
                    live.get(field).unwrap_or(&Value::Null)
                )));
            }
        }
    }
    Ok(Value::Object(config))
}

fn conflict_error(causes: Vec<StatusCause>) -> PatchError {
    let n = causes.len();
    let message = if n == 1 {
        format!("Apply failed with 1 conflict: {}: {}", causes[0].message, causes[0].field)
    } else {
        let lines: Vec<String> =
            causes.iter().map(|c| format!("{}: {}", c.message, c.field)).collect();
        format!("Apply failed with {n} conflicts: {}", lines.join("; "))
    };
    PatchError::Conflict { message, causes }
}

/// Applied configurations use `null` for "not set".
fn strip_nulls(map: &mut Map<String, Value>) {
    map.retain(|_, v| !v.is_null());
    for value in map.values_mut() {
        match value {
            Value::Object(inner) => strip_nulls(inner),
            Value::Array(items) => {
                for item in items {
                    if let Value::Object(inner) = item {
                        strip_nulls(inner);
                    }
                }
            }
            _ => {}
        }
    }
}

/// Merges `config` into `live`: maps by key, keyed lists by their list-map keys, sets by value,
/// atomic lists, atomic structs and scalars replaced.
fn merge_map(live: &mut Map<String, Value>, config: &Map<String, Value>, node: Node) {
    for (key, value) in config {
        let merged = match (live.get_mut(key), value) {
            (Some(Value::Object(target)), Value::Object(source))
                if !node.child(key).is_atomic() =>
            {
                merge_map(target, source, node.child(key));
                continue;
            }
            (Some(Value::Array(target)), Value::Array(source)) => {
                let (_, ssa, element) = node.list(key);
                match ssa {
                    SsaList::Map(keys) => merge_keyed(target, source, keys, element),
                    SsaList::Set => {
                        let mut out = target.clone();
                        for item in source {
                            if !out.contains(item) {
                                out.push(item.clone());
                            }
                        }
                        Value::Array(out)
                    }
                    SsaList::Atomic => value.clone(),
                }
            }
            _ => value.clone(),
        };
        live.insert(key.clone(), merged);
    }
}

/// Merges keyed lists as upstream's structured merge does: the applied order wins for the
/// elements it names, live-only elements stay where they were relative to them.
fn merge_keyed(target: &[Value], source: &[Value], keys: &[&str], element: Node) -> Value {
    let index = |items: &[Value]| -> Option<Vec<(String, Value)>> {
        items.iter().map(|i| key_element(i, keys).map(|k| (k, i.clone()))).collect()
    };
    let (Some(lhs), Some(rhs)) = (index(target), index(source)) else {
        return Value::Array(source.to_vec());
    };
    let merge_item = |live: Option<&Value>, applied: &Value| -> Value {
        match (live, applied) {
            (Some(Value::Object(live)), Value::Object(applied)) => {
                let mut out = live.clone();
                merge_map(&mut out, applied, element);
                Value::Object(out)
            }
            _ => applied.clone(),
        }
    };
    let in_rhs = |k: &str| rhs.iter().any(|(rk, _)| rk == k);
    let live_item = |k: &str| lhs.iter().find(|(lk, _)| lk == k).map(|(_, v)| v);
    let mut shared =
        rhs.iter().filter(|(k, _)| lhs.iter().any(|(lk, _)| lk == k)).map(|(k, _)| k.as_str());
    let mut next_shared = shared.next();
    let mut emitted: Vec<&str> = Vec::new();
    let mut out = Vec::with_capacity(lhs.len() + rhs.len());
    let (mut l, mut r) = (0, 0);
    while l < lhs.len() || r < rhs.len() {
        if l < lhs.len() && r < rhs.len() {
            let lk = lhs[l].0.as_str();
            if lk == rhs[r].0 {
                out.push(merge_item(Some(&lhs[l].1), &rhs[r].1));
                emitted.push(lk);
                l += 1;
                r += 1;
                next_shared = shared.next();
                continue;
            }
            if in_rhs(lk) && next_shared.is_some_and(|n| n != lk) {
                l += 1;
                continue;
            }
        }
        if l < lhs.len() {
            let lk = lhs[l].0.as_str();
            if !in_rhs(lk) {
                out.push(lhs[l].1.clone());
                l += 1;
                continue;
            }
            if emitted.contains(&lk) {
                l += 1;
                continue;
            }
        }
        if r < rhs.len() {
            let rk = rhs[r].0.as_str();
            emitted.push(rk);
            out.push(merge_item(live_item(rk), &rhs[r].1));
            r += 1;
            if next_shared == Some(rk) {
                next_shared = shared.next();
            }
        }
    }
    Value::Array(out)
}

/// Removes from `value` the member paths of `stale` that no path of `keep` is at or under.
fn remove_unowned(value: &mut Value, stale: &FieldSet, keep: &FieldSet) {
    for (element, child) in stale.children() {
        let other = keep.child(element);
        let kept = other.is_some_and(FieldSet::has_any);
        if child.is_member() && !kept {
            remove_element(value, element);
            continue;
        }
        let empty = FieldSet::new();
        if let Some(inner) = find_element(value, element) {
            // A kept keyed element keeps its key fields.
            let child = match key_names(element) {
                Some(names) => {
                    let mut keys = FieldSet::new();
                    for name in names {
                        keys.insert_child(format!("f:{name}"), FieldSet::leaf());
                    }
                    child.difference(&keys)
                }
                None => child.clone(),
            };
            let was_empty = is_empty_collection(inner);
            remove_unowned(inner, &child, other.unwrap_or(&empty));
            // A list or map emptied by the removal goes too, as upstream's remover leaves it out.
            if !was_empty && !kept && is_empty_collection(inner) {
                remove_element(value, element);
            }
        }
    }
}

fn is_empty_collection(value: &Value) -> bool {
    match value {
        Value::Object(map) => map.is_empty(),
        Value::Array(items) => items.is_empty(),
        _ => false,
    }
}

fn find_element<'v>(value: &'v mut Value, element: &str) -> Option<&'v mut Value> {
    if let Some(field) = element.strip_prefix("f:") {
        return value.as_object_mut()?.get_mut(field);
    }
    let items = value.as_array_mut()?;
    items.iter_mut().find(|item| element_matches(item, element))
}

fn remove_element(value: &mut Value, element: &str) {
    if let Some(field) = element.strip_prefix("f:") {
        if let Some(map) = value.as_object_mut() {
            map.remove(field);
        }
    } else if let Some(items) = value.as_array_mut() {
        items.retain(|item| !element_matches(item, element));
    }
}

/// The key field names of a `k:{...}` path element.
fn key_names(element: &str) -> Option<Vec<String>> {
    let keys = element
        .strip_prefix("k:")
        .and_then(|k| serde_json::from_str::<Map<String, Value>>(k).ok())?;
    Some(keys.keys().cloned().collect())
}

fn element_matches(item: &Value, element: &str) -> bool {
    if element.starts_with("v:") {
        return value_element(item) == element;
    }
    let Some(names) = key_names(element) else {
        return false;
    };
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    key_element(item, &names).as_deref() == Some(element)
}

#[cfg(test)]
mod tests;
