//! A minimal OpenAPI v3: per group-version documents whose PATCH operations carry
//! `x-kubernetes-group-version-kind` and a `fieldValidation` parameter, which is what kubectl's
//! `apply`/`create -f` check before sending `fieldValidation=Strict` (§5.2 of the reference).
//! Schemas (for `kubectl explain`) are not served.

use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use skiff_api::{RESOURCES, resource};

/// `api/v1`, `apis/apps/v1`, …
fn group_versions() -> Vec<(String, &'static str)> {
    let mut out = vec![("api/v1".to_owned(), "")];
    out.extend(resource::groups().into_iter().map(|g| (format!("apis/{g}/v1"), g)));
    out
}

/// The document of one group version, if served.
pub fn document(path: &str) -> Option<Value> {
    let (_, group) = group_versions().into_iter().find(|(p, _)| p == path)?;
    let mut paths = Map::new();
    for r in RESOURCES.iter().filter(|r| r.group == group) {
        let base =
            if group.is_empty() { "/api/v1".to_owned() } else { format!("/apis/{group}/v1") };
        let item = if r.namespaced {
            format!("{base}/namespaces/{{namespace}}/{}/{{name}}", r.plural)
        } else {
            format!("{base}/{}/{{name}}", r.plural)
        };
        let gvk = json!({"group": r.group, "version": r.version, "kind": r.kind});
        let params = json!([
            {"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
            {"name": "fieldManager", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
            {"name": "dryRun", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
        ]);
        let op = |action: &str| json!({"x-kubernetes-action": action, "x-kubernetes-group-version-kind": gvk, "parameters": params, "responses": {}});
        paths.insert(item, json!({"get": op("get"), "put": op("put"), "patch": op("patch"), "delete": op("delete")}));
    }
    Some(
        json!({"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": "v1.33.0"}, "paths": paths, "components": {"schemas": {}}}),
    )
}

/// A stable hash of a document (the `hash` query and `ETag`).
pub fn hash(doc: &Value) -> String {
    let digest = Sha256::digest(doc.to_string().as_bytes());
    digest.iter().take(32).fold(String::new(), |mut s, b| {
        use std::fmt::Write;
        let _ = write!(s, "{b:02X}");
        s
    })
}

/// `/openapi/v3`: the index of per-GV documents.
pub fn root() -> Value {
    let mut paths = Map::new();
    for (p, _) in group_versions() {
        if let Some(doc) = document(&p) {
            paths.insert(
                p.clone(),
                json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={}", hash(&doc))}),
            );
        }
    }
    json!({"paths": paths})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apps_document_has_patch_gvk_and_field_validation() {
        let doc = document("apis/apps/v1").expect("apps");
        let p = &doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"];
        assert_eq!(p["x-kubernetes-group-version-kind"]["kind"], "Deployment");
        assert!(
            p["parameters"]
                .as_array()
                .expect("params")
                .iter()
                .any(|x| x["name"] == "fieldValidation")
        );
        assert!(
            root()["paths"]["api/v1"]["serverRelativeURL"]
                .as_str()
                .expect("url")
                .starts_with("/openapi/v3/api/v1?hash=")
        );
    }
}
