//! Golden tests over the patch bodies real kubectl sends (`testdata/kubectl-patch`), applied to
//! the Deployment `kubectl apply -f web.yaml` creates.

use std::path::Path;

use serde_json::Value;

use super::{ApplyRequest, Operation, PatchType, apply_patch, merge_patch_diff, server_side_apply};

fn dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/kubectl-patch")
}

/// The live object, owned by the client-side apply that created it.
fn live() -> Value {
    let text = std::fs::read(dir().join("live-deployment.json")).unwrap();
    let mut live: Value = serde_json::from_slice(&text).unwrap();
    super::update_managed_fields(
        None,
        &mut live,
        "kubectl-client-side-apply",
        Operation::Update,
        None,
        "2026-01-01T00:00:00Z",
    )
    .unwrap();
    live
}

fn outcome(live: &Value, result: Result<Value, super::PatchError>) -> String {
    match result {
        Ok(object) => serde_json::to_string_pretty(&merge_patch_diff(live, &object)).unwrap(),
        Err(e) => {
            let causes: Vec<String> =
                e.causes().iter().map(|c| format!("\n  {}: {}", c.field, c.message)).collect();
            format!("error {} {}: {e}{}", e.code(), e.reason(), causes.concat())
        }
    }
}

#[test]
fn kubectl_patch_bodies_apply_as_golden() {
    let live = live();
    let mut paths: Vec<_> = std::fs::read_dir(dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            name.ends_with(".smp.json")
                || name.ends_with(".merge.json")
                || name.ends_with(".apply.json")
        })
        .collect();
    paths.sort();
    assert_eq!(paths.len(), 9);
    for path in paths {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let body = std::fs::read(&path).unwrap();
        let time = "2026-01-02T00:00:00Z";
        let mut results = Vec::new();
        if name.ends_with(".apply.json") {
            let manager =
                if name.contains("last-applied") { "kubectl-last-applied" } else { "kubectl" };
            for force in [false, true] {
                let result = server_side_apply(&ApplyRequest {
                    live: Some(&live),
                    body: &body,
                    manager,
                    force,
                    subresource: None,
                    time,
                });
                results.push(format!("force={force}: {}", outcome(&live, result)));
            }
        } else {
            let patch_type = if name.ends_with(".smp.json") {
                PatchType::StrategicMerge
            } else {
                PatchType::Merge
            };
            results.push(outcome(&live, apply_patch(patch_type, &live, &body)));
        }
        let golden = path.with_file_name(name.replace(".json", ".out"));
        expect_test::expect_file![golden].assert_eq(&results.join("\n"));
    }
}
