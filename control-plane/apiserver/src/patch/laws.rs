//! Property tests that tie the engines together: SMP without lists is a merge patch, SMP and
//! server-side apply are idempotent, and a sole manager's apply history does not matter.

use proptest::prelude::*;
use serde_json::{Map, Value, json};

use super::{ApplyRequest, merge_patch, server_side_apply, strategic_merge_patch};

/// Scalars and nested objects (no lists, no nulls) with keys that never look like directives.
fn map_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        any::<bool>().prop_map(Value::Bool),
        (-3i64..3).prop_map(Value::from),
        "[a-c]{0,2}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop::collection::btree_map("[a-d]", inner, 0..4)
            .prop_map(|m| Value::Object(m.into_iter().collect()))
    })
}

fn object() -> impl Strategy<Value = Map<String, Value>> {
    prop::collection::btree_map("[a-d]", map_value(), 0..4).prop_map(|m| m.into_iter().collect())
}

/// A patch of scalars, objects and `null` deletions.
fn patch_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        "[a-c]{0,2}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop::collection::btree_map("[a-d]", inner, 0..4)
            .prop_map(|m| Value::Object(m.into_iter().collect()))
    })
}

fn container() -> impl Strategy<Value = Value> {
    (
        prop::sample::select(vec!["a", "b", "c"]),
        "[xy]{1,2}",
        prop::option::of(prop::sample::select(vec![80, 443])),
    )
        .prop_map(|(name, image, port)| {
            let mut c = json!({"name": name, "image": image});
            if let Some(port) = port {
                c["ports"] = json!([{"containerPort": port}]);
            }
            c
        })
}

/// Containers with distinct names, in a b c order.
fn containers() -> impl Strategy<Value = Vec<Value>> {
    prop::collection::vec(container(), 0..4).prop_map(|mut list| {
        list.sort_by(|x, y| x["name"].as_str().cmp(&y["name"].as_str()));
        list.dedup_by(|x, y| x["name"] == y["name"]);
        list
    })
}

fn deployment(containers: Vec<Value>, labels: Map<String, Value>, replicas: i64) -> Value {
    let mut object = json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {"replicas": replicas, "template": {"spec": {}}}});
    object["metadata"]["labels"] = Value::Object(labels);
    object["spec"]["template"]["spec"]["containers"] = Value::Array(containers);
    object
}

fn labels() -> impl Strategy<Value = Map<String, Value>> {
    prop::collection::btree_map("[k-m]", "[v-w]", 0..3)
        .prop_map(|m| m.into_iter().map(|(k, v)| (k, Value::String(v))).collect())
}

fn apply(live: Option<&Value>, config: &Value) -> Value {
    let body = serde_json::to_vec(config).unwrap();
    server_side_apply(&ApplyRequest {
        live,
        body: &body,
        manager: "m",
        force: false,
        subresource: None,
        time: "2026-01-01T00:00:00Z",
    })
    .unwrap()
}

fn without_managed_fields(mut object: Value) -> Value {
    if let Some(metadata) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        metadata.remove("managedFields");
    }
    object
}

proptest! {
    /// Without lists or directives a strategic merge patch is a JSON merge patch.
    #[test]
    fn smp_without_lists_is_merge_patch(original in object(), patch in patch_value()) {
        let mut original = original;
        original.insert("apiVersion".into(), json!("v1"));
        original.insert("kind".into(), json!("ConfigMap"));
        let original = Value::Object(original);
        let patch = match patch {
            Value::Object(m) => Value::Object(m),
            other => json!({"data": other}),
        };
        prop_assert_eq!(
            strategic_merge_patch(&original, &patch).unwrap(),
            merge_patch(&original, &patch)
        );
    }

    /// Applying the same strategic merge patch twice is the same as once, and every container
    /// the patch names ends up with the patch's image.
    #[test]
    fn smp_container_patches_are_idempotent(
        live in containers(),
        patch in containers(),
        replicas in 0i64..3,
    ) {
        let original = deployment(live, Map::new(), 1);
        let patch = json!({"spec": {"replicas": replicas, "template": {"spec": {"containers": patch}}}});
        let once = strategic_merge_patch(&original, &patch).unwrap();
        let twice = strategic_merge_patch(&once, &patch).unwrap();
        prop_assert_eq!(&twice, &once);
        let result = once["spec"]["template"]["spec"]["containers"].as_array().unwrap();
        for c in patch["spec"]["template"]["spec"]["containers"].as_array().unwrap() {
            let merged = result.iter().find(|r| r["name"] == c["name"]).unwrap();
            prop_assert_eq!(&merged["image"], &c["image"]);
        }
    }

    /// For a sole manager, apply(c1) then apply(c2) is apply(c2) on a fresh object: fields it
    /// stopped applying are removed, nothing else is kept.
    #[test]
    fn sole_manager_apply_history_does_not_matter(
        first in (containers(), labels(), 0i64..3),
        second in (containers(), labels(), 0i64..3),
    ) {
        let c1 = deployment(first.0, first.1, first.2);
        let c2 = deployment(second.0, second.1, second.2);
        let via_c1 = apply(Some(&apply(None, &c1)), &c2);
        let fresh = apply(None, &c2);
        prop_assert_eq!(without_managed_fields(via_c1.clone()), without_managed_fields(fresh));
        // Re-applying is a no-op.
        prop_assert_eq!(apply(Some(&via_c1), &c2), via_c1);
    }
}
