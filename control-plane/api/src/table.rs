//! Table printing (`Accept: application/json;as=Table;v=v1;g=meta.k8s.io`): column definitions
//! and row cells per kind, following upstream `pkg/printers/internalversion/printers.go`. The
//! server formats every cell (ages, `1/1`), because kubectl prints them verbatim.

use serde_json::{Value, json};

use crate::meta::{age, human_duration, parse_rfc3339};
use crate::selector::label_selector_string;

/// One column definition.
#[derive(Clone, Copy, Debug)]
pub struct Column {
    pub name: &'static str,
    pub ty: &'static str,
    /// Shown only with `-o wide` when 1.
    pub priority: u8,
    pub description: &'static str,
}

const fn col(
    name: &'static str,
    ty: &'static str,
    priority: u8,
    description: &'static str,
) -> Column {
    Column { name, ty, priority, description }
}

const NAME: Column = col("Name", "string", 0, "Name must be unique within a namespace.");
const AGE: Column = col(
    "Age",
    "string",
    0,
    "CreationTimestamp is a timestamp representing the server time when this object was created.",
);
const CONTAINERS: Column =
    col("Containers", "string", 1, "Names of each container in the template.");
const IMAGES: Column =
    col("Images", "string", 1, "Images referenced by each container in the template.");
const SELECTOR: Column = col("Selector", "string", 1, "Label selector for pods.");

/// Column definitions for `kind` in `group`.
#[expect(clippy::too_many_lines, reason = "one arm per kind reads best as a single table")]
pub fn columns(group: &str, kind: &str) -> Vec<Column> {
    match (group, kind) {
        ("", "Pod") => vec![
            NAME,
            col(
                "Ready",
                "string",
                0,
                "The aggregate readiness state of this pod for accepting traffic.",
            ),
            col("Status", "string", 0, "The aggregate status of the containers in this pod."),
            col(
                "Restarts",
                "string",
                0,
                "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted.",
            ),
            AGE,
            col(
                "IP",
                "string",
                1,
                "IP address allocated to the pod. Routable at least within the cluster.",
            ),
            col("Node", "string", 1, "Name of the Node this pod is running on."),
            col(
                "Nominated Node",
                "string",
                1,
                "Name of the node which is nominated by the scheduler.",
            ),
            col("Readiness Gates", "string", 1, "Readiness gates of the pod."),
        ],
        ("apps", "Deployment") => vec![
            NAME,
            col("Ready", "string", 0, "Number of the pod with ready state"),
            col(
                "Up-to-date",
                "integer",
                0,
                "Total number of non-terminated pods targeted by this deployment that have the desired template spec.",
            ),
            col(
                "Available",
                "integer",
                0,
                "Total number of available pods (ready for at least minReadySeconds) targeted by this deployment.",
            ),
            AGE,
            CONTAINERS,
            IMAGES,
            SELECTOR,
        ],
        ("apps", "ReplicaSet") => vec![
            NAME,
            col("Desired", "integer", 0, "Number of desired pods."),
            col("Current", "integer", 0, "Number of actual replicas."),
            col("Ready", "integer", 0, "The number of ready replicas for this replica set."),
            AGE,
            CONTAINERS,
            IMAGES,
            SELECTOR,
        ],
        ("apps", "StatefulSet") => vec![
            NAME,
            col("Ready", "string", 0, "Number of the pod with ready state"),
            AGE,
            CONTAINERS,
            IMAGES,
        ],
        ("apps", "DaemonSet") => vec![
            NAME,
            col(
                "Desired",
                "integer",
                0,
                "The total number of nodes that should be running the daemon pod.",
            ),
            col(
                "Current",
                "integer",
                0,
                "The number of nodes that are running at least one daemon pod.",
            ),
            col(
                "Ready",
                "integer",
                0,
                "The number of nodes that should be running the daemon pod and have one or more ready.",
            ),
            col(
                "Up-to-date",
                "integer",
                0,
                "The total number of nodes that are running updated daemon pod",
            ),
            col(
                "Available",
                "integer",
                0,
                "The number of nodes that should be running the daemon pod and have available.",
            ),
            col(
                "Node Selector",
                "string",
                0,
                "NodeSelector is a selector which must be true for the pod to fit on a node.",
            ),
            AGE,
            CONTAINERS,
            IMAGES,
            SELECTOR,
        ],
        ("batch", "Job") => vec![
            NAME,
            col("Status", "string", 0, "Status of the job."),
            col("Completions", "string", 0, "The completion status of the job."),
            col("Duration", "string", 0, "Time required to complete the job."),
            AGE,
            CONTAINERS,
            IMAGES,
            SELECTOR,
        ],
        ("batch", "CronJob") => vec![
            NAME,
            col("Schedule", "string", 0, "The schedule in Cron format."),
            col("Timezone", "string", 0, "The timezone for the schedule."),
            col("Suspend", "boolean", 0, "Whether subsequent executions are suspended."),
            col("Active", "integer", 0, "Number of currently running jobs."),
            col("Last Schedule", "string", 0, "When the job was last successfully scheduled."),
            AGE,
            CONTAINERS,
            IMAGES,
            SELECTOR,
        ],
        ("", "Service") => vec![
            NAME,
            col("Type", "string", 0, "The type of service."),
            col("Cluster-IP", "string", 0, "The cluster IP of the service."),
            col("External-IP", "string", 0, "External IPs of the service."),
            col("Port(s)", "string", 0, "The ports of the service."),
            AGE,
            col(
                "Selector",
                "string",
                1,
                "Route service traffic to pods with label keys and values matching this selector.",
            ),
        ],
        ("", "Endpoints") => {
            vec![NAME, col("Endpoints", "string", 0, "Endpoints of the service."), AGE]
        }
        ("", "Node") => vec![
            NAME,
            col("Status", "string", 0, "The status of the node"),
            col("Roles", "string", 0, "The roles of the node"),
            AGE,
            col("Version", "string", 0, "Kubelet Version reported by the node."),
            col("Internal-IP", "string", 1, "List of internal IPs."),
            col("External-IP", "string", 1, "List of external IPs."),
            col("OS-Image", "string", 1, "OS image reported by the node."),
            col("Kernel-Version", "string", 1, "Kernel version reported by the node."),
            col("Container-Runtime", "string", 1, "Container runtime reported by the node."),
        ],
        ("", "Namespace") => {
            vec![NAME, col("Status", "string", 0, "The status of the namespace"), AGE]
        }
        ("" | "events.k8s.io", "Event") => vec![
            col("Last Seen", "string", 0, "Time when last event occurred."),
            col("Type", "string", 0, "Type of this event."),
            col("Reason", "string", 0, "Reason why this event was generated."),
            col("Object", "string", 0, "Object this event is about."),
            col("Subobject", "string", 1, "Subobject this event is about."),
            col("Source", "string", 1, "Source of this event."),
            col("Message", "string", 0, "Message of this event."),
            col("First Seen", "string", 1, "Time when this event first occurred."),
            col("Count", "string", 1, "Number of times this event has occurred."),
            col("Name", "string", 1, "Name of the event."),
        ],
        ("", "ConfigMap") => vec![NAME, col("Data", "string", 0, "Number of data entries."), AGE],
        ("", "Secret") => vec![
            NAME,
            col("Type", "string", 0, "The type of the secret"),
            col("Data", "string", 0, "Number of data entries."),
            AGE,
        ],
        ("", "ServiceAccount") => {
            vec![NAME, col("Secrets", "string", 0, "Number of secrets."), AGE]
        }
        ("discovery.k8s.io", "EndpointSlice") => vec![
            NAME,
            col("AddressType", "string", 0, "The IP protocol for this slice."),
            col("Ports", "string", 0, "The ports of this slice."),
            col("Endpoints", "string", 0, "First few endpoints."),
            AGE,
        ],
        ("coordination.k8s.io", "Lease") => {
            vec![NAME, col("Holder", "string", 0, "The holder of the lease."), AGE]
        }
        ("scheduling.k8s.io", "PriorityClass") => vec![
            NAME,
            col("Value", "integer", 0, "The value of this priority class."),
            col("Global-Default", "boolean", 0, "Whether this priority class is the default one."),
            AGE,
            col(
                "PreemptionPolicy",
                "string",
                0,
                "The policy for preempting pods with lower priority.",
            ),
        ],
        ("rbac.authorization.k8s.io", "Role" | "ClusterRole") => {
            vec![NAME, col("Created At", "date", 0, "Time at which the object was created.")]
        }
        ("rbac.authorization.k8s.io", "RoleBinding" | "ClusterRoleBinding") => vec![
            NAME,
            col("Role", "string", 0, "Role referenced by this binding."),
            AGE,
            col("Users", "string", 1, "Users in the binding."),
            col("Groups", "string", 1, "Groups in the binding."),
            col("ServiceAccounts", "string", 1, "Service accounts in the binding."),
        ],
        _ => vec![NAME, AGE],
    }
}

/// Column definitions as JSON (`columnDefinitions` of a Table).
pub fn column_definitions(group: &str, kind: &str) -> Value {
    Value::Array(
        columns(group, kind)
            .iter()
            .map(|c| {
                let format = if c.name == "Name" { "name" } else { "" };
                json!({"name": c.name, "type": c.ty, "format": format, "description": c.description, "priority": c.priority})
            })
            .collect(),
    )
}

fn s<'a>(obj: &'a Value, ptr: &str) -> &'a str {
    obj.pointer(ptr).and_then(Value::as_str).unwrap_or("")
}

fn n(obj: &Value, ptr: &str) -> i64 {
    obj.pointer(ptr).and_then(Value::as_i64).unwrap_or(0)
}

fn arr<'a>(obj: &'a Value, ptr: &str) -> &'a [Value] {
    obj.pointer(ptr).and_then(Value::as_array).map_or(&[], Vec::as_slice)
}

fn or_none(v: String) -> String {
    if v.is_empty() { "<none>".to_owned() } else { v }
}

fn joined(items: &[Value], field: &str) -> String {
    items
        .iter()
        .map(|c| c.get(field).and_then(Value::as_str).unwrap_or(""))
        .collect::<Vec<_>>()
        .join(",")
}

fn ago(ts: &str, now: i64) -> String {
    parse_rfc3339(ts).map_or_else(|| "<unknown>".to_owned(), |t| human_duration(now - t))
}

fn pod_status(pod: &Value) -> String {
    let mut reason = s(pod, "/status/reason").to_owned();
    if reason.is_empty() {
        s(pod, "/status/phase").clone_into(&mut reason);
    }
    for cs in arr(pod, "/status/containerStatuses") {
        let waiting =
            cs.pointer("/state/waiting/reason").and_then(Value::as_str).filter(|r| !r.is_empty());
        let terminated = cs
            .pointer("/state/terminated/reason")
            .and_then(Value::as_str)
            .filter(|r| !r.is_empty());
        if let Some(r) = waiting.or(terminated) {
            r.clone_into(&mut reason);
        }
    }
    if pod.pointer("/metadata/deletionTimestamp").is_some_and(|v| !v.is_null()) {
        reason = if s(pod, "/status/reason") == "NodeLost" {
            "Unknown".to_owned()
        } else {
            "Terminating".to_owned()
        };
    }
    reason
}

fn workload_wide(obj: &Value, template: &str, selector: &str) -> [Value; 3] {
    let cs = arr(obj, &format!("{template}/spec/containers"));
    let sel = obj.pointer(selector).map(label_selector_string).unwrap_or_default();
    [json!(joined(cs, "name")), json!(joined(cs, "image")), json!(or_none(sel))]
}

fn service_ports(svc: &Value) -> String {
    let ports: Vec<String> = arr(svc, "/spec/ports")
        .iter()
        .map(|p| {
            let proto = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
            let port = p.get("port").and_then(Value::as_i64).unwrap_or(0);
            match p.get("nodePort").and_then(Value::as_i64) {
                Some(np) if np != 0 => format!("{port}:{np}/{proto}"),
                _ => format!("{port}/{proto}"),
            }
        })
        .collect();
    or_none(ports.join(","))
}

fn node_status(node: &Value) -> String {
    let ready = arr(node, "/status/conditions")
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some("Ready"));
    let mut status = match ready.and_then(|c| c.get("status")).and_then(Value::as_str) {
        Some("True") => "Ready".to_owned(),
        _ => "NotReady".to_owned(),
    };
    if node.pointer("/spec/unschedulable").and_then(Value::as_bool) == Some(true) {
        status.push_str(",SchedulingDisabled");
    }
    status
}

fn node_roles(node: &Value) -> String {
    let mut roles: Vec<&str> = node
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| {
            k.strip_prefix("node-role.kubernetes.io/")
                .or_else(|| (k == "kubernetes.io/role").then(|| v.as_str().unwrap_or("")))
        })
        .filter(|r| !r.is_empty())
        .collect();
    roles.sort_unstable();
    or_none(roles.join(","))
}

fn node_address(node: &Value, ty: &str) -> String {
    or_none(
        arr(node, "/status/addresses")
            .iter()
            .filter(|a| a.get("type").and_then(Value::as_str) == Some(ty))
            .filter_map(|a| a.get("address").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(","),
    )
}

fn data_count(obj: &Value) -> i64 {
    let count = |f: &str| obj.get(f).and_then(Value::as_object).map_or(0, serde_json::Map::len);
    i64::try_from(count("data") + count("binaryData")).unwrap_or(i64::MAX)
}

/// Row cells for `obj` of `kind` at time `now` (Unix seconds).
#[expect(clippy::too_many_lines, reason = "one arm per kind reads best as a single table")]
pub fn cells(group: &str, kind: &str, obj: &Value, now: i64) -> Vec<Value> {
    let name = json!(s(obj, "/metadata/name"));
    let age = json!(age(obj, now));
    match (group, kind) {
        ("", "Pod") => {
            let statuses = arr(obj, "/status/containerStatuses");
            let total = arr(obj, "/spec/containers").len();
            let ready = statuses
                .iter()
                .filter(|c| c.get("ready").and_then(Value::as_bool) == Some(true))
                .count();
            let restarts: i64 =
                statuses.iter().filter_map(|c| c.get("restartCount").and_then(Value::as_i64)).sum();
            let gates = arr(obj, "/spec/readinessGates").len();
            let gates = if gates == 0 { "<none>".to_owned() } else { format!("0/{gates}") };
            vec![
                name,
                json!(format!("{ready}/{total}")),
                json!(pod_status(obj)),
                json!(restarts.to_string()),
                age,
                json!(or_none(s(obj, "/status/podIP").to_owned())),
                json!(or_none(s(obj, "/spec/nodeName").to_owned())),
                json!(or_none(s(obj, "/status/nominatedNodeName").to_owned())),
                json!(gates),
            ]
        }
        ("apps", "Deployment") => {
            let [c, i, sel] = workload_wide(obj, "/spec/template", "/spec/selector");
            vec![
                name,
                json!(format!("{}/{}", n(obj, "/status/readyReplicas"), n(obj, "/spec/replicas"))),
                json!(n(obj, "/status/updatedReplicas")),
                json!(n(obj, "/status/availableReplicas")),
                age,
                c,
                i,
                sel,
            ]
        }
        ("apps", "ReplicaSet") => {
            let [c, i, sel] = workload_wide(obj, "/spec/template", "/spec/selector");
            vec![
                name,
                json!(n(obj, "/spec/replicas")),
                json!(n(obj, "/status/replicas")),
                json!(n(obj, "/status/readyReplicas")),
                age,
                c,
                i,
                sel,
            ]
        }
        ("apps", "StatefulSet") => {
            let [c, i, _] = workload_wide(obj, "/spec/template", "/spec/selector");
            vec![
                name,
                json!(format!("{}/{}", n(obj, "/status/readyReplicas"), n(obj, "/spec/replicas"))),
                age,
                c,
                i,
            ]
        }
        ("apps", "DaemonSet") => {
            let [c, i, sel] = workload_wide(obj, "/spec/template", "/spec/selector");
            let ns = obj
                .pointer("/spec/template/spec/nodeSelector")
                .and_then(Value::as_object)
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default();
            vec![
                name,
                json!(n(obj, "/status/desiredNumberScheduled")),
                json!(n(obj, "/status/currentNumberScheduled")),
                json!(n(obj, "/status/numberReady")),
                json!(n(obj, "/status/updatedNumberScheduled")),
                json!(n(obj, "/status/numberAvailable")),
                json!(or_none(ns)),
                age,
                c,
                i,
                sel,
            ]
        }
        ("batch", "Job") => {
            let [c, i, sel] = workload_wide(obj, "/spec/template", "/spec/selector");
            let completions = obj.pointer("/spec/completions").and_then(Value::as_i64).map_or_else(
                || format!("{}/1 of {}", n(obj, "/status/succeeded"), n(obj, "/spec/parallelism")),
                |want| format!("{}/{want}", n(obj, "/status/succeeded")),
            );
            let conds = arr(obj, "/status/conditions");
            let has = |t: &str| {
                conds.iter().any(|c| {
                    c.get("type").and_then(Value::as_str) == Some(t)
                        && c.get("status").and_then(Value::as_str) == Some("True")
                })
            };
            let status = if has("Complete") {
                "Complete"
            } else if has("Failed") {
                "Failed"
            } else if obj.pointer("/metadata/deletionTimestamp").is_some() {
                "Terminating"
            } else if has("Suspended") {
                "Suspended"
            } else {
                "Running"
            };
            let start = parse_rfc3339(s(obj, "/status/startTime"));
            let end = parse_rfc3339(s(obj, "/status/completionTime")).unwrap_or(now);
            let duration = start.map_or_else(String::new, |st| human_duration(end - st));
            vec![name, json!(status), json!(completions), json!(duration), age, c, i, sel]
        }
        ("batch", "CronJob") => {
            let [c, i, sel] = workload_wide(
                obj,
                "/spec/jobTemplate/spec/template",
                "/spec/jobTemplate/spec/selector",
            );
            let last = obj
                .pointer("/status/lastScheduleTime")
                .and_then(Value::as_str)
                .map_or_else(|| "<none>".to_owned(), |t| ago(t, now));
            vec![
                name,
                json!(s(obj, "/spec/schedule")),
                json!(or_none(s(obj, "/spec/timeZone").to_owned())),
                json!(obj.pointer("/spec/suspend").and_then(Value::as_bool).unwrap_or(false)),
                json!(arr(obj, "/status/active").len()),
                json!(last),
                age,
                c,
                i,
                sel,
            ]
        }
        ("", "Service") => {
            let ty = s(obj, "/spec/type");
            let ty = if ty.is_empty() { "ClusterIP" } else { ty };
            let mut external: Vec<String> = arr(obj, "/spec/externalIPs")
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect();
            external.extend(arr(obj, "/status/loadBalancer/ingress").iter().filter_map(|i| {
                i.get("ip").or_else(|| i.get("hostname")).and_then(Value::as_str).map(str::to_owned)
            }));
            let ext = match ty {
                "ExternalName" => s(obj, "/spec/externalName").to_owned(),
                "LoadBalancer" if external.is_empty() => "<pending>".to_owned(),
                _ => or_none(external.join(",")),
            };
            let sel = obj
                .pointer("/spec/selector")
                .and_then(Value::as_object)
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default();
            vec![
                name,
                json!(ty),
                json!(or_none(s(obj, "/spec/clusterIP").to_owned())),
                json!(ext),
                json!(service_ports(obj)),
                age,
                json!(or_none(sel)),
            ]
        }
        ("", "Endpoints") => {
            let mut eps = Vec::new();
            for subset in arr(obj, "/subsets") {
                let ports = arr(subset, "/ports");
                for a in arr(subset, "/addresses") {
                    let ip = a.get("ip").and_then(Value::as_str).unwrap_or("");
                    if ports.is_empty() {
                        eps.push(ip.to_owned());
                    }
                    for p in ports {
                        eps.push(format!(
                            "{ip}:{}",
                            p.get("port").and_then(Value::as_i64).unwrap_or(0)
                        ));
                    }
                }
            }
            let shown = if eps.len() > 3 {
                format!("{} + {} more...", eps[..3].join(","), eps.len() - 3)
            } else {
                or_none(eps.join(","))
            };
            vec![name, json!(shown), age]
        }
        ("", "Node") => vec![
            name,
            json!(node_status(obj)),
            json!(node_roles(obj)),
            age,
            json!(s(obj, "/status/nodeInfo/kubeletVersion")),
            json!(node_address(obj, "InternalIP")),
            json!(node_address(obj, "ExternalIP")),
            json!(or_none(s(obj, "/status/nodeInfo/osImage").to_owned())),
            json!(or_none(s(obj, "/status/nodeInfo/kernelVersion").to_owned())),
            json!(or_none(s(obj, "/status/nodeInfo/containerRuntimeVersion").to_owned())),
        ],
        ("", "Namespace") => vec![name, json!(s(obj, "/status/phase")), age],
        ("" | "events.k8s.io", "Event") => {
            let core = group.is_empty();
            let inv = if core { "/involvedObject" } else { "/regarding" };
            let last = [
                if core { "/lastTimestamp" } else { "/deprecatedLastTimestamp" },
                "/eventTime",
                "/metadata/creationTimestamp",
            ]
            .iter()
            .map(|p| s(obj, p))
            .find(|t| !t.is_empty())
            .unwrap_or("");
            let first = [
                if core { "/firstTimestamp" } else { "/deprecatedFirstTimestamp" },
                "/eventTime",
                "/metadata/creationTimestamp",
            ]
            .iter()
            .map(|p| s(obj, p))
            .find(|t| !t.is_empty())
            .unwrap_or("");
            let object = format!(
                "{}/{}",
                s(obj, &format!("{inv}/kind")).to_lowercase(),
                s(obj, &format!("{inv}/name"))
            );
            let source =
                if core { s(obj, "/source/component") } else { s(obj, "/reportingController") };
            let message = if core { s(obj, "/message") } else { s(obj, "/note") };
            let count = n(obj, if core { "/count" } else { "/deprecatedCount" }).max(1);
            vec![
                json!(ago(last, now)),
                json!(s(obj, "/type")),
                json!(s(obj, "/reason")),
                json!(object),
                json!(s(obj, &format!("{inv}/fieldPath"))),
                json!(source),
                json!(message),
                json!(ago(first, now)),
                json!(count.to_string()),
                name,
            ]
        }
        ("", "ConfigMap") => vec![name, json!(data_count(obj)), age],
        ("", "Secret") => vec![name, json!(s(obj, "/type")), json!(data_count(obj)), age],
        ("", "ServiceAccount") => vec![name, json!(arr(obj, "/secrets").len()), age],
        ("discovery.k8s.io", "EndpointSlice") => {
            let ports: Vec<String> = arr(obj, "/ports")
                .iter()
                .map(|p| {
                    p.get("port")
                        .and_then(Value::as_i64)
                        .map_or_else(|| "<unset>".to_owned(), |p| p.to_string())
                })
                .collect();
            let addrs: Vec<&str> = arr(obj, "/endpoints")
                .iter()
                .flat_map(|e| e.get("addresses").and_then(Value::as_array).into_iter().flatten())
                .filter_map(Value::as_str)
                .collect();
            let shown = if addrs.len() > 3 {
                format!("{} + {} more...", addrs[..3].join(","), addrs.len() - 3)
            } else {
                or_none(addrs.join(","))
            };
            vec![
                name,
                json!(s(obj, "/addressType")),
                json!(or_none(ports.join(","))),
                json!(shown),
                age,
            ]
        }
        ("coordination.k8s.io", "Lease") => vec![name, json!(s(obj, "/spec/holderIdentity")), age],
        ("scheduling.k8s.io", "PriorityClass") => vec![
            name,
            json!(n(obj, "/value")),
            json!(obj.get("globalDefault").and_then(Value::as_bool).unwrap_or(false)),
            age,
            json!(if s(obj, "/preemptionPolicy").is_empty() {
                "PreemptLowerPriority"
            } else {
                s(obj, "/preemptionPolicy")
            }),
        ],
        ("rbac.authorization.k8s.io", "Role" | "ClusterRole") => {
            vec![name, json!(s(obj, "/metadata/creationTimestamp"))]
        }
        ("rbac.authorization.k8s.io", "RoleBinding" | "ClusterRoleBinding") => {
            let subjects = arr(obj, "/subjects");
            let of = |k: &str| {
                subjects
                    .iter()
                    .filter(|s| s.get("kind").and_then(Value::as_str) == Some(k))
                    .map(|s| {
                        let name = s.get("name").and_then(Value::as_str).unwrap_or("");
                        match s.get("namespace").and_then(Value::as_str) {
                            Some(ns) if k == "ServiceAccount" => format!("{ns}/{name}"),
                            _ => name.to_owned(),
                        }
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            vec![
                name,
                json!(format!("{}/{}", s(obj, "/roleRef/kind"), s(obj, "/roleRef/name"))),
                age,
                json!(of("User")),
                json!(of("Group")),
                json!(of("ServiceAccount")),
            ]
        }
        _ => vec![name, age],
    }
}

#[cfg(test)]
mod tests {
    use expect_test::expect;
    use serde_json::json;

    use super::*;

    const NOW: i64 = 1_700_000_300;
    const CREATED: &str = "2023-11-14T22:13:20Z";

    fn render(group: &str, kind: &str, obj: &Value) -> String {
        let heads: Vec<String> = columns(group, kind)
            .iter()
            .map(|c| if c.priority == 1 { format!("({})", c.name) } else { c.name.to_owned() })
            .collect();
        let cells: Vec<String> = cells(group, kind, obj, NOW)
            .iter()
            .map(|c| c.as_str().map_or_else(|| c.to_string(), str::to_owned))
            .collect();
        assert_eq!(heads.len(), cells.len(), "{kind}: columns and cells disagree");
        format!("{}\n{}", heads.join(" | "), cells.join(" | "))
    }

    #[test]
    fn pod_table() {
        let pod = json!({"metadata":{"name":"web-1","creationTimestamp":CREATED},"spec":{"nodeName":"n1","containers":[{"name":"c"}]},
            "status":{"phase":"Running","podIP":"10.244.1.5","containerStatuses":[{"ready":true,"restartCount":2}]}});
        expect![[r"
            Name | Ready | Status | Restarts | Age | (IP) | (Node) | (Nominated Node) | (Readiness Gates)
            web-1 | 1/1 | Running | 2 | 5m | 10.244.1.5 | n1 | <none> | <none>"]]
        .assert_eq(&render("", "Pod", &pod));
    }

    #[test]
    fn deployment_table() {
        let d = json!({"metadata":{"name":"web","creationTimestamp":CREATED},"spec":{"replicas":3,"selector":{"matchLabels":{"app":"web"}},
            "template":{"spec":{"containers":[{"name":"nginx","image":"nginx:1.25"}]}}},"status":{"readyReplicas":2,"updatedReplicas":3,"availableReplicas":2}});
        expect![[r"
            Name | Ready | Up-to-date | Available | Age | (Containers) | (Images) | (Selector)
            web | 2/3 | 3 | 2 | 5m | nginx | nginx:1.25 | app=web"]]
        .assert_eq(&render("apps", "Deployment", &d));
    }

    #[test]
    fn node_service_namespace_tables() {
        let node = json!({"metadata":{"name":"n1","creationTimestamp":CREATED,"labels":{"node-role.kubernetes.io/control-plane":""}},"spec":{"unschedulable":true},
            "status":{"conditions":[{"type":"Ready","status":"True"}],"addresses":[{"type":"InternalIP","address":"10.77.0.2"}],"nodeInfo":{"kubeletVersion":"v1.33.0","osImage":"Debian","kernelVersion":"6.6","containerRuntimeVersion":"containerd://1.6"}}});
        expect![[r"
            Name | Status | Roles | Age | Version | (Internal-IP) | (External-IP) | (OS-Image) | (Kernel-Version) | (Container-Runtime)
            n1 | Ready,SchedulingDisabled | control-plane | 5m | v1.33.0 | 10.77.0.2 | <none> | Debian | 6.6 | containerd://1.6"]]
        .assert_eq(&render("", "Node", &node));
        let svc = json!({"metadata":{"name":"web","creationTimestamp":CREATED},"spec":{"type":"NodePort","clusterIP":"10.96.0.10","selector":{"app":"web"},"ports":[{"port":80,"nodePort":30080,"protocol":"TCP"}]}});
        expect![[r"
            Name | Type | Cluster-IP | External-IP | Port(s) | Age | (Selector)
            web | NodePort | 10.96.0.10 | <none> | 80:30080/TCP | 5m | app=web"]]
        .assert_eq(&render("", "Service", &svc));
        let ns = json!({"metadata":{"name":"default","creationTimestamp":CREATED},"status":{"phase":"Active"}});
        expect![[r"
            Name | Status | Age
            default | Active | 5m"]]
        .assert_eq(&render("", "Namespace", &ns));
    }

    #[test]
    fn every_kind_has_as_many_cells_as_columns() {
        for r in crate::RESOURCES {
            let obj = json!({"metadata":{"name":"x","creationTimestamp":CREATED}});
            assert_eq!(
                columns(r.group, r.kind).len(),
                cells(r.group, r.kind, &obj, NOW).len(),
                "{}",
                r.kind
            );
        }
    }
}
