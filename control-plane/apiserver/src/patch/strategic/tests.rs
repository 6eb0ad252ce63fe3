//! Golden cases for strategic merge patch: the patches kubectl, client-go and the Python client
//! send, every directive, and the errors.

use expect_test::{Expect, expect};
use serde_json::{Value, json};

use super::*;

fn deployment() -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "labels": {"app": "web", "tier": "fe"}, "finalizers": ["a", "b"]},
        "spec": {
            "replicas": 1,
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}},
            "template": {"spec": {
                "containers": [
                    {"name": "nginx", "image": "nginx:1.25",
                     "ports": [{"containerPort": 80, "protocol": "TCP"}],
                     "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
                     "volumeMounts": [{"name": "data", "mountPath": "/data"}]},
                    {"name": "sidecar", "image": "busybox"}
                ],
                "tolerations": [{"key": "k", "operator": "Exists"}],
                "volumes": [{"name": "data", "emptyDir": {}}]
            }}
        },
        "status": {"conditions": [
            {"type": "Available", "status": "True"},
            {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"}
        ]}
    })
}

/// Applies `patch` to `original` and compares the changed parts (a merge-patch diff from the
/// original, which keeps the goldens short) with `expected`.
fn check(original: &Value, patch: &Value, expected: &Expect) {
    let actual = match strategic_merge_patch(original, patch) {
        Ok(result) => {
            let diff = crate::patch::merge_patch_diff(original, &result);
            serde_json::to_string_pretty(&diff).unwrap()
        }
        Err(e) => format!("error {} {}: {e}", e.code(), e.reason()),
    };
    expected.assert_eq(&actual);
}

#[test]
fn kubectl_patch_merges_containers_by_name() {
    check(
        &deployment(),
        &json!({"spec":{"template":{"spec":{"containers":[{"name":"nginx","image":"nginx:1.27"}]}}}}),
        &expect![[r#"
            {
              "spec": {
                "template": {
                  "spec": {
                    "containers": [
                      {
                        "env": [
                          {
                            "name": "A",
                            "value": "1"
                          },
                          {
                            "name": "B",
                            "value": "2"
                          }
                        ],
                        "image": "nginx:1.27",
                        "name": "nginx",
                        "ports": [
                          {
                            "containerPort": 80,
                            "protocol": "TCP"
                          }
                        ],
                        "volumeMounts": [
                          {
                            "mountPath": "/data",
                            "name": "data"
                          }
                        ]
                      },
                      {
                        "image": "busybox",
                        "name": "sidecar"
                      }
                    ]
                  }
                }
              }
            }"#]],
    );
}

#[test]
fn kubectl_apply_with_set_element_order() {
    // What `kubectl apply -f web-v2.yaml` sends (reference §3), with the sidecar dropped from the
    // order: the order puts nginx first; sidecar is server-only and keeps its place after it.
    check(
        &deployment(),
        &json!({"metadata":{"annotations":{"kubectl.kubernetes.io/last-applied-configuration":"{}"}},
                "spec":{"replicas":3,"template":{"spec":{
                    "$setElementOrder/containers":[{"name":"nginx"}],
                    "containers":[{"image":"nginx:1.26","name":"nginx"}]}}}}),
        &expect![[r#"
            {
              "metadata": {
                "annotations": {
                  "kubectl.kubernetes.io/last-applied-configuration": "{}"
                }
              },
              "spec": {
                "replicas": 3,
                "template": {
                  "spec": {
                    "containers": [
                      {
                        "env": [
                          {
                            "name": "A",
                            "value": "1"
                          },
                          {
                            "name": "B",
                            "value": "2"
                          }
                        ],
                        "image": "nginx:1.26",
                        "name": "nginx",
                        "ports": [
                          {
                            "containerPort": 80,
                            "protocol": "TCP"
                          }
                        ],
                        "volumeMounts": [
                          {
                            "mountPath": "/data",
                            "name": "data"
                          }
                        ]
                      },
                      {
                        "image": "busybox",
                        "name": "sidecar"
                      }
                    ]
                  }
                }
              }
            }"#]],
    );
}

#[test]
fn set_element_order_reorders_and_adds() {
    let patch = json!({"spec":{"template":{"spec":{
        "$setElementOrder/containers":[{"name":"sidecar"},{"name":"new"},{"name":"nginx"}],
        "containers":[{"name":"new","image":"x"}]}}}});
    let result = strategic_merge_patch(&deployment(), &patch).unwrap();
    let names: Vec<&str> = result["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["sidecar", "new", "nginx"]);

    // Server-only elements interleave by their original position: live [a, b, c, d], the order
    // names [d, b] (c and a are server-only): a came before b, c came before d.
    let live = json!({"apiVersion":"v1","kind":"Pod","metadata":{"name":"p"},"spec":{"containers":[
        {"name":"a"},{"name":"b"},{"name":"c"},{"name":"d"}]}});
    let patch = json!({"spec":{"$setElementOrder/containers":[{"name":"d"},{"name":"b"}]}});
    let result = strategic_merge_patch(&live, &patch).unwrap();
    let names: Vec<&str> = result["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a", "c", "d", "b"]);
    // Scalars: the named ones follow the order; y (server-only) came before z originally.
    let live =
        json!({"apiVersion":"v1","kind":"Pod","metadata":{"name":"p","finalizers":["x","y","z"]}});
    let patch = json!({"metadata":{"$setElementOrder/finalizers":["z","x"],"finalizers":["z"]}});
    let result = strategic_merge_patch(&live, &patch).unwrap();
    assert_eq!(result["metadata"]["finalizers"], json!(["y", "z", "x"]));
}

#[test]
fn nested_lists_merge_by_their_keys() {
    check(
        &deployment(),
        &json!({"spec":{"template":{"spec":{"containers":[{"name":"nginx",
            "env":[{"name":"B","value":"changed"},{"name":"C","value":"3"}],
            "ports":[{"containerPort":443}],
            "volumeMounts":[{"mountPath":"/data","readOnly":true}]}]}}}}),
        &expect![[r#"
            {
              "spec": {
                "template": {
                  "spec": {
                    "containers": [
                      {
                        "env": [
                          {
                            "name": "A",
                            "value": "1"
                          },
                          {
                            "name": "B",
                            "value": "changed"
                          },
                          {
                            "name": "C",
                            "value": "3"
                          }
                        ],
                        "image": "nginx:1.25",
                        "name": "nginx",
                        "ports": [
                          {
                            "containerPort": 80,
                            "protocol": "TCP"
                          },
                          {
                            "containerPort": 443
                          }
                        ],
                        "volumeMounts": [
                          {
                            "mountPath": "/data",
                            "name": "data",
                            "readOnly": true
                          }
                        ]
                      },
                      {
                        "image": "busybox",
                        "name": "sidecar"
                      }
                    ]
                  }
                }
              }
            }"#]],
    );
}

#[test]
fn directives_delete_replace_retain_keys() {
    // `$patch: delete` on a list element.
    check(
        &deployment(),
        &json!({"spec":{"template":{"spec":{"containers":[{"name":"sidecar","$patch":"delete"}]}}}}),
        &expect![[r#"
            {
              "spec": {
                "template": {
                  "spec": {
                    "containers": [
                      {
                        "env": [
                          {
                            "name": "A",
                            "value": "1"
                          },
                          {
                            "name": "B",
                            "value": "2"
                          }
                        ],
                        "image": "nginx:1.25",
                        "name": "nginx",
                        "ports": [
                          {
                            "containerPort": 80,
                            "protocol": "TCP"
                          }
                        ],
                        "volumeMounts": [
                          {
                            "mountPath": "/data",
                            "name": "data"
                          }
                        ]
                      }
                    ]
                  }
                }
              }
            }"#]],
    );
    // `$patch: replace` as a list element replaces the whole list.
    check(
        &deployment(),
        &json!({"spec":{"template":{"spec":{"containers":[{"$patch":"replace"},{"name":"only","image":"x"}]}}}}),
        &expect![[r#"
            {
              "spec": {
                "template": {
                  "spec": {
                    "containers": [
                      {
                        "image": "x",
                        "name": "only"
                      }
                    ]
                  }
                }
              }
            }"#]],
    );
    // `$patch: replace` in a map replaces the map; `$patch: delete` removes it.
    check(
        &deployment(),
        &json!({"metadata":{"labels":{"$patch":"replace","new":"1"}},"spec":{"strategy":{"$patch":"delete"}}}),
        &expect![[r#"
            {
              "metadata": {
                "labels": {
                  "app": null,
                  "new": "1",
                  "tier": null
                }
              },
              "spec": {
                "strategy": null
              }
            }"#]],
    );
    // `$retainKeys` (kubectl apply switching a Deployment to Recreate).
    check(
        &deployment(),
        &json!({"spec":{"strategy":{"$retainKeys":["type"],"type":"Recreate"}}}),
        &expect![[r#"
            {
              "spec": {
                "strategy": {
                  "rollingUpdate": null,
                  "type": "Recreate"
                }
              }
            }"#]],
    );
    check(
        &deployment(),
        &json!({"spec":{"strategy":{"$retainKeys":["type"],"rollingUpdate":{"maxSurge":1}}}}),
        &expect![[
            r#"error 422 Invalid: the patch has field "rollingUpdate" that is not present in $retainKeys"#
        ]],
    );
}

#[test]
fn primitive_lists_and_replaced_lists() {
    // finalizers: union; `$deleteFromPrimitiveList` removes.
    check(
        &deployment(),
        &json!({"metadata":{"finalizers":["b","c"],"$deleteFromPrimitiveList/finalizers":["a"]}}),
        &expect![[r#"
            {
              "metadata": {
                "finalizers": [
                  "b",
                  "c"
                ]
              }
            }"#]],
    );
    // tolerations have no strategy upstream: replaced.
    check(
        &deployment(),
        &json!({"spec":{"template":{"spec":{"tolerations":[{"key":"other","operator":"Exists"}]}}}}),
        &expect![[r#"
            {
              "spec": {
                "template": {
                  "spec": {
                    "tolerations": [
                      {
                        "key": "other",
                        "operator": "Exists"
                      }
                    ]
                  }
                }
              }
            }"#]],
    );
}

#[test]
fn status_conditions_merge_by_type() {
    check(
        &deployment(),
        &json!({"status":{"conditions":[{"type":"Progressing","status":"False","reason":"ProgressDeadlineExceeded"}]}}),
        &expect![[r#"
            {
              "status": {
                "conditions": [
                  {
                    "status": "True",
                    "type": "Available"
                  },
                  {
                    "reason": "ProgressDeadlineExceeded",
                    "status": "False",
                    "type": "Progressing"
                  }
                ]
              }
            }"#]],
    );
}

#[test]
fn service_ports_by_port_and_node_cordon() {
    let service = json!({"apiVersion":"v1","kind":"Service","metadata":{"name":"s"},
        "spec":{"ports":[{"port":80,"targetPort":8080},{"port":443,"targetPort":8443}]}});
    check(
        &service,
        &json!({"spec":{"ports":[{"port":443,"targetPort":9443}]}}),
        &expect![[r#"
            {
              "spec": {
                "ports": [
                  {
                    "port": 80,
                    "targetPort": 8080
                  },
                  {
                    "port": 443,
                    "targetPort": 9443
                  }
                ]
              }
            }"#]],
    );
    let node = json!({"apiVersion":"v1","kind":"Node","metadata":{"name":"n"},"spec":{}});
    check(
        &node,
        &json!({"spec":{"unschedulable":true}}),
        &expect![[r#"
            {
              "spec": {
                "unschedulable": true
              }
            }"#]],
    );
}

#[test]
fn errors() {
    let crd = json!({"apiVersion":"example.com/v1","kind":"Widget","spec":{}});
    check(
        &crd,
        &json!({"spec":{"a":1}}),
        &expect![[
            r"error 415 UnsupportedMediaType: strategic merge patch is not supported for example.com/v1 Widget; use a merge patch (application/merge-patch+json) or a JSON patch"
        ]],
    );
    check(
        &deployment(),
        &json!({"spec":{"template":{"spec":{"containers":[{"image":"x"}]}}}}),
        &expect![[
            r#"error 400 BadRequest: an element of containers in the patch does not contain the merge key "name""#
        ]],
    );
    check(
        &deployment(),
        &json!({"spec":{"$patch":"explode"}}),
        &expect![[r#"error 400 BadRequest: unknown patch type: "explode" in map"#]],
    );
    check(
        &deployment(),
        &json!({"spec":{"template":{"spec":{"containers":["nginx"]}}}}),
        &expect![[
            r#"error 400 BadRequest: list containers holds objects, but the patch has "nginx""#
        ]],
    );
    check(
        &deployment(),
        &json!({"$patch":"delete"}),
        &expect![[r"error 400 BadRequest: a strategic merge patch cannot delete the whole object"]],
    );
}
