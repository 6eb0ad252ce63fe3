//! Golden cases for server-side apply: create, re-apply, conflicts with `kubectl` client-side
//! apply and controllers, force, shared ownership, and removal of fields a manager stopped
//! applying.

use expect_test::{Expect, expect};
use serde_json::{Value, json};

use super::*;
use crate::patch::{Operation, update_managed_fields};

const T1: &str = "2026-01-01T00:00:00Z";
const T2: &str = "2026-01-02T00:00:00Z";
const T3: &str = "2026-01-03T00:00:00Z";

fn web(replicas: i64, image: &str) -> Value {
    json!({"apiVersion":"apps/v1","kind":"Deployment",
        "metadata":{"name":"web","namespace":"default","labels":{"app":"web"}},
        "spec":{"replicas":replicas,"selector":{"matchLabels":{"app":"web"}},
            "template":{"metadata":{"labels":{"app":"web"}},
                "spec":{"containers":[{"name":"nginx","image":image,
                    "ports":[{"containerPort":80}]}]}}}})
}

fn apply(
    live: Option<&Value>,
    config: &Value,
    manager: &str,
    force: bool,
    time: &str,
) -> Result<Value, PatchError> {
    let body = serde_json::to_vec(config).unwrap();
    server_side_apply(&ApplyRequest { live, body: &body, manager, force, subresource: None, time })
}

fn show(result: &Result<Value, PatchError>) -> String {
    match result {
        Ok(v) => serde_json::to_string_pretty(v).unwrap(),
        Err(e) => {
            let causes: Vec<String> = e
                .causes()
                .iter()
                .map(|c| format!("\n  {} {} {}", c.reason, c.field, c.message))
                .collect();
            format!("error {} {}: {e}{}", e.code(), e.reason(), causes.concat())
        }
    }
}

fn check(result: &Result<Value, PatchError>, expected: &Expect) {
    expected.assert_eq(&show(result));
}

fn managed(object: &Value) -> String {
    let entries = object["metadata"]["managedFields"].as_array().unwrap();
    entries
        .iter()
        .map(|e| {
            format!(
                "{} {} {} {}",
                e["manager"].as_str().unwrap(),
                e["operation"].as_str().unwrap(),
                e["time"].as_str().unwrap(),
                e["fieldsV1"]
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn apply_creates_then_reapply_is_a_no_op() {
    let created = apply(None, &web(1, "nginx:1.25"), "kubectl", false, T1);
    check(
        &created,
        &expect![[r#"
            {
              "apiVersion": "apps/v1",
              "kind": "Deployment",
              "metadata": {
                "labels": {
                  "app": "web"
                },
                "managedFields": [
                  {
                    "apiVersion": "apps/v1",
                    "fieldsType": "FieldsV1",
                    "fieldsV1": {
                      "f:metadata": {
                        "f:labels": {
                          "f:app": {}
                        }
                      },
                      "f:spec": {
                        "f:replicas": {},
                        "f:selector": {},
                        "f:template": {
                          "f:metadata": {
                            "f:labels": {
                              "f:app": {}
                            }
                          },
                          "f:spec": {
                            "f:containers": {
                              "k:{\"name\":\"nginx\"}": {
                                ".": {},
                                "f:image": {},
                                "f:name": {},
                                "f:ports": {
                                  "k:{\"containerPort\":80,\"protocol\":\"TCP\"}": {
                                    ".": {},
                                    "f:containerPort": {}
                                  }
                                }
                              }
                            }
                          }
                        }
                      }
                    },
                    "manager": "kubectl",
                    "operation": "Apply",
                    "time": "2026-01-01T00:00:00Z"
                  }
                ],
                "name": "web",
                "namespace": "default"
              },
              "spec": {
                "replicas": 1,
                "selector": {
                  "matchLabels": {
                    "app": "web"
                  }
                },
                "template": {
                  "metadata": {
                    "labels": {
                      "app": "web"
                    }
                  },
                  "spec": {
                    "containers": [
                      {
                        "image": "nginx:1.25",
                        "name": "nginx",
                        "ports": [
                          {
                            "containerPort": 80
                          }
                        ]
                      }
                    ]
                  }
                }
              }
            }"#]],
    );
    let created = created.unwrap();
    let again = apply(Some(&created), &web(1, "nginx:1.25"), "kubectl", false, T2).unwrap();
    assert_eq!(again, created, "re-applying the same configuration changes nothing");
}

#[test]
fn conflict_with_client_side_apply_unless_forced() {
    // `kubectl apply` (client side) created the object: an Update entry owns everything.
    let mut live = web(1, "nginx:1.25");
    update_managed_fields(
        None,
        &mut live,
        "kubectl-client-side-apply",
        Operation::Update,
        None,
        T1,
    )
    .unwrap();
    check(
        &apply(Some(&live), &web(3, "nginx:1.26"), "kubectl", false, T2),
        &expect![[r#"
            error 409 Conflict: Apply failed with 2 conflicts: conflict with "kubectl-client-side-apply" using apps/v1: .spec.replicas; conflict with "kubectl-client-side-apply" using apps/v1: .spec.template.spec.containers[name="nginx"].image
              FieldManagerConflict .spec.replicas conflict with "kubectl-client-side-apply" using apps/v1
              FieldManagerConflict .spec.template.spec.containers[name="nginx"].image conflict with "kubectl-client-side-apply" using apps/v1"#]],
    );
    // Applying the values the other manager already set is no conflict: ownership is shared.
    let shared = apply(Some(&live), &web(1, "nginx:1.25"), "kubectl", false, T2).unwrap();
    expect![[r#"
        kubectl Apply 2026-01-02T00:00:00Z {"f:metadata":{"f:labels":{"f:app":{}}},"f:spec":{"f:replicas":{},"f:selector":{},"f:template":{"f:metadata":{"f:labels":{"f:app":{}}},"f:spec":{"f:containers":{"k:{\"name\":\"nginx\"}":{".":{},"f:image":{},"f:name":{},"f:ports":{"k:{\"containerPort\":80,\"protocol\":\"TCP\"}":{".":{},"f:containerPort":{}}}}}}}}}
        kubectl-client-side-apply Update 2026-01-01T00:00:00Z {"f:metadata":{"f:labels":{"f:app":{}}},"f:spec":{"f:replicas":{},"f:selector":{},"f:template":{"f:metadata":{"f:labels":{"f:app":{}}},"f:spec":{"f:containers":{"k:{\"name\":\"nginx\"}":{".":{},"f:image":{},"f:name":{},"f:ports":{"k:{\"containerPort\":80,\"protocol\":\"TCP\"}":{".":{},"f:containerPort":{}}}}}}}}}"#]]
    .assert_eq(&managed(&shared));
    // --force-conflicts takes the fields.
    let forced = apply(Some(&live), &web(3, "nginx:1.26"), "kubectl", true, T2).unwrap();
    assert_eq!(forced["spec"]["replicas"], json!(3));
    expect![[r#"
        kubectl Apply 2026-01-02T00:00:00Z {"f:metadata":{"f:labels":{"f:app":{}}},"f:spec":{"f:replicas":{},"f:selector":{},"f:template":{"f:metadata":{"f:labels":{"f:app":{}}},"f:spec":{"f:containers":{"k:{\"name\":\"nginx\"}":{".":{},"f:image":{},"f:name":{},"f:ports":{"k:{\"containerPort\":80,\"protocol\":\"TCP\"}":{".":{},"f:containerPort":{}}}}}}}}}
        kubectl-client-side-apply Update 2026-01-01T00:00:00Z {"f:metadata":{"f:labels":{"f:app":{}}},"f:spec":{"f:selector":{},"f:template":{"f:metadata":{"f:labels":{"f:app":{}}},"f:spec":{"f:containers":{"k:{\"name\":\"nginx\"}":{".":{},"f:name":{},"f:ports":{"k:{\"containerPort\":80,\"protocol\":\"TCP\"}":{".":{},"f:containerPort":{}}}}}}}}}"#]]
    .assert_eq(&managed(&forced));
}

#[test]
fn stopped_fields_are_removed_unless_others_own_them() {
    let mut config = web(1, "nginx:1.25");
    config["metadata"]["labels"]["team"] = json!("a");
    config["spec"]["template"]["spec"]["containers"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name":"sidecar","image":"busybox"}));
    let live = apply(None, &config, "kubectl", false, T1).unwrap();
    // A controller sets an annotation and the sidecar's resources.
    let mut controlled = live.clone();
    controlled["metadata"]["annotations"] = json!({"note": "x"});
    controlled["spec"]["template"]["spec"]["containers"][1]["resources"] =
        json!({"limits": {"cpu": "1"}});
    update_managed_fields(Some(&live), &mut controlled, "ctrl", Operation::Update, None, T2)
        .unwrap();
    // The next apply omits the `team` label and the sidecar.
    let result = apply(Some(&controlled), &web(1, "nginx:1.25"), "kubectl", false, T3).unwrap();
    assert_eq!(result["metadata"]["labels"], json!({"app": "web"}));
    assert_eq!(result["metadata"]["annotations"], json!({"note": "x"}));
    // The sidecar stays because `ctrl` still owns a field inside it; its image goes.
    assert_eq!(
        result["spec"]["template"]["spec"]["containers"],
        json!([
            {"name":"nginx","image":"nginx:1.25","ports":[{"containerPort":80}]},
            {"name":"sidecar","resources":{"limits":{"cpu":"1"}}}
        ])
    );
    // A second manager's list elements merge by key next to ours.
    let other = json!({"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"web"},
        "spec":{"template":{"spec":{"containers":[{"name":"logger","image":"fluent"}]}}}});
    let merged = apply(Some(&result), &other, "other", false, T3).unwrap();
    let names: Vec<&str> = merged["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["nginx", "sidecar", "logger"]);
}

#[test]
fn bad_apply_requests() {
    let live = apply(None, &web(1, "x"), "kubectl", false, T1).unwrap();
    let run = |body: &[u8], manager: &str| {
        show(&server_side_apply(&ApplyRequest {
            live: Some(&live),
            body,
            manager,
            force: false,
            subresource: None,
            time: T2,
        }))
    };
    expect![[r"error 400 BadRequest: PATCH, application/apply-patch+yaml requests require fieldManager to be set"]]
        .assert_eq(&run(b"{}", ""));
    expect![[r"error 400 BadRequest: apiVersion must be set in an applied configuration"]]
        .assert_eq(&run(b"{\"kind\":\"Deployment\"}", "m"));
    expect![[r#"error 400 BadRequest: the applied kind "Service" does not match the object's "Deployment""#]]
        .assert_eq(&run(b"{\"apiVersion\":\"apps/v1\",\"kind\":\"Service\"}", "m"));
    expect![[
        r"error 400 BadRequest: metadata.managedFields must be nil in an applied configuration"
    ]]
    .assert_eq(&run(
        b"{\"apiVersion\":\"apps/v1\",\"kind\":\"Deployment\",\"metadata\":{\"managedFields\":[]}}",
        "m",
    ));
    expect![[r"error 400 BadRequest: an applied configuration must be an object"]]
        .assert_eq(&run(b"[1]", "m"));
    // YAML works too.
    let yaml =
        b"apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  paused: true\n";
    assert!(run(yaml, "m").contains("\"paused\": true"));
}

#[test]
fn status_subresource_and_duplicate_keys() {
    let live = apply(None, &web(1, "nginx:1.25"), "kubectl", false, T1).unwrap();
    // A controller applies status through the status subresource: it owns only status, and the
    // main resource's apply never touches it.
    let status = json!({"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"web"},
        "spec":{"replicas":7},
        "status":{"replicas":1,"conditions":[{"type":"Available","status":"True"}]}});
    let body = serde_json::to_vec(&status).unwrap();
    let with_status = server_side_apply(&ApplyRequest {
        live: Some(&live),
        body: &body,
        manager: "ctrl",
        force: false,
        subresource: Some("status"),
        time: T2,
    })
    .unwrap();
    assert_eq!(with_status["spec"]["replicas"], json!(1), "status apply ignores spec");
    assert_eq!(with_status["status"]["replicas"], json!(1));
    let ctrl = with_status["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["manager"] == "ctrl")
        .unwrap();
    assert_eq!(ctrl["subresource"], json!("status"));
    assert_eq!(
        ctrl["fieldsV1"],
        json!({"f:status":{"f:conditions":{"k:{\"type\":\"Available\"}":{".":{},"f:status":{},"f:type":{}}},"f:replicas":{}}})
    );
    let reapplied = apply(Some(&with_status), &web(1, "nginx:1.25"), "kubectl", false, T3).unwrap();
    assert_eq!(reapplied["status"], with_status["status"]);

    let mut twice = web(1, "x");
    twice["spec"]["template"]["spec"]["containers"] =
        json!([{"name":"a","image":"x"},{"name":"a","image":"y"}]);
    expect![[r#"error 400 BadRequest: .spec.template.spec.containers: duplicate entries for key [name="a"]"#]]
        .assert_eq(&show(&apply(Some(&live), &twice, "kubectl", false, T2)));
}
