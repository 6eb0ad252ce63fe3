//! Validation of the served kinds: names, labels, and the structural rules clients rely on
//! (containers need names and images, workload selectors match their templates, Service ports,
//! quantities). Failures become a 422 `Invalid` Status with one cause per field.

use serde_json::Value;

use crate::quantity;
use crate::resource::Resource;
use crate::selector::{label_selector_matches, labels_of, valid_label_key, valid_label_value};

/// One invalid field, as `details.causes[]` of a Status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cause {
    /// `FieldValueRequired`, `FieldValueInvalid`, `FieldValueDuplicate`, `FieldValueNotSupported`.
    pub reason: &'static str,
    pub message: String,
    pub field: String,
}

impl Cause {
    fn required(field: impl Into<String>) -> Self {
        Self {
            reason: "FieldValueRequired",
            message: "Required value".to_owned(),
            field: field.into(),
        }
    }
    fn invalid(field: impl Into<String>, value: &Value, why: &str) -> Self {
        Self {
            reason: "FieldValueInvalid",
            message: format!("Invalid value: {value}: {why}"),
            field: field.into(),
        }
    }
}

/// DNS-1123 label: at most 63 lowercase alphanumerics or `-`, alphanumeric at both ends.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// DNS-1123 subdomain: dot-separated labels, at most 253 characters.
pub fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

fn name_rule(res: &Resource) -> (fn(&str) -> bool, &'static str) {
    match (res.group, res.kind) {
        ("", "Namespace" | "Service") => (
            is_dns_label,
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character",
        ),
        ("rbac.authorization.k8s.io", _) => (
            |s: &str| !s.is_empty() && s != "." && s != ".." && !s.contains(['/', '%']),
            "may not contain '/' or '%' and may not be '.' or '..'",
        ),
        _ => (
            is_dns_subdomain,
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character",
        ),
    }
}

/// Validates an object of `res` (already defaulted). An empty result means valid.
pub fn validate(res: &Resource, obj: &Value) -> Vec<Cause> {
    let mut out = Vec::new();
    let name = obj.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("");
    let (ok, why) = name_rule(res);
    if name.is_empty() {
        out.push(Cause {
            reason: "FieldValueRequired",
            message: "name or generateName is required".to_owned(),
            field: "metadata.name".to_owned(),
        });
    } else if !ok(name) {
        out.push(Cause::invalid("metadata.name", &Value::from(name), why));
    }
    meta_maps(obj.get("metadata"), "metadata", &mut out);
    match (res.group, res.kind) {
        ("", "Pod") => pod_spec(obj.get("spec"), "spec", &mut out),
        ("apps", "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet") => {
            workload(obj.get("spec"), "spec", &mut out);
        }
        ("batch", "Job") => job(obj.get("spec"), "spec", &mut out),
        ("batch", "CronJob") => {
            let spec = obj.get("spec");
            if spec
                .and_then(|s| s.get("schedule"))
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
            {
                out.push(Cause::required("spec.schedule"));
            }
            match spec.and_then(|s| s.pointer("/jobTemplate/spec")) {
                Some(js) => job(Some(js), "spec.jobTemplate.spec", &mut out),
                None => out.push(Cause::required("spec.jobTemplate.spec")),
            }
        }
        ("", "Service") => service(obj.get("spec"), &mut out),
        ("", "ConfigMap" | "Secret") => {
            for field in ["data", "binaryData", "stringData"] {
                for k in
                    obj.get(field).and_then(Value::as_object).into_iter().flatten().map(|(k, _)| k)
                {
                    if k.is_empty()
                        || !k.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
                    {
                        out.push(Cause::invalid(format!("{field}[{k}]"), &Value::from(k.as_str()), "a valid config key must consist of alphanumeric characters, '-', '_' or '.'"));
                    }
                }
            }
        }
        ("scheduling.k8s.io", "PriorityClass") if !obj.get("value").is_some_and(Value::is_i64) => {
            out.push(Cause::required("value"));
        }
        _ => {}
    }
    out
}

fn meta_maps(meta: Option<&Value>, path: &str, out: &mut Vec<Cause>) {
    let Some(meta) = meta else { return };
    if let Some(labels) = meta.get("labels").and_then(Value::as_object) {
        for (k, v) in labels {
            if !valid_label_key(k) {
                out.push(Cause::invalid(
                    format!("{path}.labels"),
                    &Value::from(k.as_str()),
                    "name part must consist of alphanumeric characters, '-', '_' or '.'",
                ));
            }
            match v.as_str() {
                Some(s) if valid_label_value(s) => {}
                _ => out.push(Cause::invalid(format!("{path}.labels"), v, "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.'")),
            }
        }
    }
    if let Some(ann) = meta.get("annotations").and_then(Value::as_object) {
        for (k, v) in ann {
            if !valid_label_key(k) {
                out.push(Cause::invalid(
                    format!("{path}.annotations"),
                    &Value::from(k.as_str()),
                    "name part must consist of alphanumeric characters, '-', '_' or '.'",
                ));
            }
            if !v.is_string() {
                out.push(Cause::invalid(
                    format!("{path}.annotations"),
                    v,
                    "annotation values must be strings",
                ));
            }
        }
    }
}

fn containers(list: Option<&Value>, path: &str, required: bool, out: &mut Vec<Cause>) {
    let items = list.and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    if required && items.is_empty() {
        out.push(Cause::required(path));
    }
    let mut seen = Vec::new();
    for (i, c) in items.iter().enumerate() {
        let p = format!("{path}[{i}]");
        match c.get("name").and_then(Value::as_str) {
            None | Some("") => out.push(Cause::required(format!("{p}.name"))),
            Some(n) if !is_dns_label(n) => out.push(Cause::invalid(format!("{p}.name"), &Value::from(n), "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-'")),
            Some(n) if seen.contains(&n) => out.push(Cause { reason: "FieldValueDuplicate", message: format!("Duplicate value: \"{n}\""), field: format!("{p}.name") }),
            Some(n) => seen.push(n),
        }
        if c.get("image").and_then(Value::as_str).is_none_or(|s| s.trim().is_empty()) {
            out.push(Cause::required(format!("{p}.image")));
        }
        for (j, port) in c.get("ports").and_then(Value::as_array).into_iter().flatten().enumerate()
        {
            let cp = port.get("containerPort").and_then(Value::as_i64);
            if !cp.is_some_and(|n| (1..=65_535).contains(&n)) {
                let v = port.get("containerPort").cloned().unwrap_or(Value::Null);
                out.push(Cause::invalid(
                    format!("{p}.ports[{j}].containerPort"),
                    &v,
                    "must be between 1 and 65535, inclusive",
                ));
            }
        }
        for kind in ["limits", "requests"] {
            for (k, v) in c
                .pointer(&format!("/resources/{kind}"))
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
            {
                if !v.as_str().is_some_and(quantity::valid) {
                    out.push(Cause::invalid(
                        format!("{p}.resources.{kind}[{k}]"),
                        v,
                        "must be a valid quantity",
                    ));
                }
            }
        }
    }
}

fn pod_spec(spec: Option<&Value>, path: &str, out: &mut Vec<Cause>) {
    let Some(spec) = spec else {
        out.push(Cause::required(format!("{path}.containers")));
        return;
    };
    containers(spec.get("containers"), &format!("{path}.containers"), true, out);
    containers(spec.get("initContainers"), &format!("{path}.initContainers"), false, out);
    if let Some(rp) = spec.get("restartPolicy").and_then(Value::as_str)
        && !["Always", "OnFailure", "Never"].contains(&rp)
    {
        out.push(Cause { reason: "FieldValueNotSupported", message: format!("Unsupported value: \"{rp}\": supported values: \"Always\", \"OnFailure\", \"Never\""), field: format!("{path}.restartPolicy") });
    }
}

fn workload(spec: Option<&Value>, path: &str, out: &mut Vec<Cause>) {
    let Some(spec) = spec else {
        out.push(Cause::required(format!("{path}.selector")));
        out.push(Cause::required(format!("{path}.template")));
        return;
    };
    if let Some(r) = spec.get("replicas")
        && r.as_i64().is_none_or(|n| n < 0)
    {
        out.push(Cause::invalid(
            format!("{path}.replicas"),
            r,
            "must be greater than or equal to 0",
        ));
    }
    let selector = spec.get("selector").filter(|s| s.as_object().is_some_and(|m| !m.is_empty()));
    match selector {
        None => out.push(Cause::required(format!("{path}.selector"))),
        Some(sel) => {
            let labels = spec.get("template").map(labels_of).unwrap_or_default();
            if !label_selector_matches(sel, &labels) {
                let v = spec.pointer("/template/metadata/labels").cloned().unwrap_or(Value::Null);
                out.push(Cause::invalid(
                    format!("{path}.template.metadata.labels"),
                    &v,
                    "`selector` does not match template `labels`",
                ));
            }
        }
    }
    pod_spec(spec.pointer("/template/spec"), &format!("{path}.template.spec"), out);
}

fn job(spec: Option<&Value>, path: &str, out: &mut Vec<Cause>) {
    let Some(spec) = spec else {
        out.push(Cause::required(format!("{path}.template")));
        return;
    };
    pod_spec(spec.pointer("/template/spec"), &format!("{path}.template.spec"), out);
    let rp = spec.pointer("/template/spec/restartPolicy").and_then(Value::as_str).unwrap_or("");
    if !["OnFailure", "Never"].contains(&rp) {
        out.push(Cause {
            reason: "FieldValueNotSupported",
            message: format!(
                "Unsupported value: \"{rp}\": supported values: \"OnFailure\", \"Never\""
            ),
            field: format!("{path}.template.spec.restartPolicy"),
        });
    }
}

fn service(spec: Option<&Value>, out: &mut Vec<Cause>) {
    let spec = spec.cloned().unwrap_or(Value::Null);
    let ty = spec.get("type").and_then(Value::as_str).unwrap_or("ClusterIP");
    if !["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"].contains(&ty) {
        out.push(Cause {
            reason: "FieldValueNotSupported",
            message: format!("Unsupported value: \"{ty}\""),
            field: "spec.type".to_owned(),
        });
    }
    let headless = spec.get("clusterIP").and_then(Value::as_str) == Some("None");
    let ports = spec.get("ports").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    if ports.is_empty() && ty != "ExternalName" && !headless {
        out.push(Cause::required("spec.ports"));
    }
    for (i, p) in ports.iter().enumerate() {
        let port = p.get("port").and_then(Value::as_i64);
        if !port.is_some_and(|n| (1..=65_535).contains(&n)) {
            out.push(Cause::invalid(
                format!("spec.ports[{i}].port"),
                p.get("port").unwrap_or(&Value::Null),
                "must be between 1 and 65535, inclusive",
            ));
        }
        if ports.len() > 1 && p.get("name").and_then(Value::as_str).is_none_or(str::is_empty) {
            out.push(Cause::required(format!("spec.ports[{i}].name")));
        }
    }
    if ty == "ExternalName"
        && spec.get("externalName").and_then(Value::as_str).is_none_or(str::is_empty)
    {
        out.push(Cause::required("spec.externalName"));
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::resource::find;

    fn fields(group: &str, plural: &str, obj: &Value) -> Vec<String> {
        let res = find(group, "v1", plural).expect("resource");
        validate(res, obj).into_iter().map(|c| format!("{}: {}", c.field, c.reason)).collect()
    }

    #[test]
    fn pods_need_named_containers_with_images() {
        let pod = json!({"metadata":{"name":"p"},"spec":{"containers":[{"image":"x"},{"name":"Bad_Name","image":""}]}});
        assert_eq!(
            fields("", "pods", &pod),
            [
                "spec.containers[0].name: FieldValueRequired",
                "spec.containers[1].name: FieldValueInvalid",
                "spec.containers[1].image: FieldValueRequired"
            ]
        );
        let ok = json!({"metadata":{"name":"p"},"spec":{"containers":[{"name":"c","image":"x"}]}});
        assert!(fields("", "pods", &ok).is_empty());
    }

    #[test]
    fn deployments_selector_must_match_template() {
        let d = json!({"metadata":{"name":"web"},"spec":{"selector":{"matchLabels":{"app":"web"}},"template":{"metadata":{"labels":{"app":"other"}},"spec":{"containers":[{"name":"c","image":"x"}]}}}});
        assert_eq!(
            fields("apps", "deployments", &d),
            ["spec.template.metadata.labels: FieldValueInvalid"]
        );
    }

    #[test]
    fn names_follow_the_kind_rule() {
        assert_eq!(
            fields("", "namespaces", &json!({"metadata":{"name":"a.b"}})),
            ["metadata.name: FieldValueInvalid"]
        );
        assert!(fields("", "configmaps", &json!({"metadata":{"name":"a.b"}})).is_empty());
        assert!(
            fields(
                "rbac.authorization.k8s.io",
                "clusterroles",
                &json!({"metadata":{"name":"system:x"}})
            )
            .is_empty()
        );
        assert_eq!(
            fields("", "configmaps", &json!({"metadata":{}})),
            ["metadata.name: FieldValueRequired"]
        );
    }
}
