//! Upstream defaulting for the served kinds (the subset clients observe: Deployment replicas and
//! strategy, Pod restart/DNS policy and container fields, Service type and ports, …), applied to
//! objects in JSON form on create and update.

use serde_json::{Map, Value, json};

use crate::quantity;

fn set_default(map: &mut Map<String, Value>, key: &str, value: Value) {
    if map.get(key).is_none_or(Value::is_null) {
        map.insert(key.to_owned(), value);
    }
}

fn obj_mut<'a>(v: &'a mut Value, key: &str) -> Option<&'a mut Map<String, Value>> {
    let map = v.as_object_mut()?;
    if map.get(key).is_none_or(Value::is_null) {
        map.insert(key.to_owned(), json!({}));
    }
    map.get_mut(key)?.as_object_mut()
}

fn default_container(c: &mut Value) {
    let Some(c) = c.as_object_mut() else { return };
    let image = c.get("image").and_then(Value::as_str).unwrap_or("");
    // `:latest` or no tag (a digest pins the image) → Always; anything else IfNotPresent.
    let last = image.rsplit('/').next().unwrap_or(image);
    let policy = if image.contains('@') || (last.contains(':') && !last.ends_with(":latest")) {
        "IfNotPresent"
    } else {
        "Always"
    };
    set_default(c, "imagePullPolicy", json!(policy));
    set_default(c, "terminationMessagePath", json!("/dev/termination-log"));
    set_default(c, "terminationMessagePolicy", json!("File"));
    set_default(c, "resources", json!({}));
    if let Some(ports) = c.get_mut("ports").and_then(Value::as_array_mut) {
        for p in ports.iter_mut().filter_map(Value::as_object_mut) {
            set_default(p, "protocol", json!("TCP"));
        }
    }
}

/// Defaults of a `PodSpec` (also used inside workload templates).
pub fn pod_spec(spec: &mut Map<String, Value>, restart_policy: &str) {
    set_default(spec, "restartPolicy", json!(restart_policy));
    set_default(spec, "dnsPolicy", json!("ClusterFirst"));
    set_default(spec, "terminationGracePeriodSeconds", json!(30));
    set_default(spec, "schedulerName", json!("default-scheduler"));
    set_default(spec, "securityContext", json!({}));
    set_default(spec, "enableServiceLinks", json!(true));
    for list in ["containers", "initContainers"] {
        if let Some(cs) = spec.get_mut(list).and_then(Value::as_array_mut) {
            cs.iter_mut().for_each(default_container);
        }
    }
    if let Some(sa) = spec.get("serviceAccountName").cloned() {
        set_default(spec, "serviceAccount", sa);
    }
}

fn template(spec: &mut Value, restart_policy: &str) {
    if let Some(t) = spec.get_mut("template") {
        if let Some(ps) = obj_mut(t, "spec") {
            pod_spec(ps, restart_policy);
        }
        if let Some(meta) = obj_mut(t, "metadata") {
            set_default(meta, "creationTimestamp", Value::Null);
        }
    }
}

#[expect(clippy::too_many_lines, reason = "one arm per kind reads best as a single table")]
/// Applies the defaults of `kind` (in group `group`) to `obj`.
pub fn apply(group: &str, kind: &str, obj: &mut Value) {
    quantity::canonicalize(obj);
    match (group, kind) {
        ("", "Pod") => {
            if let Some(spec) = obj_mut(obj, "spec") {
                pod_spec(spec, "Always");
                set_default(spec, "serviceAccountName", json!("default"));
                set_default(spec, "serviceAccount", json!("default"));
                set_default(spec, "priority", json!(0));
            }
            if let Some(status) = obj_mut(obj, "status") {
                set_default(status, "phase", json!("Pending"));
                set_default(status, "qosClass", json!("BestEffort"));
            }
        }
        ("apps", "Deployment") => {
            if let Some(spec) = obj.get_mut("spec") {
                if let Some(s) = spec.as_object_mut() {
                    set_default(s, "replicas", json!(1));
                    set_default(s, "revisionHistoryLimit", json!(10));
                    set_default(s, "progressDeadlineSeconds", json!(600));
                    set_default(s, "strategy", json!({"type": "RollingUpdate"}));
                }
                if let Some(st) = obj_mut(spec, "strategy")
                    && st.get("type").and_then(Value::as_str) == Some("RollingUpdate")
                {
                    let ru = st.entry("rollingUpdate").or_insert_with(|| json!({}));
                    if let Some(ru) = ru.as_object_mut() {
                        set_default(ru, "maxUnavailable", json!("25%"));
                        set_default(ru, "maxSurge", json!("25%"));
                    }
                }
                template(spec, "Always");
            }
        }
        ("apps", "ReplicaSet") => {
            if let Some(spec) = obj.get_mut("spec") {
                if let Some(s) = spec.as_object_mut() {
                    set_default(s, "replicas", json!(1));
                }
                template(spec, "Always");
            }
        }
        ("apps", "StatefulSet") => {
            if let Some(spec) = obj.get_mut("spec") {
                if let Some(s) = spec.as_object_mut() {
                    set_default(s, "replicas", json!(1));
                    set_default(s, "podManagementPolicy", json!("OrderedReady"));
                    set_default(s, "revisionHistoryLimit", json!(10));
                    set_default(
                        s,
                        "updateStrategy",
                        json!({"type":"RollingUpdate","rollingUpdate":{"partition":0}}),
                    );
                    set_default(
                        s,
                        "persistentVolumeClaimRetentionPolicy",
                        json!({"whenDeleted":"Retain","whenScaled":"Retain"}),
                    );
                }
                template(spec, "Always");
            }
        }
        ("apps", "DaemonSet") => {
            if let Some(spec) = obj.get_mut("spec") {
                if let Some(s) = spec.as_object_mut() {
                    set_default(s, "revisionHistoryLimit", json!(10));
                    set_default(
                        s,
                        "updateStrategy",
                        json!({"type":"RollingUpdate","rollingUpdate":{"maxUnavailable":1,"maxSurge":0}}),
                    );
                }
                template(spec, "Always");
            }
        }
        ("batch", "Job") => {
            if let Some(spec) = obj.get_mut("spec") {
                job_spec(spec);
            }
        }
        ("batch", "CronJob") => {
            if let Some(spec) = obj.get_mut("spec") {
                if let Some(s) = spec.as_object_mut() {
                    set_default(s, "concurrencyPolicy", json!("Allow"));
                    set_default(s, "suspend", json!(false));
                    set_default(s, "successfulJobsHistoryLimit", json!(3));
                    set_default(s, "failedJobsHistoryLimit", json!(1));
                }
                if let Some(jt) = spec.get_mut("jobTemplate").and_then(|t| t.get_mut("spec")) {
                    job_spec(jt);
                }
            }
        }
        ("", "Service") => {
            if let Some(spec) = obj_mut(obj, "spec") {
                set_default(spec, "type", json!("ClusterIP"));
                set_default(spec, "sessionAffinity", json!("None"));
                let ty = spec.get("type").and_then(Value::as_str).unwrap_or("ClusterIP").to_owned();
                if ty != "ExternalName" {
                    set_default(spec, "ipFamilies", json!(["IPv4"]));
                    set_default(spec, "ipFamilyPolicy", json!("SingleStack"));
                    set_default(spec, "internalTrafficPolicy", json!("Cluster"));
                }
                if ty == "NodePort" || ty == "LoadBalancer" {
                    set_default(spec, "externalTrafficPolicy", json!("Cluster"));
                }
                if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
                    for p in ports.iter_mut().filter_map(Value::as_object_mut) {
                        set_default(p, "protocol", json!("TCP"));
                        if let Some(port) = p.get("port").cloned() {
                            set_default(p, "targetPort", port);
                        }
                    }
                }
            }
            if let Some(status) = obj_mut(obj, "status") {
                set_default(status, "loadBalancer", json!({}));
            }
        }
        ("", "Namespace") => {
            let name = obj.pointer("/metadata/name").cloned().unwrap_or(Value::Null);
            if let Some(meta) = obj_mut(obj, "metadata")
                && let Some(labels) = obj_mut_map(meta, "labels")
            {
                labels.insert("kubernetes.io/metadata.name".to_owned(), name);
            }
            if let Some(spec) = obj_mut(obj, "spec") {
                set_default(spec, "finalizers", json!(["kubernetes"]));
            }
            if let Some(status) = obj_mut(obj, "status") {
                set_default(status, "phase", json!("Active"));
            }
        }
        ("", "Secret") => {
            if let Some(o) = obj.as_object_mut() {
                set_default(o, "type", json!("Opaque"));
            }
        }
        ("discovery.k8s.io", "EndpointSlice") => {
            if let Some(ports) = obj.get_mut("ports").and_then(Value::as_array_mut) {
                for p in ports.iter_mut().filter_map(Value::as_object_mut) {
                    set_default(p, "protocol", json!("TCP"));
                }
            }
        }
        _ => {}
    }
}

fn obj_mut_map<'a>(
    map: &'a mut Map<String, Value>,
    key: &str,
) -> Option<&'a mut Map<String, Value>> {
    if map.get(key).is_none_or(Value::is_null) {
        map.insert(key.to_owned(), json!({}));
    }
    map.get_mut(key)?.as_object_mut()
}

fn job_spec(spec: &mut Value) {
    if let Some(s) = spec.as_object_mut() {
        if s.get("completions").is_none_or(Value::is_null)
            && s.get("parallelism").is_none_or(Value::is_null)
        {
            s.insert("completions".to_owned(), json!(1));
        }
        set_default(s, "parallelism", json!(1));
        set_default(s, "backoffLimit", json!(6));
        set_default(s, "completionMode", json!("NonIndexed"));
        set_default(s, "suspend", json!(false));
        set_default(s, "podReplacementPolicy", json!("TerminatingOrFailed"));
        set_default(s, "manualSelector", json!(false));
    }
    template(spec, "Never");
}

/// Job selector generation (needs the uid): upstream labels the template with
/// `batch.kubernetes.io/controller-uid` and selects on it unless `manualSelector` is set.
pub fn job_selector(obj: &mut Value, uid: &str, name: &str) {
    let manual = obj.pointer("/spec/manualSelector").and_then(Value::as_bool) == Some(true);
    if manual || obj.pointer("/spec/selector").is_some_and(|s| !s.is_null()) {
        return;
    }
    let labels = json!({
        "batch.kubernetes.io/controller-uid": uid,
        "batch.kubernetes.io/job-name": name,
        "controller-uid": uid,
        "job-name": name,
    });
    if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
        spec.insert(
            "selector".to_owned(),
            json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}),
        );
        if let Some(t) = spec.get_mut("template")
            && let Some(meta) = obj_mut(t, "metadata")
            && let Some(l) = obj_mut_map(meta, "labels")
        {
            for (k, v) in labels.as_object().into_iter().flatten() {
                l.insert(k.clone(), v.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use expect_test::expect;
    use serde_json::json;

    use super::*;

    #[test]
    fn deployment_defaults() {
        let mut d = json!({"spec":{"selector":{"matchLabels":{"app":"web"}},"template":{"metadata":{"labels":{"app":"web"}},"spec":{"containers":[{"name":"nginx","image":"nginx:1.25","ports":[{"containerPort":80}]}]}}}});
        apply("apps", "Deployment", &mut d);
        expect![[r#"{"spec":{"progressDeadlineSeconds":600,"replicas":1,"revisionHistoryLimit":10,"selector":{"matchLabels":{"app":"web"}},"strategy":{"rollingUpdate":{"maxSurge":"25%","maxUnavailable":"25%"},"type":"RollingUpdate"},"template":{"metadata":{"creationTimestamp":null,"labels":{"app":"web"}},"spec":{"containers":[{"image":"nginx:1.25","imagePullPolicy":"IfNotPresent","name":"nginx","ports":[{"containerPort":80,"protocol":"TCP"}],"resources":{},"terminationMessagePath":"/dev/termination-log","terminationMessagePolicy":"File"}],"dnsPolicy":"ClusterFirst","enableServiceLinks":true,"restartPolicy":"Always","schedulerName":"default-scheduler","securityContext":{},"terminationGracePeriodSeconds":30}}}}"#]].assert_eq(&d.to_string());
    }

    #[test]
    fn pull_policy_follows_the_tag() {
        for (image, want) in [
            ("nginx", "Always"),
            ("nginx:latest", "Always"),
            ("nginx:1.25", "IfNotPresent"),
            ("reg:5000/x", "Always"),
            ("x@sha256:ab", "IfNotPresent"),
        ] {
            let mut c = json!({"image": image});
            default_container(&mut c);
            assert_eq!(c["imagePullPolicy"], want, "{image}");
        }
    }

    #[test]
    fn service_defaults_target_port() {
        let mut s = json!({"spec":{"ports":[{"port":80}],"type":"NodePort"}});
        apply("", "Service", &mut s);
        assert_eq!(s["spec"]["ports"][0]["targetPort"], 80);
        assert_eq!(s["spec"]["externalTrafficPolicy"], "Cluster");
    }
}
