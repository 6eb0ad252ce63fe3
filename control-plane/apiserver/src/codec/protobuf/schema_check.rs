//! Cross-checks the whole protobuf schema table against k8s-openapi (API level 1.33): for every
//! root kind, a message with *every* field set (recursively) is encoded, decoded to JSON, and
//! round-tripped through the k8s-openapi type. A misnamed or mistyped field in the table is
//! dropped or rejected by k8s-openapi and shows up as a difference.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::decode;
use super::tests::{Enc, envelope};
use crate::codec::schema::{FieldType, SCHEMA, api_version_of};

/// Fields newer than API level 1.33 (the schema follows newer upstream protos): k8s-openapi
/// `v1_33` does not know them, so they are expected to disappear in the round trip.
const NEWER_THAN_1_33: &[&str] = &[
    "workloadRef",
    "hostnameOverride",
    "restartPolicyRules",
    "fileKeyRef",
    "podCertificate",
    "extendedResourceClaimStatus",
    "declaredFeatures",
];

/// Pod-level `status.resources` and `status.allocatedResources` are newer too (the container-level
/// fields of the same names are not).
fn newer_than_1_33(path: &str, field: &str) -> bool {
    NEWER_THAN_1_33.contains(&field)
        || (path == "core.v1.Pod.status" && matches!(field, "resources" | "allocatedResources"))
}

fn special(name: &str) -> Option<Enc> {
    Some(match name {
        "meta.v1.Time" | "meta.v1.MicroTime" => Enc::default().int(1, 1_700_000_000),
        "resource.Quantity" => Enc::default().str(1, "1"),
        "intstr.IntOrString" => Enc::default().int(1, 0).int(2, 1),
        "runtime.RawExtension" => Enc::default().bytes(1, br#"{"a":1}"#),
        "meta.v1.FieldsV1" => Enc::default().bytes(1, br#"{"f:a":{}}"#),
        _ if name.ends_with(".ExtraValue") => Enc::default().str(1, "x"),
        _ => return None,
    })
}

/// A message with every field set to a non-zero value.
fn fill(name: &str, depth: usize) -> Enc {
    if let Some(enc) = special(name) {
        return enc;
    }
    let mut enc = Enc::default();
    if depth > 24 {
        return enc;
    }
    let message = &SCHEMA.messages[name];
    let mut numbers: Vec<&u32> = message.fields.keys().collect();
    numbers.sort();
    for number in numbers {
        let field = &message.fields[number];
        enc = value(enc, *number, &field.ty, depth);
    }
    enc
}

fn value(enc: Enc, number: u32, ty: &FieldType, depth: usize) -> Enc {
    match ty {
        FieldType::String => enc.str(number, "x"),
        FieldType::Bool | FieldType::Int32 | FieldType::Int64 => enc.int(number, 1),
        FieldType::Bytes => enc.bytes(number, b"hi"),
        FieldType::Double => enc.fixed64(number, 1.5f64.to_bits()),
        FieldType::Message(name) => enc.msg(number, fill(name, depth + 1)),
        FieldType::Map(value_type) => {
            let entry = value(Enc::default().str(1, "k"), 2, value_type, depth);
            enc.msg(number, entry)
        }
    }
}

fn round_trip<T: DeserializeOwned + Serialize>(json: &Value) -> Result<Value, String> {
    let typed: T = serde_json::from_value(json.clone()).map_err(|e| e.to_string())?;
    serde_json::to_value(typed).map_err(|e| e.to_string())
}

/// Paths where `ours` has something `theirs` does not (or differs), skipping newer fields.
fn differences(path: &str, ours: &Value, theirs: &Value, out: &mut Vec<String>) {
    match (ours, theirs) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                if newer_than_1_33(path, k) && !b.contains_key(k) {
                    continue;
                }
                match b.get(k) {
                    Some(w) => differences(&format!("{path}.{k}"), v, w, out),
                    None => out.push(format!("{path}.{k} (dropped by k8s-openapi)")),
                }
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (v, w)) in a.iter().zip(b).enumerate() {
                differences(&format!("{path}[{i}]"), v, w, out);
            }
        }
        _ if ours == theirs => {}
        _ => out.push(format!("{path}: ours {ours} vs k8s-openapi {theirs}")),
    }
}

macro_rules! typed {
    ($root:expr, $json:expr, { $($name:literal => $ty:ty),* $(,)? }) => {
        match $root {
            $($name => round_trip::<$ty>($json),)*
            other => Err(format!("no k8s-openapi type listed for {other}")),
        }
    };
}

#[test]
fn every_schema_field_matches_k8s_openapi() {
    use k8s_openapi::api::{
        apps, authentication, authorization, autoscaling, batch, coordination, core, discovery,
        events, networking, policy, rbac, scheduling,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta;
    let mut problems = Vec::new();
    for root in &SCHEMA.roots {
        let kind = root.rsplit('.').next().unwrap();
        let body = envelope(&api_version_of(root), kind, &fill(root, 0));
        let ours = decode(&body).unwrap_or_else(|e| panic!("{root}: {e}"));
        let theirs = typed!(root.as_str(), &ours, {
            "core.v1.Namespace" => core::v1::Namespace,
            "core.v1.ConfigMap" => core::v1::ConfigMap,
            "core.v1.Secret" => core::v1::Secret,
            "core.v1.Service" => core::v1::Service,
            "core.v1.ServiceAccount" => core::v1::ServiceAccount,
            "core.v1.Pod" => core::v1::Pod,
            "core.v1.Node" => core::v1::Node,
            "core.v1.Endpoints" => core::v1::Endpoints,
            "core.v1.Event" => core::v1::Event,
            "core.v1.ResourceQuota" => core::v1::ResourceQuota,
            "core.v1.Binding" => core::v1::Binding,
            "core.v1.PodTemplate" => core::v1::PodTemplate,
            "apps.v1.Deployment" => apps::v1::Deployment,
            "apps.v1.ReplicaSet" => apps::v1::ReplicaSet,
            "apps.v1.StatefulSet" => apps::v1::StatefulSet,
            "apps.v1.DaemonSet" => apps::v1::DaemonSet,
            "batch.v1.Job" => batch::v1::Job,
            "batch.v1.CronJob" => batch::v1::CronJob,
            "rbac.v1.Role" => rbac::v1::Role,
            "rbac.v1.ClusterRole" => rbac::v1::ClusterRole,
            "rbac.v1.RoleBinding" => rbac::v1::RoleBinding,
            "rbac.v1.ClusterRoleBinding" => rbac::v1::ClusterRoleBinding,
            "scheduling.v1.PriorityClass" => scheduling::v1::PriorityClass,
            "policy.v1.PodDisruptionBudget" => policy::v1::PodDisruptionBudget,
            "policy.v1.Eviction" => policy::v1::Eviction,
            "authorization.v1.SelfSubjectAccessReview" => authorization::v1::SelfSubjectAccessReview,
            "authorization.v1.SelfSubjectRulesReview" => authorization::v1::SelfSubjectRulesReview,
            "authorization.v1.SubjectAccessReview" => authorization::v1::SubjectAccessReview,
            "authentication.v1.TokenRequest" => authentication::v1::TokenRequest,
            "authentication.v1.SelfSubjectReview" => authentication::v1::SelfSubjectReview,
            "networking.v1.Ingress" => networking::v1::Ingress,
            "discovery.v1.EndpointSlice" => discovery::v1::EndpointSlice,
            "coordination.v1.Lease" => coordination::v1::Lease,
            "events.v1.Event" => events::v1::Event,
            "autoscaling.v1.Scale" => autoscaling::v1::Scale,
            "meta.v1.DeleteOptions" => meta::v1::DeleteOptions,
        });
        match theirs {
            Ok(theirs) => {
                let mut diffs = Vec::new();
                differences(root, &ours, &theirs, &mut diffs);
                problems.extend(diffs);
            }
            Err(e) => problems.push(format!("{root}: k8s-openapi rejects our JSON: {e}")),
        }
    }
    assert!(problems.is_empty(), "{} problems:\n{}", problems.len(), problems.join("\n"));
}
