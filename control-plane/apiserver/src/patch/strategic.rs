//! Strategic merge patch: merge patch plus per-list strategies (merge by key, union of scalars,
//! replace) from the table in `strategy.rs`, and the directives `$patch`, `$retainKeys`,
//! `$setElementOrder/<list>` and `$deleteFromPrimitiveList/<list>`.

use serde_json::{Map, Value};

use super::strategy::{Node, SmpList};
use super::{PatchError, bad};

const PATCH: &str = "$patch";
const RETAIN_KEYS: &str = "$retainKeys";
const SET_ELEMENT_ORDER: &str = "$setElementOrder/";
const DELETE_FROM_PRIMITIVE_LIST: &str = "$deleteFromPrimitiveList/";

/// Nested patch maps deeper than this are refused.
const MAX_DEPTH: usize = 64;

/// Applies a strategic merge patch to `original`. The kind is taken from `original`'s
/// `apiVersion`/`kind`; a kind without a schema (a custom resource) is 415, as upstream answers.
pub fn strategic_merge_patch(original: &Value, patch: &Value) -> Result<Value, PatchError> {
    let api_version = original.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    let kind = original.get("kind").and_then(Value::as_str).unwrap_or("");
    let Some(root) = Node::for_kind(api_version, kind) else {
        return Err(PatchError::UnsupportedMediaType(format!(
            "strategic merge patch is not supported for {api_version} {kind}; use a merge patch \
             (application/merge-patch+json) or a JSON patch"
        )));
    };
    let Value::Object(patch) = patch else {
        return Err(bad("a strategic merge patch must be a JSON object"));
    };
    let Value::Object(original) = original else {
        return Err(bad("the object to patch is not a JSON object"));
    };
    match merge_map(original, patch, root, 0)? {
        Some(map) => Ok(Value::Object(map)),
        None => Err(bad("a strategic merge patch cannot delete the whole object")),
    }
}

/// Merges `patch` into `original`; `None` means the map was deleted by `$patch: delete`.
fn merge_map(
    original: &Map<String, Value>,
    patch: &Map<String, Value>,
    node: Node,
    depth: usize,
) -> Result<Option<Map<String, Value>>, PatchError> {
    if depth > MAX_DEPTH {
        return Err(bad("the strategic merge patch is nested too deeply"));
    }
    match patch.get(PATCH) {
        None => {}
        Some(Value::String(directive)) => match directive.as_str() {
            "replace" => return Ok(Some(strip_directives(patch, node, depth)?)),
            "delete" => return Ok(None),
            "merge" => {}
            other => return Err(bad(format!("unknown patch type: {other:?} in map"))),
        },
        Some(other) => return Err(bad(format!("$patch must be a string, got {other}"))),
    }
    let mut result = original.clone();

    if let Some(retain) = patch.get(RETAIN_KEYS) {
        let Value::Array(keys) = retain else {
            return Err(bad("$retainKeys must be a list of field names"));
        };
        let mut keep = Vec::with_capacity(keys.len());
        for key in keys {
            let Value::String(key) = key else {
                return Err(bad("$retainKeys must be a list of field names"));
            };
            keep.push(key.as_str());
        }
        for key in patch.keys().filter(|k| !is_directive(k)) {
            if !keep.contains(&key.as_str()) {
                return Err(PatchError::invalid(format!(
                    "the patch has field {key:?} that is not present in $retainKeys"
                )));
            }
        }
        result.retain(|k, _| keep.contains(&k.as_str()));
    }

    for (key, list) in patch {
        if let Some(field) = key.strip_prefix(DELETE_FROM_PRIMITIVE_LIST) {
            let Value::Array(remove) = list else {
                return Err(bad(format!("{key} must be a list")));
            };
            if let Some(Value::Array(items)) = result.get_mut(field) {
                items.retain(|item| !remove.contains(item));
            }
        }
    }

    for (key, value) in patch {
        if is_directive(key) {
            continue;
        }
        if value.is_null() {
            result.remove(key);
            continue;
        }
        let merged = match value {
            Value::Object(patch_map) => {
                let empty = Map::new();
                let base = match result.get(key) {
                    Some(Value::Object(m)) => m,
                    _ => &empty,
                };
                merge_map(base, patch_map, node.child(key), depth + 1)?.map(Value::Object)
            }
            Value::Array(patch_list) => {
                let empty = Vec::new();
                let base = match result.get(key) {
                    Some(Value::Array(items)) => items,
                    _ => &empty,
                };
                Some(merge_list(base, patch_list, node, key, depth + 1)?)
            }
            scalar => Some(scalar.clone()),
        };
        match merged {
            Some(v) => {
                result.insert(key.clone(), v);
            }
            None => {
                result.remove(key);
            }
        }
    }

    for (key, order) in patch {
        if let Some(field) = key.strip_prefix(SET_ELEMENT_ORDER) {
            let Value::Array(order) = order else {
                return Err(bad(format!("{key} must be a list")));
            };
            if let Some(Value::Array(items)) = result.get_mut(field) {
                let (smp, _, _) = node.list(field);
                let server_order = match original.get(field) {
                    Some(Value::Array(items)) => items.as_slice(),
                    _ => &[],
                };
                *items = apply_element_order(items, order, server_order, smp)?;
            }
        }
    }
    Ok(Some(result))
}

fn is_directive(key: &str) -> bool {
    key == PATCH
        || key == RETAIN_KEYS
        || key.starts_with(SET_ELEMENT_ORDER)
        || key.starts_with(DELETE_FROM_PRIMITIVE_LIST)
}

/// A patch map with its directives removed (used where it is taken as a whole).
fn strip_directives(
    patch: &Map<String, Value>,
    node: Node,
    depth: usize,
) -> Result<Map<String, Value>, PatchError> {
    let mut without_patch = patch.clone();
    without_patch.remove(PATCH);
    Ok(merge_map(&Map::new(), &without_patch, node, depth + 1)?.unwrap_or_default())
}

fn merge_list(
    original: &[Value],
    patch: &[Value],
    parent: Node,
    field: &str,
    depth: usize,
) -> Result<Value, PatchError> {
    let (smp, _, element) = parent.list(field);
    match smp {
        SmpList::Replace => Ok(Value::Array(
            patch.iter().filter(|item| !is_replace_marker(item)).cloned().collect(),
        )),
        SmpList::MergePrimitives => {
            if patch.iter().any(is_replace_marker) {
                return Ok(Value::Array(
                    patch.iter().filter(|i| !is_replace_marker(i)).cloned().collect(),
                ));
            }
            let mut result = original.to_vec();
            for item in patch {
                if item.is_object() || item.is_array() {
                    return Err(bad(format!(
                        "list {field} holds scalars, but the patch has {item}"
                    )));
                }
                if !result.contains(item) {
                    result.push(item.clone());
                }
            }
            Ok(Value::Array(result))
        }
        SmpList::MergeByKey(key) => merge_keyed_list(original, patch, field, key, element, depth),
    }
}

fn is_replace_marker(item: &Value) -> bool {
    item.as_object()
        .is_some_and(|m| m.len() == 1 && m.get(PATCH).and_then(Value::as_str) == Some("replace"))
}

fn merge_keyed_list(
    original: &[Value],
    patch: &[Value],
    field: &str,
    key: &str,
    element: Node,
    depth: usize,
) -> Result<Value, PatchError> {
    if patch.iter().any(is_replace_marker) {
        let mut replaced = Vec::new();
        for item in patch.iter().filter(|i| !is_replace_marker(i)) {
            let Value::Object(map) = item else {
                return Err(bad(format!("list {field} holds objects, but the patch has {item}")));
            };
            replaced.push(Value::Object(strip_directives(map, element, depth)?));
        }
        return Ok(Value::Array(replaced));
    }
    let mut result: Vec<Value> = original.to_vec();
    for item in patch {
        let Value::Object(patch_item) = item else {
            return Err(bad(format!("list {field} holds objects, but the patch has {item}")));
        };
        let Some(key_value) = patch_item.get(key) else {
            return Err(bad(format!(
                "an element of {field} in the patch does not contain the merge key {key:?}"
            )));
        };
        let position = result.iter().position(|existing| existing.get(key) == Some(key_value));
        let directive = patch_item.get(PATCH).and_then(Value::as_str);
        match (position, directive) {
            (Some(i), Some("delete")) => {
                result.remove(i);
            }
            (None, Some("delete")) => {}
            (Some(i), _) => {
                let empty = Map::new();
                let base = result[i].as_object().unwrap_or(&empty);
                match merge_map(base, patch_item, element, depth + 1)? {
                    Some(merged) => result[i] = Value::Object(merged),
                    None => {
                        result.remove(i);
                    }
                }
            }
            (None, _) => {
                if let Some(merged) = merge_map(&Map::new(), patch_item, element, depth + 1)? {
                    result.push(Value::Object(merged));
                }
            }
        }
    }
    Ok(Value::Array(result))
}

/// Orders `items` as `$setElementOrder` says, the way upstream's `normalizeElementOrder` does:
/// the elements the order names are sorted by it, the others (server-only) by their place in the
/// original list, and the two runs are interleaved using the original list as the tie-breaker
/// (a server-only element goes before a named one only if it came first in the original).
fn apply_element_order(
    items: &[Value],
    order: &[Value],
    server_order: &[Value],
    smp: SmpList,
) -> Result<Vec<Value>, PatchError> {
    let identity = |item: &Value| -> Option<Value> {
        match smp {
            SmpList::MergeByKey(key) => item.get(key).cloned(),
            _ => Some(item.clone()),
        }
    };
    let mut wanted = Vec::with_capacity(order.len());
    for entry in order {
        let id = match smp {
            SmpList::MergeByKey(key) => entry.get(key).cloned().ok_or_else(|| {
                bad(format!("$setElementOrder entries must carry the merge key {key:?}"))
            })?,
            _ => entry.clone(),
        };
        wanted.push(id);
    }
    let position = |list: &[Value], id: &Option<Value>| -> Option<usize> {
        id.as_ref().and_then(|id| list.iter().position(|x| x == id))
    };
    let server_ids: Vec<Value> = server_order.iter().filter_map(identity).collect();
    let (mut named, mut server_only): (Vec<&Value>, Vec<&Value>) =
        items.iter().partition(|item| position(&wanted, &identity(item)).is_some());
    // Stable sorts; an element missing from its order sorts first, as upstream's index of -1 does.
    named.sort_by_key(|item| position(&wanted, &identity(item)).map_or(0, |p| p + 1));
    server_only.sort_by_key(|item| position(&server_ids, &identity(item)).map_or(0, |p| p + 1));
    let server_index = |item: &Value| position(&server_ids, &identity(item));
    let mut out = Vec::with_capacity(items.len());
    let (mut i, mut j) = (0, 0);
    while i < server_only.len() || j < named.len() {
        let take_server_only = if i >= server_only.len() {
            false
        } else if j >= named.len() {
            true
        } else {
            matches!(
                (server_index(server_only[i]), server_index(named[j])),
                (Some(l), Some(r)) if l < r
            )
        };
        if take_server_only {
            out.push(server_only[i].clone());
            i += 1;
        } else {
            out.push(named[j].clone());
            j += 1;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
