//! Discovery documents built from the resource table: aggregated (apidiscovery.k8s.io/v2) and
//! legacy (`APIVersions`, `APIGroupList`, `APIGroup`, `APIResourceList`), plus `/version`.

use serde_json::{Value, json};
use skiff_api::{RESOURCES, Resource, Subresource, resource};

/// The Kubernetes version Skiff reports; the minor selects the bundled kubectl the dispatcher
/// runs (§1.1 of the API reference).
pub fn version() -> Value {
    json!({
        "major": "1",
        "minor": "33",
        "gitVersion": "v1.33.0-skiff",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "go1.24.0",
        "compiler": "gc",
        "platform": "linux/amd64"
    })
}

fn sub_kind(r: &Resource, s: Subresource) -> Value {
    match s {
        Subresource::Scale => json!({"group": "autoscaling", "version": "v1", "kind": "Scale"}),
        Subresource::Binding => json!({"group": "", "version": "v1", "kind": "Binding"}),
        Subresource::Status => json!({"group": r.group, "version": r.version, "kind": r.kind}),
    }
}

fn aggregated_resource(r: &Resource) -> Value {
    let subs: Vec<Value> = r
        .subresources
        .iter()
        .map(|s| json!({"subresource": s.name(), "responseKind": sub_kind(r, *s), "verbs": s.verbs()}))
        .collect();
    let mut v = json!({
        "resource": r.plural,
        "responseKind": {"group": r.group, "version": r.version, "kind": r.kind},
        "scope": if r.namespaced { "Namespaced" } else { "Cluster" },
        "singularResource": r.singular,
        "verbs": r.verbs(),
    });
    if !r.short_names.is_empty() {
        v["shortNames"] = json!(r.short_names);
    }
    if !r.categories.is_empty() {
        v["categories"] = json!(r.categories);
    }
    if !subs.is_empty() {
        v["subresources"] = Value::Array(subs);
    }
    v
}

fn aggregated_group(group: &str) -> Value {
    let resources: Vec<Value> =
        RESOURCES.iter().filter(|r| r.group == group).map(aggregated_resource).collect();
    json!({"metadata": {"name": group, "creationTimestamp": null}, "versions": [{"version": "v1", "resources": resources, "freshness": "Current"}]})
}

/// `/api` (`legacy`) or `/apis` as an `APIGroupDiscoveryList`.
pub fn aggregated(legacy: bool) -> Value {
    let items: Vec<Value> = if legacy {
        vec![aggregated_group("")]
    } else {
        resource::groups().into_iter().map(aggregated_group).collect()
    };
    json!({"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {}, "items": items})
}

/// `/api` as `APIVersions`.
pub fn api_versions(server_address: &str) -> Value {
    json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}]})
}

fn api_group(group: &str) -> Value {
    let gv = json!({"groupVersion": format!("{group}/v1"), "version": "v1"});
    json!({"kind": "APIGroup", "apiVersion": "v1", "name": group, "versions": [gv.clone()], "preferredVersion": gv})
}

/// `/apis` as `APIGroupList`.
pub fn api_group_list() -> Value {
    let groups: Vec<Value> = resource::groups().into_iter().map(api_group).collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `/apis/<group>`, if served.
pub fn group(group: &str) -> Option<Value> {
    resource::groups().contains(&group).then(|| api_group(group))
}

/// `/api/v1` or `/apis/<group>/v1` as `APIResourceList`, if served.
pub fn resource_list(group: &str, version: &str) -> Option<Value> {
    if version != "v1" || !(group.is_empty() || resource::groups().contains(&group)) {
        return None;
    }
    let mut out = Vec::new();
    for r in RESOURCES.iter().filter(|r| r.group == group) {
        let mut v = json!({"name": r.plural, "singularName": r.singular, "namespaced": r.namespaced, "kind": r.kind, "verbs": r.verbs()});
        if !r.short_names.is_empty() {
            v["shortNames"] = json!(r.short_names);
        }
        if !r.categories.is_empty() {
            v["categories"] = json!(r.categories);
        }
        out.push(v);
        for s in r.subresources {
            let kind = sub_kind(r, *s);
            let mut sv = json!({"name": format!("{}/{}", r.plural, s.name()), "singularName": "", "namespaced": r.namespaced, "kind": kind["kind"], "verbs": s.verbs()});
            if *s == Subresource::Scale {
                sv["group"] = json!("autoscaling");
                sv["version"] = json!("v1");
            }
            out.push(sv);
        }
    }
    let gv = if group.is_empty() { "v1".to_owned() } else { format!("{group}/v1") };
    Some(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": out}),
    )
}

#[cfg(test)]
mod tests {
    use expect_test::expect;

    use super::*;

    #[test]
    fn aggregated_apps_group() {
        let doc = aggregated(false);
        let apps = doc["items"]
            .as_array()
            .and_then(|i| i.iter().find(|g| g["metadata"]["name"] == "apps"))
            .expect("apps group");
        let deploy = apps["versions"][0]["resources"]
            .as_array()
            .and_then(|r| r.iter().find(|x| x["resource"] == "deployments"))
            .expect("deployments");
        expect![[r#"{"categories":["all"],"resource":"deployments","responseKind":{"group":"apps","kind":"Deployment","version":"v1"},"scope":"Namespaced","shortNames":["deploy"],"singularResource":"deployment","subresources":[{"responseKind":{"group":"autoscaling","kind":"Scale","version":"v1"},"subresource":"scale","verbs":["get","patch","update"]},{"responseKind":{"group":"apps","kind":"Deployment","version":"v1"},"subresource":"status","verbs":["get","patch","update"]}],"verbs":["create","delete","deletecollection","get","list","patch","update","watch"]}"#]].assert_eq(&deploy.to_string());
    }

    #[test]
    fn legacy_lists_cover_every_group() {
        assert_eq!(
            api_group_list()["groups"].as_array().map(Vec::len),
            Some(resource::groups().len())
        );
        let core = resource_list("", "v1").expect("core");
        assert!(
            core["resources"].as_array().expect("list").iter().any(|r| r["name"] == "pods/binding")
        );
        assert!(resource_list("nope", "v1").is_none());
        assert!(group("apps").is_some());
    }
}
