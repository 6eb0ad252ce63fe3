//! JSON patch (RFC 6902, through the `json-patch` crate) and JSON merge patch (RFC 7386).

use serde_json::{Map, Value};

use super::{PatchError, bad};

/// Upstream's bound on the operations of one JSON patch.
pub const MAX_JSON_PATCH_OPERATIONS: usize = 10_000;

/// Upstream's bound on the bytes `copy` operations may add (its request-size limit), so a small
/// patch cannot grow an object exponentially.
pub const MAX_JSON_PATCH_COPY_BYTES: usize = 3 * 1024 * 1024;

/// Applies an RFC 6902 patch (an array of operations). A malformed patch is 400; an operation that
/// cannot apply (missing path, failed `test`) is 422, as upstream answers.
pub fn json_patch(original: &Value, patch: &Value) -> Result<Value, PatchError> {
    let Value::Array(operations) = patch else {
        return Err(bad("a JSON patch must be an array of operations"));
    };
    if operations.len() > MAX_JSON_PATCH_OPERATIONS {
        return Err(bad(format!(
            "the allowed number of operations in a JSON patch is {MAX_JSON_PATCH_OPERATIONS}, got {}",
            operations.len()
        )));
    }
    let operations: json_patch::Patch = serde_json::from_value(patch.clone())
        .map_err(|e| bad(format!("invalid JSON patch: {e}")))?;
    // We patch a copy and drop it on failure, so the crate's undo log is not needed; its undo
    // path can panic on some failing patches (json-patch 4.2, found by skiff-fuzz).
    let mut document = original.clone();
    let mut copied = 0usize;
    for (index, operation) in operations.0.iter().enumerate() {
        if let json_patch::PatchOperation::Copy(copy) = operation
            && let Some(value) = document.pointer(copy.from.as_str())
        {
            copied += serde_json::to_vec(value).map_or(0, |bytes| bytes.len());
            if copied > MAX_JSON_PATCH_COPY_BYTES {
                return Err(PatchError::TooLarge(format!(
                    "the JSON patch's copy operations add more than {MAX_JSON_PATCH_COPY_BYTES} bytes"
                )));
            }
        }
        json_patch::patch_unsafe(&mut document, std::slice::from_ref(operation)).map_err(|e| {
            PatchError::invalid(format!(
                "the JSON patch could not be applied: operation {index} failed at path {:?}: {}",
                e.path.as_str(),
                e.kind
            ))
        })?;
    }
    Ok(document)
}

/// Applies an RFC 7386 merge patch: objects merge recursively, `null` deletes, anything else
/// (lists included) replaces.
pub fn merge_patch(original: &Value, patch: &Value) -> Value {
    let Value::Object(patch) = patch else {
        return patch.clone();
    };
    let mut result = match original {
        Value::Object(map) => map.clone(),
        _ => Map::new(),
    };
    for (key, value) in patch {
        if value.is_null() {
            result.remove(key);
        } else {
            let merged = merge_patch(result.get(key).unwrap_or(&Value::Null), value);
            result.insert(key.clone(), merged);
        }
    }
    Value::Object(result)
}

/// The merge patch that turns `from` into `to` (for objects without `null` values, applying it
/// with [`merge_patch`] yields `to` exactly).
pub fn merge_patch_diff(from: &Value, to: &Value) -> Value {
    match (from, to) {
        (Value::Object(a), Value::Object(b)) => {
            let mut patch = Map::new();
            for key in a.keys() {
                if !b.contains_key(key) {
                    patch.insert(key.clone(), Value::Null);
                }
            }
            for (key, value) in b {
                match a.get(key) {
                    Some(old) if old == value => {}
                    Some(old @ Value::Object(_)) if value.is_object() => {
                        patch.insert(key.clone(), merge_patch_diff(old, value));
                    }
                    _ => {
                        patch.insert(key.clone(), value.clone());
                    }
                }
            }
            Value::Object(patch)
        }
        _ => to.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn rfc7386_examples() {
        let cases = [
            (json!({"a": "b"}), json!({"a": "c"}), json!({"a": "c"})),
            (json!({"a": "b"}), json!({"b": "c"}), json!({"a": "b", "b": "c"})),
            (json!({"a": "b"}), json!({"a": null}), json!({})),
            (json!({"a": [{"b": "c"}]}), json!({"a": [1]}), json!({"a": [1]})),
            (json!({"e": null}), json!({"a": 1}), json!({"e": null, "a": 1})),
            (json!([1, 2]), json!({"a": "b", "c": null}), json!({"a": "b"})),
            (json!({}), json!({"a": {"bb": {"ccc": null}}}), json!({"a": {"bb": {}}})),
        ];
        for (original, patch, expected) in cases {
            assert_eq!(merge_patch(&original, &patch), expected, "{patch}");
        }
    }

    #[test]
    fn rfc6902_operations() {
        let doc = json!({"spec": {"replicas": 1, "list": ["a", "b"]}});
        let patch = json!([
            {"op": "test", "path": "/spec/replicas", "value": 1},
            {"op": "replace", "path": "/spec/replicas", "value": 3},
            {"op": "add", "path": "/spec/list/1", "value": "x"},
            {"op": "remove", "path": "/spec/list/0"},
            {"op": "copy", "from": "/spec/replicas", "path": "/spec/copy"},
            {"op": "move", "from": "/spec/copy", "path": "/moved"},
            {"op": "add", "path": "/spec/list/-", "value": "z"}
        ]);
        assert_eq!(
            json_patch(&doc, &patch).unwrap(),
            json!({"spec": {"replicas": 3, "list": ["x", "b", "z"]}, "moved": 3})
        );
        let check = |patch: Value, code: u16| {
            let err = json_patch(&doc, &patch).unwrap_err();
            assert_eq!(err.code(), code, "{patch}: {err}");
        };
        check(json!([{"op": "test", "path": "/spec/replicas", "value": 2}]), 422);
        check(json!([{"op": "remove", "path": "/nope"}]), 422);
        check(json!([{"op": "frobnicate", "path": "/a"}]), 400);
        check(json!([{"op": "add", "value": 1}]), 400);
        check(json!({"op": "add"}), 400);
        // A failing patch leaves the original untouched (we patch a copy).
        check(
            json!([{"op": "add", "path": "/x", "value": 1}, {"op": "test", "path": "/x", "value": 2}]),
            422,
        );
        assert!(doc.get("x").is_none());
        // Doubling by copy: 30 copies of a growing subtree would be 2^30 elements.
        let mut doubling = vec![json!({"op": "add", "path": "/a", "value": ["xxxxxxxxxxxxxxxx"]})];
        for _ in 0..30 {
            doubling.push(json!({"op": "copy", "from": "/a", "path": "/a/-"}));
        }
        check(Value::Array(doubling), 413);
        let err = json_patch(&doc, &json!([{"op": "test", "path": "/spec/replicas", "value": 2}]))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "the JSON patch could not be applied: operation 0 failed at path \"/spec/replicas\": value did not match"
        );
        // Found by skiff-fuzz: a failing `move` after an `add`/`remove` made json-patch's undo
        // log panic.
        check(
            json!([{"op": "add", "path": "/spec/x", "value": "y"},
                   {"op": "remove", "path": "/spec/replicas"},
                   {"op": "move", "from": "/spec/x", "path": "/missing/z"}]),
            422,
        );
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            any::<bool>().prop_map(Value::Bool),
            (-5i64..5).prop_map(Value::from),
            "[a-c]{0,2}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 32, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
                prop::collection::btree_map("[a-d]", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn json_object() -> impl Strategy<Value = Value> {
        prop::collection::btree_map("[a-d]", json_value(), 0..4)
            .prop_map(|m| Value::Object(m.into_iter().collect()))
    }

    proptest! {
        /// merge(a, diff(a, b)) == b for null-free objects.
        #[test]
        fn merge_of_diff_round_trips(a in json_object(), b in json_object()) {
            prop_assert_eq!(merge_patch(&a, &merge_patch_diff(&a, &b)), b);
        }

        /// Merging a patch twice is the same as merging it once.
        #[test]
        fn merge_is_idempotent(a in json_object(), p in json_object()) {
            let once = merge_patch(&a, &p);
            prop_assert_eq!(merge_patch(&once, &p), once);
        }

        /// The empty patch is the identity; diff(a, a) is empty.
        #[test]
        fn empty_patch_is_identity(a in json_object()) {
            prop_assert_eq!(merge_patch(&a, &json!({})), a.clone());
            prop_assert_eq!(merge_patch_diff(&a, &a), json!({}));
        }

        /// A JSON patch of `replace` at the root-level keys of b turns a into b, and a `test` of
        /// every resulting key passes.
        #[test]
        fn json_patch_add_then_test(a in json_object(), b in json_object()) {
            let mut ops = Vec::new();
            for (k, v) in b.as_object().unwrap() {
                ops.push(json!({"op": "add", "path": format!("/{k}"), "value": v}));
                ops.push(json!({"op": "test", "path": format!("/{k}"), "value": v}));
            }
            let patched = json_patch(&a, &Value::Array(ops)).unwrap();
            let mut expected = a.as_object().unwrap().clone();
            expected.extend(b.as_object().unwrap().clone());
            prop_assert_eq!(patched, Value::Object(expected));
        }

        /// Arbitrary operations never panic; they apply or fail with 400/422.
        #[test]
        fn json_patch_never_panics(a in json_object(), ops in prop::collection::vec(json_value(), 0..4)) {
            if let Err(e) = json_patch(&a, &Value::Array(ops)) {
                prop_assert!(e.code() == 400 || e.code() == 422);
            }
        }
    }
}
