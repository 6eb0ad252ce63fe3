//! The resource table: every kind the API server serves, with the facts discovery, routing,
//! storage keys, field selectors and Table printing need. One entry per resource; the server has
//! no per-kind handlers.

/// A subresource served under `<resource>/<name>/<subresource>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Subresource {
    /// `.status` only; the main resource ignores `.status` on writes.
    Status,
    /// autoscaling/v1 `Scale` mapped onto `spec.replicas`.
    Scale,
    /// `pods/binding`: sets `spec.nodeName` once.
    Binding,
}

impl Subresource {
    /// The path segment (`status`, `scale`, `binding`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Status => "status",
            Self::Scale => "scale",
            Self::Binding => "binding",
        }
    }

    /// Verbs discovery advertises for it.
    pub fn verbs(self) -> &'static [&'static str] {
        match self {
            Self::Status | Self::Scale => &["get", "patch", "update"],
            Self::Binding => &["create"],
        }
    }
}

/// One served resource.
#[derive(Debug)]
pub struct Resource {
    /// API group; `""` is the legacy core group.
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    /// URL segment and storage segment (`deployments`).
    pub plural: &'static str,
    pub singular: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    pub categories: &'static [&'static str],
    pub subresources: &'static [Subresource],
    /// Field-selector paths besides `metadata.name` and `metadata.namespace`.
    pub fields: &'static [&'static str],
}

impl Resource {
    /// `apps/v1`, or `v1` for the core group.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_owned()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `deployments.apps`, or `pods` for the core group (as in Status messages).
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_owned()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// Storage group segment: `core` for the legacy group.
    pub fn storage_group(&self) -> &'static str {
        if self.group.is_empty() { "core" } else { self.group }
    }

    /// Key prefix of the whole collection: `/registry/apps/deployments/`.
    pub fn prefix(&self) -> String {
        format!("/registry/{}/{}/", self.storage_group(), self.plural)
    }

    /// Key prefix of one namespace's objects, or of the whole collection when `namespace` is
    /// `None` or the resource is cluster-scoped.
    pub fn list_prefix(&self, namespace: Option<&str>) -> String {
        match namespace {
            Some(ns) if self.namespaced => format!("{}{ns}/", self.prefix()),
            _ => self.prefix(),
        }
    }

    /// Storage key of one object.
    pub fn key(&self, namespace: &str, name: &str) -> String {
        if self.namespaced {
            format!("{}{namespace}/{name}", self.prefix())
        } else {
            format!("{}{name}", self.prefix())
        }
    }

    pub fn has(&self, sub: Subresource) -> bool {
        self.subresources.contains(&sub)
    }

    /// Verbs of the main resource.
    pub fn verbs(&self) -> &'static [&'static str] {
        &["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
    }

    /// Whether `path` may be used in a field selector.
    pub fn allows_field(&self, path: &str) -> bool {
        path == "metadata.name"
            || (path == "metadata.namespace" && self.namespaced)
            || self.fields.contains(&path)
    }
}

const NONE: &[&str] = &[];
const ALL: &[&str] = &["all"];
const NOSUB: &[Subresource] = &[];
const STATUS: &[Subresource] = &[Subresource::Status];
const SCALE_STATUS: &[Subresource] = &[Subresource::Scale, Subresource::Status];

macro_rules! res {
    ($group:expr, $kind:expr, $plural:expr, $singular:expr, $namespaced:expr, $short:expr, $cats:expr, $subs:expr, $fields:expr) => {
        Resource {
            group: $group,
            version: "v1",
            kind: $kind,
            plural: $plural,
            singular: $singular,
            namespaced: $namespaced,
            short_names: $short,
            categories: $cats,
            subresources: $subs,
            fields: $fields,
        }
    };
}

/// Every served resource, in discovery order within a group.
pub static RESOURCES: &[Resource] = &[
    res!(
        "",
        "Namespace",
        "namespaces",
        "namespace",
        false,
        &["ns"],
        NONE,
        STATUS,
        &["status.phase"]
    ),
    res!(
        "",
        "Pod",
        "pods",
        "pod",
        true,
        &["po"],
        ALL,
        &[Subresource::Binding, Subresource::Status],
        &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName"
        ]
    ),
    res!(
        "",
        "Service",
        "services",
        "service",
        true,
        &["svc"],
        ALL,
        STATUS,
        &["spec.clusterIP", "spec.type"]
    ),
    res!("", "Endpoints", "endpoints", "endpoints", true, &["ep"], NONE, NOSUB, NONE),
    res!("", "Node", "nodes", "node", false, &["no"], NONE, STATUS, &["spec.unschedulable"]),
    res!(
        "",
        "Event",
        "events",
        "event",
        true,
        &["ev"],
        NONE,
        NOSUB,
        &[
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type"
        ]
    ),
    res!("", "ConfigMap", "configmaps", "configmap", true, &["cm"], NONE, NOSUB, NONE),
    res!("", "Secret", "secrets", "secret", true, NONE, NONE, NOSUB, &["type"]),
    res!(
        "",
        "ServiceAccount",
        "serviceaccounts",
        "serviceaccount",
        true,
        &["sa"],
        NONE,
        NOSUB,
        NONE
    ),
    res!(
        "apps",
        "Deployment",
        "deployments",
        "deployment",
        true,
        &["deploy"],
        ALL,
        SCALE_STATUS,
        NONE
    ),
    res!(
        "apps",
        "ReplicaSet",
        "replicasets",
        "replicaset",
        true,
        &["rs"],
        ALL,
        SCALE_STATUS,
        &["status.replicas"]
    ),
    res!(
        "apps",
        "StatefulSet",
        "statefulsets",
        "statefulset",
        true,
        &["sts"],
        ALL,
        SCALE_STATUS,
        NONE
    ),
    res!("apps", "DaemonSet", "daemonsets", "daemonset", true, &["ds"], ALL, STATUS, NONE),
    res!("batch", "Job", "jobs", "job", true, NONE, ALL, STATUS, &["status.successful"]),
    res!("batch", "CronJob", "cronjobs", "cronjob", true, &["cj"], ALL, STATUS, NONE),
    res!(
        "discovery.k8s.io",
        "EndpointSlice",
        "endpointslices",
        "endpointslice",
        true,
        NONE,
        NONE,
        NOSUB,
        &["addressType"]
    ),
    res!("coordination.k8s.io", "Lease", "leases", "lease", true, NONE, NONE, NOSUB, NONE),
    res!(
        "events.k8s.io",
        "Event",
        "events",
        "event",
        true,
        &["ev"],
        NONE,
        NOSUB,
        &[
            "reason",
            "reportingController",
            "type",
            "regarding.kind",
            "regarding.name",
            "regarding.namespace",
            "regarding.uid"
        ]
    ),
    res!(
        "scheduling.k8s.io",
        "PriorityClass",
        "priorityclasses",
        "priorityclass",
        false,
        &["pc"],
        NONE,
        NOSUB,
        NONE
    ),
    res!("rbac.authorization.k8s.io", "Role", "roles", "role", true, NONE, NONE, NOSUB, NONE),
    res!(
        "rbac.authorization.k8s.io",
        "ClusterRole",
        "clusterroles",
        "clusterrole",
        false,
        NONE,
        NONE,
        NOSUB,
        NONE
    ),
    res!(
        "rbac.authorization.k8s.io",
        "RoleBinding",
        "rolebindings",
        "rolebinding",
        true,
        NONE,
        NONE,
        NOSUB,
        NONE
    ),
    res!(
        "rbac.authorization.k8s.io",
        "ClusterRoleBinding",
        "clusterrolebindings",
        "clusterrolebinding",
        false,
        NONE,
        NONE,
        NOSUB,
        NONE
    ),
];

/// The resource served at `group`/`version`/`plural`.
pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static Resource> {
    RESOURCES.iter().find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// The resource for an `apiVersion` and `kind` pair.
pub fn find_kind(api_version: &str, kind: &str) -> Option<&'static Resource> {
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    RESOURCES.iter().find(|r| r.group == group && r.version == version && r.kind == kind)
}

/// Distinct named groups in table order (the core group excluded).
pub fn groups() -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    for r in RESOURCES {
        if !r.group.is_empty() && !out.contains(&r.group) {
            out.push(r.group);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_entries_are_unique_and_keys_nest() {
        for (i, a) in RESOURCES.iter().enumerate() {
            for b in &RESOURCES[i + 1..] {
                assert!(!(a.group == b.group && a.plural == b.plural), "{} twice", a.qualified());
            }
        }
        let d = find("apps", "v1", "deployments").expect("deployments");
        assert_eq!(d.key("default", "web"), "/registry/apps/deployments/default/web");
        assert!(d.key("default", "web").starts_with(&d.list_prefix(Some("default"))));
        let n = find("", "v1", "nodes").expect("nodes");
        assert_eq!(n.key("", "n1"), "/registry/core/nodes/n1");
        assert_eq!(find_kind("apps/v1", "Deployment").map(|r| r.plural), Some("deployments"));
        assert_eq!(find_kind("v1", "Pod").map(|r| r.plural), Some("pods"));
    }
}
